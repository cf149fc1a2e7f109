//! Artifact versions and the `run_inputs` lineage table (migration 0007). Versions are rows
//! keyed by content hash; the document itself is kept whole as JSON in `body`.

use super::codec::{db, from_json, is_foreign_key_violation, to_json, ts};
use super::events;
use crate::{Put, StoreError, StoreResult};
use runplane_domain::Artifact;
use sqlx::SqliteConnection;

fn bodies(rows: Vec<String>) -> StoreResult<Vec<Artifact>> {
    rows.iter()
        .map(|body| from_json("artifacts.body", body))
        .collect()
}

pub(super) async fn put_artifact(
    conn: &mut SqliteConnection,
    artifact: Artifact,
) -> StoreResult<Put<Artifact>> {
    let (project, name) = (&artifact.metadata.project, &artifact.metadata.name);
    let existing: Option<String> = sqlx::query_scalar(
        "SELECT body FROM artifacts WHERE project = ? AND name = ? AND hash = ?",
    )
    .bind(project)
    .bind(name)
    .bind(&artifact.spec.hash)
    .fetch_optional(&mut *conn)
    .await
    .map_err(db)?;
    if let Some(body) = existing {
        return Ok(Put {
            value: from_json("artifacts.body", &body)?,
            created: false,
        });
    }
    let mut stored = artifact.clone();
    // Consumers are lineage rows, never part of the stored document.
    stored.status.consumers.clear();
    let inserted = sqlx::query(
        "INSERT INTO artifacts (project, name, version, hash, key, produced_by, created, body)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(project)
    .bind(name)
    .bind(&stored.metadata.version)
    .bind(&stored.spec.hash)
    .bind(&stored.status.key)
    .bind(&stored.status.produced_by)
    .bind(ts(&stored.metadata.created))
    .bind(to_json("artifacts.body", &stored)?)
    .execute(&mut *conn)
    .await;
    match inserted {
        Ok(_) => {}
        Err(e) if is_foreign_key_violation(&e) => {
            return Err(StoreError::NotFound(format!("project {project}")))
        }
        Err(e) => return Err(db(e)),
    }
    events::artifact_created(conn, &stored).await?;
    Ok(Put {
        value: stored,
        created: true,
    })
}

pub(super) async fn get_artifact(
    conn: &mut SqliteConnection,
    project: &str,
    name: &str,
    version: Option<&str>,
) -> StoreResult<Option<Artifact>> {
    let body: Option<String> = match version {
        Some(version) => sqlx::query_scalar(
            "SELECT body FROM artifacts WHERE project = ? AND name = ? AND version = ?",
        )
        .bind(project)
        .bind(name)
        .bind(version),
        None => sqlx::query_scalar(
            "SELECT body FROM artifacts WHERE project = ? AND name = ? ORDER BY seq DESC LIMIT 1",
        )
        .bind(project)
        .bind(name),
    }
    .fetch_optional(&mut *conn)
    .await
    .map_err(db)?;
    body.map(|body| from_json("artifacts.body", &body))
        .transpose()
}

pub(super) async fn list_artifacts(
    conn: &mut SqliteConnection,
    project: &str,
    produced_by: Option<&str>,
) -> StoreResult<Vec<Artifact>> {
    let rows: Vec<String> = match produced_by {
        Some(run_id) => sqlx::query_scalar(
            "SELECT body FROM artifacts WHERE project = ? AND produced_by = ? ORDER BY name, seq DESC",
        )
        .bind(project)
        .bind(run_id),
        None => sqlx::query_scalar(
            "SELECT body FROM artifacts a WHERE project = ?
               AND seq = (SELECT MAX(seq) FROM artifacts b WHERE b.project = a.project AND b.name = a.name)
             ORDER BY name",
        )
        .bind(project),
    }
    .fetch_all(&mut *conn)
    .await
    .map_err(db)?;
    bodies(rows)
}

pub(super) async fn artifact_versions(
    conn: &mut SqliteConnection,
    project: &str,
    name: &str,
) -> StoreResult<Vec<Artifact>> {
    let rows: Vec<String> = sqlx::query_scalar(
        "SELECT body FROM artifacts WHERE project = ? AND name = ? ORDER BY seq DESC",
    )
    .bind(project)
    .bind(name)
    .fetch_all(&mut *conn)
    .await
    .map_err(db)?;
    bodies(rows)
}

pub(super) async fn delete_artifact(
    conn: &mut SqliteConnection,
    project: &str,
    name: &str,
) -> StoreResult<Vec<Artifact>> {
    let versions = artifact_versions(conn, project, name).await?;
    if versions.is_empty() {
        return Ok(versions);
    }
    sqlx::query("DELETE FROM artifacts WHERE project = ? AND name = ?")
        .bind(project)
        .bind(name)
        .execute(&mut *conn)
        .await
        .map_err(db)?;
    events::artifact_deleted(conn, project, name).await?;
    Ok(versions)
}

pub(super) async fn put_run_inputs(
    conn: &mut SqliteConnection,
    project: &str,
    run_id: &str,
    inputs: &std::collections::BTreeMap<String, String>,
) -> StoreResult<()> {
    for (param, key) in inputs {
        sqlx::query(
            "INSERT INTO run_inputs (project, run_id, param, key) VALUES (?, ?, ?, ?)
             ON CONFLICT (run_id, param) DO UPDATE SET key = excluded.key",
        )
        .bind(project)
        .bind(run_id)
        .bind(param)
        .bind(key)
        .execute(&mut *conn)
        .await
        .map_err(db)?;
    }
    Ok(())
}

pub(super) async fn artifact_consumers(
    conn: &mut SqliteConnection,
    key: &str,
) -> StoreResult<Vec<String>> {
    sqlx::query_scalar("SELECT DISTINCT run_id FROM run_inputs WHERE key = ? ORDER BY run_id")
        .bind(key)
        .fetch_all(conn)
        .await
        .map_err(db)
}
