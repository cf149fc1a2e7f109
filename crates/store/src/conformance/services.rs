//! Services: names `(project, name)` pointing at the run that backs them, taken over by newer
//! runs and released only by the run that holds them; and `status.service`, the replicas a
//! service run last reported, guarded by the run's attempt.

use super::{now, service_status, RunBuilder};
use crate::{RunQuery, Store, StoreError, StoredEvent};
use chrono::Duration;
use runplane_domain::{Run, RunState};
use serde_json::json;
use std::sync::Arc;

/// A new READY run of `hello` in `project`, stored.
async fn stored_run(store: &Arc<dyn Store>, project: &str) -> Run {
    let run = RunBuilder::new(project, "hello").ready().build();
    store.create_run(run.clone(), None).await.expect("create");
    run
}

async fn events_since(store: &Arc<dyn Store>, after: u64) -> Vec<StoredEvent> {
    store
        .events_after(after, None, 1000)
        .await
        .expect("events_after")
}

pub async fn services_put_get_list_all(store: Arc<dyn Store>) {
    for project in ["demo", "other"] {
        store
            .ensure_project(project, "alice")
            .await
            .expect("project");
    }
    assert_eq!(store.get_service("demo", "api").await.expect("get"), None);
    assert!(store.list_services("demo").await.expect("list").is_empty());
    assert!(store.all_services().await.expect("all").is_empty());

    let api_run = stored_run(&store, "demo").await;
    let before = now();
    let api = store
        .put_service("demo", "api", &api_run.metadata.id)
        .await
        .expect("put");
    assert_eq!(api.project, "demo");
    assert_eq!(api.name, "api");
    assert_eq!(api.run_id, api_run.metadata.id);
    assert!(api.created >= before, "created is stamped by the store");
    assert_eq!(api.updated, api.created, "a new service was never updated");
    assert_eq!(
        store.get_service("demo", "api").await.expect("get"),
        Some(api.clone()),
        "a service reads back exactly as put returned it"
    );

    // Names are listed in order, whatever the order they were put in.
    let web_run = stored_run(&store, "demo").await;
    let web = store
        .put_service("demo", "web", &web_run.metadata.id)
        .await
        .expect("put");
    let admin = store
        .put_service("demo", "admin", &web_run.metadata.id)
        .await
        .expect("two names may point at one run");
    let other_run = stored_run(&store, "other").await;
    let elsewhere = store
        .put_service("other", "api", &other_run.metadata.id)
        .await
        .expect("the same name in another project");

    assert_eq!(
        store.list_services("demo").await.expect("list"),
        [admin.clone(), api.clone(), web.clone()]
    );
    assert_eq!(
        store.list_services("other").await.expect("list"),
        std::slice::from_ref(&elsewhere)
    );
    assert!(store
        .list_services("nowhere")
        .await
        .expect("list")
        .is_empty());
    assert_eq!(
        store.all_services().await.expect("all"),
        [admin, api, web, elsewhere],
        "every project's services, by project then name"
    );
    // Services are project-scoped.
    assert_eq!(store.get_service("other", "web").await.expect("get"), None);
}

pub async fn services_upsert_keeps_created_and_moves_run(store: Arc<dyn Store>) {
    store
        .ensure_project("demo", "alice")
        .await
        .expect("project");
    let old = stored_run(&store, "demo").await;
    let new = stored_run(&store, "demo").await;
    let first = store
        .put_service("demo", "api", &old.metadata.id)
        .await
        .expect("put");

    let taken = store
        .put_service("demo", "api", &new.metadata.id)
        .await
        .expect("take over");
    assert_eq!(
        taken.run_id, new.metadata.id,
        "the name moves to the new run"
    );
    assert_eq!(taken.created, first.created, "created is kept");
    assert!(taken.updated >= first.updated, "updated moves on");
    assert_eq!(
        store.get_service("demo", "api").await.expect("get"),
        Some(taken.clone())
    );
    assert_eq!(
        store.list_services("demo").await.expect("list"),
        std::slice::from_ref(&taken),
        "still one service"
    );

    // Putting the same pointer again is allowed and changes nothing but `updated`.
    let again = store
        .put_service("demo", "api", &new.metadata.id)
        .await
        .expect("put again");
    assert_eq!(again.run_id, new.metadata.id);
    assert_eq!(again.created, first.created);
    assert!(again.updated >= taken.updated);
}

pub async fn services_need_their_project_and_run(store: Arc<dyn Store>) {
    store
        .ensure_project("demo", "alice")
        .await
        .expect("project");
    store
        .ensure_project("other", "alice")
        .await
        .expect("project");
    let run = stored_run(&store, "demo").await;
    let before = store.latest_event_id().await.expect("latest");

    match store.put_service("nowhere", "api", &run.metadata.id).await {
        Err(StoreError::NotFound(_)) => {}
        other => panic!("expected NotFound for a missing project, got {other:?}"),
    }
    match store.put_service("demo", "api", "no-such-run").await {
        Err(StoreError::NotFound(_)) => {}
        other => panic!("expected NotFound for a missing run, got {other:?}"),
    }
    match store.put_service("other", "api", &run.metadata.id).await {
        Err(StoreError::NotFound(_)) => {}
        other => panic!("expected NotFound for another project's run, got {other:?}"),
    }

    // A deleted run is a missing run too.
    assert!(store
        .delete_run("demo", &run.metadata.id)
        .await
        .expect("delete run"));
    match store.put_service("demo", "api", &run.metadata.id).await {
        Err(StoreError::NotFound(_)) => {}
        other => panic!("expected NotFound for a deleted run, got {other:?}"),
    }

    assert!(store.all_services().await.expect("all").is_empty());
    assert_eq!(
        store.latest_event_id().await.expect("latest"),
        before,
        "a refused put appends no event"
    );
}

pub async fn services_delete_only_with_the_matching_run(store: Arc<dyn Store>) {
    store
        .ensure_project("demo", "alice")
        .await
        .expect("project");
    let old = stored_run(&store, "demo").await;
    let new = stored_run(&store, "demo").await;
    store
        .put_service("demo", "api", &old.metadata.id)
        .await
        .expect("put");
    let taken = store
        .put_service("demo", "api", &new.metadata.id)
        .await
        .expect("take over");
    let before = store.latest_event_id().await.expect("latest");

    // The old run ends after the takeover: it must not remove the name from the new one.
    assert!(!store
        .delete_service("demo", "api", &old.metadata.id)
        .await
        .expect("delete with the old run"));
    assert!(!store
        .delete_service("other", "api", &new.metadata.id)
        .await
        .expect("delete in another project"));
    assert!(!store
        .delete_service("demo", "web", &new.metadata.id)
        .await
        .expect("delete of a missing name"));
    assert_eq!(
        store.get_service("demo", "api").await.expect("get"),
        Some(taken)
    );
    assert_eq!(
        store.latest_event_id().await.expect("latest"),
        before,
        "a delete that removed nothing appends no event"
    );

    // The run the name points at may be gone already: its id still releases the name.
    assert!(store
        .delete_run("demo", &new.metadata.id)
        .await
        .expect("delete run"));
    assert_eq!(
        store
            .get_service("demo", "api")
            .await
            .expect("get")
            .map(|s| s.run_id),
        Some(new.metadata.id.clone()),
        "deleting the run leaves the name pointing at its id"
    );
    assert!(store
        .delete_service("demo", "api", &new.metadata.id)
        .await
        .expect("delete"));
    assert_eq!(store.get_service("demo", "api").await.expect("get"), None);
    assert!(store.list_services("demo").await.expect("list").is_empty());
    assert!(!store
        .delete_service("demo", "api", &new.metadata.id)
        .await
        .expect("delete twice"));
}

pub async fn services_events(store: Arc<dyn Store>) {
    store
        .ensure_project("demo", "alice")
        .await
        .expect("project");
    let old = stored_run(&store, "demo").await;
    let new = stored_run(&store, "demo").await;
    let start = store.latest_event_id().await.expect("latest");

    let put = store
        .put_service("demo", "api", &old.metadata.id)
        .await
        .expect("put");
    let taken = store
        .put_service("demo", "api", &new.metadata.id)
        .await
        .expect("take over");
    let status = service_status("demo", "api", 2, 1);
    assert!(store
        .set_service_status(&new.metadata.id, 1, &status)
        .await
        .expect("status"));
    assert!(store
        .delete_service("demo", "api", &new.metadata.id)
        .await
        .expect("delete"));

    let events = events_since(&store, start).await;
    assert_eq!(events.len(), 4, "put, put, status, delete: {events:?}");
    assert!(events.iter().all(|e| e.project == "demo"));

    let [first, second, changed, deleted] = &events[..] else {
        unreachable!("four events");
    };
    assert_eq!(first.kind, "service");
    assert_eq!(
        first.data,
        json!({
            "type": "service",
            "project": "demo",
            "name": "api",
            "run_id": old.metadata.id,
            "at": first.data["at"],
        })
    );
    assert_eq!(first.at, put.updated, "the event is timed at the change");
    assert_eq!(second.kind, "service");
    assert_eq!(second.data["run_id"], json!(new.metadata.id));
    assert_eq!(second.at, taken.updated);
    assert!(second.data.get("deleted").is_none());

    assert_eq!(changed.kind, "run");
    assert_eq!(
        changed.data,
        json!({
            "type": "run",
            "project": "demo",
            "id": new.metadata.id,
            "kind": new.kind,
            "function": "hello",
            "state": "READY",
            "attempt": 1,
            "change": "service",
            "ready": 1,
            "desired": 2,
            "at": changed.data["at"],
        })
    );
    let stored = store
        .get_run("demo", &new.metadata.id)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(
        changed.at, stored.metadata.updated,
        "the event is timed at the run's update"
    );

    assert_eq!(deleted.kind, "service");
    assert_eq!(
        deleted.data,
        json!({
            "type": "service",
            "project": "demo",
            "name": "api",
            "run_id": new.metadata.id,
            "deleted": true,
            "at": deleted.data["at"],
        })
    );
    assert!(deleted.at >= taken.updated);

    // `at` in the data is the event's time, as for the other kinds.
    for event in &events {
        let at = event.data["at"].as_str().expect("at is a string");
        let at: chrono::DateTime<chrono::Utc> = at.parse().expect("at is RFC 3339");
        assert_eq!(at, event.at);
    }
    // Project-filtered readers see them too.
    assert_eq!(
        store
            .events_after(start, Some("demo"), 100)
            .await
            .expect("events_after"),
        events
    );
}

pub async fn service_status_round_trips(store: Arc<dyn Store>) {
    store
        .ensure_project("demo", "alice")
        .await
        .expect("project");
    // Created an hour ago, so that the status update visibly moves `updated`.
    let created = now() - Duration::hours(1);
    let run = RunBuilder::new("demo", "hello")
        .created(created)
        .ready()
        .build();
    store.create_run(run.clone(), None).await.expect("create");
    let other = stored_run(&store, "demo").await;
    assert_eq!(
        store
            .get_run("demo", &run.metadata.id)
            .await
            .expect("get")
            .expect("exists")
            .status
            .service,
        None,
        "a run has no service status until one is reported"
    );

    let status = service_status("demo", "api", 3, 2);
    assert!(store
        .set_service_status(&run.metadata.id, 1, &status)
        .await
        .expect("set"));
    let read = store
        .get_run("demo", &run.metadata.id)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(read.status.service.as_ref(), Some(&status));
    assert!(read.metadata.updated > created, "updated is bumped");
    let mut expected = run.clone();
    expected.status.service = Some(status.clone());
    expected.metadata.updated = read.metadata.updated;
    assert_eq!(read, expected, "nothing else changes");

    assert_eq!(
        store
            .get_run_by_id(&run.metadata.id)
            .await
            .expect("get by id"),
        Some(read.clone())
    );
    let page = store
        .list_runs(&RunQuery {
            project: "demo".to_string(),
            ..RunQuery::default()
        })
        .await
        .expect("list");
    let listed: Vec<_> = page
        .runs
        .iter()
        .map(|r| (r.metadata.id.clone(), r.status.service.clone()))
        .collect();
    assert_eq!(
        listed,
        [
            (other.metadata.id.clone(), None),
            (run.metadata.id.clone(), Some(status.clone()))
        ],
        "listings carry status.service (newest first)"
    );
    let queued = store
        .runs_in_states(&[RunState::Ready], 10)
        .await
        .expect("runs_in_states");
    assert_eq!(queued.first(), Some(&read));

    // A report replaces the whole status (replicas shrink as well as grow) and survives
    // transitions, in any state.
    store
        .transition(super::request(&run, RunState::Ready, 1, RunState::Pending))
        .await
        .expect("dispatch");
    let smaller = service_status("demo", "api", 1, 1);
    assert!(store
        .set_service_status(&run.metadata.id, 1, &smaller)
        .await
        .expect("set in PENDING"));
    let pending = store
        .transition(super::request(
            &run,
            RunState::Pending,
            1,
            RunState::Running,
        ))
        .await
        .expect("start");
    assert_eq!(pending.status.service, Some(smaller.clone()));
    assert_eq!(
        store
            .get_run("demo", &run.metadata.id)
            .await
            .expect("get")
            .expect("exists")
            .status
            .service,
        Some(smaller)
    );
}

pub async fn service_status_refused_changes_nothing(store: Arc<dyn Store>) {
    store
        .ensure_project("demo", "alice")
        .await
        .expect("project");
    let run = stored_run(&store, "demo").await;
    let first = service_status("demo", "api", 2, 2);
    assert!(store
        .set_service_status(&run.metadata.id, 1, &first)
        .await
        .expect("set"));
    let before = store
        .get_run("demo", &run.metadata.id)
        .await
        .expect("get")
        .expect("exists");
    let latest = store.latest_event_id().await.expect("latest");

    let stale = service_status("demo", "api", 5, 0);
    for attempt in [0, 2, u32::MAX] {
        assert!(
            !store
                .set_service_status(&run.metadata.id, attempt, &stale)
                .await
                .expect("set"),
            "attempt {attempt} is not the run's"
        );
    }
    assert!(!store
        .set_service_status("no-such-run", 1, &stale)
        .await
        .expect("set on a missing run"));

    assert_eq!(
        store
            .get_run("demo", &run.metadata.id)
            .await
            .expect("get")
            .expect("exists"),
        before,
        "a refused report changes nothing (not even updated)"
    );
    assert_eq!(
        store.latest_event_id().await.expect("latest"),
        latest,
        "a refused report appends no event"
    );

    // Gone runs refuse too.
    assert!(store
        .delete_run("demo", &run.metadata.id)
        .await
        .expect("delete"));
    assert!(!store
        .set_service_status(&run.metadata.id, 1, &first)
        .await
        .expect("set on a deleted run"));
    assert_eq!(store.latest_event_id().await.expect("latest"), latest);
}
