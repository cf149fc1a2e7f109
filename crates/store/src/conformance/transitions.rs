//! The compare-and-set on (state, attempt), and wait reasons.

use super::{request, stored_ready_run, RunBuilder};
use crate::{AttemptUpdate, Store, StoreError};
use runplane_domain::{Attempt, RunState, Transition};
use serde_json::json;
use std::sync::Arc;
use tokio::sync::Barrier;

fn dispatched() -> Option<AttemptUpdate> {
    Some(AttemptUpdate::Dispatched {
        framework: "local".to_string(),
    })
}

pub async fn transition_happy_path(store: Arc<dyn Store>) {
    let run = stored_ready_run(store.as_ref()).await;
    let id = &run.metadata.id;

    let mut pending = request(&run, RunState::Ready, 1, RunState::Pending).reason("dispatched");
    pending.attempt_update = dispatched();
    let after = store.transition(pending.clone()).await.expect("dispatch");
    assert_eq!(after.status.state, RunState::Pending);
    assert_eq!(after.status.reason.as_deref(), Some("dispatched"));
    assert_eq!(after.metadata.updated, pending.at);
    assert_eq!(
        after.status.attempts,
        [Attempt {
            number: 1,
            framework: "local".to_string(),
            dispatched: pending.at,
            started: None,
            ended: None,
            exit_code: None,
            signal: None,
            reason: None,
        }]
    );

    let mut running = request(&run, RunState::Pending, 1, RunState::Running);
    running.attempt_update = Some(AttemptUpdate::Started);
    let after = store.transition(running.clone()).await.expect("start");
    assert_eq!(after.status.state, RunState::Running);
    assert_eq!(
        after.status.reason, None,
        "each state carries its own reason"
    );
    assert_eq!(after.status.attempts[0].started, Some(running.at));

    let mut completed = request(&run, RunState::Running, 1, RunState::Completed)
        .reason("succeeded")
        .message("all good");
    completed.results = Some(json!({ "greeting": "hello world" }));
    completed.attempt_update = Some(AttemptUpdate::Ended {
        exit_code: Some(0),
        signal: None,
        reason: Some("succeeded".to_string()),
    });
    let after = store.transition(completed.clone()).await.expect("complete");

    let stored = store
        .get_run("demo", id)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(stored, after, "transition returns the run as stored");
    assert_eq!(stored.status.state, RunState::Completed);
    assert_eq!(stored.status.attempt, 1);
    assert_eq!(stored.status.reason.as_deref(), Some("succeeded"));
    assert_eq!(stored.status.message.as_deref(), Some("all good"));
    assert_eq!(stored.status.results, completed.results);
    assert_eq!(stored.metadata.updated, completed.at);
    assert_eq!(stored.metadata.created, run.metadata.created);
    assert_eq!(stored.spec, run.spec);
    let attempt = &stored.status.attempts[0];
    assert_eq!(attempt.ended, Some(completed.at));
    assert_eq!(attempt.exit_code, Some(0));
    assert_eq!(attempt.reason.as_deref(), Some("succeeded"));

    let mut expected = run.status.transitions.clone();
    expected.extend([
        Transition {
            from: Some(RunState::Ready),
            to: RunState::Pending,
            at: pending.at,
            attempt: 1,
            reason: Some("dispatched".to_string()),
            message: None,
        },
        Transition {
            from: Some(RunState::Pending),
            to: RunState::Running,
            at: running.at,
            attempt: 1,
            reason: None,
            message: None,
        },
        Transition {
            from: Some(RunState::Running),
            to: RunState::Completed,
            at: completed.at,
            attempt: 1,
            reason: Some("succeeded".to_string()),
            message: Some("all good".to_string()),
        },
    ]);
    assert_eq!(stored.status.transitions, expected);

    // Results are kept by a later transition that brings none.
    let deleting = request(&run, RunState::Completed, 1, RunState::Deleting).reason("user");
    let after = store.transition(deleting).await.expect("delete");
    assert_eq!(after.status.results, completed.results);
}

pub async fn transition_conflict_reports_current_state(store: Arc<dyn Store>) {
    let run = stored_ready_run(store.as_ref()).await;

    // Wrong state.
    match store
        .transition(request(&run, RunState::Pending, 1, RunState::Running))
        .await
    {
        Err(StoreError::Conflict {
            run_id,
            expected_state,
            expected_attempt,
            current_state,
            current_attempt,
        }) => {
            assert_eq!(run_id, run.metadata.id);
            assert_eq!((expected_state, expected_attempt), (RunState::Pending, 1));
            assert_eq!((current_state, current_attempt), (RunState::Ready, 1));
        }
        other => panic!("expected Conflict, got {other:?}"),
    }
    // Right state, wrong attempt.
    match store
        .transition(request(&run, RunState::Ready, 2, RunState::Pending))
        .await
    {
        Err(StoreError::Conflict {
            current_state: RunState::Ready,
            current_attempt: 1,
            ..
        }) => {}
        other => panic!("expected Conflict, got {other:?}"),
    }
    let stored = store
        .get_run("demo", &run.metadata.id)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(stored, run, "a lost compare-and-set changes nothing");
}

pub async fn transition_illegal_changes_nothing(store: Arc<dyn Store>) {
    store
        .ensure_project("demo", "alice")
        .await
        .expect("project");
    let run = RunBuilder::new("demo", "hello")
        .ready()
        .state(RunState::Pending)
        .state(RunState::Running)
        .state(RunState::Completed)
        .build();
    store.create_run(run.clone(), None).await.expect("create");
    for (from, to) in [
        (RunState::Completed, RunState::Running),
        (RunState::Completed, RunState::Ready),
        (RunState::Deleted, RunState::Ready),
        (RunState::Running, RunState::Created),
    ] {
        match store.transition(request(&run, from, 1, to)).await {
            Err(StoreError::IllegalTransition(illegal)) => {
                assert_eq!((illegal.from, illegal.to), (from, to));
            }
            other => panic!("expected IllegalTransition for {from} -> {to}, got {other:?}"),
        }
    }
    let stored = store
        .get_run("demo", &run.metadata.id)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(stored, run);
}

pub async fn transition_retry_records_a_second_attempt(store: Arc<dyn Store>) {
    let run = stored_ready_run(store.as_ref()).await;

    let mut first = request(&run, RunState::Ready, 1, RunState::Pending);
    first.attempt_update = dispatched();
    store.transition(first).await.expect("dispatch 1");
    let mut start = request(&run, RunState::Pending, 1, RunState::Running);
    start.attempt_update = Some(AttemptUpdate::Started);
    store.transition(start).await.expect("start 1");

    // Attempt 1 fails with retries left: back to the queue as attempt 2.
    let mut retry = request(&run, RunState::Running, 1, RunState::Ready).reason("retrying");
    retry.next_attempt = Some(2);
    retry.attempt_update = Some(AttemptUpdate::Ended {
        exit_code: Some(1),
        signal: None,
        reason: Some("failed".to_string()),
    });
    let after = store.transition(retry.clone()).await.expect("retry");
    assert_eq!(
        (after.status.state, after.status.attempt),
        (RunState::Ready, 2)
    );
    let last = after.status.transitions.last().expect("a transition");
    assert_eq!(
        (last.from, last.to, last.attempt),
        (Some(RunState::Running), RunState::Ready, 2)
    );
    assert_eq!(after.status.attempts.len(), 1);
    assert_eq!(
        after.status.attempts[0].ended,
        Some(retry.at),
        "attempt 1 ended"
    );
    assert_eq!(after.status.attempts[0].exit_code, Some(1));

    // The old attempt number no longer matches.
    let stale = request(&run, RunState::Ready, 1, RunState::Pending);
    assert!(matches!(
        store.transition(stale).await,
        Err(StoreError::Conflict {
            current_attempt: 2,
            ..
        })
    ));

    let mut second = request(&run, RunState::Ready, 2, RunState::Pending);
    second.attempt_update = Some(AttemptUpdate::Dispatched {
        framework: "engine".to_string(),
    });
    let after = store.transition(second.clone()).await.expect("dispatch 2");
    let numbers: Vec<u32> = after.status.attempts.iter().map(|a| a.number).collect();
    assert_eq!(numbers, [1, 2]);
    let attempt2 = &after.status.attempts[1];
    assert_eq!(attempt2.framework, "engine");
    assert_eq!(attempt2.dispatched, second.at);
    assert_eq!((attempt2.started, attempt2.ended), (None, None));
    assert_eq!(
        after.status.attempts[0].exit_code,
        Some(1),
        "attempt 1 is untouched"
    );
}

pub async fn transition_of_unknown_run_is_not_found(store: Arc<dyn Store>) {
    store
        .ensure_project("demo", "alice")
        .await
        .expect("project");
    let ghost = RunBuilder::new("demo", "hello").ready().build();
    match store
        .transition(request(&ghost, RunState::Ready, 1, RunState::Pending))
        .await
    {
        Err(StoreError::NotFound(_)) => {}
        other => panic!("expected NotFound, got {other:?}"),
    }
}

pub async fn run_state_follows_transitions(store: Arc<dyn Store>) {
    let run = stored_ready_run(store.as_ref()).await;
    let id = &run.metadata.id;
    assert_eq!(
        store.run_state(id).await.expect("state"),
        Some((RunState::Ready, run.status.attempt))
    );
    store
        .transition(request(
            &run,
            RunState::Ready,
            run.status.attempt,
            RunState::Pending,
        ))
        .await
        .expect("claim");
    assert_eq!(
        store.run_state(id).await.expect("state"),
        Some((RunState::Pending, run.status.attempt))
    );
    assert_eq!(store.run_state("no-such-run").await.expect("state"), None);
}

/// Two dispatchers claim the same READY run at the same moment, 50 times over: exactly one
/// wins each time, the other sees a Conflict, and one transition is recorded.
pub async fn transition_race_has_one_winner(store: Arc<dyn Store>) {
    store
        .ensure_project("demo", "alice")
        .await
        .expect("project");
    for round in 0..50 {
        let run = RunBuilder::new("demo", "hello").ready().build();
        store.create_run(run.clone(), None).await.expect("create");
        let barrier = Arc::new(Barrier::new(2));
        let contenders = ["local", "engine"].map(|framework| {
            let store = store.clone();
            let barrier = barrier.clone();
            let mut claim = request(&run, RunState::Ready, 1, RunState::Pending);
            claim.attempt_update = Some(AttemptUpdate::Dispatched {
                framework: framework.to_string(),
            });
            tokio::spawn(async move {
                barrier.wait().await;
                store.transition(claim).await
            })
        });
        let mut winners = Vec::new();
        for contender in contenders {
            match contender.await.expect("join") {
                Ok(run) => winners.push(run),
                Err(StoreError::Conflict {
                    current_state: RunState::Pending,
                    current_attempt: 1,
                    ..
                }) => {}
                Err(other) => panic!("round {round}: unexpected error {other}"),
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: exactly one claim wins");
        let stored = store
            .get_run("demo", &run.metadata.id)
            .await
            .expect("get")
            .expect("exists");
        assert_eq!(stored, winners[0], "round {round}");
        let claims = stored
            .status
            .transitions
            .iter()
            .filter(|t| t.to == RunState::Pending)
            .count();
        assert_eq!(claims, 1, "round {round}: one transition recorded");
        assert_eq!(
            stored.status.attempts.len(),
            1,
            "round {round}: one attempt"
        );
    }
}

pub async fn set_wait_reason_is_not_a_transition(store: Arc<dyn Store>) {
    let run = stored_ready_run(store.as_ref()).await;
    let id = &run.metadata.id;

    assert!(store
        .set_wait_reason(
            id,
            RunState::Ready,
            1,
            Some("concurrency_limit"),
            Some("3 runs ahead")
        )
        .await
        .expect("set"));
    let stored = store
        .get_run("demo", id)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(stored.status.reason.as_deref(), Some("concurrency_limit"));
    assert_eq!(stored.status.message.as_deref(), Some("3 runs ahead"));
    assert_eq!(stored.status.state, RunState::Ready);
    assert_eq!(
        stored.status.transitions, run.status.transitions,
        "no transition added"
    );

    // Not in that state, or not that attempt: nothing changes.
    assert!(!store
        .set_wait_reason(id, RunState::Pending, 1, Some("nope"), None)
        .await
        .expect("set"));
    assert!(!store
        .set_wait_reason(id, RunState::Ready, 2, Some("nope"), None)
        .await
        .expect("set"));
    assert!(!store
        .set_wait_reason("no-such-run", RunState::Ready, 1, Some("nope"), None)
        .await
        .expect("set"));
    let stored = store
        .get_run("demo", id)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(stored.status.reason.as_deref(), Some("concurrency_limit"));

    assert!(store
        .set_wait_reason(id, RunState::Ready, 1, None, None)
        .await
        .expect("clear"));
    let stored = store
        .get_run("demo", id)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(stored.status.reason, None);
    assert_eq!(stored.status.message, None);
    assert_eq!(
        stored.status.transitions.len(),
        run.status.transitions.len()
    );

    // The claim still works with the reason set (the CAS looks at state and attempt only).
    store
        .set_wait_reason(id, RunState::Ready, 1, Some("waiting"), None)
        .await
        .expect("set");
    let claim = request(&run, RunState::Ready, 1, RunState::Pending);
    let after = store.transition(claim).await.expect("claim");
    assert_eq!(after.status.reason, None);
}
