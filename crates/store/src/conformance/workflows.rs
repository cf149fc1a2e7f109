//! Workflow runs: the links of step runs, the node status, and that workflow runs hold no
//! execution slot.

use super::RunBuilder;
use crate::{RunQuery, Store};
use runplane_domain::workflow::{NodeState, NodeStatus, StepOf, WorkflowStatus};
use runplane_domain::{run_kind, RunState};
use std::sync::Arc;

fn workflow_run(project: &str) -> runplane_domain::Run {
    let mut run = RunBuilder::new(project, "flow")
        .state(RunState::Running)
        .build();
    run.kind = run_kind("pipeline", "pipeline");
    run.spec.runtime = "pipeline".into();
    run.spec.action = "pipeline".into();
    run.spec.framework = "workflow".into();
    run
}

pub async fn workflow_links_and_status_round_trip(store: Arc<dyn Store>) {
    store
        .ensure_project("demo", "alice")
        .await
        .expect("project");
    let parent = workflow_run("demo");
    store
        .create_run(parent.clone(), None)
        .await
        .expect("parent");
    let mut step = RunBuilder::new("demo", "train").ready().build();
    step.status.step_of = Some(StepOf {
        run_id: parent.metadata.id.clone(),
        step: "train".into(),
        index: Some(2),
    });
    step.status.produced_by = Some("store://demo/trigger/scheduler/nightly".into());
    step.status.artifacts = [(
        "model".to_string(),
        "store://demo/artifact/file/model:ab".to_string(),
    )]
    .into();
    store.create_run(step.clone(), None).await.expect("step");
    let unrelated = RunBuilder::new("demo", "train").ready().build();
    store.create_run(unrelated, None).await.expect("other");

    let read = store
        .get_run("demo", &step.metadata.id)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(read, step, "links round-trip");
    let children = store
        .list_runs(&RunQuery {
            project: "demo".into(),
            step_of: Some(parent.metadata.id.clone()),
            ..RunQuery::default()
        })
        .await
        .expect("list");
    assert_eq!(children.runs, [step.clone()], "only the workflow's steps");

    let status = WorkflowStatus {
        nodes: vec![NodeStatus {
            name: "train[2]".into(),
            step: "train".into(),
            index: Some(2),
            state: NodeState::Running,
            run_id: Some(step.metadata.id.clone()),
            reused_from: None,
            message: None,
        }],
    };
    let before = store.latest_event_id().await.expect("events");
    assert!(store
        .set_workflow_status(&parent.metadata.id, 1, &status)
        .await
        .expect("set"));
    let read = store
        .get_run("demo", &parent.metadata.id)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(read.status.workflow.as_ref(), Some(&status));
    assert_eq!(read.status.state, RunState::Running, "not a transition");
    let events = store.events_after(before, None, 10).await.expect("events");
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].data["change"], "workflow");
    assert!(
        !store
            .set_workflow_status(&parent.metadata.id, 2, &status)
            .await
            .expect("set"),
        "another attempt's status is refused"
    );
    assert!(!store
        .set_workflow_status("no-such-run", 1, &status)
        .await
        .expect("set"));
}

pub async fn count_active_ignores_workflow_runs(store: Arc<dyn Store>) {
    store
        .ensure_project("demo", "alice")
        .await
        .expect("project");
    store
        .create_run(workflow_run("demo"), None)
        .await
        .expect("workflow");
    store
        .create_run(
            RunBuilder::new("demo", "train")
                .state(RunState::Running)
                .build(),
            None,
        )
        .await
        .expect("step");
    let active = store.count_active().await.expect("count");
    assert_eq!(active.total, 1, "only the step run holds a slot");
}
