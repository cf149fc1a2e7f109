//! Secrets: `(project, name)` → ciphertext. Only metadata ever leaves this module except
//! through `get_secret_ciphertext`, and events never carry the value.

use super::codec::{is_foreign_key_violation, now, PgResult};
use super::{events, Write};
use crate::StoreError;
use chrono::{DateTime, Utc};
use runplane_domain::SecretMeta;
use sqlx::AssertSqlSafe;
use sqlx::PgConnection;

/// Every column but `value`: listings must not even read the ciphertext.
const META_COLUMNS: &str = "project, name, created, updated, created_by";

#[derive(sqlx::FromRow)]
struct SecretRow {
    project: String,
    name: String,
    created: DateTime<Utc>,
    updated: DateTime<Utc>,
    created_by: String,
}

impl From<SecretRow> for SecretMeta {
    fn from(row: SecretRow) -> Self {
        SecretMeta {
            project: row.project,
            name: row.name,
            created: row.created,
            updated: row.updated,
            created_by: row.created_by,
        }
    }
}

pub(super) async fn put_secret(
    w: &mut Write,
    project: &str,
    name: &str,
    ciphertext: &[u8],
    caller: &str,
) -> PgResult<SecretMeta> {
    let at = now();
    // A replaced value keeps `created` and `created_by`: they tell when and by whom the name
    // appeared; `updated` tells when the value last changed.
    let upserted = sqlx::query_as::<_, SecretRow>(AssertSqlSafe(format!(
        "INSERT INTO secrets (project, name, value, created, updated, created_by)
         VALUES ($1, $2, $3, $4, $4, $5)
         ON CONFLICT (project, name) DO UPDATE SET
             value = EXCLUDED.value, updated = EXCLUDED.updated
         RETURNING {META_COLUMNS}"
    )))
    .bind(project)
    .bind(name)
    .bind(ciphertext)
    .bind(at)
    .bind(caller)
    .fetch_one(w.conn())
    .await;
    let meta = match upserted {
        Ok(row) => SecretMeta::from(row),
        Err(e) if is_foreign_key_violation(&e) => {
            return Err(StoreError::NotFound(format!("project {project}")).into())
        }
        Err(e) => return Err(e.into()),
    };
    events::secret_changed(w, project, name, false, &meta.updated);
    Ok(meta)
}

pub(super) async fn get_secret_ciphertext(
    conn: &mut PgConnection,
    project: &str,
    name: &str,
) -> PgResult<Option<Vec<u8>>> {
    Ok(
        sqlx::query_scalar("SELECT value FROM secrets WHERE project = $1 AND name = $2")
            .bind(project)
            .bind(name)
            .fetch_optional(conn)
            .await?,
    )
}

pub(super) async fn get_secret(
    conn: &mut PgConnection,
    project: &str,
    name: &str,
) -> PgResult<Option<SecretMeta>> {
    let row = sqlx::query_as::<_, SecretRow>(AssertSqlSafe(format!(
        "SELECT {META_COLUMNS} FROM secrets WHERE project = $1 AND name = $2"
    )))
    .bind(project)
    .bind(name)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(SecretMeta::from))
}

pub(super) async fn list_secrets(
    conn: &mut PgConnection,
    project: &str,
) -> PgResult<Vec<SecretMeta>> {
    let rows = sqlx::query_as::<_, SecretRow>(AssertSqlSafe(format!(
        "SELECT {META_COLUMNS} FROM secrets WHERE project = $1 ORDER BY name"
    )))
    .bind(project)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(SecretMeta::from).collect())
}

pub(super) async fn delete_secret(w: &mut Write, project: &str, name: &str) -> PgResult<bool> {
    let deleted = sqlx::query("DELETE FROM secrets WHERE project = $1 AND name = $2")
        .bind(project)
        .bind(name)
        .execute(w.conn())
        .await?;
    if deleted.rows_affected() == 0 {
        return Ok(false);
    }
    events::secret_changed(w, project, name, true, &now());
    Ok(true)
}
