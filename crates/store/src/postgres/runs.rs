//! Runs: creation (with idempotency), reads that assemble a full [`Run`] from its rows,
//! listings, and the dispatcher's queries.

use super::codec::{
    from_json, is_foreign_key_violation, is_unique_violation, opt_from_json, parse_state, text,
    to_json, to_u32, to_u64, PgResult,
};
use super::{events, Write};
use crate::{cursor, ActiveCounts, IdempotencyKey, Put, RunPage, RunQuery, StoreError};
use chrono::{DateTime, Utc};
use runplane_domain::{Attempt, Run, RunMetadata, RunState, RunStatus, Transition};
use sqlx::AssertSqlSafe;
use sqlx::{PgConnection, Postgres, QueryBuilder};
use std::collections::HashMap;

/// Page size when a query asks for 0.
const DEFAULT_LIMIT: u32 = 100;
/// The largest page a query gets, whatever it asks for.
const MAX_LIMIT: u32 = 1000;

const RUN_COLUMNS: &str = "r.id, r.project, r.kind, r.state, r.attempt, r.reason, r.message, \
     r.results, r.rerun_of, r.service, r.step, r.produced_by, r.workflow, r.artifacts, r.owner, \
     r.labels, r.spec, r.created, r.updated, r.created_by";

#[derive(sqlx::FromRow)]
struct RunRow {
    id: String,
    project: String,
    kind: String,
    state: String,
    attempt: i64,
    reason: Option<String>,
    message: Option<String>,
    results: Option<String>,
    rerun_of: Option<String>,
    service: Option<String>,
    step: Option<String>,
    produced_by: Option<String>,
    workflow: Option<String>,
    artifacts: Option<String>,
    owner: Option<String>,
    labels: String,
    spec: String,
    created: DateTime<Utc>,
    updated: DateTime<Utc>,
    created_by: String,
}

impl RunRow {
    fn into_run(self, transitions: Vec<Transition>, attempts: Vec<Attempt>) -> PgResult<Run> {
        Ok(Run {
            kind: self.kind,
            metadata: RunMetadata {
                labels: from_json("runs.labels", &self.labels)?,
                created: self.created,
                updated: self.updated,
                id: self.id,
                project: self.project,
                created_by: self.created_by,
            },
            spec: from_json("runs.spec", &self.spec)?,
            status: RunStatus {
                state: parse_state("runs.state", &self.state)?,
                attempt: to_u32("runs.attempt", self.attempt)?,
                reason: self.reason,
                message: self.message,
                results: opt_from_json("runs.results", self.results.as_deref())?,
                rerun_of: self.rerun_of,
                service: opt_from_json("runs.service", self.service.as_deref())?,
                step_of: opt_from_json("runs.step", self.step.as_deref())?,
                produced_by: self.produced_by,
                workflow: opt_from_json("runs.workflow", self.workflow.as_deref())?,
                artifacts: opt_from_json("runs.artifacts", self.artifacts.as_deref())?
                    .unwrap_or_default(),
                owner: self.owner,
                transitions,
                attempts,
            },
        })
    }
}

#[derive(sqlx::FromRow)]
struct TransitionRow {
    run_id: String,
    from_state: Option<String>,
    to_state: String,
    attempt: i64,
    reason: Option<String>,
    message: Option<String>,
    at: DateTime<Utc>,
}

impl TransitionRow {
    fn into_transition(self) -> PgResult<Transition> {
        Ok(Transition {
            from: self
                .from_state
                .as_deref()
                .map(|s| parse_state("run_transitions.from_state", s))
                .transpose()?,
            to: parse_state("run_transitions.to_state", &self.to_state)?,
            at: self.at,
            attempt: to_u32("run_transitions.attempt", self.attempt)?,
            reason: self.reason,
            message: self.message,
        })
    }
}

#[derive(sqlx::FromRow)]
struct AttemptRow {
    run_id: String,
    number: i64,
    framework: String,
    dispatched: DateTime<Utc>,
    started: Option<DateTime<Utc>>,
    ended: Option<DateTime<Utc>>,
    exit_code: Option<i32>,
    signal: Option<i32>,
    reason: Option<String>,
}

impl AttemptRow {
    fn into_attempt(self) -> PgResult<Attempt> {
        Ok(Attempt {
            number: to_u32("run_attempts.number", self.number)?,
            framework: self.framework,
            dispatched: self.dispatched,
            started: self.started,
            ended: self.ended,
            exit_code: self.exit_code,
            signal: self.signal,
            reason: self.reason,
        })
    }
}

/// Turns run rows into full runs, reading the transitions and attempts of all of them with one
/// query each (not one per run). Keeps the order of `rows`. The caller reads `rows` and calls
/// this in one snapshot (or under the run's row lock), so that the parts agree.
async fn assemble(conn: &mut PgConnection, rows: Vec<RunRow>) -> PgResult<Vec<Run>> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();

    let mut transitions: HashMap<String, Vec<Transition>> = HashMap::new();
    let transition_rows = sqlx::query_as::<_, TransitionRow>(
        "SELECT run_id, from_state, to_state, attempt, reason, message, at
         FROM run_transitions WHERE run_id = ANY($1) ORDER BY run_id, seq",
    )
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await?;
    for row in transition_rows {
        let run_id = row.run_id.clone();
        transitions
            .entry(run_id)
            .or_default()
            .push(row.into_transition()?);
    }

    let mut attempts: HashMap<String, Vec<Attempt>> = HashMap::new();
    let attempt_rows = sqlx::query_as::<_, AttemptRow>(
        "SELECT run_id, number, framework, dispatched, started, ended, exit_code, signal, reason
         FROM run_attempts WHERE run_id = ANY($1) ORDER BY run_id, number",
    )
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await?;
    for row in attempt_rows {
        let run_id = row.run_id.clone();
        attempts
            .entry(run_id)
            .or_default()
            .push(row.into_attempt()?);
    }

    rows.into_iter()
        .map(|row| {
            let t = transitions.remove(&row.id).unwrap_or_default();
            let a = attempts.remove(&row.id).unwrap_or_default();
            row.into_run(t, a)
        })
        .collect()
}

fn state_names(states: &[RunState]) -> Vec<String> {
    states.iter().map(|s| s.as_str().to_string()).collect()
}

pub(super) async fn create_run(
    w: &mut Write,
    run: &Run,
    idempotency: Option<&IdempotencyKey>,
) -> PgResult<Put<Run>> {
    let meta = &run.metadata;
    let status = &run.status;
    // With a key, the unique (project, idempotency_key) decides: of concurrent retries of one
    // request, one inserts; the others wait for its commit, insert nothing, and read its run.
    let inserted = sqlx::query(
        "INSERT INTO runs (id, project, kind, function_name, task, state, attempt, reason,
             message, results, rerun_of, service, step_of, step, produced_by, workflow, artifacts,
             labels, spec, created, updated, created_by, idempotency_key, request_hash, owner)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17,
                 $18, $19, $20, $21, $22, $23, $24, $25)
         ON CONFLICT (project, idempotency_key) DO NOTHING",
    )
    .bind(&meta.id)
    .bind(&meta.project)
    .bind(&run.kind)
    .bind(&run.spec.function_name)
    .bind(&run.spec.task)
    .bind(status.state.as_str())
    .bind(i64::from(status.attempt))
    .bind(text(status.reason.as_deref()))
    .bind(text(status.message.as_deref()))
    .bind(
        status
            .results
            .as_ref()
            .map(|r| to_json("results", r))
            .transpose()?,
    )
    .bind(&status.rerun_of)
    .bind(
        status
            .service
            .as_ref()
            .map(|s| to_json("service", s))
            .transpose()?,
    )
    .bind(status.step_of.as_ref().map(|s| s.run_id.as_str()))
    .bind(
        status
            .step_of
            .as_ref()
            .map(|s| to_json("step", s))
            .transpose()?,
    )
    .bind(&status.produced_by)
    .bind(
        status
            .workflow
            .as_ref()
            .map(|w| to_json("workflow", w))
            .transpose()?,
    )
    .bind(if status.artifacts.is_empty() {
        None
    } else {
        Some(to_json("artifacts", &status.artifacts)?)
    })
    .bind(to_json("labels", &meta.labels)?)
    .bind(to_json("spec", &run.spec)?)
    .bind(meta.created)
    .bind(meta.updated)
    .bind(&meta.created_by)
    .bind(idempotency.map(|k| k.key.as_str()))
    .bind(idempotency.map(|k| k.request_hash.as_str()))
    .bind(&status.owner)
    .execute(w.conn())
    .await;
    match inserted {
        Ok(done) if done.rows_affected() == 1 => {}
        Ok(_) => match idempotency {
            Some(key) => return earlier_run(w, &meta.project, key).await,
            None => {
                return Err(StoreError::Database(format!(
                    "run {} was neither inserted nor found",
                    meta.id
                ))
                .into())
            }
        },
        Err(e) if is_foreign_key_violation(&e) => {
            return Err(StoreError::NotFound(format!("project {}", meta.project)).into())
        }
        // The id is taken (the idempotency key cannot be: ON CONFLICT handles it).
        Err(e) if is_unique_violation(&e) => {
            return Err(StoreError::Database(format!("run {} already exists", meta.id)).into())
        }
        Err(e) => return Err(e.into()),
    }

    for (key, value) in &meta.labels {
        sqlx::query("INSERT INTO run_labels (run_id, key, value) VALUES ($1, $2, $3)")
            .bind(&meta.id)
            .bind(key)
            .bind(value)
            .execute(w.conn())
            .await?;
    }
    for (seq, t) in (1_i64..).zip(&status.transitions) {
        sqlx::query(
            "INSERT INTO run_transitions (run_id, seq, from_state, to_state, attempt, reason,
                 message, at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&meta.id)
        .bind(seq)
        .bind(t.from.map(RunState::as_str))
        .bind(t.to.as_str())
        .bind(i64::from(t.attempt))
        .bind(text(t.reason.as_deref()))
        .bind(text(t.message.as_deref()))
        .bind(t.at)
        .execute(w.conn())
        .await?;
    }
    for a in &status.attempts {
        sqlx::query(
            "INSERT INTO run_attempts (run_id, number, framework, dispatched, started, ended,
                 exit_code, signal, reason)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&meta.id)
        .bind(i64::from(a.number))
        .bind(&a.framework)
        .bind(a.dispatched)
        .bind(a.started)
        .bind(a.ended)
        .bind(a.exit_code)
        .bind(a.signal)
        .bind(text(a.reason.as_deref()))
        .execute(w.conn())
        .await?;
    }
    // One event per initial transition, in the insert's transaction: the log then holds the
    // run's whole history (CREATED, and BUILT/READY when it is created already built).
    for t in &status.transitions {
        events::run_changed(w, run, t.from, t.to, t.attempt, t.reason.as_deref(), &t.at);
    }
    Ok(Put {
        value: run.clone(),
        created: true,
    })
}

/// The run an earlier request with `key` created (its insert committed before ours found the
/// key taken), or `IdempotencyMismatch` when that request was another one.
async fn earlier_run(w: &mut Write, project: &str, key: &IdempotencyKey) -> PgResult<Put<Run>> {
    let earlier: Option<(String, Option<String>)> = sqlx::query_as(
        "SELECT id, request_hash FROM runs WHERE project = $1 AND idempotency_key = $2",
    )
    .bind(project)
    .bind(&key.key)
    .fetch_optional(w.conn())
    .await?;
    let Some((id, request_hash)) = earlier else {
        return Err(StoreError::Database(format!(
            "the run of idempotency key {:?} vanished during an idempotent create",
            key.key
        ))
        .into());
    };
    if request_hash.as_deref() != Some(key.request_hash.as_str()) {
        return Err(StoreError::IdempotencyMismatch {
            key: key.key.clone(),
            run_id: id,
        }
        .into());
    }
    let earlier = get_run(w.conn(), Some(project), &id)
        .await?
        .ok_or_else(|| {
            StoreError::Database(format!("run {id} vanished during an idempotent create"))
        })?;
    Ok(Put {
        value: earlier,
        created: false,
    })
}

/// The run `id`, restricted to `project` when given (the API always scopes by project; the
/// controller's compare-and-set addresses runs by id alone).
pub(super) async fn get_run(
    conn: &mut PgConnection,
    project: Option<&str>,
    id: &str,
) -> PgResult<Option<Run>> {
    let mut query =
        QueryBuilder::<Postgres>::new(format!("SELECT {RUN_COLUMNS} FROM runs r WHERE r.id = "));
    query.push_bind(id.to_string());
    if let Some(project) = project {
        query
            .push(" AND r.project = ")
            .push_bind(project.to_string());
    }
    let rows = query
        .build_query_as::<RunRow>()
        .fetch_all(&mut *conn)
        .await?;
    Ok(assemble(conn, rows).await?.into_iter().next())
}

pub(super) async fn list_runs(conn: &mut PgConnection, q: &RunQuery) -> PgResult<RunPage> {
    let limit = match q.limit {
        0 => DEFAULT_LIMIT,
        n => n.min(MAX_LIMIT),
    };
    let after_id = q.cursor.as_deref().map(cursor::decode).transpose()?;

    let mut query = QueryBuilder::<Postgres>::new(format!(
        "SELECT {RUN_COLUMNS} FROM runs r WHERE r.project = "
    ));
    query.push_bind(q.project.clone());
    if let Some(function) = &q.function {
        query
            .push(" AND r.function_name = ")
            .push_bind(function.clone());
    }
    if let Some(step_of) = &q.step_of {
        query.push(" AND r.step_of = ").push_bind(step_of.clone());
    }
    if !q.states.is_empty() {
        query
            .push(" AND r.state = ANY(")
            .push_bind(state_names(&q.states))
            .push(")");
    }
    for (key, value) in &q.labels {
        query
            .push(" AND EXISTS (SELECT 1 FROM run_labels l WHERE l.run_id = r.id AND l.key = ")
            .push_bind(key.clone())
            .push(" AND l.value = ")
            .push_bind(value.clone())
            .push(")");
    }
    if let Some(after) = q.created_after {
        query.push(" AND r.created > ").push_bind(after);
    }
    if let Some(before) = q.created_before {
        query.push(" AND r.created < ").push_bind(before);
    }
    if let Some(after_id) = after_id {
        query.push(" AND r.id < ").push_bind(after_id);
    }
    // One more than the page: whether it comes back says whether there is a next page.
    query
        .push(" ORDER BY r.id DESC LIMIT ")
        .push_bind(i64::from(limit) + 1);
    let mut rows = query
        .build_query_as::<RunRow>()
        .fetch_all(&mut *conn)
        .await?;
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let next_cursor = if more {
        rows.last().map(|row| cursor::encode(&row.id))
    } else {
        None
    };
    Ok(RunPage {
        runs: assemble(conn, rows).await?,
        next_cursor,
    })
}

pub(super) async fn runs_in_states(
    conn: &mut PgConnection,
    states: &[RunState],
    limit: u32,
) -> PgResult<Vec<Run>> {
    if states.is_empty() {
        return Ok(Vec::new());
    }
    let limit = if limit == 0 { DEFAULT_LIMIT } else { limit };
    let rows = sqlx::query_as::<_, RunRow>(AssertSqlSafe(format!(
        "SELECT {RUN_COLUMNS} FROM runs r WHERE r.state = ANY($1) ORDER BY r.id ASC LIMIT $2"
    )))
    .bind(state_names(states))
    .bind(i64::from(limit))
    .fetch_all(&mut *conn)
    .await?;
    assemble(conn, rows).await
}

/// The state and attempt of run `id`, if it exists.
pub(super) async fn run_state(
    conn: &mut PgConnection,
    id: &str,
) -> PgResult<Option<(RunState, u32)>> {
    let row: Option<(String, i64)> =
        sqlx::query_as("SELECT state, attempt FROM runs WHERE id = $1")
            .bind(id)
            .fetch_optional(conn)
            .await?;
    Ok(row
        .map(|(state, attempt)| {
            Ok::<_, StoreError>((
                parse_state("runs.state", &state)?,
                to_u32("runs.attempt", attempt)?,
            ))
        })
        .transpose()?)
}

pub(super) async fn count_active(conn: &mut PgConnection) -> PgResult<ActiveCounts> {
    let active: Vec<RunState> = RunState::ALL
        .into_iter()
        .filter(|s| s.is_active())
        .collect();
    // Workflow runs only start step runs, which hold slots of their own.
    let groups: Vec<(String, Option<String>, i64)> = sqlx::query_as(
        "SELECT project, task, COUNT(*) FROM runs WHERE state = ANY($1) AND kind <> $2
         GROUP BY project, task",
    )
    .bind(state_names(&active))
    .bind(runplane_domain::entity::run_kind(
        runplane_domain::workflow::PIPELINE_KIND,
        runplane_domain::workflow::PIPELINE_ACTION,
    ))
    .fetch_all(conn)
    .await?;
    let mut counts = ActiveCounts::default();
    for (project, task, count) in groups {
        let count = to_u64("COUNT(*)", count)?;
        counts.total += count;
        if let Some(task) = task {
            *counts.per_task.entry((project, task)).or_default() += count;
        }
    }
    Ok(counts)
}

pub(super) async fn delete_run(w: &mut Write, project: &str, id: &str) -> PgResult<bool> {
    // Labels, transitions and attempts go with it (ON DELETE CASCADE).
    let done = sqlx::query("DELETE FROM runs WHERE project = $1 AND id = $2")
        .bind(project)
        .bind(id)
        .execute(w.conn())
        .await?;
    Ok(done.rows_affected() > 0)
}

/// The states in which a run is followed by the replica that owns it.
pub(super) const OWNED_STATES: [RunState; 4] = [
    RunState::Pending,
    RunState::Running,
    RunState::Stop,
    RunState::Deleting,
];

/// The runs in [`OWNED_STATES`] that satisfy `condition` (SQL over `r`, whose `$1` is bound to
/// `values`), oldest first.
pub(super) async fn active_runs_where(
    conn: &mut PgConnection,
    condition: &str,
    values: &[String],
) -> PgResult<Vec<Run>> {
    let rows = sqlx::query_as::<_, RunRow>(AssertSqlSafe(format!(
        "SELECT {RUN_COLUMNS} FROM runs r WHERE {condition} AND r.state = ANY($2) ORDER BY r.id ASC"
    )))
    .bind(values)
    .bind(state_names(&OWNED_STATES))
    .fetch_all(&mut *conn)
    .await?;
    assemble(conn, rows).await
}
