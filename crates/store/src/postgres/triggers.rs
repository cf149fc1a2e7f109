//! Triggers and their fires. A fire is one transaction: the scheduler's compare-and-set on
//! `next_fire`, the fire records (unique per trigger and dedup key) and the runs they created.

use super::codec::{
    from_json, is_foreign_key_violation, is_unique_violation, now, text, to_json, to_u64, PgResult,
};
use super::{events, runs, Write};
use crate::{FireBatch, StoreError};
use chrono::{DateTime, Utc};
use runplane_domain::trigger::{Fire, Trigger, TriggerMetadata, TriggerStatus};
use sqlx::AssertSqlSafe;
use sqlx::PgConnection;

#[derive(sqlx::FromRow)]
struct TriggerRow {
    project: String,
    name: String,
    kind: String,
    spec: String,
    labels: String,
    paused: bool,
    next_fire: Option<DateTime<Utc>>,
    created: DateTime<Utc>,
    updated: DateTime<Utc>,
    created_by: String,
    last_fire: Option<DateTime<Utc>>,
    fires: i64,
    failed_fires: i64,
}

const SELECT: &str = "SELECT t.project, t.name, t.kind, t.spec, t.labels, t.paused, t.next_fire,
        t.created, t.updated, t.created_by,
        (SELECT MAX(at) FROM trigger_fires f
            WHERE f.project = t.project AND f.trigger_name = t.name) AS last_fire,
        (SELECT COUNT(*) FROM trigger_fires f
            WHERE f.project = t.project AND f.trigger_name = t.name) AS fires,
        (SELECT COUNT(*) FROM trigger_fires f
            WHERE f.project = t.project AND f.trigger_name = t.name
            AND f.error IS NOT NULL) AS failed_fires
     FROM triggers t";

impl TriggerRow {
    fn into_trigger(self) -> PgResult<Trigger> {
        Ok(Trigger {
            kind: self.kind,
            spec: from_json("triggers.spec", &self.spec)?,
            metadata: TriggerMetadata {
                labels: from_json("triggers.labels", &self.labels)?,
                created: self.created,
                updated: self.updated,
                name: self.name,
                project: self.project,
                created_by: self.created_by,
            },
            status: TriggerStatus {
                paused: self.paused,
                next_fire: self.next_fire,
                last_fire: self.last_fire,
                fires: to_u64("fires", self.fires)?,
                failed_fires: to_u64("failed_fires", self.failed_fires)?,
                token: None,
            },
        })
    }
}

pub(super) async fn put_trigger(
    w: &mut Write,
    trigger: &Trigger,
    token_hash: Option<&str>,
) -> PgResult<Trigger> {
    let meta = &trigger.metadata;
    let at = now();
    // An update keeps `created`, `paused` and the token (a re-applied webhook keeps its URL
    // working); `next_fire` is the caller's (recomputed from a possibly new schedule).
    let inserted = sqlx::query(
        "INSERT INTO triggers (project, name, kind, spec, labels, paused, next_fire, token_hash,
             created, updated, created_by)
         VALUES ($1, $2, $3, $4, $5, FALSE, $6, $7, $8, $8, $9)
         ON CONFLICT (project, name) DO UPDATE SET kind = EXCLUDED.kind, spec = EXCLUDED.spec,
             labels = EXCLUDED.labels, next_fire = EXCLUDED.next_fire,
             token_hash = COALESCE(triggers.token_hash, EXCLUDED.token_hash),
             updated = EXCLUDED.updated",
    )
    .bind(&meta.project)
    .bind(&meta.name)
    .bind(&trigger.kind)
    .bind(to_json("spec", &trigger.spec)?)
    .bind(to_json("labels", &meta.labels)?)
    .bind(trigger.status.next_fire)
    .bind(token_hash)
    .bind(at)
    .bind(&meta.created_by)
    .execute(w.conn())
    .await;
    match inserted {
        Ok(_) => {}
        Err(e) if is_foreign_key_violation(&e) => {
            return Err(StoreError::NotFound(format!("project {}", meta.project)).into())
        }
        Err(e) => return Err(e.into()),
    }
    events::trigger_changed(w, &meta.project, &meta.name, "applied", &at);
    Ok(get_trigger(w.conn(), &meta.project, &meta.name)
        .await?
        .ok_or_else(|| StoreError::Database("trigger vanished after its insert".into()))?)
}

pub(super) async fn get_trigger(
    conn: &mut PgConnection,
    project: &str,
    name: &str,
) -> PgResult<Option<Trigger>> {
    let row: Option<TriggerRow> = sqlx::query_as(AssertSqlSafe(format!(
        "{SELECT} WHERE t.project = $1 AND t.name = $2"
    )))
    .bind(project)
    .bind(name)
    .fetch_optional(&mut *conn)
    .await?;
    row.map(TriggerRow::into_trigger).transpose()
}

pub(super) async fn list_triggers(
    conn: &mut PgConnection,
    project: Option<&str>,
) -> PgResult<Vec<Trigger>> {
    let rows: Vec<TriggerRow> = match project {
        Some(project) => {
            sqlx::query_as(AssertSqlSafe(format!(
                "{SELECT} WHERE t.project = $1 ORDER BY t.name"
            )))
            .bind(project)
            .fetch_all(&mut *conn)
            .await?
        }
        None => {
            sqlx::query_as(AssertSqlSafe(format!(
                "{SELECT} ORDER BY t.project, t.name"
            )))
            .fetch_all(&mut *conn)
            .await?
        }
    };
    rows.into_iter().map(TriggerRow::into_trigger).collect()
}

pub(super) async fn delete_trigger(w: &mut Write, project: &str, name: &str) -> PgResult<bool> {
    let done = sqlx::query("DELETE FROM triggers WHERE project = $1 AND name = $2")
        .bind(project)
        .bind(name)
        .execute(w.conn())
        .await?;
    if done.rows_affected() == 0 {
        return Ok(false);
    }
    events::trigger_changed(w, project, name, "deleted", &now());
    Ok(true)
}

pub(super) async fn set_paused(
    w: &mut Write,
    project: &str,
    name: &str,
    paused: bool,
    next_fire: Option<DateTime<Utc>>,
) -> PgResult<Option<Trigger>> {
    let at = now();
    let done = sqlx::query(
        "UPDATE triggers SET paused = $1, next_fire = $2, updated = $3
         WHERE project = $4 AND name = $5",
    )
    .bind(paused)
    .bind(next_fire)
    .bind(at)
    .bind(project)
    .bind(name)
    .execute(w.conn())
    .await?;
    if done.rows_affected() == 0 {
        return Ok(None);
    }
    let change = if paused { "paused" } else { "resumed" };
    events::trigger_changed(w, project, name, change, &at);
    get_trigger(w.conn(), project, name).await
}

pub(super) async fn token_hash(
    conn: &mut PgConnection,
    project: &str,
    name: &str,
) -> PgResult<Option<String>> {
    let row: Option<(Option<String>,)> =
        sqlx::query_as("SELECT token_hash FROM triggers WHERE project = $1 AND name = $2")
            .bind(project)
            .bind(name)
            .fetch_optional(&mut *conn)
            .await?;
    Ok(row.and_then(|(hash,)| hash))
}

/// Ok(false), with the transaction discarded: the compare-and-set on `next_fire` lost, or a
/// dedup key was taken: another fire did this one's work, and nothing is written.
///
/// The compare-and-set is the first statement. Two schedulers (two replicas) firing the same
/// tick both run it; the second waits for the first's row lock, then re-checks
/// `next_fire IS NOT DISTINCT FROM` the tick against the moved value and matches nothing. A
/// dedup key inserted concurrently by another fire makes this insert wait for that fire to
/// end, then fail as a unique violation if it committed.
pub(super) async fn fire(w: &mut Write, batch: &FireBatch) -> PgResult<bool> {
    if let Some((expected, next)) = &batch.next_fire {
        let moved = sqlx::query(
            "UPDATE triggers SET next_fire = $1 WHERE project = $2 AND name = $3 AND NOT paused
                 AND next_fire IS NOT DISTINCT FROM $4",
        )
        .bind(*next)
        .bind(&batch.project)
        .bind(&batch.trigger)
        .bind(*expected)
        .execute(w.conn())
        .await?;
        if moved.rows_affected() == 0 {
            w.discard();
            return Ok(false);
        }
    }
    for (fire, run) in &batch.fires {
        let inserted = sqlx::query(
            "INSERT INTO trigger_fires (id, project, trigger_name, dedup_key, at, scheduled_for,
                 run_id, error)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&fire.id)
        .bind(&batch.project)
        .bind(&batch.trigger)
        .bind(&fire.dedup_key)
        .bind(fire.at)
        .bind(fire.scheduled_for)
        .bind(&fire.run_id)
        .bind(text(fire.error.as_deref()))
        .execute(w.conn())
        .await;
        match inserted {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => {
                w.discard();
                return Ok(false);
            }
            Err(e) => return Err(e.into()),
        }
        if let Some(run) = run {
            runs::create_run(w, run, None).await?;
        }
    }
    Ok(true)
}

#[derive(sqlx::FromRow)]
struct FireRow {
    id: String,
    project: String,
    trigger_name: String,
    dedup_key: String,
    at: DateTime<Utc>,
    scheduled_for: Option<DateTime<Utc>>,
    run_id: Option<String>,
    error: Option<String>,
}

impl From<FireRow> for Fire {
    fn from(row: FireRow) -> Self {
        Fire {
            id: row.id,
            project: row.project,
            trigger: row.trigger_name,
            at: row.at,
            scheduled_for: row.scheduled_for,
            dedup_key: row.dedup_key,
            run_id: row.run_id,
            error: row.error,
        }
    }
}

pub(super) async fn list_fires(
    conn: &mut PgConnection,
    project: &str,
    trigger: &str,
    limit: u32,
) -> PgResult<Vec<Fire>> {
    let limit = if limit == 0 { 100 } else { limit.min(1000) };
    let rows: Vec<FireRow> = sqlx::query_as(
        "SELECT id, project, trigger_name, dedup_key, at, scheduled_for, run_id, error
         FROM trigger_fires WHERE project = $1 AND trigger_name = $2
         ORDER BY at DESC, id DESC LIMIT $3",
    )
    .bind(project)
    .bind(trigger)
    .bind(i64::from(limit))
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows.into_iter().map(Fire::from).collect())
}

pub(super) async fn get_cursor(conn: &mut PgConnection, name: &str) -> PgResult<Option<u64>> {
    let row: Option<(i64,)> = sqlx::query_as("SELECT position FROM cursors WHERE name = $1")
        .bind(name)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(row.map(|(p,)| u64::try_from(p).unwrap_or(0)))
}

pub(super) async fn set_cursor(w: &mut Write, name: &str, position: u64) -> PgResult<()> {
    sqlx::query(
        "INSERT INTO cursors (name, position) VALUES ($1, $2)
         ON CONFLICT (name) DO UPDATE SET position = EXCLUDED.position",
    )
    .bind(name)
    .bind(i64::try_from(position).unwrap_or(i64::MAX))
    .execute(w.conn())
    .await?;
    Ok(())
}
