//! `runplane logs RUN [-f]`: plain text, or followed over SSE, resuming after a dropped
//! connection from the last event id.

use crate::client::{problem_error, Client};
use crate::exit::CliError;
use clap::Args;
use eventsource_stream::Eventsource;
use futures::StreamExt;
use reqwest::Method;
use serde_json::Value;
use std::io::Write;

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The run's id.
    pub run: String,
    /// Keep printing until the run ends (through its retries, unless --attempt is given).
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// The attempt (default: the current one).
    #[arg(long)]
    pub attempt: Option<u32>,
}

pub async fn run(client: &Client, args: LogsArgs) -> Result<(), CliError> {
    if args.follow {
        follow(client, &args.run, args.attempt).await?;
        return Ok(());
    }
    let mut request = client.request(
        Method::GET,
        &client.project_url(&format!("/runs/{}/logs", args.run)),
    );
    if let Some(attempt) = args.attempt {
        request = request.query(&[("attempt", attempt)]);
    }
    let response = client.send(request).await?;
    let bytes = response
        .bytes()
        .await
        .map_err(|error| client.transport_error(error))?;
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(&bytes);
    Ok(())
}

/// Prints log lines as they come (stdout lines to stdout, stderr lines to stderr) until the
/// run ends; returns the run's final state. Without `attempt` the run's retries are followed
/// too, each announced by a `--- attempt N ---` line on stderr. Reconnects from the last event id if the stream
/// drops before the end.
pub async fn follow(
    client: &Client,
    run_id: &str,
    attempt: Option<u32>,
) -> Result<String, CliError> {
    let url = client.project_url(&format!("/runs/{run_id}/logs"));
    let mut last_event_id: Option<String> = None;
    let mut reconnects = 0;
    loop {
        let mut request = client
            .request(Method::GET, &url)
            .query(&[("follow", "true")]);
        if let Some(attempt) = attempt {
            request = request.query(&[("attempt", attempt)]);
        }
        if let Some(id) = &last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        let response = request
            .send()
            .await
            .map_err(|error| client.transport_error(error))?;
        if !response.status().is_success() {
            return Err(problem_error(response).await);
        }
        let mut events = response.bytes_stream().eventsource();
        while let Some(event) = events.next().await {
            let Ok(event) = event else { break };
            if !event.id.is_empty() {
                last_event_id = Some(event.id.clone());
            }
            let data: Value = serde_json::from_str(&event.data).unwrap_or_default();
            match event.event.as_str() {
                "log" => {
                    let line = data["line"].as_str().unwrap_or_default();
                    if data["stream"] == "stderr" {
                        eprintln!("{line}");
                    } else {
                        println!("{line}");
                    }
                }
                // Following the whole run: its next attempt (a retry) begins.
                "attempt" => eprintln!("--- attempt {} ---", data["attempt"]),
                "end" => return Ok(data["state"].as_str().unwrap_or_default().to_string()),
                "error" => {
                    return Err(CliError::unavailable(format!(
                        "log stream failed: {}",
                        data["detail"].as_str().unwrap_or(&event.data)
                    )))
                }
                _ => {}
            }
        }
        reconnects += 1;
        if reconnects > 5 {
            return Err(CliError::unavailable("the log stream kept dropping"));
        }
        tokio::time::sleep(std::time::Duration::from_millis(200 * reconnects)).await;
    }
}
