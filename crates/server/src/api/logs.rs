//! `/api/v1/projects/{project}/runs/{id}/logs`: a run attempt's log as text, or followed as
//! Server-Sent Events that resume from an offset (`Last-Event-ID` or `?offset=`).
//!
//! Followers read the log store and sleep on the event bus until the framework reports new
//! records or the run changes; a slow fallback tick covers a missed wake-up.

use super::caller::Caller;
use super::problem::Problem;
use super::AppState;
use crate::controller::bus::BusEvent;
use crate::controller::Controller;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use runplane_logstore::{LogChunk, LogRecord};
use serde::{Deserialize, Serialize};
use std::convert::Infallible;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use utoipa_axum::{router::OpenApiRouter, routes};

/// Bytes of log data read per step.
const READ_BYTES: usize = 256 * 1024;
/// A follower re-checks this often even when nothing woke it.
const FALLBACK_TICK: Duration = Duration::from_secs(2);

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_logs))
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct LogParams {
    /// The attempt (default: the run's current attempt).
    attempt: Option<u32>,
    /// Start at this offset (one a previous read returned).
    offset: Option<u64>,
    /// Stream as Server-Sent Events until the run ends.
    #[serde(default)]
    follow: bool,
}

/// One SSE `data` payload of a log line.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LogLine {
    pub offset: u64,
    pub time: chrono::DateTime<chrono::Utc>,
    pub stream: String,
    pub line: String,
}

/// A run attempt's log. Plain text by default (`X-Next-Offset` says where to resume); with
/// `follow=true` an SSE stream: `log` events (id = the offset after the line) until an `end`
/// event once the run has ended.
#[utoipa::path(get, path = "/api/v1/projects/{project}/runs/{id}/logs", params(LogParams),
    responses((status = 200, description = "text/plain, or text/event-stream with follow=true"), (status = 404, body = Problem)))]
async fn get_logs(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, id)): Path<(String, String)>,
    headers: HeaderMap,
    params: Result<Query<LogParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    caller.authorize(&project)?;
    let Query(params) =
        params.map_err(|rejection| Problem::bad_request("query", rejection.body_text()))?;
    let run = state.controller.get_run(&project, &id).await?;
    let attempt = params.attempt.unwrap_or(run.status.attempt);
    let resume_from = headers
        .get("last-event-id")
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.parse::<u64>().ok());
    let offset = resume_from.or(params.offset).unwrap_or(0);
    if params.follow {
        return Ok(follow(state.controller, project, id, attempt, offset).into_response());
    }
    let mut text = Vec::new();
    let mut offset = offset;
    loop {
        let chunk = read(&state.controller, &id, attempt, offset).await?;
        if chunk.records.is_empty() {
            break;
        }
        for record in &chunk.records {
            text.extend_from_slice(&record.data);
            if !record.data.ends_with(b"\n") {
                text.push(b'\n');
            }
        }
        offset = chunk.next_offset;
    }
    let mut response =
        ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response();
    if let Ok(value) = HeaderValue::from_str(&offset.to_string()) {
        response.headers_mut().insert("x-next-offset", value);
    }
    Ok(response)
}

async fn read(
    controller: &Controller,
    run_id: &str,
    attempt: u32,
    offset: u64,
) -> Result<LogChunk, Problem> {
    let logs = controller.logs().clone();
    let run_id = run_id.to_string();
    tokio::task::spawn_blocking(move || logs.read(&run_id, attempt, offset, READ_BYTES))
        .await
        .map_err(|error| {
            Problem::new(
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                error.to_string(),
            )
        })?
        .map_err(|error| match error {
            runplane_logstore::LogError::BadOffset { .. } => {
                Problem::bad_request("offset", error.to_string())
            }
            other => Problem::new(
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                other.to_string(),
            ),
        })
}

fn follow(
    controller: Controller,
    project: String,
    run_id: String,
    attempt: u32,
    offset: u64,
) -> impl IntoResponse {
    let (sender, receiver) = mpsc::channel(64);
    tokio::spawn(async move {
        if let Err(problem) = pump(&controller, &project, &run_id, attempt, offset, &sender).await {
            let data = serde_json::to_string(&problem).unwrap_or_default();
            let _ = sender
                .send(Ok(Event::default().event("error").data(data)))
                .await;
        }
    });
    Sse::new(ReceiverStream::new(receiver)).keep_alive(KeepAlive::default())
}

/// Sends records until the run has ended and its log is read to the end. Returns early when
/// the client goes away.
async fn pump(
    controller: &Controller,
    project: &str,
    run_id: &str,
    attempt: u32,
    mut offset: u64,
    sender: &mpsc::Sender<Result<Event, Infallible>>,
) -> Result<(), Problem> {
    let mut wake = controller.bus().subscribe();
    loop {
        let chunk = read(controller, run_id, attempt, offset).await?;
        if !chunk.records.is_empty() {
            if !send_records(sender, &chunk).await {
                return Ok(());
            }
            offset = chunk.next_offset;
            continue;
        }
        let run = controller.get_run(project, run_id).await?;
        let attempt_over = run.status.attempt != attempt || run.status.state.is_terminal();
        if attempt_over {
            // The framework reports the exit after the last record is written: one more read
            // catches anything appended between our read and the state check.
            let chunk = read(controller, run_id, attempt, offset).await?;
            if !send_records(sender, &chunk).await {
                return Ok(());
            }
            let end = serde_json::json!({ "state": run.status.state, "attempt": attempt });
            let _ = sender
                .send(Ok(Event::default().event("end").data(end.to_string())))
                .await;
            return Ok(());
        }
        tokio::select! {
            _ = wait_for_activity(&mut wake, run_id) => {}
            _ = tokio::time::sleep(FALLBACK_TICK) => {}
            _ = sender.closed() => return Ok(()),
        }
    }
}

async fn wait_for_activity(wake: &mut tokio::sync::broadcast::Receiver<BusEvent>, run_id: &str) {
    loop {
        match wake.recv().await {
            Ok(event) if event.run_id() == run_id => return,
            Ok(_) => continue,
            Err(_) => return,
        }
    }
}

async fn send_records(sender: &mpsc::Sender<Result<Event, Infallible>>, chunk: &LogChunk) -> bool {
    for (index, record) in chunk.records.iter().enumerate() {
        let end_offset = chunk
            .records
            .get(index + 1)
            .map(|next| next.offset)
            .unwrap_or(chunk.next_offset);
        if sender
            .send(Ok(line_event(record, end_offset)))
            .await
            .is_err()
        {
            return false;
        }
    }
    true
}

fn line_event(record: &LogRecord, end_offset: u64) -> Event {
    let text = String::from_utf8_lossy(&record.data);
    let line = LogLine {
        offset: record.offset,
        time: record.time,
        stream: record.stream.as_str().to_string(),
        line: text.strip_suffix('\n').unwrap_or(&text).to_string(),
    };
    Event::default()
        .event("log")
        .id(end_offset.to_string())
        .data(serde_json::to_string(&line).unwrap_or_default())
}
