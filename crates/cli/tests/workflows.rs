//! Workflows end to end: the real binary, real Python steps, the workflow engine creating one
//! run per node.

mod support;

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;
use support::*;

fn workflow(server: &TestServer, name: &str, spec: Value) {
    let (status, body) = server.post(
        "/projects/p/functions",
        &json!({"kind": "pipeline", "metadata": {"name": name}, "spec": spec}),
    );
    assert_eq!(status, 201, "{body}");
}

/// The runs the workflow run started, by node name (`step` or `step[i]`).
fn steps_of(server: &TestServer, id: &str) -> BTreeMap<String, Vec<Value>> {
    let (status, list) = server.get(&format!("/projects/p/runs?step_of={id}&limit=1000"));
    assert_eq!(status, 200, "{list}");
    let mut by_node: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for run in list["items"].as_array().expect("items") {
        let step_of = &run["status"]["step_of"];
        assert_eq!(step_of["run_id"], id);
        let node = match step_of["index"].as_u64() {
            Some(i) => format!("{}[{i}]", step_of["step"].as_str().unwrap()),
            None => step_of["step"].as_str().unwrap().to_string(),
        };
        by_node.entry(node).or_default().push(run.clone());
    }
    by_node
}

fn node_states(run: &Value) -> BTreeMap<String, String> {
    run["status"]["workflow"]["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| {
            (
                n["name"].as_str().unwrap().to_string(),
                n["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn states(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(n, s)| (n.to_string(), s.to_string()))
        .collect()
}

#[test]
fn a_diamond_passes_results_along_and_records_every_node() {
    let server = TestServer::start();
    function(&server, "double", "def handler(x):\n    return x * 2\n");
    function(
        &server,
        "add",
        "def handler(a, b):\n    return {'sum': a + b}\n",
    );
    workflow(
        &server,
        "diamond",
        json!({
            "parameters": {"n": {"default": 1}},
            "steps": [
                {"name": "a", "function": "double", "parameters": {"x": "${{ params.n }}"}},
                {"name": "b", "function": "double", "parameters": {"x": "${{ steps.a.results }}"}},
                {"name": "c", "function": "double", "parameters": {"x": "${{ steps.a.results + 1 }}"}},
                {"name": "d", "function": "add", "parameters": {"a": "${{ steps.b.results }}", "b": "${{ steps.c.results }}"}},
            ]
        }),
    );
    // The CLI picks the workflow's own action (`pipeline`) and waits for the whole DAG.
    let ran = server.cli(
        "p",
        &["run", "diamond", "-p", "n=3", "--wait", "-o", "json"],
    );
    assert!(
        ran.status.success(),
        "{}\n{}",
        stderr(&ran),
        server.server_log()
    );
    let results: Value = serde_json::from_str(&stdout(&ran)).expect("results");
    // a = 6, b = 12, c = 14, d = 26.
    assert_eq!(results["steps"]["d"], json!({"sum": 26}), "{results}");
    assert_eq!(results["steps"]["a"], 6);

    let (_, runs) = server.get("/projects/p/runs?function=diamond");
    let run = &runs["items"][0];
    assert_eq!(run["kind"], "pipeline+pipeline:run");
    assert_eq!(run["status"]["state"], "COMPLETED");
    assert_eq!(
        node_states(run),
        states(&[
            ("a", "SUCCEEDED"),
            ("b", "SUCCEEDED"),
            ("c", "SUCCEEDED"),
            ("d", "SUCCEEDED")
        ])
    );
    let id = run["metadata"]["id"].as_str().unwrap();
    let steps = steps_of(&server, id);
    assert_eq!(steps.len(), 4);
    for (node, runs) in &steps {
        assert_eq!(runs.len(), 1, "node {node} ran once");
        // Created already claimed by this server (no wait in the dispatcher's queue), with the
        // same record the dispatcher's claim makes.
        let transitions: Vec<(&str, &str)> = runs[0]["status"]["transitions"]
            .as_array()
            .expect("transitions")
            .iter()
            .map(|t| (t["to"].as_str().unwrap(), t["reason"].as_str().unwrap()))
            .collect();
        assert_eq!(
            &transitions[..4],
            &[
                ("CREATED", "submitted"),
                ("BUILT", "submitted"),
                ("READY", "submitted"),
                ("PENDING", "dispatched")
            ],
            "node {node}"
        );
        assert_eq!(
            runs[0]["status"]["transitions"][3]["at"], runs[0]["metadata"]["created"],
            "node {node} was claimed in the transaction that created it"
        );
        assert!(runs[0]["status"]["owner"].is_string(), "{:#}", runs[0]);
        assert_eq!(runs[0]["status"]["attempts"][0]["framework"], "local");
        assert_eq!(runs[0]["metadata"]["labels"]["runplane.io/workflow"], id);
        assert_eq!(
            runs[0]["metadata"]["labels"]["runplane.io/step"],
            node.as_str()
        );
    }
    assert_eq!(
        steps["d"][0]["spec"]["parameters"],
        json!({"a": 12, "b": 14})
    );
    // d started only after b and c ended.
    let ended = |r: &Value| {
        r["status"]["attempts"][0]["ended"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let created = steps["d"][0]["metadata"]["created"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(created >= ended(&steps["b"][0]) && created >= ended(&steps["c"][0]));
}

#[test]
fn for_each_fans_out_within_its_parallelism() {
    let server = TestServer::start();
    function(
        &server,
        "slow",
        "import time\ndef handler(lr):\n    time.sleep(0.6)\n    return {'lr': lr, 'score': 1 - abs(lr - 0.2)}\n",
    );
    function(
        &server,
        "best",
        "def handler(scores):\n    return max(scores, key=lambda s: s['score'])\n",
    );
    workflow(
        &server,
        "sweep",
        json!({"steps": [
            {"name": "train", "function": "slow", "for_each": [0.1, 0.2, 0.3, 0.4], "parallelism": 2,
             "parameters": {"lr": "${{ item }}"}},
            {"name": "pick", "function": "best", "parameters": {"scores": "${{ steps.train.results }}"}},
        ]}),
    );
    let id = submit(&server, json!({"function": "sweep"}));
    let run = wait_run_ended(&server, id.as_str(), Duration::from_secs(60));
    assert_eq!(run["status"]["state"], "COMPLETED", "{run:#}");
    assert_eq!(run["status"]["results"]["steps"]["pick"]["lr"], 0.2);
    assert_eq!(
        run["status"]["results"]["steps"]["train"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["lr"].as_f64().unwrap())
            .collect::<Vec<_>>(),
        [0.1, 0.2, 0.3, 0.4],
        "the items' results in item order"
    );
    let steps = steps_of(&server, &id);
    // Never more than two training runs between their start and their end at once.
    let mut edges = vec![];
    for i in 0..4 {
        let attempt = &steps[&format!("train[{i}]")][0]["status"]["attempts"][0];
        edges.push((attempt["dispatched"].as_str().unwrap().to_string(), 1));
        edges.push((attempt["ended"].as_str().unwrap().to_string(), -1));
    }
    edges.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
    let (mut now, mut most) = (0, 0);
    for (_, delta) in edges {
        now += delta;
        most = most.max(now);
    }
    assert_eq!(most, 2, "parallelism 2 is used and never exceeded");
}

#[test]
fn a_failed_step_fails_the_workflow_and_skips_what_follows() {
    let server = TestServer::start();
    function(
        &server,
        "boom",
        "def handler():\n    raise ValueError('no data')\n",
    );
    function(&server, "ok", "def handler(x=0):\n    return x\n");
    workflow(
        &server,
        "fragile",
        json!({"steps": [
            {"name": "load", "function": "boom"},
            {"name": "after", "function": "ok", "depends_on": ["load"]},
            {"name": "never", "function": "ok", "if": "false"},
            {"name": "maybe", "function": "boom", "optional": true},
        ]}),
    );
    let ran = server.cli("p", &["run", "fragile", "--wait"]);
    assert_eq!(ran.status.code(), Some(1), "{}", stdout(&ran));
    let (_, runs) = server.get("/projects/p/runs?function=fragile");
    let run = &runs["items"][0];
    assert_eq!(run["status"]["state"], "ERROR");
    let message = run["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("step load failed") && message.contains("no data"),
        "{message}"
    );
    assert_eq!(
        node_states(run),
        states(&[
            ("load", "FAILED"),
            ("after", "SKIPPED"),
            ("never", "SKIPPED"),
            ("maybe", "FAILED")
        ])
    );
    let steps = steps_of(&server, run["metadata"]["id"].as_str().unwrap());
    assert!(
        !steps.contains_key("after"),
        "a step after a failure is never created"
    );
    assert!(!steps.contains_key("never"));
}

#[test]
fn a_workflow_that_names_a_missing_function_is_refused() {
    let server = TestServer::start();
    workflow(
        &server,
        "typo",
        json!({"steps": [{"name": "a", "function": "nope"}]}),
    );
    let (status, problem) = server.post("/projects/p/runs", &json!({"function": "typo"}));
    assert_eq!(status, 422, "{problem}");
    assert!(
        problem.to_string().contains("step a: no function nope"),
        "{problem}"
    );
}

#[test]
fn stopping_a_workflow_stops_its_running_steps() {
    let server = TestServer::start();
    function(
        &server,
        "sleepy",
        "import time\ndef handler():\n    time.sleep(60)\n",
    );
    workflow(
        &server,
        "long",
        json!({"steps": [
            {"name": "wait", "function": "sleepy"},
            {"name": "next", "function": "sleepy", "depends_on": ["wait"]},
        ]}),
    );
    let id = submit(&server, json!({"function": "long"}));
    // Its first step is running.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let step = loop {
        if let Some(runs) = steps_of(&server, &id).get("wait") {
            if runs[0]["status"]["state"] == "RUNNING" {
                break runs[0]["metadata"]["id"].as_str().unwrap().to_string();
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            server.server_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let stopped = server.cli("p", &["stop", &id]);
    assert!(stopped.status.success(), "{}", stderr(&stopped));
    let run = wait_run_ended(&server, &id, Duration::from_secs(30));
    assert_eq!(run["status"]["state"], "STOPPED", "{run:#}");
    let (_, step) = server.get(&format!("/projects/p/runs/{step}"));
    assert_eq!(step["status"]["state"], "STOPPED");
    assert_eq!(
        node_states(&run),
        states(&[("wait", "STOPPED"), ("next", "SKIPPED")])
    );
    assert!(!steps_of(&server, &id).contains_key("next"));
}

#[test]
fn a_server_killed_mid_workflow_finishes_it_after_a_restart_with_no_step_run_twice() {
    let mut server = TestServer::start();
    function(
        &server,
        "tick",
        "import time\ndef handler(i):\n    time.sleep(0.8)\n    return i + 1\n",
    );
    workflow(
        &server,
        "chain",
        json!({"steps": [
            {"name": "s1", "function": "tick", "parameters": {"i": 0}},
            {"name": "s2", "function": "tick", "parameters": {"i": "${{ steps.s1.results }}"}},
            {"name": "s3", "function": "tick", "parameters": {"i": "${{ steps.s2.results }}"}},
            {"name": "s4", "function": "tick", "parameters": {"i": "${{ steps.s3.results }}"}},
        ]}),
    );
    let id = submit(&server, json!({"function": "chain"}));
    // Kill it while the second step runs (a step killed between its claim and its start
    // would end `lost`, as any run: at most one start per attempt).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !steps_of(&server, &id)
        .get("s2")
        .is_some_and(|runs| runs[0]["status"]["state"] == "RUNNING")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            server.server_log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    server.kill9();
    std::thread::sleep(Duration::from_millis(1500));
    server.restart(&[]);
    let run = wait_run_ended(&server, &id, Duration::from_secs(60));
    assert_eq!(
        run["status"]["state"],
        "COMPLETED",
        "{run:#}\n{}",
        server.server_log()
    );
    assert_eq!(run["status"]["results"]["steps"]["s4"], 4);
    let steps = steps_of(&server, &id);
    assert_eq!(steps.len(), 4);
    for (node, runs) in steps {
        assert_eq!(runs.len(), 1, "node {node} has exactly one run");
        assert_eq!(runs[0]["status"]["attempts"].as_array().unwrap().len(), 1);
    }
}

#[test]
fn a_rerun_from_failure_runs_only_the_failed_step_and_what_follows() {
    let server = TestServer::start();
    let marker = server.write("broken", "");
    function(&server, "one", "def handler():\n    return 1\n");
    function(
        &server,
        "fragile",
        "import os\ndef handler(marker, x):\n    if os.path.exists(marker):\n        raise RuntimeError('marker present')\n    return x + 1\n",
    );
    workflow(
        &server,
        "flaky",
        json!({"steps": [
            {"name": "prepare", "function": "one"},
            {"name": "side", "function": "one"},
            {"name": "train", "function": "fragile",
             "parameters": {"marker": marker.to_str().unwrap(), "x": "${{ steps.prepare.results }}"}},
            {"name": "report", "function": "fragile",
             "parameters": {"marker": "/nonexistent", "x": "${{ steps.train.results }}"}},
        ]}),
    );
    let first = submit(&server, json!({"function": "flaky"}));
    let run = wait_run_ended(&server, &first, Duration::from_secs(60));
    assert_eq!(run["status"]["state"], "ERROR", "{run:#}");

    // The cause is fixed outside the workflow; the rerun reuses prepare and side.
    std::fs::remove_file(&marker).unwrap();
    let rerun = server.cli(
        "p",
        &["rerun", &first, "--from-failure", "--wait", "-o", "json"],
    );
    assert!(
        rerun.status.success(),
        "{}\n{}",
        stderr(&rerun),
        server.server_log()
    );
    let results: Value = serde_json::from_str(&stdout(&rerun)).expect("results");
    assert_eq!(results["steps"]["report"], 3);

    let (_, runs) = server.get("/projects/p/runs?function=flaky");
    let second = &runs["items"][0];
    assert_eq!(second["status"]["rerun_of"], first.as_str());
    assert_eq!(
        node_states(second),
        states(&[
            ("prepare", "REUSED"),
            ("side", "REUSED"),
            ("train", "SUCCEEDED"),
            ("report", "SUCCEEDED")
        ])
    );
    let first_steps = steps_of(&server, &first);
    let nodes = second["status"]["workflow"]["nodes"].as_array().unwrap();
    let prepare = nodes.iter().find(|n| n["name"] == "prepare").unwrap();
    assert_eq!(
        prepare["reused_from"],
        first_steps["prepare"][0]["metadata"]["id"]
    );
    let second_steps = steps_of(&server, second["metadata"]["id"].as_str().unwrap());
    assert_eq!(
        second_steps.keys().collect::<Vec<_>>(),
        ["report", "train"],
        "only the failed step and what follows it ran again"
    );
    // A completed workflow run is not rerun from a failure.
    let (status, _) = server.post(
        &format!(
            "/projects/p/runs/{}/rerun",
            second["metadata"]["id"].as_str().unwrap()
        ),
        &json!({"from_failure": true}),
    );
    assert_eq!(status, 409);
}

#[test]
fn the_example_pipeline_trains_a_sweep_picks_the_best_and_serves_it() {
    let server = TestServer::start();
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/pipeline/pipeline.yaml"
    );
    let applied = server.cli("p", &["apply", "-f", example]);
    assert!(applied.status.success(), "{}", stderr(&applied));
    assert!(
        stdout(&applied).contains("workflow/linear created"),
        "{}",
        stdout(&applied)
    );

    let listed = server.cli("p", &["get", "workflows"]);
    assert!(stdout(&listed).contains("linear"), "{}", stdout(&listed));
    let (_, functions) = server.get("/projects/p/functions");
    assert!(
        functions
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["kind"] != "pipeline"),
        "functions do not list workflows"
    );

    let ran = server.cli("p", &["run", "linear", "--wait", "-o", "json"]);
    assert!(
        ran.status.success(),
        "{}\n{}",
        stderr(&ran),
        server.server_log()
    );
    let results: Value = serde_json::from_str(&stdout(&ran)).expect("results");
    let best = &results["steps"]["pick"];
    assert_eq!(results["steps"]["train"].as_array().unwrap().len(), 3);
    assert!(best["mse"].as_f64().unwrap() < 0.05, "{results}");
    assert_eq!(
        results["steps"]["deploy"]["service"],
        "/services/p/linear-model/"
    );

    // The run shows every node, the sweep's items included.
    let (_, runs) = server.get("/projects/p/runs?function=linear");
    let id = runs["items"][0]["metadata"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let shown = server.cli("p", &["get", "runs", &id]);
    let table = stdout(&shown);
    for node in [
        "prepare", "train[0]", "train[1]", "train[2]", "pick", "deploy",
    ] {
        assert!(table.contains(node), "{node} missing from\n{table}");
    }

    // The deployed step serves the best model.
    let invoked = server.cli(
        "p",
        &["invoke", "linear-model", "--data", r#"{"x": [1.0]}"#],
    );
    assert!(invoked.status.success(), "{}", stderr(&invoked));
    let answer: Value = serde_json::from_str(&stdout(&invoked)).expect("JSON");
    let y = answer["y"][0].as_f64().unwrap();
    assert!((y - 5.0).abs() < 0.3, "{answer}");
    let deploy = &steps_of(&server, &id)["deploy"][0];
    let stopped = server.cli("p", &["stop", deploy["metadata"]["id"].as_str().unwrap()]);
    assert!(stopped.status.success());
}

#[test]
fn bad_workflows_are_refused_at_apply_with_the_field_and_nothing_stored() {
    let server = TestServer::start();
    for (spec, field) in [
        (
            "steps:\n  - {name: a, function: f, depends_on: [b]}\n  - {name: b, function: f, depends_on: [a]}\n",
            "spec.steps[0].depends_on",
        ),
        (
            "steps:\n  - {name: a, function: f, depends_on: [zz]}\n",
            "spec.steps[0].depends_on[0]",
        ),
        (
            "steps:\n  - {name: a, function: f}\n  - {name: b, function: f, parameters: {x: '${{ steps.a.output }}'}}\n",
            "spec.steps[1].parameters.x",
        ),
        (
            "steps:\n  - {name: a, function: f, parameters: {x: '${{ steps.( }}'}}\n",
            "spec.steps[0].parameters.x",
        ),
    ] {
        let file = server.write("bad.yaml", &format!("kind: pipeline\nmetadata: {{name: bad}}\nspec:\n  {}", spec.replace('\n', "\n  ")));
        let applied = server.cli("p", &["apply", "-f", file.to_str().unwrap()]);
        assert_eq!(applied.status.code(), Some(2), "{spec}: {}", stdout(&applied));
        assert!(stderr(&applied).contains(field), "{field} missing from {}", stderr(&applied));
    }
    let (status, _) = server.get("/projects/p/workflows/bad");
    assert_eq!(status, 404, "nothing was stored");
}

#[test]
fn a_function_and_a_workflow_cannot_share_a_name() {
    let server = TestServer::start();
    function(&server, "same", "def handler():\n    return 1\n");
    let (status, problem) = server.post(
        "/projects/p/workflows",
        &json!({"kind": "pipeline", "metadata": {"name": "same"}, "spec": {"steps": [{"name": "a", "function": "same"}]}}),
    );
    assert_eq!(status, 422, "{problem}");
    assert_eq!(fields(&problem), ["metadata.name"]);
    workflow(
        &server,
        "flow",
        json!({"steps": [{"name": "a", "function": "same"}]}),
    );
    let (status, problem) = server.post(
        "/projects/p/functions",
        &json!({"kind": "python", "metadata": {"name": "flow"}, "spec": {"handler": "handler", "source": {"code": "def handler():\n    pass\n"}}}),
    );
    assert_eq!(status, 422, "{problem}");
    let (status, _) = server.get("/projects/p/functions/flow");
    assert_eq!(status, 404, "a workflow is not a function");
    let (status, _) = server.get("/projects/p/workflows/flow");
    assert_eq!(status, 200);
}

/// The status write an evaluation that created step runs defers (so that it does not hold the
/// store against their claim) still comes when those runs wait in the queue and nothing else
/// wakes the engine.
#[test]
fn a_step_waiting_for_a_slot_shows_in_the_workflow_status() {
    let server = TestServer::start_with(&["--max-concurrent-runs", "1"]);
    function(
        &server,
        "sleepy",
        "import time\ndef handler():\n    time.sleep(60)\n",
    );
    workflow(
        &server,
        "queued",
        json!({"steps": [{"name": "only", "function": "sleepy"}]}),
    );
    let blocker = submit(&server, json!({"function": "sleepy"}));
    server.wait_state("p", &blocker, "RUNNING", Duration::from_secs(30));
    let id = submit(&server, json!({"function": "queued"}));

    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let node = loop {
        let (_, run) = server.get(&format!("/projects/p/runs/{id}"));
        let node = run["status"]["workflow"]["nodes"]
            .as_array()
            .and_then(|nodes| nodes.first().cloned())
            .unwrap_or(Value::Null);
        if node["run_id"].is_string() {
            break node;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the status never named the step's run: {run:#}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(node["state"], "RUNNING", "{node:#}");
    let step = node["run_id"].as_str().unwrap();
    let (_, step_run) = server.get(&format!("/projects/p/runs/{step}"));
    assert_eq!(step_run["status"]["state"], "READY", "{step_run:#}");
    assert_eq!(steps_of(&server, &id)["only"].len(), 1);
    for run in [&id, &blocker] {
        let stopped = server.cli("p", &["stop", run]);
        assert!(stopped.status.success(), "{}", stderr(&stopped));
    }
}
