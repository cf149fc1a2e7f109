//! `/api/v1/projects/{project}/runs/{id}/logs`: a run attempt's log as text, or followed as
//! Server-Sent Events that resume from an offset (`Last-Event-ID` or `?offset=`). Followed
//! without an `attempt`, the stream goes on across the run's retries, attempt after attempt;
//! its event ids are then `<attempt>:<offset>` (a plain offset is still accepted on resume and
//! means the run's current attempt).
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
/// event once the run has ended. Without `attempt`, the stream follows the run's later
/// attempts too: an `attempt` event (`{"attempt": N}`) precedes each one's lines, and ids are
/// `<attempt>:<offset>`.
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
    let resume_from = headers
        .get("last-event-id")
        .and_then(|value| value.to_str().ok())
        .and_then(EventId::parse);
    // An id naming its attempt resumes that attempt; a plain offset is within the requested
    // (or current) attempt.
    let attempt = resume_from
        .and_then(|id| id.attempt)
        .or(params.attempt)
        .unwrap_or(run.status.attempt);
    let offset = resume_from
        .map(|id| id.offset)
        .or(params.offset)
        .unwrap_or(0);
    if params.follow {
        // Without an attempt in the query the whole run is followed, across its retries.
        let across_attempts = params.attempt.is_none();
        return Ok(follow(
            state.controller,
            project,
            id,
            attempt,
            offset,
            across_attempts,
        )
        .into_response());
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

/// An SSE event id: the offset after a line, and, when the stream follows a run across its
/// attempts, the attempt it belongs to (`<attempt>:<offset>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct EventId {
    attempt: Option<u32>,
    offset: u64,
}

impl EventId {
    fn parse(text: &str) -> Option<EventId> {
        match text.trim().split_once(':') {
            Some((attempt, offset)) => Some(EventId {
                attempt: Some(attempt.parse().ok().filter(|attempt| *attempt > 0)?),
                offset: offset.parse().ok()?,
            }),
            None => Some(EventId {
                attempt: None,
                offset: text.trim().parse().ok()?,
            }),
        }
    }

    fn render(&self) -> String {
        match self.attempt {
            Some(attempt) => format!("{attempt}:{}", self.offset),
            None => self.offset.to_string(),
        }
    }
}

fn follow(
    controller: Controller,
    project: String,
    run_id: String,
    attempt: u32,
    offset: u64,
    across_attempts: bool,
) -> impl IntoResponse {
    let (sender, receiver) = mpsc::channel(64);
    tokio::spawn(async move {
        let from = Position {
            attempt,
            offset,
            across_attempts,
        };
        if let Err(problem) = pump(&controller, &project, &run_id, from, &sender).await {
            let data = serde_json::to_string(&problem).unwrap_or_default();
            let _ = sender
                .send(Ok(Event::default().event("error").data(data)))
                .await;
        }
    });
    Sse::new(ReceiverStream::new(receiver)).keep_alive(KeepAlive::default())
}

/// Where a follower is: which attempt's log, how far into it, and whether it goes on to the
/// run's next attempt when this one is over.
struct Position {
    attempt: u32,
    offset: u64,
    across_attempts: bool,
}

impl Position {
    fn event_id(&self, offset: u64) -> EventId {
        EventId {
            attempt: self.across_attempts.then_some(self.attempt),
            offset,
        }
    }
}

/// Sends records until the run has ended and its (last) attempt's log is read to the end.
/// Following across attempts, an `attempt` event (id `<attempt>:0`) announces each later
/// attempt before its lines. Returns early when the client goes away.
async fn pump(
    controller: &Controller,
    project: &str,
    run_id: &str,
    mut at: Position,
    sender: &mpsc::Sender<Result<Event, Infallible>>,
) -> Result<(), Problem> {
    let mut wake = controller.bus().subscribe();
    loop {
        let chunk = read(controller, run_id, at.attempt, at.offset).await?;
        if !chunk.records.is_empty() {
            if !send_records(sender, &chunk, &at).await {
                return Ok(());
            }
            at.offset = chunk.next_offset;
            continue;
        }
        let run = controller.get_run(project, run_id).await?;
        let later_attempt = run.status.attempt > at.attempt;
        let attempt_over = later_attempt || run.status.state.is_terminal();
        if attempt_over {
            // The framework reports the exit after the last record is written: one more read
            // catches anything appended between our read and the state check.
            let chunk = read(controller, run_id, at.attempt, at.offset).await?;
            if !send_records(sender, &chunk, &at).await {
                return Ok(());
            }
            at.offset = chunk.next_offset;
            if at.across_attempts && later_attempt {
                at.attempt += 1;
                at.offset = 0;
                let data = serde_json::json!({ "attempt": at.attempt });
                let event = Event::default()
                    .event("attempt")
                    .id(at.event_id(0).render())
                    .data(data.to_string());
                if sender.send(Ok(event)).await.is_err() {
                    return Ok(());
                }
                continue;
            }
            let end = serde_json::json!({ "state": run.status.state, "attempt": at.attempt });
            let _ = sender
                .send(Ok(Event::default().event("end").data(end.to_string())))
                .await;
            return Ok(());
        }
        tokio::select! {
            _ = wait_for_activity(&mut wake, run_id) => {}
            _ = tokio::time::sleep(FALLBACK_TICK) => {}
            _ = sender.closed() => return Ok(()),
            _ = controller.bus().closing() => return Ok(()),
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

async fn send_records(
    sender: &mpsc::Sender<Result<Event, Infallible>>,
    chunk: &LogChunk,
    at: &Position,
) -> bool {
    for (index, record) in chunk.records.iter().enumerate() {
        let end_offset = chunk
            .records
            .get(index + 1)
            .map(|next| next.offset)
            .unwrap_or(chunk.next_offset);
        if sender
            .send(Ok(line_event(record, at.event_id(end_offset))))
            .await
            .is_err()
        {
            return false;
        }
    }
    true
}

fn line_event(record: &LogRecord, id: EventId) -> Event {
    let text = String::from_utf8_lossy(&record.data);
    let line = LogLine {
        offset: record.offset,
        time: record.time,
        stream: record.stream.as_str().to_string(),
        line: text.strip_suffix('\n').unwrap_or(&text).to_string(),
    };
    Event::default()
        .event("log")
        .id(id.render())
        .data(serde_json::to_string(&line).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::EventId;

    #[test]
    fn event_ids_carry_an_optional_attempt() {
        let id = |attempt, offset| Some(EventId { attempt, offset });
        assert_eq!(EventId::parse("120"), id(None, 120));
        assert_eq!(EventId::parse("3:120"), id(Some(3), 120));
        assert_eq!(EventId::parse(" 2:0 "), id(Some(2), 0));
        for bad in ["", "x", "0:5", "3:", ":4", "1:2:3", "-1"] {
            assert_eq!(EventId::parse(bad), None, "{bad:?}");
        }
        for text in ["120", "3:120"] {
            assert_eq!(EventId::parse(text).unwrap().render(), text);
        }
    }
}
