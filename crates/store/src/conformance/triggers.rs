//! Triggers: apply keeps what it must, a fire happens once (compare-and-set on the next fire,
//! dedup keys), and its run is stored with it.

use super::{now, RunBuilder};
use crate::{FireBatch, RunQuery, Store};
use chrono::Duration;
use runplane_domain::trigger::{Fire, Trigger, TriggerMetadata, TriggerSpec, TriggerStatus};
use serde_json::json;
use std::sync::Arc;

fn trigger(project: &str, name: &str, next: Option<chrono::DateTime<chrono::Utc>>) -> Trigger {
    Trigger {
        kind: "scheduler".into(),
        metadata: TriggerMetadata {
            name: name.into(),
            project: project.into(),
            labels: Default::default(),
            created: now(),
            updated: now(),
            created_by: "conformance".into(),
        },
        spec: TriggerSpec {
            schedule: Some("* * * * * *".into()),
            template: json!({"function": "f"}),
            ..TriggerSpec::default()
        },
        status: TriggerStatus {
            next_fire: next,
            ..TriggerStatus::default()
        },
    }
}

fn fire(dedup: &str, run_id: Option<&str>) -> Fire {
    Fire {
        id: uuid::Uuid::now_v7().to_string(),
        project: "demo".into(),
        trigger: "tick".into(),
        at: now(),
        scheduled_for: None,
        dedup_key: dedup.into(),
        run_id: run_id.map(str::to_string),
        error: None,
    }
}

pub async fn triggers_apply_pause_and_delete(store: Arc<dyn Store>) {
    store
        .ensure_project("demo", "alice")
        .await
        .expect("project");
    let first = now();
    let stored = store
        .put_trigger(&trigger("demo", "tick", Some(first)), Some("hash-1"))
        .await
        .expect("put");
    assert_eq!(stored.status.next_fire, Some(first));
    assert!(!stored.status.paused);
    let paused = store
        .set_trigger_paused("demo", "tick", true, None)
        .await
        .expect("pause")
        .expect("exists");
    assert!(paused.status.paused);
    // Re-applying keeps the token hash and the pause.
    let again = store
        .put_trigger(&trigger("demo", "tick", Some(first)), Some("hash-2"))
        .await
        .expect("put again");
    assert!(again.status.paused);
    assert_eq!(again.metadata.created, stored.metadata.created);
    assert_eq!(
        store
            .trigger_token_hash("demo", "tick")
            .await
            .expect("hash")
            .as_deref(),
        Some("hash-1")
    );
    assert_eq!(
        store.list_triggers(Some("demo")).await.expect("list").len(),
        1
    );
    assert_eq!(store.list_triggers(None).await.expect("all").len(), 1);
    assert!(store
        .put_trigger(&trigger("nope", "t", None), None)
        .await
        .is_err());
    assert!(store.delete_trigger("demo", "tick").await.expect("delete"));
    assert!(!store.delete_trigger("demo", "tick").await.expect("delete"));
    assert!(store
        .get_trigger("demo", "tick")
        .await
        .expect("get")
        .is_none());
}

pub async fn a_tick_fires_once_with_its_run(store: Arc<dyn Store>) {
    store
        .ensure_project("demo", "alice")
        .await
        .expect("project");
    let tick = now();
    let next = tick + Duration::seconds(1);
    store
        .put_trigger(&trigger("demo", "tick", Some(tick)), None)
        .await
        .expect("put");
    // Two schedulers race for the same tick: one wins, with its run; the other writes nothing.
    let batch = |run: runplane_domain::Run| FireBatch {
        project: "demo".into(),
        trigger: "tick".into(),
        next_fire: Some((Some(tick), Some(next))),
        fires: vec![(fire(&tick.to_rfc3339(), Some(&run.metadata.id)), Some(run))],
    };
    let a = batch(RunBuilder::new("demo", "f").ready().build());
    let b = batch(RunBuilder::new("demo", "f").ready().build());
    let (sa, sb) = (store.clone(), store.clone());
    let (ra, rb) = tokio::join!(
        tokio::spawn(async move { sa.fire_trigger(a).await }),
        tokio::spawn(async move { sb.fire_trigger(b).await })
    );
    let won = [
        ra.expect("join").expect("fire"),
        rb.expect("join").expect("fire"),
    ];
    assert_eq!(won.iter().filter(|w| **w).count(), 1, "{won:?}");
    let runs = store
        .list_runs(&RunQuery {
            project: "demo".into(),
            ..RunQuery::default()
        })
        .await
        .expect("runs");
    assert_eq!(runs.runs.len(), 1, "only the winner's run exists");
    let fires = store.list_fires("demo", "tick", 0).await.expect("fires");
    assert_eq!(fires.len(), 1);
    assert_eq!(
        fires[0].run_id.as_deref(),
        Some(runs.runs[0].metadata.id.as_str())
    );
    let read = store
        .get_trigger("demo", "tick")
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(read.status.next_fire, Some(next));
    assert_eq!(read.status.fires, 1);

    // A dedup key fires once (lifecycle, webhook), failed fires are counted.
    let once = |dedup: &str| FireBatch {
        project: "demo".into(),
        trigger: "tick".into(),
        next_fire: None,
        fires: vec![(
            Fire {
                error: Some("template: boom".into()),
                ..fire(dedup, None)
            },
            None,
        )],
    };
    assert!(store.fire_trigger(once("event-7")).await.expect("fire"));
    assert!(!store.fire_trigger(once("event-7")).await.expect("fire"));
    let read = store
        .get_trigger("demo", "tick")
        .await
        .expect("get")
        .expect("exists");
    assert_eq!((read.status.fires, read.status.failed_fires), (2, 1));

    // A paused scheduler does not fire.
    store
        .set_trigger_paused("demo", "tick", true, Some(next))
        .await
        .expect("pause");
    let paused = FireBatch {
        project: "demo".into(),
        trigger: "tick".into(),
        next_fire: Some((Some(next), None)),
        fires: vec![],
    };
    assert!(!store.fire_trigger(paused).await.expect("fire"));
    assert_eq!(store.get_cursor("lifecycle").await.expect("cursor"), None);
    store.set_cursor("lifecycle", 42).await.expect("set");
    store.set_cursor("lifecycle", 43).await.expect("set");
    assert_eq!(
        store.get_cursor("lifecycle").await.expect("cursor"),
        Some(43)
    );
}
