//! Server replicas: leases, the owner a claim records, and the adoption of the runs of a
//! replica whose lease ended — by exactly one other replica.

use super::{now, request, RunBuilder};
use crate::Store;
use chrono::TimeDelta;
use runplane_domain::RunState;
use std::sync::Arc;

pub async fn replicas_claim_own_and_adopt_once(store: Arc<dyn Store>) {
    store
        .ensure_project("demo", "alice")
        .await
        .expect("project");
    let t0 = now();
    store
        .renew_replica_lease("a", t0 + TimeDelta::seconds(10))
        .await
        .expect("lease a");
    store
        .renew_replica_lease("b", t0 + TimeDelta::seconds(10))
        .await
        .expect("lease b");
    // Renewing moves the lease; it never makes a second record.
    store
        .renew_replica_lease("a", t0 + TimeDelta::seconds(20))
        .await
        .expect("renew a");
    let replicas = store.list_replicas().await.expect("list");
    assert_eq!(
        replicas,
        vec![
            ("a".to_string(), t0 + TimeDelta::seconds(20)),
            ("b".to_string(), t0 + TimeDelta::seconds(10)),
        ]
    );

    let run = RunBuilder::new("demo", "train").ready().build();
    let run = store.create_run(run, None).await.expect("create").value;
    let mut claim = request(&run, RunState::Ready, 1, RunState::Pending);
    claim.owner = Some("a".to_string());
    store.transition(claim).await.expect("claim");
    let owned: Vec<String> = store
        .runs_owned_by("a")
        .await
        .expect("owned")
        .into_iter()
        .map(|r| r.metadata.id)
        .collect();
    assert_eq!(owned, vec![run.metadata.id.clone()]);
    // A later transition without an owner keeps it.
    store
        .transition(request(&run, RunState::Pending, 1, RunState::Running))
        .await
        .expect("start");
    assert_eq!(store.runs_owned_by("a").await.expect("owned").len(), 1);

    // A READY run that nobody claimed is not adopted; an unowned active one is.
    let queued = RunBuilder::new("demo", "queued").ready().build();
    store.create_run(queued, None).await.expect("queued");
    let stray = RunBuilder::new("demo", "stray")
        .state(RunState::Running)
        .build();
    let stray = store.create_run(stray, None).await.expect("stray").value;

    // While a's lease runs, b adopts only the unowned run.
    let adopted = store
        .adopt_orphaned_runs("b", t0 + TimeDelta::seconds(15))
        .await
        .expect("adopt");
    let ids: Vec<&str> = adopted.iter().map(|r| r.metadata.id.as_str()).collect();
    assert_eq!(ids, vec![stray.metadata.id.as_str()]);
    assert_eq!(store.runs_owned_by("a").await.expect("owned").len(), 1);

    // Once a's lease ended (b's still runs), b and c race: exactly one gets a's run.
    store
        .renew_replica_lease("b", t0 + TimeDelta::seconds(100))
        .await
        .expect("renew b");
    let later = t0 + TimeDelta::seconds(30);
    let (by_b, by_c) = tokio::join!(
        store.adopt_orphaned_runs("b", later),
        store.adopt_orphaned_runs("c", later)
    );
    let (by_b, by_c) = (by_b.expect("adopt b"), by_c.expect("adopt c"));
    assert_eq!(by_b.len() + by_c.len(), 1, "{by_b:?} {by_c:?}");
    let a_run_adopters: Vec<&str> = [("b", &by_b), ("c", &by_c)]
        .iter()
        .filter(|(_, runs)| runs.iter().any(|r| r.metadata.id == run.metadata.id))
        .map(|(who, _)| *who)
        .collect();
    assert_eq!(a_run_adopters.len(), 1, "adopted once: {a_run_adopters:?}");
    assert!(store.runs_owned_by("a").await.expect("owned").is_empty());
    let names: Vec<String> = store
        .list_replicas()
        .await
        .expect("list")
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert!(
        !names.contains(&"a".to_string()),
        "a is forgotten: {names:?}"
    );
}

pub async fn ended_runs_are_never_adopted(store: Arc<dyn Store>) {
    store
        .ensure_project("demo", "alice")
        .await
        .expect("project");
    let t0 = now();
    store
        .renew_replica_lease("a", t0 + TimeDelta::seconds(1))
        .await
        .expect("lease");
    let run = RunBuilder::new("demo", "train").ready().build();
    let run = store.create_run(run, None).await.expect("create").value;
    let mut claim = request(&run, RunState::Ready, 1, RunState::Pending);
    claim.owner = Some("a".to_string());
    store.transition(claim).await.expect("claim");
    store
        .transition(request(&run, RunState::Pending, 1, RunState::Running))
        .await
        .expect("start");
    store
        .transition(request(&run, RunState::Running, 1, RunState::Completed))
        .await
        .expect("end");
    let adopted = store
        .adopt_orphaned_runs("b", t0 + TimeDelta::seconds(60))
        .await
        .expect("adopt");
    assert!(adopted.is_empty(), "{adopted:?}");
}

pub async fn claims_never_exceed_a_task_limit(store: Arc<dyn Store>) {
    store
        .ensure_project("demo", "alice")
        .await
        .expect("project");
    let mut runs = Vec::new();
    for _ in 0..6 {
        let run = RunBuilder::new("demo", "train")
            .task("nightly")
            .ready()
            .build();
        runs.push(store.create_run(run, None).await.expect("create").value);
    }
    // Another task's runs do not count.
    let other = RunBuilder::new("demo", "train")
        .task("other")
        .state(RunState::Running)
        .build();
    store.create_run(other, None).await.expect("other");
    let limit = crate::TaskLimit {
        project: "demo".into(),
        task: "nightly".into(),
        max_active: 2,
    };
    // Six dispatchers race, one claim each: exactly two win.
    let claims = runs.iter().map(|run| {
        let store = store.clone();
        let mut claim = request(run, RunState::Ready, 1, RunState::Pending);
        claim.task_limit = Some(limit.clone());
        tokio::spawn(async move { store.transition(claim).await })
    });
    let mut won = Vec::new();
    for outcome in futures_join(claims).await {
        match outcome {
            Ok(run) => won.push(run),
            Err(crate::StoreError::TaskLimitReached { limit: 2, .. }) => {}
            Err(other) => panic!("unexpected: {other}"),
        }
    }
    assert_eq!(won.len(), 2, "{won:?}");
    // Once one of them ended, one more claim fits.
    let done = &won[0];
    store
        .transition(request(done, RunState::Pending, 1, RunState::Error))
        .await
        .expect("end");
    let waiting: Vec<_> = runs
        .iter()
        .filter(|run| won.iter().all(|w| w.metadata.id != run.metadata.id))
        .collect();
    let mut claim = request(waiting[0], RunState::Ready, 1, RunState::Pending);
    claim.task_limit = Some(limit.clone());
    store.transition(claim).await.expect("a freed slot");
    let mut claim = request(waiting[1], RunState::Ready, 1, RunState::Pending);
    claim.task_limit = Some(limit);
    assert!(matches!(
        store.transition(claim).await,
        Err(crate::StoreError::TaskLimitReached { .. })
    ));
}

async fn futures_join<T>(handles: impl Iterator<Item = tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::new();
    for handle in handles.collect::<Vec<_>>() {
        out.push(handle.await.expect("task"));
    }
    out
}
