//! `/api/v1/events`: the store's event log (entity changes) as Server-Sent Events, resumable
//! from an event id after a disconnect or a server restart.
//!
//! The store appends every event in the transaction of the change it describes, with ids that
//! only grow, so "everything after id N" is exact: a reader pages through the log with
//! `events_after`, then sleeps on the bus's "events appended" signal and reads again. The signal
//! only says "look again"; the store says what happened. A slow fallback tick covers a change
//! committed by a path that did not signal.

use super::caller::Caller;
use super::problem::Problem;
use super::AppState;
use crate::controller::Controller;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use runplane_store::{StoredEvent, MAX_EVENTS_PAGE};
use serde::Deserialize;
use std::convert::Infallible;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use utoipa_axum::{router::OpenApiRouter, routes};

/// A reader re-checks the store this often even when nothing woke it.
const FALLBACK_TICK: Duration = Duration::from_secs(2);
/// Events buffered between the reader task and the connection.
const BUFFER: usize = 256;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_events))
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct EventParams {
    /// Only events of this project.
    project: Option<String>,
    /// Start after this event id (`0`: the whole log). Without it (and without
    /// `Last-Event-ID`) the stream starts with the next change.
    #[param(value_type = Option<u64>)]
    after: Option<String>,
}

/// Entity changes as Server-Sent Events: `id` is the event id, `event` the kind (`run`,
/// `function`, `task`), `data` the change as JSON (`run`: `{type, project, id, kind, function,
/// from, state, attempt, reason, at}`; `function`: `{type, project, name, version, kind, at}`;
/// `task`: `{type, project, name, kind, function, at}`).
///
/// Where it starts: after the `Last-Event-ID` header when present (what an SSE client sends
/// when it reconnects, so it wins over `after`, which the reconnecting client repeats from its
/// first request), else after `?after=`, else at the newest event (only what happens next).
/// Ids survive server restarts. The stream opens with a `ready` event whose id is the start
/// position (`data: {"after": N}`), so that a client knows where it stands before any change.
/// It never ends by itself; comments keep it alive.
#[utoipa::path(get, path = "/api/v1/events", params(EventParams,
        ("Last-Event-ID" = Option<u64>, Header, description = "resume after this event id (wins over `after`)")),
    responses((status = 200, description = "text/event-stream of entity changes"), (status = 400, body = Problem)))]
async fn get_events(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    params: Result<Query<EventParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    let Query(params) =
        params.map_err(|rejection| Problem::bad_request("query", rejection.body_text()))?;
    // Without `project` the stream covers every project: fine while every caller may see
    // every project; with roles, it will have to keep only the caller's projects.
    if let Some(project) = &params.project {
        caller.authorize(project)?;
    }
    let resume = match headers.get("last-event-id") {
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .and_then(|text| text.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    Problem::bad_request("Last-Event-ID", "must be an event id (an integer ≥ 0)")
                })?,
        ),
        None => None,
    };
    let after = match params.after.as_deref() {
        Some(text) => Some(text.trim().parse::<u64>().map_err(|_| {
            Problem::bad_request(
                "after",
                format!("{text:?} is not an event id (an integer ≥ 0)"),
            )
        })?),
        None => None,
    };
    let start = match resume.or(after) {
        Some(id) => id,
        // Fixed now, before the response is sent: a client that lists entities once the
        // stream is open misses no change made in between.
        None => state.controller.store().latest_event_id().await?,
    };
    Ok(stream(state.controller, params.project, start).into_response())
}

fn stream(controller: Controller, project: Option<String>, after: u64) -> impl IntoResponse {
    let (sender, receiver) = mpsc::channel(BUFFER);
    tokio::spawn(async move {
        if let Err(problem) = pump(&controller, project.as_deref(), after, &sender).await {
            let data = serde_json::to_string(&problem).unwrap_or_default();
            let _ = sender
                .send(Ok(Event::default().event("error").data(data)))
                .await;
        }
    });
    Sse::new(ReceiverStream::new(receiver)).keep_alive(KeepAlive::default())
}

/// Sends every event after `after` as it is committed, until the client goes away.
async fn pump(
    controller: &Controller,
    project: Option<&str>,
    mut after: u64,
    sender: &mpsc::Sender<Result<Event, Infallible>>,
) -> Result<(), Problem> {
    let mut appended = controller.bus().watch_appended();
    // Says where the stream starts, with that position as its id: a client that loses the
    // connection before any change still resumes from here, not from a later "now".
    let ready = Event::default()
        .id(after.to_string())
        .event("ready")
        .data(serde_json::json!({ "after": after }).to_string());
    if sender.send(Ok(ready)).await.is_err() {
        return Ok(());
    }
    loop {
        // Seen before the read: an append committed after it bumps the watch again.
        appended.borrow_and_update();
        let events = controller
            .store()
            .events_after(after, project, MAX_EVENTS_PAGE)
            .await?;
        let full_page = events.len() == MAX_EVENTS_PAGE as usize;
        for event in events {
            let id = event.id;
            if sender.send(Ok(sse_event(&event))).await.is_err() {
                return Ok(());
            }
            after = id;
        }
        if full_page {
            continue;
        }
        tokio::select! {
            changed = appended.changed() => {
                // The bus outlives every request; should it go, fall back to the tick.
                if changed.is_err() {
                    tokio::time::sleep(FALLBACK_TICK).await;
                }
            }
            _ = tokio::time::sleep(FALLBACK_TICK) => {}
            _ = sender.closed() => return Ok(()),
            _ = controller.bus().closing() => return Ok(()),
        }
    }
}

fn sse_event(event: &StoredEvent) -> Event {
    Event::default()
        .id(event.id.to_string())
        .event(event.kind.as_str())
        .data(serde_json::to_string(&event.data).unwrap_or_default())
}
