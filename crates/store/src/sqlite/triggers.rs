//! Triggers and their fires. A fire is one transaction: the scheduler's compare-and-set on
//! `next_fire`, the fire records (unique per trigger and dedup key) and the runs they created.

use super::codec::{db, from_json, is_unique_violation, now, parse_opt_ts, parse_ts, to_json, ts};
use super::{events, runs};
use crate::{FireBatch, StoreError, StoreResult};
use chrono::{DateTime, Utc};
use runplane_domain::trigger::{Fire, Trigger, TriggerMetadata, TriggerStatus};
use sqlx::AssertSqlSafe;
use sqlx::SqliteConnection;

#[derive(sqlx::FromRow)]
struct TriggerRow {
    project: String,
    name: String,
    kind: String,
    spec: String,
    labels: String,
    paused: i64,
    next_fire: Option<String>,
    created: String,
    updated: String,
    created_by: String,
    last_fire: Option<String>,
    fires: i64,
    failed_fires: i64,
}

const SELECT: &str = "SELECT t.project, t.name, t.kind, t.spec, t.labels, t.paused, t.next_fire,
        t.created, t.updated, t.created_by,
        (SELECT MAX(at) FROM trigger_fires f WHERE f.project = t.project AND f.trigger_name = t.name) AS last_fire,
        (SELECT COUNT(*) FROM trigger_fires f WHERE f.project = t.project AND f.trigger_name = t.name) AS fires,
        (SELECT COUNT(*) FROM trigger_fires f WHERE f.project = t.project AND f.trigger_name = t.name
            AND f.error IS NOT NULL) AS failed_fires
     FROM triggers t";

impl TriggerRow {
    fn into_trigger(self) -> StoreResult<Trigger> {
        Ok(Trigger {
            kind: self.kind,
            spec: from_json("triggers.spec", &self.spec)?,
            metadata: TriggerMetadata {
                labels: from_json("triggers.labels", &self.labels)?,
                created: parse_ts("triggers.created", &self.created)?,
                updated: parse_ts("triggers.updated", &self.updated)?,
                name: self.name,
                project: self.project,
                created_by: self.created_by,
            },
            status: TriggerStatus {
                paused: self.paused != 0,
                next_fire: parse_opt_ts("triggers.next_fire", self.next_fire.as_deref())?,
                last_fire: parse_opt_ts("trigger_fires.at", self.last_fire.as_deref())?,
                fires: u64::try_from(self.fires).unwrap_or(0),
                failed_fires: u64::try_from(self.failed_fires).unwrap_or(0),
                token: None,
            },
        })
    }
}

pub(super) async fn put_trigger(
    conn: &mut SqliteConnection,
    trigger: &Trigger,
    token_hash: Option<&str>,
) -> StoreResult<Trigger> {
    let meta = &trigger.metadata;
    let at = now();
    // An update keeps `created`, `paused` and the token (a re-applied webhook keeps its URL
    // working); `next_fire` is the caller's (recomputed from a possibly new schedule).
    let inserted = sqlx::query(
        "INSERT INTO triggers (project, name, kind, spec, labels, paused, next_fire, token_hash,
             created, updated, created_by)
         VALUES (?, ?, ?, ?, ?, 0, ?, ?, ?, ?, ?)
         ON CONFLICT (project, name) DO UPDATE SET kind = excluded.kind, spec = excluded.spec,
             labels = excluded.labels, next_fire = excluded.next_fire,
             token_hash = COALESCE(triggers.token_hash, excluded.token_hash),
             updated = excluded.updated",
    )
    .bind(&meta.project)
    .bind(&meta.name)
    .bind(&trigger.kind)
    .bind(to_json("spec", &trigger.spec)?)
    .bind(to_json("labels", &meta.labels)?)
    .bind(trigger.status.next_fire.as_ref().map(ts))
    .bind(token_hash)
    .bind(ts(&at))
    .bind(ts(&at))
    .bind(&meta.created_by)
    .execute(&mut *conn)
    .await;
    match inserted {
        Ok(_) => {}
        Err(e) if super::codec::is_foreign_key_violation(&e) => {
            return Err(StoreError::NotFound(format!("project {}", meta.project)))
        }
        Err(e) => return Err(db(e)),
    }
    events::trigger_changed(conn, &meta.project, &meta.name, "applied", &at).await?;
    get_trigger(conn, &meta.project, &meta.name)
        .await?
        .ok_or_else(|| StoreError::Database("trigger vanished after its insert".into()))
}

pub(super) async fn get_trigger(
    conn: &mut SqliteConnection,
    project: &str,
    name: &str,
) -> StoreResult<Option<Trigger>> {
    let row: Option<TriggerRow> = sqlx::query_as(AssertSqlSafe(format!(
        "{SELECT} WHERE t.project = ? AND t.name = ?"
    )))
    .bind(project)
    .bind(name)
    .fetch_optional(&mut *conn)
    .await
    .map_err(db)?;
    row.map(TriggerRow::into_trigger).transpose()
}

pub(super) async fn list_triggers(
    conn: &mut SqliteConnection,
    project: Option<&str>,
) -> StoreResult<Vec<Trigger>> {
    let rows: Vec<TriggerRow> = match project {
        Some(project) => {
            sqlx::query_as(AssertSqlSafe(format!(
                "{SELECT} WHERE t.project = ? ORDER BY t.name"
            )))
            .bind(project)
            .fetch_all(&mut *conn)
            .await
        }
        None => {
            sqlx::query_as(AssertSqlSafe(format!(
                "{SELECT} ORDER BY t.project, t.name"
            )))
            .fetch_all(&mut *conn)
            .await
        }
    }
    .map_err(db)?;
    rows.into_iter().map(TriggerRow::into_trigger).collect()
}

pub(super) async fn delete_trigger(
    conn: &mut SqliteConnection,
    project: &str,
    name: &str,
) -> StoreResult<bool> {
    let done = sqlx::query("DELETE FROM triggers WHERE project = ? AND name = ?")
        .bind(project)
        .bind(name)
        .execute(&mut *conn)
        .await
        .map_err(db)?;
    if done.rows_affected() == 0 {
        return Ok(false);
    }
    events::trigger_changed(conn, project, name, "deleted", &now()).await?;
    Ok(true)
}

pub(super) async fn set_paused(
    conn: &mut SqliteConnection,
    project: &str,
    name: &str,
    paused: bool,
    next_fire: Option<DateTime<Utc>>,
) -> StoreResult<Option<Trigger>> {
    let at = now();
    let done = sqlx::query(
        "UPDATE triggers SET paused = ?, next_fire = ?, updated = ? WHERE project = ? AND name = ?",
    )
    .bind(i64::from(paused))
    .bind(next_fire.as_ref().map(ts))
    .bind(ts(&at))
    .bind(project)
    .bind(name)
    .execute(&mut *conn)
    .await
    .map_err(db)?;
    if done.rows_affected() == 0 {
        return Ok(None);
    }
    let change = if paused { "paused" } else { "resumed" };
    events::trigger_changed(conn, project, name, change, &at).await?;
    get_trigger(conn, project, name).await
}

pub(super) async fn token_hash(
    conn: &mut SqliteConnection,
    project: &str,
    name: &str,
) -> StoreResult<Option<String>> {
    let row: Option<(Option<String>,)> =
        sqlx::query_as("SELECT token_hash FROM triggers WHERE project = ? AND name = ?")
            .bind(project)
            .bind(name)
            .fetch_optional(&mut *conn)
            .await
            .map_err(db)?;
    Ok(row.and_then(|(hash,)| hash))
}

/// Ok(false): the compare-and-set on `next_fire` lost, or a dedup key was taken: another
/// fire did this one's work, and nothing was written.
pub(super) async fn fire(conn: &mut SqliteConnection, batch: FireBatch) -> StoreResult<bool> {
    if let Some((expected, next)) = &batch.next_fire {
        let moved = sqlx::query(
            "UPDATE triggers SET next_fire = ? WHERE project = ? AND name = ? AND paused = 0
                 AND next_fire IS ?",
        )
        .bind(next.as_ref().map(ts))
        .bind(&batch.project)
        .bind(&batch.trigger)
        .bind(expected.as_ref().map(ts))
        .execute(&mut *conn)
        .await
        .map_err(db)?;
        if moved.rows_affected() == 0 {
            return Ok(false);
        }
    }
    for (fire, run) in batch.fires {
        let inserted = sqlx::query(
            "INSERT INTO trigger_fires (id, project, trigger_name, dedup_key, at, scheduled_for,
                 run_id, error)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&fire.id)
        .bind(&batch.project)
        .bind(&batch.trigger)
        .bind(&fire.dedup_key)
        .bind(ts(&fire.at))
        .bind(fire.scheduled_for.as_ref().map(ts))
        .bind(&fire.run_id)
        .bind(&fire.error)
        .execute(&mut *conn)
        .await;
        match inserted {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => return Ok(false),
            Err(e) => return Err(db(e)),
        }
        if let Some(run) = run {
            runs::create_run(conn, run, None).await?;
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
    at: String,
    scheduled_for: Option<String>,
    run_id: Option<String>,
    error: Option<String>,
}

pub(super) async fn list_fires(
    conn: &mut SqliteConnection,
    project: &str,
    trigger: &str,
    limit: u32,
) -> StoreResult<Vec<Fire>> {
    let limit = if limit == 0 { 100 } else { limit.min(1000) };
    let rows: Vec<FireRow> = sqlx::query_as(
        "SELECT id, project, trigger_name, dedup_key, at, scheduled_for, run_id, error
         FROM trigger_fires WHERE project = ? AND trigger_name = ?
         ORDER BY at DESC, id DESC LIMIT ?",
    )
    .bind(project)
    .bind(trigger)
    .bind(i64::from(limit))
    .fetch_all(&mut *conn)
    .await
    .map_err(db)?;
    rows.into_iter()
        .map(|row| {
            Ok(Fire {
                at: parse_ts("trigger_fires.at", &row.at)?,
                scheduled_for: parse_opt_ts(
                    "trigger_fires.scheduled_for",
                    row.scheduled_for.as_deref(),
                )?,
                id: row.id,
                project: row.project,
                trigger: row.trigger_name,
                dedup_key: row.dedup_key,
                run_id: row.run_id,
                error: row.error,
            })
        })
        .collect()
}

pub(super) async fn get_cursor(
    conn: &mut SqliteConnection,
    name: &str,
) -> StoreResult<Option<u64>> {
    let row: Option<(i64,)> = sqlx::query_as("SELECT position FROM cursors WHERE name = ?")
        .bind(name)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db)?;
    Ok(row.map(|(p,)| u64::try_from(p).unwrap_or(0)))
}

pub(super) async fn set_cursor(
    conn: &mut SqliteConnection,
    name: &str,
    position: u64,
) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO cursors (name, position) VALUES (?, ?)
         ON CONFLICT (name) DO UPDATE SET position = excluded.position",
    )
    .bind(name)
    .bind(i64::try_from(position).unwrap_or(i64::MAX))
    .execute(&mut *conn)
    .await
    .map_err(db)?;
    Ok(())
}
