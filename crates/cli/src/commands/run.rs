//! `runplane run NAME` and `runplane rerun RUN`, with `--wait` and `--follow`.

use super::logs;
use crate::client::Client;
use crate::exit::CliError;
use crate::output::Format;
use crate::params;
use clap::Args;
use reqwest::Method;
use serde_json::{json, Map, Value};
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The function: `name` or `name:version`.
    pub name: String,
    /// The action (default: job).
    #[arg(long)]
    pub action: Option<String>,
    /// A parameter, `key=value` (the value is a YAML scalar). Repeatable.
    #[arg(short = 'p', long = "param")]
    pub params: Vec<String>,
    /// A YAML/JSON file with a map of parameters (`-p` overrides it).
    #[arg(long)]
    pub params_file: Option<PathBuf>,
    /// An input artifact, `param=ref` (`name`, `name:version` or a `store://` key): the
    /// handler's parameter `param` receives the artifact's local path. Repeatable.
    #[arg(long = "input")]
    pub inputs: Vec<String>,
    /// The task whose settings to use.
    #[arg(long)]
    pub task: Option<String>,
    /// Where to execute (`local`).
    #[arg(long)]
    pub framework: Option<String>,
    /// A label, `key=value`. Repeatable.
    #[arg(short = 'l', long = "label")]
    pub labels: Vec<String>,
    /// Services: how many replicas (overrides the task's).
    #[arg(long)]
    pub replicas: Option<u32>,
    /// `ENV=SECRET`: set environment variable ENV from the project's secret SECRET
    /// (repeatable; adds to the task's).
    #[arg(long = "secret")]
    pub secrets: Vec<String>,
    #[command(flatten)]
    pub watch: Watch,
}

#[derive(Debug, Args)]
pub struct RerunArgs {
    /// The id of the run to run again.
    pub run: String,
    /// A workflow run that failed or was stopped: reuse its succeeded steps, run the rest.
    #[arg(long)]
    pub from_failure: bool,
    #[command(flatten)]
    pub watch: Watch,
}

#[derive(Debug, Args)]
pub struct Watch {
    /// Wait until the run ends and print its results.
    #[arg(long)]
    pub wait: bool,
    /// Print its logs while it runs, then its results.
    #[arg(long)]
    pub follow: bool,
    /// How to print the run or its results.
    #[arg(short = 'o', long, value_enum, default_value = "yaml")]
    pub output: Format,
}

pub async fn run(client: &Client, args: RunArgs) -> Result<(), CliError> {
    let parameters = params::collect(&args.params, args.params_file.as_deref())?;
    let mut labels = Map::new();
    for pair in &args.labels {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| CliError::invalid(format!("--label {pair:?}: expected key=value")))?;
        labels.insert(key.to_string(), Value::String(value.to_string()));
    }
    let mut secrets = Map::new();
    for pair in &args.secrets {
        let (env, secret) = pair.split_once('=').ok_or_else(|| {
            CliError::invalid(format!("--secret {pair:?}: expected ENV=SECRET_NAME"))
        })?;
        secrets.insert(env.to_string(), Value::String(secret.to_string()));
    }
    let mut inputs = Map::new();
    for pair in &args.inputs {
        match pair.split_once('=') {
            Some((param, reference)) if !param.is_empty() && !reference.is_empty() => {
                inputs.insert(param.to_string(), Value::String(reference.to_string()));
            }
            _ => {
                return Err(CliError::invalid(format!(
                    "--input {pair:?}: expected param=artifact"
                )))
            }
        }
    }
    let mut body = json!({ "function": args.name, "parameters": parameters, "labels": labels });
    if !inputs.is_empty() {
        body["inputs"] = Value::Object(inputs);
    }
    if !secrets.is_empty() {
        body["secrets"] = Value::Object(secrets);
    }
    for (key, value) in [
        ("action", &args.action),
        ("task", &args.task),
        ("framework", &args.framework),
    ] {
        if let Some(value) = value {
            body[key] = Value::String(value.clone());
        }
    }
    if let Some(replicas) = args.replicas {
        body["replicas"] = json!(replicas);
    }
    let run = submit(client, &client.project_url("/runs"), Some(&body)).await?;
    watch(client, run, &args.watch).await
}

pub async fn rerun(client: &Client, args: RerunArgs) -> Result<(), CliError> {
    let body = args.from_failure.then(|| json!({"from_failure": true}));
    let run = submit(
        client,
        &client.project_url(&format!("/runs/{}/rerun", args.run)),
        body.as_ref(),
    )
    .await?;
    watch(client, run, &args.watch).await
}

/// POSTs with an Idempotency-Key, retrying once when the server could not be reached or
/// failed: the key makes sure a retry never creates a second run.
async fn submit(client: &Client, url: &str, body: Option<&Value>) -> Result<Value, CliError> {
    let key = uuid::Uuid::now_v7().to_string();
    let build = || {
        let request = client
            .request(Method::POST, url)
            .header("Idempotency-Key", &key);
        match body {
            Some(body) => request.json(body),
            None => request,
        }
    };
    match client.send_json(build()).await {
        Err(error) if error.exit == crate::exit::Exit::Unavailable => {
            client.send_json(build()).await
        }
        other => other,
    }
}

/// Prints the run (or waits for it and prints its results); exits 1 if it did not complete.
pub async fn watch(client: &Client, run: Value, watch: &Watch) -> Result<(), CliError> {
    let id = run
        .pointer("/metadata/id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    eprintln!(
        "run {id} ({}) {}",
        run["kind"].as_str().unwrap_or_default(),
        run.pointer("/status/state")
            .and_then(Value::as_str)
            .unwrap_or_default()
    );
    if !watch.wait && !watch.follow {
        return crate::output::print(&run, watch.output, &[]);
    }
    if watch.follow {
        logs::follow(client, &id, None).await?;
    }
    if is_service(&run) {
        // A service does not end: `--wait` returns once every replica is ready.
        let run = wait_until(client, &id, "running").await?;
        return report_service(&run, watch.output);
    }
    let run = wait_until_ended(client, &id).await?;
    report(&run, watch.output)
}

/// Service runs are those of a serving action (`python+serve:run`, `container+deploy:run`).
fn is_service(run: &Value) -> bool {
    run.pointer("/spec/action")
        .and_then(Value::as_str)
        .is_some_and(|action| matches!(action, "serve" | "deploy"))
}

pub async fn wait_until_ended(client: &Client, id: &str) -> Result<Value, CliError> {
    wait_until(client, id, "ended").await
}

async fn wait_until(client: &Client, id: &str, until: &str) -> Result<Value, CliError> {
    let url = client.project_url(&format!("/runs/{id}"));
    loop {
        let request = client
            .request(Method::GET, &url)
            .query(&[("wait", "60"), ("until", until)]);
        let run: Value = client.send_json(request).await?;
        let state = run
            .pointer("/status/state")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if matches!(state, "COMPLETED" | "ERROR" | "STOPPED" | "DELETED")
            || (until == "running" && state == "RUNNING")
        {
            return Ok(run);
        }
    }
}

/// A RUNNING service prints where it answers; anything else is a failure (exit 1).
fn report_service(run: &Value, format: Format) -> Result<(), CliError> {
    if run.pointer("/status/state").and_then(Value::as_str) != Some("RUNNING") {
        return report(run, format);
    }
    print_value(run, "/status/service", format)
}

/// Prints one part of a run; a table makes no sense for it, so YAML stands in.
fn print_value(run: &Value, pointer: &str, format: Format) -> Result<(), CliError> {
    let value = run.pointer(pointer).cloned().unwrap_or(Value::Null);
    let format = if format == Format::Table {
        Format::Yaml
    } else {
        format
    };
    crate::output::print(&value, format, &[])
}

/// Prints results of a completed run, or why it did not complete (exit 1).
pub fn report(run: &Value, format: Format) -> Result<(), CliError> {
    let state = run
        .pointer("/status/state")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if state == "COMPLETED" {
        return print_value(run, "/status/results", format);
    }
    let reason = run
        .pointer("/status/reason")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let message = run
        .pointer("/status/message")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let id = run
        .pointer("/metadata/id")
        .and_then(Value::as_str)
        .unwrap_or_default();
    Err(CliError::run_failed(format!(
        "run {id} ended {state} ({reason}){}{message}\n(see `runplane logs {id}`)",
        if message.is_empty() { "" } else { ": " }
    )))
}
