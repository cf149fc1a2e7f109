//! Runs: creation (with idempotency), reads that assemble a full [`Run`] from its rows,
//! listings, and the dispatcher's queries.

use super::codec::{
    db, from_json, is_foreign_key_violation, is_unique_violation, parse_opt_ts, parse_state,
    parse_ts, to_i32, to_json, to_u32, ts,
};
use super::events;
use crate::{
    cursor, ActiveCounts, IdempotencyKey, Put, RunPage, RunQuery, StoreError, StoreResult,
};
use runplane_domain::{Attempt, Run, RunMetadata, RunState, RunStatus, Transition};
use sqlx::{QueryBuilder, Sqlite, SqliteConnection};

/// Page size when a query asks for 0.
const DEFAULT_LIMIT: u32 = 100;
/// The largest page a query gets, whatever it asks for.
const MAX_LIMIT: u32 = 1000;
/// Rows per multi-row INSERT: at 9 parameters a row, far below SQLite's 32766.
const ROWS_PER_INSERT: usize = 500;

/// A run's row with its transitions and attempts folded in as JSON arrays (positional, in
/// order): a full run is one statement, not three. Each statement is a round trip to the
/// connection's worker thread, and runs are read on every step of a run's life.
const RUN_COLUMNS: &str = "r.id, r.project, r.kind, r.state, r.attempt, r.reason, r.message, \
     r.results, r.rerun_of, r.service, r.step, r.produced_by, r.workflow, r.artifacts, r.owner, r.labels, r.spec, r.created, r.updated, r.created_by, \
     (SELECT json_group_array(json_array(t.from_state, t.to_state, t.attempt, t.reason, t.message, t.at) ORDER BY t.seq) \
        FROM run_transitions t WHERE t.run_id = r.id) AS transitions, \
     (SELECT json_group_array(json_array(a.number, a.framework, a.dispatched, a.started, a.ended, a.exit_code, a.signal, a.reason) ORDER BY a.number) \
        FROM run_attempts a WHERE a.run_id = r.id) AS attempts";

#[derive(sqlx::FromRow)]
pub(super) struct RunRow {
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
    created: String,
    updated: String,
    created_by: String,
    transitions: String,
    attempts: String,
}

impl RunRow {
    fn into_run(self) -> StoreResult<Run> {
        let transitions = from_json::<Vec<TransitionRow>>("run_transitions", &self.transitions)?
            .into_iter()
            .map(TransitionRow::into_transition)
            .collect::<StoreResult<Vec<_>>>()?;
        let attempts = from_json::<Vec<AttemptRow>>("run_attempts", &self.attempts)?
            .into_iter()
            .map(AttemptRow::into_attempt)
            .collect::<StoreResult<Vec<_>>>()?;
        Ok(Run {
            kind: self.kind,
            metadata: RunMetadata {
                labels: from_json("runs.labels", &self.labels)?,
                created: parse_ts("runs.created", &self.created)?,
                updated: parse_ts("runs.updated", &self.updated)?,
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
                results: self
                    .results
                    .as_deref()
                    .map(|r| from_json("runs.results", r))
                    .transpose()?,
                rerun_of: self.rerun_of,
                service: self
                    .service
                    .as_deref()
                    .map(|s| from_json("runs.service", s))
                    .transpose()?,
                step_of: self
                    .step
                    .as_deref()
                    .map(|s| from_json("runs.step", s))
                    .transpose()?,
                produced_by: self.produced_by,
                workflow: self
                    .workflow
                    .as_deref()
                    .map(|w| from_json("runs.workflow", w))
                    .transpose()?,
                owner: self.owner,
                artifacts: self
                    .artifacts
                    .as_deref()
                    .map(|a| from_json("runs.artifacts", a))
                    .transpose()?
                    .unwrap_or_default(),
                transitions,
                attempts,
            },
        })
    }
}

/// One element of a row's `transitions` (see [`RUN_COLUMNS`]): from, to, attempt, reason,
/// message, at.
#[derive(serde::Deserialize)]
struct TransitionRow(
    Option<String>,
    String,
    i64,
    Option<String>,
    Option<String>,
    String,
);

impl TransitionRow {
    fn into_transition(self) -> StoreResult<Transition> {
        let TransitionRow(from, to, attempt, reason, message, at) = self;
        Ok(Transition {
            from: from
                .as_deref()
                .map(|s| parse_state("run_transitions.from_state", s))
                .transpose()?,
            to: parse_state("run_transitions.to_state", &to)?,
            at: parse_ts("run_transitions.at", &at)?,
            attempt: to_u32("run_transitions.attempt", attempt)?,
            reason,
            message,
        })
    }
}

/// One element of a row's `attempts` (see [`RUN_COLUMNS`]): number, framework, dispatched,
/// started, ended, exit code, signal, reason.
#[derive(serde::Deserialize)]
struct AttemptRow(
    i64,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<String>,
);

impl AttemptRow {
    fn into_attempt(self) -> StoreResult<Attempt> {
        let AttemptRow(number, framework, dispatched, started, ended, exit_code, signal, reason) =
            self;
        Ok(Attempt {
            number: to_u32("run_attempts.number", number)?,
            framework,
            dispatched: parse_ts("run_attempts.dispatched", &dispatched)?,
            started: parse_opt_ts("run_attempts.started", started.as_deref())?,
            ended: parse_opt_ts("run_attempts.ended", ended.as_deref())?,
            exit_code: to_i32("run_attempts.exit_code", exit_code)?,
            signal: to_i32("run_attempts.signal", signal)?,
            reason,
        })
    }
}

/// The state and attempt of run `id`, if it exists.
pub(super) async fn run_state(
    conn: &mut SqliteConnection,
    id: &str,
) -> StoreResult<Option<(RunState, u32)>> {
    let row: Option<(String, i64)> = sqlx::query_as("SELECT state, attempt FROM runs WHERE id = ?")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db)?;
    row.map(|(state, attempt)| {
        Ok((
            parse_state("runs.state", &state)?,
            to_u32("runs.attempt", attempt)?,
        ))
    })
    .transpose()
}

/// Appends the statement reading run `id`, for batches that end with it.
pub(super) fn push_select_run(query: &mut QueryBuilder<Sqlite>, id: &str) {
    query
        .push(format!("SELECT {RUN_COLUMNS} FROM runs r WHERE r.id = "))
        .push_bind(id);
}

/// The run in `rows` (read by [`push_select_run`]), if any.
pub(super) fn first_run(rows: Vec<RunRow>) -> StoreResult<Option<Run>> {
    Ok(assemble(rows)?.into_iter().next())
}

/// Turns run rows into full runs. Keeps the order of `rows`.
fn assemble(rows: Vec<RunRow>) -> StoreResult<Vec<Run>> {
    rows.into_iter().map(RunRow::into_run).collect()
}

fn push_states(query: &mut QueryBuilder<Sqlite>, states: &[RunState]) {
    let mut list = query.separated(", ");
    for state in states {
        list.push_bind(state.as_str());
    }
}

pub(super) async fn create_run(
    conn: &mut SqliteConnection,
    run: Run,
    idempotency: Option<IdempotencyKey>,
) -> StoreResult<Put<Run>> {
    let meta = &run.metadata;
    let status = &run.status;
    let inserted = sqlx::query(
        "INSERT INTO runs (id, project, kind, function_name, task, state, attempt, reason,
             message, results, rerun_of, service, step_of, step, produced_by, workflow, artifacts,
             labels, spec, created, updated, created_by, idempotency_key, request_hash, owner)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&meta.id)
    .bind(&meta.project)
    .bind(&run.kind)
    .bind(&run.spec.function_name)
    .bind(&run.spec.task)
    .bind(status.state.as_str())
    .bind(i64::from(status.attempt))
    .bind(&status.reason)
    .bind(&status.message)
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
    .bind(ts(&meta.created))
    .bind(ts(&meta.updated))
    .bind(&meta.created_by)
    .bind(idempotency.as_ref().map(|k| k.key.as_str()))
    .bind(idempotency.as_ref().map(|k| k.request_hash.as_str()))
    .bind(&status.owner)
    .execute(&mut *conn)
    .await;
    match inserted {
        Ok(_) => {}
        Err(e) if is_foreign_key_violation(&e) => {
            return Err(StoreError::NotFound(format!("project {}", meta.project)))
        }
        // The idempotency key is taken (looked up only now: nearly every insert succeeds), or
        // else the id. The caller holds the write lock: the key's run cannot go away meanwhile.
        Err(e) if is_unique_violation(&e) => {
            if let Some(key) = &idempotency {
                if let Some(earlier) = idempotent_earlier(conn, &meta.project, key).await? {
                    return Ok(earlier);
                }
            }
            return Err(StoreError::Database(format!(
                "run {} already exists",
                meta.id
            )));
        }
        Err(e) => return Err(db(e)),
    }

    // The rest in one batch of statements, a single round trip to the connection's thread
    // (binds are taken in order across statements: the SQLite driver's way, which the
    // conformance suite checks). Rows in chunks well under SQLite's limit on bound parameters
    // per statement.
    let mut batch = QueryBuilder::<Sqlite>::new("");
    for chunk in meta
        .labels
        .iter()
        .collect::<Vec<_>>()
        .chunks(ROWS_PER_INSERT)
    {
        batch.push("INSERT INTO run_labels (run_id, key, value) ");
        batch.push_values(chunk, |mut row, (key, value)| {
            row.push_bind(&meta.id).push_bind(*key).push_bind(*value);
        });
        batch.push(";\n");
    }
    let transitions: Vec<(i64, &Transition)> = (1_i64..).zip(&status.transitions).collect();
    for chunk in transitions.chunks(ROWS_PER_INSERT) {
        batch.push(
            "INSERT INTO run_transitions (run_id, seq, from_state, to_state, attempt, reason,
                 message, at) ",
        );
        batch.push_values(chunk, |mut row, (seq, t)| {
            row.push_bind(&meta.id)
                .push_bind(*seq)
                .push_bind(t.from.map(RunState::as_str))
                .push_bind(t.to.as_str())
                .push_bind(i64::from(t.attempt))
                .push_bind(&t.reason)
                .push_bind(&t.message)
                .push_bind(ts(&t.at));
        });
        batch.push(";\n");
    }
    for chunk in status.attempts.chunks(ROWS_PER_INSERT) {
        batch.push(
            "INSERT INTO run_attempts (run_id, number, framework, dispatched, started, ended,
                 exit_code, signal, reason) ",
        );
        batch.push_values(chunk, |mut row, a| {
            row.push_bind(&meta.id)
                .push_bind(i64::from(a.number))
                .push_bind(&a.framework)
                .push_bind(ts(&a.dispatched))
                .push_bind(a.started.as_ref().map(ts))
                .push_bind(a.ended.as_ref().map(ts))
                .push_bind(a.exit_code)
                .push_bind(a.signal)
                .push_bind(&a.reason);
        });
        batch.push(";\n");
    }
    // One event per initial transition, in the insert's transaction: the log then holds the
    // run's whole history (CREATED, and BUILT/READY when it is created already built).
    events::push_run_created(&mut batch, &run)?;
    batch.build().execute(&mut *conn).await.map_err(db)?;
    Ok(Put {
        value: run,
        created: true,
    })
}

/// The run created earlier with `key`, if any: the same request's (created: false), or an
/// `IdempotencyMismatch` for another request under the same key.
async fn idempotent_earlier(
    conn: &mut SqliteConnection,
    project: &str,
    key: &IdempotencyKey,
) -> StoreResult<Option<Put<Run>>> {
    let earlier: Option<(String, Option<String>)> = sqlx::query_as(
        "SELECT id, request_hash FROM runs WHERE project = ? AND idempotency_key = ?",
    )
    .bind(project)
    .bind(&key.key)
    .fetch_optional(&mut *conn)
    .await
    .map_err(db)?;
    let Some((id, request_hash)) = earlier else {
        return Ok(None);
    };
    if request_hash.as_deref() != Some(key.request_hash.as_str()) {
        return Err(StoreError::IdempotencyMismatch {
            key: key.key.clone(),
            run_id: id,
        });
    }
    let earlier = get_run(conn, Some(project), &id).await?.ok_or_else(|| {
        StoreError::Database(format!("run {id} vanished during an idempotent create"))
    })?;
    Ok(Some(Put {
        value: earlier,
        created: false,
    }))
}

/// The run `id`, restricted to `project` when given (the API always scopes by project; the
/// controller's compare-and-set addresses runs by id alone).
pub(super) async fn get_run(
    conn: &mut SqliteConnection,
    project: Option<&str>,
    id: &str,
) -> StoreResult<Option<Run>> {
    let mut query = QueryBuilder::<Sqlite>::new("");
    push_select_run(&mut query, id);
    if let Some(project) = project {
        query.push(" AND r.project = ").push_bind(project);
    }
    let rows = query
        .build_query_as::<RunRow>()
        .fetch_all(&mut *conn)
        .await
        .map_err(db)?;
    first_run(rows)
}

pub(super) async fn list_runs(conn: &mut SqliteConnection, q: &RunQuery) -> StoreResult<RunPage> {
    let limit = match q.limit {
        0 => DEFAULT_LIMIT,
        n => n.min(MAX_LIMIT),
    };
    let after_id = q.cursor.as_deref().map(cursor::decode).transpose()?;

    let mut query = QueryBuilder::<Sqlite>::new(format!(
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
        query.push(" AND r.state IN (");
        push_states(&mut query, &q.states);
        query.push(")");
    }
    for (key, value) in &q.labels {
        query
            .push(" AND EXISTS (SELECT 1 FROM run_labels l WHERE l.run_id = r.id AND l.key = ")
            .push_bind(key.clone())
            .push(" AND l.value = ")
            .push_bind(value.clone())
            .push(")");
    }
    if let Some(after) = &q.created_after {
        query.push(" AND r.created > ").push_bind(ts(after));
    }
    if let Some(before) = &q.created_before {
        query.push(" AND r.created < ").push_bind(ts(before));
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
        .await
        .map_err(db)?;
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let next_cursor = if more {
        rows.last().map(|row| cursor::encode(&row.id))
    } else {
        None
    };
    Ok(RunPage {
        runs: assemble(rows)?,
        next_cursor,
    })
}

pub(super) async fn runs_in_states(
    conn: &mut SqliteConnection,
    states: &[RunState],
    limit: u32,
) -> StoreResult<Vec<Run>> {
    if states.is_empty() {
        return Ok(Vec::new());
    }
    let limit = if limit == 0 { DEFAULT_LIMIT } else { limit };
    let mut query = QueryBuilder::<Sqlite>::new(format!(
        "SELECT {RUN_COLUMNS} FROM runs r WHERE r.state IN ("
    ));
    push_states(&mut query, states);
    query
        .push(") ORDER BY r.id ASC LIMIT ")
        .push_bind(i64::from(limit));
    let rows = query
        .build_query_as::<RunRow>()
        .fetch_all(&mut *conn)
        .await
        .map_err(db)?;
    assemble(rows)
}

pub(super) async fn count_active(conn: &mut SqliteConnection) -> StoreResult<ActiveCounts> {
    let active: Vec<RunState> = RunState::ALL
        .into_iter()
        .filter(|s| s.is_active())
        .collect();
    let mut query =
        QueryBuilder::<Sqlite>::new("SELECT project, task, COUNT(*) FROM runs WHERE state IN (");
    push_states(&mut query, &active);
    // Workflow runs only start step runs, which hold slots of their own.
    query
        .push(") AND kind <> ")
        .push_bind(runplane_domain::entity::run_kind(
            runplane_domain::workflow::PIPELINE_KIND,
            runplane_domain::workflow::PIPELINE_ACTION,
        ));
    query.push(" GROUP BY project, task");
    let groups: Vec<(String, Option<String>, i64)> =
        query.build_query_as().fetch_all(conn).await.map_err(db)?;
    let mut counts = ActiveCounts::default();
    for (project, task, count) in groups {
        let count = u64::try_from(count)
            .map_err(|e| StoreError::Database(format!("negative count: {e}")))?;
        counts.total += count;
        if let Some(task) = task {
            *counts.per_task.entry((project, task)).or_default() += count;
        }
    }
    Ok(counts)
}

pub(super) async fn delete_run(
    conn: &mut SqliteConnection,
    project: &str,
    id: &str,
) -> StoreResult<bool> {
    // Labels, transitions and attempts go with it (ON DELETE CASCADE).
    let done = sqlx::query("DELETE FROM runs WHERE project = ? AND id = ?")
        .bind(project)
        .bind(id)
        .execute(conn)
        .await
        .map_err(db)?;
    Ok(done.rows_affected() > 0)
}

/// The states in which a run is followed by the replica that owns it.
pub(super) const OWNED_STATES: [RunState; 4] = [
    RunState::Pending,
    RunState::Running,
    RunState::Stop,
    RunState::Deleting,
];

/// The active runs whose owner satisfies `owner_condition` (SQL over `r.owner`, with `?`
/// placeholders bound from `binds` in order), oldest first.
pub(super) async fn active_runs_where(
    conn: &mut SqliteConnection,
    owner_condition: &str,
    binds: &[String],
) -> StoreResult<Vec<Run>> {
    let mut query = QueryBuilder::<Sqlite>::new(format!(
        "SELECT {RUN_COLUMNS} FROM runs r WHERE r.state IN ("
    ));
    push_states(&mut query, &OWNED_STATES);
    query.push(") AND ");
    let mut parts = owner_condition.split('?');
    if let Some(first) = parts.next() {
        query.push(first);
    }
    for (part, value) in parts.zip(binds) {
        query.push_bind(value.clone());
        query.push(part);
    }
    query.push(" ORDER BY r.id ASC");
    let rows = query
        .build_query_as::<RunRow>()
        .fetch_all(&mut *conn)
        .await
        .map_err(db)?;
    assemble(rows)
}
