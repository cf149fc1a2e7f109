//! Listing runs: filters and pagination.

use super::{now, RunBuilder};
use crate::{RunQuery, Store, StoreError};
use chrono::Duration;
use runplane_domain::{Run, RunState};
use std::sync::Arc;

fn query(project: &str) -> RunQuery {
    RunQuery {
        project: project.to_string(),
        ..RunQuery::default()
    }
}

async fn ids(store: &dyn Store, query: RunQuery) -> Vec<String> {
    let page = store.list_runs(&query).await.expect("list");
    assert_eq!(page.next_cursor, None, "everything fits on one page");
    page.runs.into_iter().map(|r| r.metadata.id).collect()
}

fn ids_of(runs: &[&Run]) -> Vec<String> {
    runs.iter().map(|r| r.metadata.id.clone()).collect()
}

/// Filters combine with AND; states match any of; labels match all of; `created_after` and
/// `created_before` are exclusive bounds.
pub async fn list_runs_filters(store: Arc<dyn Store>) {
    store
        .ensure_project("demo", "alice")
        .await
        .expect("project");
    store
        .ensure_project("other", "alice")
        .await
        .expect("project");
    let base = now();
    let at = |ms: i64| base + Duration::milliseconds(ms);
    let r0 = RunBuilder::new("demo", "alpha")
        .label("team", "data")
        .label("env", "prod")
        .ready()
        .created(at(0))
        .build();
    let r1 = RunBuilder::new("demo", "beta")
        .label("team", "data")
        .created(at(1000))
        .build();
    let r2 = RunBuilder::new("demo", "alpha")
        .label("team", "ml")
        .created(at(2000))
        .build();
    let r3 = RunBuilder::new("demo", "alpha")
        .label("team", "data")
        .ready()
        .created(at(3000))
        .build();
    let stray = RunBuilder::new("other", "alpha")
        .label("team", "data")
        .ready()
        .created(at(1500))
        .build();
    for run in [&r0, &r1, &r2, &r3, &stray] {
        store.create_run(run.clone(), None).await.expect("create");
    }
    let store = store.as_ref();

    let page = store.list_runs(&query("demo")).await.expect("list");
    assert_eq!(
        page.runs,
        [r3.clone(), r2.clone(), r1.clone(), r0.clone()],
        "full runs, newest first"
    );
    assert_eq!(page.next_cursor, None);
    assert_eq!(ids(store, query("other")).await, ids_of(&[&stray]));
    assert!(ids(store, query("nowhere")).await.is_empty());

    let by_function = RunQuery {
        function: Some("alpha".to_string()),
        ..query("demo")
    };
    assert_eq!(ids(store, by_function).await, ids_of(&[&r3, &r2, &r0]));
    let by_missing_function = RunQuery {
        function: Some("gamma".to_string()),
        ..query("demo")
    };
    assert!(ids(store, by_missing_function).await.is_empty());

    let ready = RunQuery {
        states: vec![RunState::Ready],
        ..query("demo")
    };
    assert_eq!(ids(store, ready).await, ids_of(&[&r3, &r0]));
    let either = RunQuery {
        states: vec![RunState::Created, RunState::Ready],
        ..query("demo")
    };
    assert_eq!(ids(store, either).await, ids_of(&[&r3, &r2, &r1, &r0]));
    let running = RunQuery {
        states: vec![RunState::Running],
        ..query("demo")
    };
    assert!(ids(store, running).await.is_empty());

    let label = |pairs: &[(&str, &str)]| RunQuery {
        labels: pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..query("demo")
    };
    assert_eq!(
        ids(store, label(&[("team", "data")])).await,
        ids_of(&[&r3, &r1, &r0])
    );
    assert_eq!(
        ids(store, label(&[("team", "data"), ("env", "prod")])).await,
        ids_of(&[&r0])
    );
    assert!(ids(store, label(&[("team", "ml"), ("env", "prod")]))
        .await
        .is_empty());
    assert!(ids(store, label(&[("team", "nope")])).await.is_empty());

    let after = RunQuery {
        created_after: Some(at(500)),
        ..query("demo")
    };
    assert_eq!(ids(store, after).await, ids_of(&[&r3, &r2, &r1]));
    let before = RunQuery {
        created_before: Some(at(2500)),
        ..query("demo")
    };
    assert_eq!(ids(store, before).await, ids_of(&[&r2, &r1, &r0]));
    let exclusive = RunQuery {
        created_after: Some(at(1000)),
        created_before: Some(at(3000)),
        ..query("demo")
    };
    assert_eq!(
        ids(store, exclusive).await,
        ids_of(&[&r2]),
        "both bounds are exclusive"
    );

    let combined = RunQuery {
        function: Some("alpha".to_string()),
        states: vec![RunState::Ready],
        labels: vec![("team".to_string(), "data".to_string())],
        created_before: Some(at(2500)),
        ..query("demo")
    };
    assert_eq!(ids(store, combined).await, ids_of(&[&r0]));
}

/// Walks every page of `query` and returns the ids in order, checking page sizes and cursors.
async fn walk(store: &dyn Store, mut query: RunQuery, expected_pages: usize) -> Vec<String> {
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let page = store.list_runs(&query).await.expect("page");
        pages += 1;
        assert!(pages <= expected_pages, "more pages than expected");
        assert!(page.runs.len() <= query.limit as usize);
        assert!(
            page.runs.iter().all(|r| !r.status.transitions.is_empty()),
            "full runs"
        );
        seen.extend(page.runs.into_iter().map(|r| r.metadata.id));
        match page.next_cursor {
            Some(cursor) => query.cursor = Some(cursor),
            None => break,
        }
    }
    assert_eq!(pages, expected_pages);
    seen
}

pub async fn list_runs_paginates_newest_first(store: Arc<dyn Store>) {
    store
        .ensure_project("demo", "alice")
        .await
        .expect("project");
    store
        .ensure_project("other", "alice")
        .await
        .expect("project");
    let mut all = Vec::new();
    let mut ready = Vec::new();
    for i in 0..10 {
        let builder = RunBuilder::new("demo", "f");
        let run = if i % 2 == 0 {
            builder.ready().build()
        } else {
            builder.build()
        };
        store.create_run(run.clone(), None).await.expect("create");
        if i % 2 == 0 {
            ready.push(run.metadata.id.clone());
        }
        all.push(run.metadata.id);
        let noise = RunBuilder::new("other", "f").ready().build();
        store.create_run(noise, None).await.expect("create");
    }
    all.reverse();
    ready.reverse();
    let store = store.as_ref();

    let paged = |limit: u32| RunQuery {
        limit,
        ..query("demo")
    };
    assert_eq!(walk(store, paged(2), 5).await, all, "pages of 2");
    assert_eq!(walk(store, paged(3), 4).await, all, "pages of 3");
    assert_eq!(
        walk(store, paged(10), 1).await,
        all,
        "an exact fit has no next page"
    );
    assert_eq!(walk(store, paged(9), 2).await, all);
    assert_eq!(
        walk(store, paged(5000), 1).await,
        all,
        "a huge limit is capped, not refused"
    );
    let page = store.list_runs(&paged(0)).await.expect("default limit");
    assert_eq!(page.runs.len(), 10, "0 means the default page size");
    assert_eq!(page.next_cursor, None);

    let ready_paged = RunQuery {
        limit: 2,
        states: vec![RunState::Ready],
        ..query("demo")
    };
    assert_eq!(
        walk(store, ready_paged, 3).await,
        ready,
        "filters hold across pages"
    );
}

pub async fn list_runs_rejects_invalid_cursor(store: Arc<dyn Store>) {
    store
        .ensure_project("demo", "alice")
        .await
        .expect("project");
    store
        .create_run(RunBuilder::new("demo", "f").build(), None)
        .await
        .expect("create");
    for cursor in ["not a cursor!", "", "%%%", "AAAA"] {
        let bad = RunQuery {
            cursor: Some(cursor.to_string()),
            ..query("demo")
        };
        match store.list_runs(&bad).await {
            Err(StoreError::InvalidCursor) => {}
            other => panic!("cursor {cursor:?}: expected InvalidCursor, got {other:?}"),
        }
    }
}
