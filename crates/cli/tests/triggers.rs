//! Triggers end to end: the real binary firing schedulers on the clock, lifecycle triggers on
//! the event log, webhooks on a POST; fires recorded with their runs or errors.

mod support;

use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::*;

fn apply(server: &TestServer, document: Value) -> (u16, Value) {
    server.post("/projects/p/triggers", &document)
}

fn fires(server: &TestServer, name: &str) -> Vec<Value> {
    let (status, fires) = server.get(&format!("/projects/p/triggers/{name}/fires?limit=1000"));
    assert_eq!(status, 200, "{fires}");
    fires.as_array().expect("fires").clone()
}

fn runs_of(server: &TestServer, function: &str) -> Vec<Value> {
    let (_, runs) = server.get(&format!("/projects/p/runs?function={function}&limit=1000"));
    runs["items"].as_array().expect("items").clone()
}

fn wait_until(server: &TestServer, what: &str, within: Duration, done: impl Fn() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "{what}\n{}", server.server_log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn every_second(name: &str, catch_up: &str, template: Value) -> Value {
    json!({"kind": "scheduler", "metadata": {"name": name},
           "spec": {"schedule": "* * * * * *", "catch_up": catch_up, "template": template}})
}

#[test]
fn a_scheduler_fires_each_tick_once_and_pauses() {
    let server = TestServer::start();
    function(&server, "tick", "def handler(at):\n    return at\n");
    let (status, trigger) = apply(
        &server,
        every_second(
            "ticker",
            "skip",
            json!({"function": "tick", "parameters": {"at": "${{ fire.scheduled_time }}"}}),
        ),
    );
    assert_eq!(status, 201, "{trigger}");
    assert!(trigger["status"]["next_fire"].is_string());
    wait_until(&server, "three fires", Duration::from_secs(15), || {
        fires(&server, "ticker").len() >= 3
    });

    let listed = server.cli("p", &["get", "triggers"]);
    assert!(stdout(&listed).contains("ticker"), "{}", stdout(&listed));
    let paused = server.cli("p", &["pause", "trigger", "ticker"]);
    assert!(paused.status.success(), "{}", stderr(&paused));
    assert_eq!(stdout(&paused).trim(), "trigger ticker paused");
    let paused_at = fires(&server, "ticker").len();
    std::thread::sleep(Duration::from_millis(2500));
    assert!(
        fires(&server, "ticker").len() <= paused_at + 1,
        "a paused trigger stops firing"
    );
    let resumed = server.cli("p", &["resume", "trigger", "ticker"]);
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    assert!(
        stdout(&resumed).starts_with("trigger ticker resumed, next fire "),
        "{}",
        stdout(&resumed)
    );
    let wrong = server.cli("p", &["resume", "triggr", "ticker"]);
    assert_eq!(wrong.status.code(), Some(2), "{}", stderr(&wrong));
    let resumed_at = fires(&server, "ticker").len();
    wait_until(
        &server,
        "fires after resume",
        Duration::from_secs(10),
        || fires(&server, "ticker").len() >= resumed_at + 2,
    );

    let fires = fires(&server, "ticker");
    let runs = runs_of(&server, "tick");
    assert_eq!(runs.len(), fires.len(), "one run per fire");
    for run in &runs {
        assert_eq!(
            run["status"]["produced_by"],
            "store://p/trigger/scheduler/ticker"
        );
        // The template read the tick it fired for.
        let fire = fires
            .iter()
            .find(|f| f["run_id"] == run["metadata"]["id"])
            .expect("its fire");
        let tick =
            chrono::DateTime::parse_from_rfc3339(fire["scheduled_for"].as_str().unwrap()).unwrap();
        let given =
            chrono::DateTime::parse_from_rfc3339(run["spec"]["parameters"]["at"].as_str().unwrap())
                .unwrap();
        assert_eq!(tick, given);
    }
    let mut ticks: Vec<&str> = fires
        .iter()
        .map(|f| f["dedup_key"].as_str().unwrap())
        .collect();
    ticks.sort();
    ticks.dedup();
    assert_eq!(ticks.len(), fires.len(), "no tick fired twice");
}

#[test]
fn after_downtime_catch_up_all_fires_every_missed_tick_once_and_skip_none() {
    let mut server = TestServer::start();
    function(&server, "tick", "def handler():\n    return 1\n");
    for (name, policy) in [("all", "all"), ("skip", "skip")] {
        let (status, body) = apply(
            &server,
            every_second(name, policy, json!({"function": "tick"})),
        );
        assert_eq!(status, 201, "{body}");
    }
    wait_until(&server, "first fires", Duration::from_secs(10), || {
        fires(&server, "all").len() >= 2 && fires(&server, "skip").len() >= 2
    });
    server.kill9();
    std::thread::sleep(Duration::from_secs(4));
    server.restart(&[]);
    let before = fires(&server, "all").len();
    wait_until(
        &server,
        "fires after the restart",
        Duration::from_secs(10),
        || fires(&server, "all").len() >= before + 2 && fires(&server, "skip").len() >= 4,
    );
    let seconds = |name: &str| -> Vec<i64> {
        let mut ticks: Vec<i64> = fires(&server, name)
            .iter()
            .map(|f| {
                chrono::DateTime::parse_from_rfc3339(f["scheduled_for"].as_str().unwrap())
                    .unwrap()
                    .timestamp()
            })
            .collect();
        ticks.sort();
        ticks
    };
    let all = seconds("all");
    assert!(
        all.windows(2).all(|w| w[1] - w[0] == 1),
        "catch_up all: every second once, no gap, no repeat: {all:?}"
    );
    let skip = seconds("skip");
    assert!(
        skip.windows(2).all(|w| w[1] > w[0]) && skip.windows(2).any(|w| w[1] - w[0] >= 3),
        "catch_up skip: the downtime's ticks never fire: {skip:?}"
    );
    // Every fire of `all` made exactly one run.
    let made: Vec<Value> = runs_of(&server, "tick")
        .into_iter()
        .filter(|r| r["status"]["produced_by"] == "store://p/trigger/scheduler/all")
        .collect();
    assert_eq!(made.len(), fires(&server, "all").len());
}

#[test]
fn a_lifecycle_trigger_fires_when_a_run_of_its_function_completes() {
    let server = TestServer::start();
    function(&server, "prep", "def handler():\n    return {'rows': 3}\n");
    function(&server, "other", "def handler():\n    return 0\n");
    function(
        &server,
        "after",
        "def handler(source, rows):\n    return rows\n",
    );
    let (status, body) = apply(
        &server,
        json!({"kind": "lifecycle", "metadata": {"name": "chain"}, "spec": {
            "key": "store://p/run/prep/*", "states": ["COMPLETED"],
            "template": {"function": "after", "parameters": {
                "source": "${{ entity.run_id }}", "rows": "${{ entity.results.rows }}"}}}}),
    );
    assert_eq!(status, 201, "{body}");
    let other = submit(&server, json!({"function": "other"}));
    wait_run_ended(&server, &other, Duration::from_secs(30));
    let prep = submit(&server, json!({"function": "prep"}));
    wait_run_ended(&server, &prep, Duration::from_secs(30));
    wait_until(
        &server,
        "the triggered run",
        Duration::from_secs(15),
        || !runs_of(&server, "after").is_empty(),
    );
    let after = runs_of(&server, "after");
    assert_eq!(after.len(), 1, "only prep's run fired it");
    assert_eq!(
        after[0]["spec"]["parameters"],
        json!({"source": prep, "rows": 3})
    );
    assert_eq!(
        after[0]["status"]["produced_by"],
        "store://p/trigger/lifecycle/chain"
    );
}

#[test]
fn a_webhook_fires_with_its_token_and_body_once_per_delivery() {
    let server = TestServer::start();
    function(&server, "ingest", "def handler(n):\n    return n * 2\n");
    let file = server.write(
        "hook.yaml",
        "kind: webhook\nmetadata: {name: hook}\nspec:\n  template: {function: ingest, parameters: {n: '${{ webhook.body.n }}'}}\n",
    );
    let applied = server.cli("p", &["apply", "-f", file.to_str().unwrap()]);
    assert!(applied.status.success(), "{}", stderr(&applied));
    let out = stdout(&applied);
    let token = out
        .lines()
        .find_map(|l| l.strip_prefix("webhook token (shown once): "))
        .expect("the token is shown once")
        .to_string();
    let (_, shown) = server.get("/projects/p/triggers/hook");
    assert!(
        !shown.to_string().contains(&token),
        "the token is never shown again"
    );

    let post = |token: &str, key: &str| {
        server
            .http
            .post(server.api("/projects/p/triggers/hook/webhook"))
            .header("authorization", format!("Bearer {token}"))
            .header("idempotency-key", key)
            .json(&json!({"n": 21}))
            .send()
            .expect("POST")
    };
    assert_eq!(post("wrong", "d1").status().as_u16(), 401);
    let first = post(&token, "d1");
    assert_eq!(first.status().as_u16(), 202);
    let fire: Value = first.json().unwrap();
    let again: Value = post(&token, "d1").json().unwrap();
    assert_eq!(again["id"], fire["id"], "a redelivery is the same fire");
    let run_id = fire["run_id"].as_str().expect("a run").to_string();
    let run = wait_run_ended(&server, &run_id, Duration::from_secs(30));
    assert_eq!(run["status"]["results"], 42);
    assert_eq!(runs_of(&server, "ingest").len(), 1);
    // Re-applying keeps the token working.
    let applied = server.cli("p", &["apply", "-f", file.to_str().unwrap()]);
    assert!(!stdout(&applied).contains("token"), "{}", stdout(&applied));
    assert_eq!(post(&token, "d2").status().as_u16(), 202);
}

#[test]
fn bad_triggers_are_refused_and_a_failing_template_is_recorded_as_a_failed_fire() {
    let server = TestServer::start();
    for (spec, field) in [
        (
            json!({"schedule": "61 * * * *", "template": {"function": "f"}}),
            "spec.schedule",
        ),
        (
            json!({"schedule": "@hourly", "timezone": "Mars/Olympus", "template": {"function": "f"}}),
            "spec.timezone",
        ),
        (
            json!({"schedule": "@daily", "catch_up": "sometimes", "template": {"function": "f"}}),
            "spec.catch_up",
        ),
        (
            json!({"schedule": "@daily", "template": {"function": "f", "parameters": {"x": "${{ webhook.body }}"}}}),
            "spec.template",
        ),
    ] {
        let (status, problem) = apply(
            &server,
            json!({"kind": "scheduler", "metadata": {"name": "bad"}, "spec": spec}),
        );
        assert_eq!(status, 422, "{spec}: {problem}");
        assert!(
            fields(&problem).contains(&field.to_string()),
            "{field} missing from {problem}"
        );
    }
    let (status, _) = server.get("/projects/p/triggers/bad");
    assert_eq!(status, 404, "nothing stored");

    // Renders at fire time only: the function does not exist, the fire records why, the
    // trigger keeps firing.
    let (status, body) = apply(
        &server,
        every_second("broken", "skip", json!({"function": "missing"})),
    );
    assert_eq!(status, 201, "{body}");
    wait_until(&server, "failed fires", Duration::from_secs(10), || {
        fires(&server, "broken").len() >= 2
    });
    let recorded = fires(&server, "broken");
    assert!(recorded.iter().all(|f| f["run_id"].is_null()));
    assert!(
        recorded[0]["error"].as_str().unwrap().contains("missing"),
        "{recorded:?}"
    );
    let (_, trigger) = server.get("/projects/p/triggers/broken");
    assert!(trigger["status"]["failed_fires"].as_u64().unwrap() >= 2);
}
