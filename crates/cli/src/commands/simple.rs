//! `stop`, `resume`, `delete`.

use crate::client::Client;
use crate::exit::CliError;
use clap::{Args, ValueEnum};
use reqwest::Method;
use serde_json::Value;

use super::get::Kind;

#[derive(Debug, Args)]
pub struct RunRef {
    /// The run's id.
    pub run: String,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    pub kind: Kind,
    pub name: String,
}

fn state_of(run: &Value) -> &str {
    run.pointer("/status/state")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

pub async fn stop(client: &Client, args: RunRef) -> Result<(), CliError> {
    let url = client.project_url(&format!("/runs/{}/stop", args.run));
    let run: Value = client.send_json(client.request(Method::POST, &url)).await?;
    println!("run {} {}", args.run, state_of(&run));
    Ok(())
}

/// `resume RUN` or `resume trigger NAME`.
#[derive(Debug, Args)]
pub struct ResumeArgs {
    /// A run's id, or `trigger` followed by the trigger's name.
    pub target: String,
    pub name: Option<String>,
}

/// `pause trigger NAME`.
#[derive(Debug, Args)]
pub struct PauseArgs {
    /// Always `trigger`: runs are stopped (`stop RUN`), not paused.
    pub kind: Kind,
    pub name: String,
}

pub async fn resume(client: &Client, args: ResumeArgs) -> Result<(), CliError> {
    if let Some(name) = args.name {
        return match Kind::from_str(&args.target, true) {
            Ok(Kind::Triggers) => set_trigger_paused(client, &name, false).await,
            _ => Err(CliError::invalid(format!(
                "resume takes a run id, or `trigger NAME` (not {:?})",
                args.target
            ))),
        };
    }
    let url = client.project_url(&format!("/runs/{}/resume", args.target));
    let run: Value = client.send_json(client.request(Method::POST, &url)).await?;
    println!(
        "run {} {} (attempt {})",
        args.target,
        state_of(&run),
        run.pointer("/status/attempt").unwrap_or(&Value::Null)
    );
    Ok(())
}

pub async fn pause(client: &Client, args: PauseArgs) -> Result<(), CliError> {
    match args.kind {
        Kind::Triggers => set_trigger_paused(client, &args.name, true).await,
        Kind::Runs => Err(CliError::invalid(
            "runs are not paused: `stop RUN`, then `resume RUN` starts a new attempt",
        )),
        _ => Err(CliError::invalid("only triggers can be paused")),
    }
}

async fn set_trigger_paused(client: &Client, name: &str, paused: bool) -> Result<(), CliError> {
    let verb = if paused { "pause" } else { "resume" };
    let url = client.project_url(&format!("/triggers/{name}/{verb}"));
    let trigger: Value = client.send_json(client.request(Method::POST, &url)).await?;
    let next = trigger
        .pointer("/status/next_fire")
        .and_then(Value::as_str)
        .map(|next| format!(", next fire {next}"))
        .unwrap_or_default();
    println!(
        "trigger {name} {}{}",
        if paused { "paused" } else { "resumed" },
        if paused { String::new() } else { next }
    );
    Ok(())
}

pub async fn delete(client: &Client, args: DeleteArgs) -> Result<(), CliError> {
    let path = match args.kind {
        Kind::Functions => format!("/functions/{}", args.name),
        Kind::Workflows => format!("/workflows/{}", args.name),
        Kind::Triggers => format!("/triggers/{}", args.name),
        Kind::Tasks => format!("/tasks/{}", args.name),
        Kind::Runs => format!("/runs/{}", args.name),
        Kind::Services => format!("/services/{}", args.name),
        Kind::Secrets => format!("/secrets/{}", args.name),
        Kind::Artifacts => format!("/artifacts/{}", args.name),
        _ => return Err(CliError::invalid("projects cannot be deleted yet")),
    };
    client
        .send(client.request(Method::DELETE, &client.project_url(&path)))
        .await?;
    println!("{} {} deleted", singular(args.kind), args.name);
    Ok(())
}

fn singular(kind: Kind) -> &'static str {
    match kind {
        Kind::Functions => "function",
        Kind::Workflows => "workflow",
        Kind::Triggers => "trigger",
        Kind::Tasks => "task",
        Kind::Services => "service",
        Kind::Secrets => "secret",
        Kind::Artifacts => "artifact",
        _ => "run",
    }
}
