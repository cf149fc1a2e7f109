use super::*;
use proptest::prelude::*;
use serde_json::json;

fn parse(value: Value) -> WorkflowSpec {
    serde_json::from_value(value).expect("a workflow spec")
}

fn problems(value: Value) -> Vec<(String, String)> {
    normalize(parse(value))
        .expect_err("invalid")
        .0
        .into_iter()
        .map(|e| (e.field, e.problem))
        .collect()
}

fn one_problem(value: Value) -> (String, String) {
    let all = problems(value);
    assert_eq!(all.len(), 1, "{all:?}");
    all.into_iter().next().unwrap()
}

#[test]
fn references_become_dependencies() {
    let spec = normalize(parse(json!({
        "parameters": {"n": {"default": 1}},
        "steps": [
            {"name": "a", "function": "f", "parameters": {"x": "${{ params.n }}"}},
            {"name": "b", "function": "f:0123456789abcdef", "parameters": {"x": "${{ steps.a.results.y }}"}},
            {"name": "c", "function": "f", "depends_on": ["a"], "if": "steps.b.state == 'SUCCEEDED'",
             "for_each": "${{ steps.a.results }}", "parameters": {"v": "${{ item }}"}, "parallelism": 2},
        ]
    })))
    .expect("valid");
    assert_eq!(spec.steps[1].depends_on, ["a"]);
    assert_eq!(spec.steps[2].depends_on, ["a", "b"]);
}

#[test]
fn unknown_steps_and_fields_are_named_where_they_are() {
    let (field, problem) = one_problem(json!({"steps": [
        {"name": "a", "function": "f", "depends_on": ["zz"]},
    ]}));
    assert_eq!(field, "steps[0].depends_on[0]");
    assert!(problem.contains("no step \"zz\""), "{problem}");

    let (field, problem) = one_problem(json!({"steps": [
        {"name": "a", "function": "f"},
        {"name": "b", "function": "f", "parameters": {"x": "${{ steps.nope.results }}"}},
    ]}));
    assert_eq!(field, "steps[1].parameters.x");
    assert!(problem.contains("no step \"nope\""), "{problem}");

    let (field, problem) = one_problem(json!({"steps": [
        {"name": "a", "function": "f"},
        {"name": "b", "function": "f", "parameters": {"x": "${{ steps.a.output }}"}},
    ]}));
    assert_eq!(field, "steps[1].parameters.x");
    assert!(
        problem.contains("no field \"output\"") && problem.contains("results"),
        "{problem}"
    );

    let (field, problem) = one_problem(json!({"steps": [
        {"name": "a", "function": "f", "parameters": {"x": "${{ params.missing }}"}},
    ]}));
    assert_eq!(field, "steps[0].parameters.x");
    assert!(problem.contains("no parameter \"missing\""), "{problem}");

    let (field, problem) = one_problem(json!({"steps": [
        {"name": "a", "function": "f", "parameters": {"x": "${{ item }}"}},
    ]}));
    assert_eq!(field, "steps[0].parameters.x");
    assert!(problem.contains("for_each"), "{problem}");

    let (field, _) = one_problem(json!({"steps": [
        {"name": "a", "function": "f", "if": "secrets.token"},
    ]}));
    assert_eq!(field, "steps[0].if");
}

#[test]
fn syntax_errors_names_and_numbers_are_checked() {
    let all = problems(json!({"parallelism": 0, "steps": [
        {"name": "A_bad", "function": "f"},
        {"name": "b", "function": "bad name", "parameters": {"x": "${{ steps.( }}"}, "timeout_seconds": 0},
        {"name": "b", "function": "f", "for_each": 3, "retry": {"max_attempts": 0}},
        {"name": "c", "function": "f", "parallelism": 2},
    ]}));
    let fields: Vec<&str> = all.iter().map(|(f, _)| f.as_str()).collect();
    for expected in [
        "parallelism",
        "steps[0].name",
        "steps[1].function",
        "steps[1].parameters.x",
        "steps[1].timeout_seconds",
        "steps[2].name",
        "steps[2].for_each",
        "steps[2].retry.max_attempts",
        "steps[3].parallelism",
    ] {
        assert!(
            fields.contains(&expected),
            "{expected} missing from {all:?}"
        );
    }
    let (field, _) = one_problem(json!({"steps": []}));
    assert_eq!(field, "steps");
}

#[test]
fn cycles_are_spelled_out() {
    let (field, problem) = one_problem(json!({"steps": [
        {"name": "a", "function": "f", "depends_on": ["c"]},
        {"name": "b", "function": "f", "parameters": {"x": "${{ steps.a.results }}"}},
        {"name": "c", "function": "f", "depends_on": ["b"]},
    ]}));
    assert_eq!(field, "steps[0].depends_on");
    assert_eq!(problem, "cycle: a → c → b → a");
    let (_, problem) = one_problem(json!({"steps": [
        {"name": "a", "function": "f", "depends_on": ["a"]},
    ]}));
    assert!(problem.contains("itself"), "{problem}");
}

fn chain(edges: &[(usize, usize)], n: usize) -> Value {
    let steps: Vec<Value> = (0..n)
        .map(|i| {
            let deps: Vec<String> = edges
                .iter()
                .filter(|(to, _)| *to == i)
                .map(|(_, from)| format!("s{from}"))
                .collect();
            json!({"name": format!("s{i}"), "function": "f", "depends_on": deps})
        })
        .collect();
    json!({ "steps": steps })
}

proptest! {
    /// Edges only from a later step to an earlier one: never a cycle, all kept.
    #[test]
    fn acyclic_graphs_are_accepted(n in 2usize..12, raw in proptest::collection::vec((0usize..12, 0usize..12), 0..30)) {
        let edges: Vec<(usize, usize)> = raw
            .into_iter()
            .map(|(a, b)| (a % n, b % n))
            .filter(|(to, from)| from < to)
            .collect();
        let spec = normalize(parse(chain(&edges, n))).expect("acyclic");
        for (to, from) in &edges {
            let dep = format!("s{from}");
            prop_assert!(spec.steps[*to].depends_on.contains(&dep));
        }
    }

    /// One edge back from an earlier step to a later one that (transitively) needs it: a cycle.
    #[test]
    fn a_back_edge_is_a_cycle(n in 2usize..12) {
        let mut edges: Vec<(usize, usize)> = (1..n).map(|i| (i, i - 1)).collect();
        edges.push((0, n - 1));
        let invalid = normalize(parse(chain(&edges, n))).expect_err("cyclic");
        prop_assert!(invalid.0[0].problem.starts_with("cycle: "), "{:?}", invalid);
    }
}

#[test]
fn the_schema_names_every_field_of_a_step() {
    use crate::Runtime;
    let schema = super::super::PipelineRuntime::new().spec_schema();
    let step = &schema["properties"]["steps"]["items"]["properties"];
    let written = serde_json::to_value(parse(json!({"steps": [{
        "name": "a", "function": "f", "action": "job", "task": "t", "parameters": {"x": 1},
        "inputs": {"d": "data"}, "depends_on": ["b"], "if": "true", "for_each": [1],
        "parallelism": 1, "retry": {"max_attempts": 2}, "timeout_seconds": 5, "optional": true,
        "framework": "local"
    }, {"name": "b", "function": "f"}]})))
    .unwrap();
    for field in written["steps"][0].as_object().unwrap().keys() {
        assert!(step.get(field).is_some(), "{field} missing from {schema:#}");
    }
    assert!(schema["required"]
        .as_array()
        .unwrap()
        .contains(&json!("steps")));
}
