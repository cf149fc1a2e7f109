//! The compare-and-set on a run's (state, attempt), and the wait reason of a queued run.

use super::codec::{db, now, to_json, ts};
use super::events::{self, RunSubject};
use super::runs::{first_run, push_select_run, run_state, RunRow};
use crate::{AttemptUpdate, StoreError, StoreResult, TransitionRequest};
use runplane_domain::{Run, RunState, Transition};
use sqlx::{QueryBuilder, Sqlite, SqliteConnection};

/// Applies `request` inside the caller's write transaction (the lifecycle table has already
/// been checked). The guarded UPDATE is the first statement, so the outcome of the
/// compare-and-set is decided under the write lock.
pub(super) async fn transition(
    conn: &mut SqliteConnection,
    request: &TransitionRequest,
) -> StoreResult<Run> {
    let next_attempt = request.next_attempt.unwrap_or(request.attempt);
    let at = ts(&request.at);
    let results = request
        .results
        .as_ref()
        .map(|r| to_json("results", r))
        .transpose()?;
    let artifacts = request
        .artifacts
        .as_ref()
        .map(|a| to_json("artifacts", a))
        .transpose()?;
    // Under the write lock already (one writer): the count cannot change before the UPDATE.
    if let Some(limit) = &request.task_limit {
        let (active,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM runs WHERE project = ? AND task = ?
                 AND state IN ('PENDING', 'RUNNING', 'STOP')",
        )
        .bind(&limit.project)
        .bind(&limit.task)
        .fetch_one(&mut *conn)
        .await
        .map_err(db)?;
        if active >= i64::from(limit.max_active) {
            return Err(StoreError::TaskLimitReached {
                project: limit.project.clone(),
                task: limit.task.clone(),
                limit: limit.max_active,
            });
        }
    }
    // The compare-and-set, alone: whether anything else happens depends on it. It returns
    // what the event needs of the run (fields that never change).
    let subject: Option<(String, String, String)> = sqlx::query_as(
        "UPDATE runs SET state = ?, attempt = ?, reason = ?, message = ?,
             results = COALESCE(?, results), artifacts = COALESCE(?, artifacts), updated = ?,
             owner = COALESCE(?, owner)
         WHERE id = ? AND state = ? AND attempt = ?
         RETURNING project, kind, function_name",
    )
    .bind(request.to.as_str())
    .bind(i64::from(next_attempt))
    .bind(&request.reason)
    .bind(&request.message)
    .bind(results)
    .bind(artifacts)
    .bind(&at)
    .bind(&request.owner)
    .bind(&request.run_id)
    .bind(request.from.as_str())
    .bind(i64::from(request.attempt))
    .fetch_optional(&mut *conn)
    .await
    .map_err(db)?;
    let Some((project, kind, function)) = subject else {
        return Err(lost(conn, request).await);
    };
    // Same transaction as the change: a lost compare-and-set (returned above) appends nothing.
    let (event_at, event_data) = events::run_changed_row(
        &RunSubject {
            project: &project,
            id: &request.run_id,
            kind: &kind,
            function: &function,
        },
        &Transition {
            from: Some(request.from),
            to: request.to,
            at: request.at,
            attempt: next_attempt,
            reason: request.reason.clone(),
            message: None,
        },
    )?;

    // The rest in one batch, a single round trip to the connection's thread: the transition,
    // the attempt record, the event, and the run as it is now. (A query of several statements,
    // binds taken in order, is the SQLite driver's; the conformance suite fails if it stops
    // being.) Each statement is written next to its binds.
    let mut batch = QueryBuilder::<Sqlite>::new(
        "INSERT INTO run_transitions (run_id, seq, from_state, to_state, attempt, reason,
             message, at) VALUES (",
    );
    batch
        .push_bind(&request.run_id)
        .push(", (SELECT COALESCE(MAX(seq), 0) + 1 FROM run_transitions WHERE run_id = ")
        .push_bind(&request.run_id)
        .push("), ")
        .push_bind(request.from.as_str())
        .push(", ")
        .push_bind(request.to.as_str())
        .push(", ")
        .push_bind(i64::from(next_attempt))
        .push(", ")
        .push_bind(&request.reason)
        .push(", ")
        .push_bind(&request.message)
        .push(", ")
        .push_bind(&at)
        .push(");\n");
    // The attempt whose record must exist for the update to land.
    let updated_attempt = match &request.attempt_update {
        None => None,
        // A (re)dispatch of the attempt the run moves into. Dispatching the same attempt number
        // twice (PENDING → READY without a new attempt, then READY → PENDING) starts its record
        // over rather than failing the transition.
        Some(AttemptUpdate::Dispatched { framework }) => {
            batch
                .push("INSERT INTO run_attempts (run_id, number, framework, dispatched) VALUES (")
                .push_bind(&request.run_id)
                .push(", ")
                .push_bind(i64::from(next_attempt))
                .push(", ")
                .push_bind(framework)
                .push(", ")
                .push_bind(&at)
                .push(
                    ") ON CONFLICT (run_id, number) DO UPDATE SET
                         framework = excluded.framework, dispatched = excluded.dispatched,
                         started = NULL, ended = NULL, exit_code = NULL, signal = NULL,
                         reason = NULL;\n",
                );
            None
        }
        Some(AttemptUpdate::Started) => {
            batch
                .push("UPDATE run_attempts SET started = ")
                .push_bind(&at);
            Some(next_attempt)
        }
        // The attempt that ended is the one the run was in: a retry moves the run on to the
        // next attempt in the same transition.
        Some(AttemptUpdate::Ended {
            exit_code,
            signal,
            reason,
        }) => {
            batch
                .push("UPDATE run_attempts SET ended = ")
                .push_bind(&at)
                .push(", exit_code = ")
                .push_bind(*exit_code)
                .push(", signal = ")
                .push_bind(*signal)
                .push(", reason = ")
                .push_bind(reason);
            Some(request.attempt)
        }
    };
    if let Some(number) = updated_attempt {
        batch
            .push(" WHERE run_id = ")
            .push_bind(&request.run_id)
            .push(" AND number = ")
            .push_bind(i64::from(number))
            .push(";\n");
    }
    batch
        .push("INSERT INTO events (at, project, kind, data) VALUES (")
        .push_bind(event_at)
        .push(", ")
        .push_bind(&project)
        .push(", 'run', ")
        .push_bind(event_data)
        .push(");\n");
    push_select_run(&mut batch, &request.run_id);
    let rows = batch
        .build_query_as::<RunRow>()
        .fetch_all(&mut *conn)
        .await
        .map_err(db)?;
    let run = first_run(rows)?
        .ok_or_else(|| StoreError::Database(format!("run {} vanished", request.run_id)))?;
    // Not fatal: the state change matters more than the bookkeeping of an attempt that was
    // never recorded as dispatched.
    if let Some(number) = updated_attempt {
        if !run.status.attempts.iter().any(|a| a.number == number) {
            tracing::warn!(
                run_id = %request.run_id,
                attempt = number,
                to = %request.to,
                "no attempt record to update"
            );
        }
    }
    Ok(run)
}

/// Why the compare-and-set of `request` matched no row: the run moved on, or it is gone.
async fn lost(conn: &mut SqliteConnection, request: &TransitionRequest) -> StoreError {
    match run_state(conn, &request.run_id).await {
        Ok(Some((current_state, current_attempt))) => StoreError::Conflict {
            run_id: request.run_id.clone(),
            expected_state: request.from,
            expected_attempt: request.attempt,
            current_state,
            current_attempt,
        },
        Ok(None) => StoreError::NotFound(format!("run {}", request.run_id)),
        Err(e) => e,
    }
}

pub(super) async fn set_wait_reason(
    conn: &mut SqliteConnection,
    run_id: &str,
    state: RunState,
    attempt: u32,
    reason: Option<&str>,
    message: Option<&str>,
) -> StoreResult<bool> {
    let updated = ts(&now());
    let done = sqlx::query(
        "UPDATE runs SET reason = ?, message = ?, updated = ? \
         WHERE id = ? AND state = ? AND attempt = ?",
    )
    .bind(reason)
    .bind(message)
    .bind(updated)
    .bind(run_id)
    .bind(state.as_str())
    .bind(i64::from(attempt))
    .execute(conn)
    .await
    .map_err(db)?;
    Ok(done.rows_affected() > 0)
}
