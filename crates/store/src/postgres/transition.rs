//! The compare-and-set on a run's (state, attempt), and the wait reason of a queued run.

use super::codec::{micros, now, parse_state, text, to_json, to_u32, PgResult};
use super::runs::get_run;
use super::{events, Write};
use crate::{AttemptUpdate, StoreError, TransitionRequest};
use runplane_domain::{Run, RunState};

/// Applies `request` (the lifecycle table has already been checked). The guarded UPDATE is
/// the first statement: it either takes the run's row lock with the run in (`from`, attempt),
/// or matches nothing. A concurrent transition of the same run waits for this transaction and
/// then re-evaluates its WHERE clause against the committed row, so of two racing claims
/// exactly one matches. Everything after the UPDATE runs under the row lock: the transition's
/// `seq` and the attempt records cannot interleave with another writer's.
pub(super) async fn transition(w: &mut Write, request: &TransitionRequest) -> PgResult<Run> {
    let next_attempt = request.next_attempt.unwrap_or(request.attempt);
    let at = micros(&request.at);
    let reason = text(request.reason.as_deref());
    let message = text(request.message.as_deref());
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
    if let Some(limit) = &request.task_limit {
        // Claims of one task queue on this lock until the claimer commits, so the count below
        // sees every claim made before this one. Always taken before the event log's lock.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 7))")
            .bind(format!("task-limit/{}/{}", limit.project, limit.task))
            .execute(w.conn())
            .await?;
        let (active,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM runs WHERE project = $1 AND task = $2
                 AND state IN ('PENDING', 'RUNNING', 'STOP')",
        )
        .bind(&limit.project)
        .bind(&limit.task)
        .fetch_one(w.conn())
        .await?;
        if active >= i64::from(limit.max_active) {
            return Err(StoreError::TaskLimitReached {
                project: limit.project.clone(),
                task: limit.task.clone(),
                limit: limit.max_active,
            }
            .into());
        }
    }
    let updated = sqlx::query(
        "UPDATE runs SET state = $1, attempt = $2, reason = $3, message = $4,
             results = COALESCE($5, results), artifacts = COALESCE($6, artifacts), updated = $7,
             owner = COALESCE($11, owner)
         WHERE id = $8 AND state = $9 AND attempt = $10",
    )
    .bind(request.to.as_str())
    .bind(i64::from(next_attempt))
    .bind(&reason)
    .bind(&message)
    .bind(results)
    .bind(artifacts)
    .bind(at)
    .bind(&request.run_id)
    .bind(request.from.as_str())
    .bind(i64::from(request.attempt))
    .bind(&request.owner)
    .execute(w.conn())
    .await?;

    if updated.rows_affected() == 0 {
        return Err(lost(w, request).await?.into());
    }

    sqlx::query(
        "INSERT INTO run_transitions (run_id, seq, from_state, to_state, attempt, reason,
             message, at)
         VALUES ($1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM run_transitions WHERE run_id = $1),
                 $2, $3, $4, $5, $6, $7)",
    )
    .bind(&request.run_id)
    .bind(request.from.as_str())
    .bind(request.to.as_str())
    .bind(i64::from(next_attempt))
    .bind(&reason)
    .bind(&message)
    .bind(at)
    .execute(w.conn())
    .await?;

    match &request.attempt_update {
        None => {}
        // A (re)dispatch of the attempt the run moves into. Dispatching the same attempt number
        // twice (PENDING → READY without a new attempt, then READY → PENDING) starts its record
        // over rather than failing the transition.
        Some(AttemptUpdate::Dispatched { framework }) => {
            sqlx::query(
                "INSERT INTO run_attempts (run_id, number, framework, dispatched)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (run_id, number) DO UPDATE SET
                     framework = EXCLUDED.framework, dispatched = EXCLUDED.dispatched,
                     started = NULL, ended = NULL, exit_code = NULL, signal = NULL, reason = NULL",
            )
            .bind(&request.run_id)
            .bind(i64::from(next_attempt))
            .bind(framework)
            .bind(at)
            .execute(w.conn())
            .await?;
        }
        Some(AttemptUpdate::Started) => {
            let done = sqlx::query(
                "UPDATE run_attempts SET started = $1 WHERE run_id = $2 AND number = $3",
            )
            .bind(at)
            .bind(&request.run_id)
            .bind(i64::from(next_attempt))
            .execute(w.conn())
            .await?;
            warn_if_missing(done.rows_affected(), request, next_attempt);
        }
        // The attempt that ended is the one the run was in: a retry moves the run on to the
        // next attempt in the same transition.
        Some(AttemptUpdate::Ended {
            exit_code,
            signal,
            reason,
        }) => {
            let done = sqlx::query(
                "UPDATE run_attempts SET ended = $1, exit_code = $2, signal = $3, reason = $4
                 WHERE run_id = $5 AND number = $6",
            )
            .bind(at)
            .bind(*exit_code)
            .bind(*signal)
            .bind(text(reason.as_deref()))
            .bind(&request.run_id)
            .bind(i64::from(request.attempt))
            .execute(w.conn())
            .await?;
            warn_if_missing(done.rows_affected(), request, request.attempt);
        }
    }

    let run = get_run(w.conn(), None, &request.run_id)
        .await?
        .ok_or_else(|| StoreError::Database(format!("run {} vanished", request.run_id)))?;
    // Same transaction as the change: a lost compare-and-set (returned above) appends nothing.
    events::run_changed(
        w,
        &run,
        Some(request.from),
        request.to,
        next_attempt,
        request.reason.as_deref(),
        &at,
    );
    Ok(run)
}

/// A missing attempt record is logged, not fatal: the state change matters more than the
/// bookkeeping of an attempt that was never recorded as dispatched.
fn warn_if_missing(rows: u64, request: &TransitionRequest, number: u32) {
    if rows == 0 {
        tracing::warn!(
            run_id = %request.run_id,
            attempt = number,
            to = %request.to,
            "no attempt record to update"
        );
    }
}

/// Why the compare-and-set of `request` matched no row: the run moved on, or it is gone. In
/// READ COMMITTED this statement sees every transaction that committed before it, including
/// the one that won the race.
async fn lost(w: &mut Write, request: &TransitionRequest) -> PgResult<StoreError> {
    let current: Option<(String, i64)> =
        sqlx::query_as("SELECT state, attempt FROM runs WHERE id = $1")
            .bind(&request.run_id)
            .fetch_optional(w.conn())
            .await?;
    let Some((state, attempt)) = current else {
        return Ok(StoreError::NotFound(format!("run {}", request.run_id)));
    };
    Ok(StoreError::Conflict {
        run_id: request.run_id.clone(),
        expected_state: request.from,
        expected_attempt: request.attempt,
        current_state: parse_state("runs.state", &state)?,
        current_attempt: to_u32("runs.attempt", attempt)?,
    })
}

pub(super) async fn set_wait_reason(
    w: &mut Write,
    run_id: &str,
    state: RunState,
    attempt: u32,
    reason: Option<&str>,
    message: Option<&str>,
) -> PgResult<bool> {
    let done = sqlx::query(
        "UPDATE runs SET reason = $1, message = $2, updated = $3
         WHERE id = $4 AND state = $5 AND attempt = $6",
    )
    .bind(text(reason))
    .bind(text(message))
    .bind(now())
    .bind(run_id)
    .bind(state.as_str())
    .bind(i64::from(attempt))
    .execute(w.conn())
    .await?;
    Ok(done.rows_affected() > 0)
}
