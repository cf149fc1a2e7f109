use super::*;
use serde_json::json;

fn spec(value: Value) -> WorkflowSpec {
    serde_json::from_value(value).expect("a workflow spec")
}

fn child(id: &str, state: RunState, results: Value) -> Child {
    Child {
        run_id: id.to_string(),
        state,
        results: Some(results),
        artifacts: BTreeMap::new(),
        message: None,
        service_url: None,
    }
}

fn decide_with(
    spec: &WorkflowSpec,
    params: Value,
    children: &[(&str, Child)],
    stopping: bool,
) -> Decision {
    let params = params.as_object().cloned().unwrap_or_default();
    let children: BTreeMap<String, Child> = children
        .iter()
        .map(|(name, c)| (name.to_string(), c.clone()))
        .collect();
    decide(&Inputs {
        workflow_run_id: "wf",
        plan: &Plan::new(spec.clone()),
        params: &params,
        children: &children,
        reused: &BTreeMap::new(),
        start_errors: &BTreeMap::new(),
        stopping,
    })
}

fn started(decision: &Decision) -> Vec<&str> {
    decision.starts.iter().map(|s| s.node.as_str()).collect()
}

fn state_of(decision: &Decision, node: &str) -> NodeState {
    decision
        .status
        .nodes
        .iter()
        .find(|n| n.name == node)
        .map(|n| n.state)
        .unwrap_or_else(|| panic!("no node {node} in {:?}", decision.status))
}

fn diamond() -> WorkflowSpec {
    spec(json!({
        "parameters": {"n": {"default": 2}},
        "steps": [
            {"name": "a", "function": "f", "parameters": {"x": "${{ params.n }}"}},
            {"name": "b", "function": "f", "parameters": {"x": "${{ steps.a.results.y }}"}},
            {"name": "c", "function": "f", "depends_on": ["a"]},
            {"name": "d", "function": "f", "parameters": {"sum": "${{ steps.b.results.y + steps.c.results.y }}"}},
        ]
    }))
}

#[test]
fn a_diamond_runs_in_dependency_order_with_rendered_parameters() {
    let spec = diamond();
    let first = decide_with(&spec, json!({"n": 5}), &[], false);
    assert_eq!(started(&first), ["a"]);
    assert_eq!(first.starts[0].request.parameters["x"], json!(5));
    assert_eq!(first.starts[0].request.labels[WORKFLOW_LABEL], "wf");
    assert_eq!(state_of(&first, "d"), NodeState::Waiting);
    assert_eq!(first.outcome, None);

    let a = child("ra", RunState::Completed, json!({"y": 10}));
    let second = decide_with(&spec, json!({"n": 5}), &[("a", a.clone())], false);
    assert_eq!(started(&second), ["b", "c"]);
    assert_eq!(second.starts[0].request.parameters["x"], json!(10));

    let b = child("rb", RunState::Completed, json!({"y": 1}));
    let c = child("rc", RunState::Completed, json!({"y": 2}));
    let third = decide_with(
        &spec,
        json!({}),
        &[("a", a.clone()), ("b", b.clone()), ("c", c.clone())],
        false,
    );
    assert_eq!(started(&third), ["d"]);
    assert_eq!(third.starts[0].request.parameters["sum"], json!(3));

    let d = child("rd", RunState::Completed, json!("done"));
    let last = decide_with(
        &spec,
        json!({}),
        &[("a", a), ("b", b), ("c", c), ("d", d)],
        false,
    );
    assert!(last.starts.is_empty());
    assert_eq!(
        last.outcome,
        Some(Outcome::Completed(
            json!({"steps": {"a": {"y": 10}, "b": {"y": 1}, "c": {"y": 2}, "d": "done"}})
        ))
    );
}

#[test]
fn running_nodes_are_not_started_again() {
    let spec = diamond();
    let a = child("ra", RunState::Running, Value::Null);
    let decision = decide_with(&spec, json!({}), &[("a", a)], false);
    assert!(decision.starts.is_empty());
    assert_eq!(decision.active_runs, ["ra"]);
}

#[test]
fn for_each_fans_out_within_its_parallelism_and_collects_results_in_order() {
    let spec = spec(json!({"steps": [
        {"name": "train", "function": "f", "for_each": [0.1, 0.2, 0.3], "parallelism": 2,
         "parameters": {"lr": "${{ item }}", "i": "${{ index }}"}},
        {"name": "best", "function": "g", "parameters": {"all": "${{ steps.train.results }}"}},
    ]}));
    let first = decide_with(&spec, json!({}), &[], false);
    assert_eq!(started(&first), ["train[0]", "train[1]"]);
    assert_eq!(first.starts[1].request.parameters["lr"], json!(0.2));
    assert_eq!(first.starts[1].request.parameters["i"], json!(1));
    assert_eq!(state_of(&first, "train[2]"), NodeState::Waiting);

    let done0 = child("r0", RunState::Completed, json!(0));
    let run1 = child("r1", RunState::Running, Value::Null);
    let second = decide_with(
        &spec,
        json!({}),
        &[("train[0]", done0.clone()), ("train[1]", run1)],
        false,
    );
    assert_eq!(started(&second), ["train[2]"]);

    let done1 = child("r1", RunState::Completed, json!(1));
    let done2 = child("r2", RunState::Completed, json!(2));
    let third = decide_with(
        &spec,
        json!({}),
        &[
            ("train[0]", done0),
            ("train[1]", done1),
            ("train[2]", done2),
        ],
        false,
    );
    assert_eq!(started(&third), ["best"]);
    assert_eq!(third.starts[0].request.parameters["all"], json!([0, 1, 2]));
}

#[test]
fn a_false_condition_skips_and_later_steps_still_run() {
    let spec = spec(json!({"steps": [
        {"name": "a", "function": "f"},
        {"name": "deploy", "function": "f", "if": "steps.a.results.score > 0.9"},
        {"name": "report", "function": "f", "depends_on": ["deploy"]},
    ]}));
    let a = child("ra", RunState::Completed, json!({"score": 0.5}));
    let decision = decide_with(&spec, json!({}), &[("a", a)], false);
    assert_eq!(state_of(&decision, "deploy"), NodeState::Skipped);
    assert_eq!(started(&decision), ["report"]);
}

#[test]
fn a_failure_starts_nothing_more_and_fails_the_workflow_once_nothing_runs() {
    let spec = spec(json!({"steps": [
        {"name": "a", "function": "f"},
        {"name": "b", "function": "f"},
        {"name": "after-a", "function": "f", "depends_on": ["a"]},
        {"name": "after-b", "function": "f", "depends_on": ["b"]},
    ]}));
    let mut failed = child("ra", RunState::Error, Value::Null);
    failed.message = Some("ZeroDivisionError".into());
    let b = child("rb", RunState::Running, Value::Null);
    let decision = decide_with(&spec, json!({}), &[("a", failed.clone()), ("b", b)], false);
    assert!(decision.starts.is_empty(), "{:?}", decision.starts);
    assert_eq!(state_of(&decision, "after-a"), NodeState::Skipped);
    assert_eq!(decision.outcome, None, "b still runs");

    let b = child("rb", RunState::Completed, json!(1));
    let decision = decide_with(&spec, json!({}), &[("a", failed), ("b", b)], false);
    assert!(decision.starts.is_empty());
    assert_eq!(state_of(&decision, "after-b"), NodeState::Skipped);
    assert_eq!(
        decision.outcome,
        Some(Outcome::Failed("step a failed: ZeroDivisionError".into()))
    );
}

#[test]
fn an_optional_failure_does_not_fail_the_workflow() {
    let spec = spec(json!({"steps": [
        {"name": "a", "function": "f", "optional": true},
        {"name": "b", "function": "f", "depends_on": ["a"]},
    ]}));
    let a = child("ra", RunState::Error, Value::Null);
    let decision = decide_with(&spec, json!({}), &[("a", a.clone())], false);
    assert_eq!(started(&decision), ["b"]);
    let b = child("rb", RunState::Completed, json!(2));
    let decision = decide_with(&spec, json!({}), &[("a", a), ("b", b)], false);
    assert!(matches!(decision.outcome, Some(Outcome::Completed(_))));
}

#[test]
fn a_bad_expression_fails_its_node_with_the_field() {
    let spec = spec(json!({"steps": [
        {"name": "a", "function": "f"},
        {"name": "b", "function": "f", "parameters": {"x": "${{ steps.a.results.missing }}"}},
    ]}));
    let a = child("ra", RunState::Completed, json!({"y": 1}));
    let decision = decide_with(&spec, json!({}), &[("a", a)], false);
    assert_eq!(state_of(&decision, "b"), NodeState::Failed);
    let Some(Outcome::Failed(message)) = &decision.outcome else {
        panic!("{:?}", decision.outcome);
    };
    assert!(message.contains("parameters.x"), "{message}");
}

#[test]
fn a_stopping_workflow_starts_nothing_and_ends_when_nothing_runs() {
    let spec = diamond();
    let a = child("ra", RunState::Running, Value::Null);
    let decision = decide_with(&spec, json!({}), &[("a", a)], true);
    assert!(decision.starts.is_empty());
    assert_eq!(decision.active_runs, ["ra"]);
    assert_eq!(decision.outcome, None);
    let a = child("ra", RunState::Stopped, Value::Null);
    let decision = decide_with(&spec, json!({}), &[("a", a)], true);
    assert_eq!(decision.outcome, Some(Outcome::Stopped));
    assert_eq!(state_of(&decision, "d"), NodeState::Skipped);
}

#[test]
fn the_workflow_parallelism_caps_every_step() {
    let spec = spec(json!({"parallelism": 1, "steps": [
        {"name": "a", "function": "f"},
        {"name": "b", "function": "f"},
    ]}));
    let decision = decide_with(&spec, json!({}), &[], false);
    assert_eq!(started(&decision), ["a"]);
}

#[test]
fn order_rejects_cycles() {
    let spec = spec(json!({"steps": [
        {"name": "a", "function": "f", "depends_on": ["b"]},
        {"name": "b", "function": "f", "parameters": {"x": "${{ steps.a.results }}"}},
    ]}));
    let plan = Plan::new(spec);
    assert!(plan.order.is_err());
    let decision = decide_with(plan.spec(), json!({}), &[], false);
    assert!(
        matches!(&decision.outcome, Some(Outcome::Failed(why)) if why.contains("cycle")),
        "{:?}",
        decision.outcome
    );
}

#[test]
fn reused_nodes_keep_their_results_and_only_the_rest_runs() {
    let spec = diamond();
    let params = Map::new();
    let reused: BTreeMap<String, Child> = [
        (
            "a".to_string(),
            child("old-a", RunState::Completed, json!({"y": 10})),
        ),
        (
            "b".to_string(),
            child("old-b", RunState::Completed, json!({"y": 1})),
        ),
    ]
    .into();
    let decision = decide(&Inputs {
        workflow_run_id: "wf2",
        plan: &Plan::new(spec.clone()),
        params: &params,
        children: &BTreeMap::new(),
        reused: &reused,
        start_errors: &BTreeMap::new(),
        stopping: false,
    });
    assert_eq!(started(&decision), ["c"]);
    assert_eq!(state_of(&decision, "a"), NodeState::Reused);
    let a = decision
        .status
        .nodes
        .iter()
        .find(|n| n.name == "a")
        .unwrap();
    assert_eq!(a.reused_from.as_deref(), Some("old-a"));
}
