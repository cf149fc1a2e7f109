//! The event log: appended with the change it describes, in order, never for a lost
//! compare-and-set, and readable page by page from any id.

use super::{function_version, request, stored_ready_run, task, RunBuilder};
use crate::{Store, StoredEvent};
use runplane_domain::RunState;
use serde_json::json;
use std::sync::Arc;

/// Every event after `after` (of `project` when given), read in pages of `page`.
async fn read_all(
    store: &Arc<dyn Store>,
    mut after: u64,
    project: Option<&str>,
    page: u32,
) -> Vec<StoredEvent> {
    let mut all = Vec::new();
    loop {
        let events = store
            .events_after(after, project, page)
            .await
            .expect("events_after");
        assert!(
            events.len() <= page as usize,
            "a page holds at most `limit`"
        );
        let Some(last) = events.last() else {
            return all;
        };
        after = last.id;
        all.extend(events);
    }
}

fn states(events: &[StoredEvent]) -> Vec<String> {
    events
        .iter()
        .map(|e| e.data["state"].as_str().unwrap_or("?").to_string())
        .collect()
}

pub async fn events_follow_a_run_in_order(store: Arc<dyn Store>) {
    let run = stored_ready_run(store.as_ref()).await;
    let created = store.latest_event_id().await.expect("latest");
    let initial = read_all(&store, 0, None, 100).await;
    assert_eq!(
        states(&initial),
        ["CREATED", "BUILT", "READY"],
        "one event per initial transition"
    );

    let pending = request(&run, RunState::Ready, 1, RunState::Pending).reason("dispatched");
    store.transition(pending.clone()).await.expect("dispatch");
    let after = store
        .events_after(created, None, 100)
        .await
        .expect("events_after");
    assert_eq!(after.len(), 1, "a transition appends exactly one event");
    let event = &after[0];
    assert_eq!(event.kind, "run");
    assert_eq!(event.project, "demo");
    assert_eq!(event.at, pending.at);
    assert_eq!(event.id, store.latest_event_id().await.expect("latest"));
    assert_eq!(event.data["type"], "run");
    assert_eq!(event.data["id"], json!(run.metadata.id));
    assert_eq!(event.data["kind"], json!(run.kind));
    assert_eq!(event.data["from"], "READY");
    assert_eq!(event.data["state"], "PENDING");
    assert_eq!(event.data["attempt"], 1);
    assert_eq!(event.data["reason"], "dispatched");

    store
        .transition(request(&run, RunState::Pending, 1, RunState::Running))
        .await
        .expect("start");
    store
        .transition(request(&run, RunState::Running, 1, RunState::Completed).reason("succeeded"))
        .await
        .expect("complete");
    let all = read_all(&store, 0, None, 100).await;
    assert_eq!(
        states(&all),
        [
            "CREATED",
            "BUILT",
            "READY",
            "PENDING",
            "RUNNING",
            "COMPLETED"
        ]
    );
    let stored = store
        .get_run("demo", &run.metadata.id)
        .await
        .expect("get")
        .expect("exists");
    let recorded: Vec<String> = stored
        .status
        .transitions
        .iter()
        .map(|t| t.to.as_str().to_string())
        .collect();
    assert_eq!(states(&all), recorded, "the log tells the stored history");
}

pub async fn events_not_appended_by_a_lost_transition(store: Arc<dyn Store>) {
    let run = stored_ready_run(store.as_ref()).await;
    let before = store.latest_event_id().await.expect("latest");

    store
        .transition(request(&run, RunState::Pending, 1, RunState::Running))
        .await
        .expect_err("wrong state loses");
    store
        .transition(request(&run, RunState::Ready, 2, RunState::Pending))
        .await
        .expect_err("wrong attempt loses");
    store
        .transition(request(&run, RunState::Ready, 1, RunState::Completed))
        .await
        .expect_err("illegal move is refused");
    let mut missing = run.clone();
    missing.metadata.id = "no-such-run".to_string();
    store
        .transition(request(&missing, RunState::Ready, 1, RunState::Pending))
        .await
        .expect_err("unknown run");

    assert_eq!(store.latest_event_id().await.expect("latest"), before);
    assert!(store
        .events_after(before, None, 100)
        .await
        .expect("events_after")
        .is_empty());
}

pub async fn events_of_catalog_changes(store: Arc<dyn Store>) {
    store
        .ensure_project("demo", "alice")
        .await
        .expect("project");
    let version = function_version("demo", "hello", json!({ "handler": "handler" }));
    store
        .put_function_version(version.clone())
        .await
        .expect("put");
    let after_first = store.latest_event_id().await.expect("latest");
    store
        .put_function_version(version.clone())
        .await
        .expect("put again");
    assert_eq!(
        store.latest_event_id().await.expect("latest"),
        after_first,
        "an identical version is not a change"
    );
    store
        .put_task(task("demo", "nightly", "hello"))
        .await
        .expect("task");

    let all = read_all(&store, 0, None, 100).await;
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].kind, "function");
    assert_eq!(all[0].data["name"], "hello");
    assert_eq!(all[0].data["version"], json!(version.metadata.version));
    assert_eq!(all[1].kind, "task");
    assert_eq!(all[1].data["name"], "nightly");
    assert_eq!(all[1].project, "demo");
}

pub async fn events_ids_increase_and_page(store: Arc<dyn Store>) {
    for project in ["demo", "other"] {
        store
            .ensure_project(project, "alice")
            .await
            .expect("project");
    }
    assert_eq!(store.latest_event_id().await.expect("latest"), 0);
    assert!(store
        .events_after(0, None, 10)
        .await
        .expect("empty log")
        .is_empty());
    for n in 0..7 {
        let project = if n % 2 == 0 { "demo" } else { "other" };
        let run = RunBuilder::new(project, "hello").build();
        store.create_run(run, None).await.expect("create");
    }

    let all = read_all(&store, 0, None, 1000).await;
    assert_eq!(all.len(), 7);
    assert!(
        all.windows(2).all(|w| w[0].id < w[1].id),
        "ids strictly increase"
    );
    assert_eq!(store.latest_event_id().await.expect("latest"), all[6].id);

    // Any page size reads the same sequence, with no loss and no repeat.
    for page in [1, 2, 3, 7] {
        assert_eq!(
            read_all(&store, 0, None, page).await,
            all,
            "page size {page}"
        );
    }
    // Resuming after the k-th event gives exactly the rest.
    for k in 0..all.len() {
        assert_eq!(read_all(&store, all[k].id, None, 2).await, all[k + 1..]);
    }
    // 0 means the default page size.
    assert_eq!(store.events_after(0, None, 0).await.expect("default"), all);

    let demo = read_all(&store, 0, Some("demo"), 2).await;
    assert_eq!(demo.len(), 4);
    assert!(demo.iter().all(|e| e.project == "demo"));
    let expected: Vec<StoredEvent> = all
        .iter()
        .filter(|e| e.project == "demo")
        .cloned()
        .collect();
    assert_eq!(demo, expected);
    assert!(read_all(&store, 0, Some("nobody"), 10).await.is_empty());
    assert!(store
        .events_after(u64::MAX, None, 10)
        .await
        .expect("beyond the end")
        .is_empty());
}
