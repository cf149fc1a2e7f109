//! Artifact versions and the `run_inputs` lineage table. Versions are rows keyed by content
//! hash; the document itself is kept whole as JSON in `body`.

use super::codec::{from_json, is_foreign_key_violation, to_json, PgResult};
use super::{events, Write};
use crate::{Put, StoreError};
use runplane_domain::Artifact;
use sqlx::PgConnection;

fn bodies(rows: Vec<String>) -> PgResult<Vec<Artifact>> {
    rows.iter()
        .map(|body| Ok(from_json("artifacts.body", body)?))
        .collect()
}

pub(super) async fn put_artifact(w: &mut Write, artifact: &Artifact) -> PgResult<Put<Artifact>> {
    let (project, name) = (&artifact.metadata.project, &artifact.metadata.name);
    let mut stored = artifact.clone();
    // Consumers are lineage rows, never part of the stored document.
    stored.status.consumers.clear();
    // The unique (project, name, hash) decides which of concurrent puts of the same content
    // stores it; the others wait for its commit and return its row.
    let inserted = sqlx::query(
        "INSERT INTO artifacts (project, name, version, hash, key, produced_by, created, body)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (project, name, hash) DO NOTHING",
    )
    .bind(project)
    .bind(name)
    .bind(&stored.metadata.version)
    .bind(&stored.spec.hash)
    .bind(&stored.status.key)
    .bind(&stored.status.produced_by)
    .bind(stored.metadata.created)
    .bind(to_json("artifacts.body", &stored)?)
    .execute(w.conn())
    .await;
    match inserted {
        Ok(done) if done.rows_affected() == 1 => {}
        Ok(_) => {
            let body: Option<String> = sqlx::query_scalar(
                "SELECT body FROM artifacts WHERE project = $1 AND name = $2 AND hash = $3",
            )
            .bind(project)
            .bind(name)
            .bind(&artifact.spec.hash)
            .fetch_optional(w.conn())
            .await?;
            let body = body.ok_or_else(|| {
                StoreError::Database(format!(
                    "artifact {project}/{name}: the version with hash {} vanished",
                    artifact.spec.hash
                ))
            })?;
            return Ok(Put {
                value: from_json("artifacts.body", &body)?,
                created: false,
            });
        }
        Err(e) if is_foreign_key_violation(&e) => {
            return Err(StoreError::NotFound(format!("project {project}")).into())
        }
        Err(e) => return Err(e.into()),
    }
    events::artifact_created(w, &stored);
    Ok(Put {
        value: stored,
        created: true,
    })
}

pub(super) async fn get_artifact(
    conn: &mut PgConnection,
    project: &str,
    name: &str,
    version: Option<&str>,
) -> PgResult<Option<Artifact>> {
    let body: Option<String> = match version {
        Some(version) => sqlx::query_scalar(
            "SELECT body FROM artifacts WHERE project = $1 AND name = $2 AND version = $3",
        )
        .bind(project)
        .bind(name)
        .bind(version),
        None => sqlx::query_scalar(
            "SELECT body FROM artifacts WHERE project = $1 AND name = $2
             ORDER BY seq DESC LIMIT 1",
        )
        .bind(project)
        .bind(name),
    }
    .fetch_optional(&mut *conn)
    .await?;
    Ok(body
        .map(|body| from_json("artifacts.body", &body))
        .transpose()?)
}

pub(super) async fn list_artifacts(
    conn: &mut PgConnection,
    project: &str,
    produced_by: Option<&str>,
) -> PgResult<Vec<Artifact>> {
    let rows: Vec<String> = match produced_by {
        Some(run_id) => sqlx::query_scalar(
            "SELECT body FROM artifacts WHERE project = $1 AND produced_by = $2
             ORDER BY name, seq DESC",
        )
        .bind(project)
        .bind(run_id),
        None => sqlx::query_scalar(
            "SELECT body FROM artifacts a WHERE project = $1
               AND seq = (SELECT MAX(seq) FROM artifacts b
                          WHERE b.project = a.project AND b.name = a.name)
             ORDER BY name",
        )
        .bind(project),
    }
    .fetch_all(&mut *conn)
    .await?;
    bodies(rows)
}

pub(super) async fn artifact_versions(
    conn: &mut PgConnection,
    project: &str,
    name: &str,
) -> PgResult<Vec<Artifact>> {
    let rows: Vec<String> = sqlx::query_scalar(
        "SELECT body FROM artifacts WHERE project = $1 AND name = $2 ORDER BY seq DESC",
    )
    .bind(project)
    .bind(name)
    .fetch_all(&mut *conn)
    .await?;
    bodies(rows)
}

pub(super) async fn delete_artifact(
    w: &mut Write,
    project: &str,
    name: &str,
) -> PgResult<Vec<Artifact>> {
    // One statement: the versions returned are exactly the ones removed, even if another
    // version is being stored at the same moment.
    let mut rows: Vec<(i64, String)> = sqlx::query_as(
        "DELETE FROM artifacts WHERE project = $1 AND name = $2 RETURNING seq, body",
    )
    .bind(project)
    .bind(name)
    .fetch_all(w.conn())
    .await?;
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    // Newest first, like `artifact_versions`.
    rows.sort_by_key(|(seq, _)| std::cmp::Reverse(*seq));
    let versions = bodies(rows.into_iter().map(|(_, body)| body).collect())?;
    events::artifact_deleted(w, project, name);
    Ok(versions)
}

pub(super) async fn put_run_inputs(
    w: &mut Write,
    project: &str,
    run_id: &str,
    inputs: &std::collections::BTreeMap<String, String>,
) -> PgResult<()> {
    for (param, key) in inputs {
        sqlx::query(
            "INSERT INTO run_inputs (project, run_id, param, key) VALUES ($1, $2, $3, $4)
             ON CONFLICT (run_id, param) DO UPDATE SET key = EXCLUDED.key",
        )
        .bind(project)
        .bind(run_id)
        .bind(param)
        .bind(key)
        .execute(w.conn())
        .await?;
    }
    Ok(())
}

pub(super) async fn artifact_consumers(
    conn: &mut PgConnection,
    key: &str,
) -> PgResult<Vec<String>> {
    Ok(
        sqlx::query_scalar("SELECT DISTINCT run_id FROM run_inputs WHERE key = $1 ORDER BY run_id")
            .bind(key)
            .fetch_all(conn)
            .await?,
    )
}
