//! `stop`, `resume`, `delete`.

use crate::client::Client;
use crate::exit::CliError;
use clap::Args;
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

pub async fn resume(client: &Client, args: RunRef) -> Result<(), CliError> {
    let url = client.project_url(&format!("/runs/{}/resume", args.run));
    let run: Value = client.send_json(client.request(Method::POST, &url)).await?;
    println!(
        "run {} {} (attempt {})",
        args.run,
        state_of(&run),
        run.pointer("/status/attempt").unwrap_or(&Value::Null)
    );
    Ok(())
}

pub async fn delete(client: &Client, args: DeleteArgs) -> Result<(), CliError> {
    if let Some(error) = args.kind.not_yet() {
        return Err(error);
    }
    let path = match args.kind {
        Kind::Functions => format!("/functions/{}", args.name),
        Kind::Workflows => format!("/workflows/{}", args.name),
        Kind::Triggers => format!("/triggers/{}", args.name),
        Kind::Tasks => format!("/tasks/{}", args.name),
        Kind::Runs => format!("/runs/{}", args.name),
        Kind::Services => format!("/services/{}", args.name),
        Kind::Secrets => format!("/secrets/{}", args.name),
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
        _ => "run",
    }
}
