//! `runplane get runs --watch`: the current table, then one line per run change of the project
//! as the server's `/api/v1/events` stream tells it, resuming after a dropped connection (or a
//! server restart) from the last event id, until Ctrl-C.

use crate::client::{problem_error, Client};
use crate::exit::CliError;
use crate::output::Format;
use eventsource_stream::Eventsource;
use futures::StreamExt;
use reqwest::{Method, Response};
use serde_json::Value;
use std::time::Duration;

/// Consecutive failed reconnects before giving up (with the back-off, about a minute: enough
/// for a server restart).
const MAX_RECONNECTS: u32 = 30;
/// The longest pause between two reconnects.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// What to print of the event stream.
pub struct RunFilter {
    pub function: Option<String>,
    /// Upper-case state names; empty for all.
    pub states: Vec<String>,
}

impl RunFilter {
    fn matches(&self, data: &Value) -> bool {
        let function_ok = self
            .function
            .as_deref()
            .is_none_or(|function| data["function"] == function);
        let state_ok = self.states.is_empty()
            || data["state"]
                .as_str()
                .is_some_and(|state| self.states.iter().any(|s| s == state));
        function_ok && state_ok
    }
}

/// Opens the stream first (its start is fixed when the server answers), then calls
/// `print_current` for the table, then prints changes: none made between the two is lost.
pub async fn watch_runs<F>(
    client: &Client,
    filter: RunFilter,
    format: Format,
    print_current: F,
) -> Result<(), CliError>
where
    F: std::future::Future<Output = Result<(), CliError>>,
{
    let mut last_event_id: Option<String> = None;
    let mut response = connect(client, None).await?;
    print_current.await?;
    if format == Format::Table {
        println!("{:<36}  {:<10}  REASON", "ID", "STATE");
    }
    let mut failures = 0;
    loop {
        let stream = follow(response, &filter, format, &mut last_event_id);
        tokio::select! {
            outcome = stream => outcome?,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
        // The stream dropped: resume after the last id seen (the `ready` event gives one
        // even before the first change).
        response = loop {
            failures += 1;
            if failures > MAX_RECONNECTS {
                return Err(CliError::unavailable("the event stream kept dropping"));
            }
            let pause = (Duration::from_millis(200) * failures).min(MAX_BACKOFF);
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = tokio::signal::ctrl_c() => return Ok(()),
            }
            match connect(client, last_event_id.as_deref()).await {
                Ok(response) => break response,
                // The server refused (4xx): retrying will not help.
                Err(error) if error.exit == crate::exit::Exit::Invalid => return Err(error),
                Err(_) => continue,
            }
        };
        failures = 0;
    }
}

async fn connect(client: &Client, last_event_id: Option<&str>) -> Result<Response, CliError> {
    let mut request = client
        .request(Method::GET, &client.url("/api/v1/events"))
        .query(&[("project", client.project.as_str())]);
    if let Some(id) = last_event_id {
        request = request.header("Last-Event-ID", id);
    }
    let response = request
        .send()
        .await
        .map_err(|error| client.transport_error(error))?;
    if !response.status().is_success() {
        return Err(problem_error(response).await);
    }
    Ok(response)
}

/// Prints run events until the stream ends or breaks; remembers the last id.
async fn follow(
    response: Response,
    filter: &RunFilter,
    format: Format,
    last_event_id: &mut Option<String>,
) -> Result<(), CliError> {
    let mut events = response.bytes_stream().eventsource();
    while let Some(event) = events.next().await {
        let Ok(event) = event else { break };
        if !event.id.is_empty() {
            *last_event_id = Some(event.id.clone());
        }
        let data: Value = serde_json::from_str(&event.data).unwrap_or_default();
        match event.event.as_str() {
            "run" if filter.matches(&data) => print_event(&data, format),
            "error" => {
                return Err(CliError::unavailable(format!(
                    "event stream failed: {}",
                    data["detail"].as_str().unwrap_or(&event.data)
                )))
            }
            _ => {}
        }
    }
    Ok(())
}

fn print_event(data: &Value, format: Format) {
    match format {
        Format::Table => println!(
            "{:<36}  {:<10}  {}",
            data["id"].as_str().unwrap_or_default(),
            data["state"].as_str().unwrap_or_default(),
            data["reason"].as_str().unwrap_or_default()
        ),
        // One compact document per line, for scripts.
        Format::Json | Format::Yaml => println!("{data}"),
    }
}
