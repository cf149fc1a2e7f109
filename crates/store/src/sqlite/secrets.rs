//! Secrets: `(project, name)` → ciphertext. Only metadata ever leaves this module except
//! through `get_secret_ciphertext`, and events never carry the value.

use super::codec::{db, is_foreign_key_violation, now, parse_ts, ts};
use super::events;
use crate::{StoreError, StoreResult};
use runplane_domain::SecretMeta;
use sqlx::AssertSqlSafe;
use sqlx::SqliteConnection;

/// Every column but `value`: listings must not even read the ciphertext.
const META_COLUMNS: &str = "project, name, created, updated, created_by";

#[derive(sqlx::FromRow)]
struct SecretRow {
    project: String,
    name: String,
    created: String,
    updated: String,
    created_by: String,
}

impl SecretRow {
    fn into_meta(self) -> StoreResult<SecretMeta> {
        Ok(SecretMeta {
            created: parse_ts("secrets.created", &self.created)?,
            updated: parse_ts("secrets.updated", &self.updated)?,
            project: self.project,
            name: self.name,
            created_by: self.created_by,
        })
    }
}

pub(super) async fn put_secret(
    conn: &mut SqliteConnection,
    project: &str,
    name: &str,
    ciphertext: &[u8],
    caller: &str,
) -> StoreResult<SecretMeta> {
    let at = now();
    // A replaced value keeps `created` and `created_by`: they tell when and by whom the name
    // appeared; `updated` tells when the value last changed.
    let upserted = sqlx::query_as::<_, SecretRow>(AssertSqlSafe(format!(
        "INSERT INTO secrets (project, name, value, created, updated, created_by)
         VALUES (?, ?, ?, ?, ?, ?)
         ON CONFLICT (project, name) DO UPDATE SET
             value = excluded.value, updated = excluded.updated
         RETURNING {META_COLUMNS}"
    )))
    .bind(project)
    .bind(name)
    .bind(ciphertext)
    .bind(ts(&at))
    .bind(ts(&at))
    .bind(caller)
    .fetch_one(&mut *conn)
    .await;
    let meta = match upserted {
        Ok(row) => row.into_meta()?,
        Err(e) if is_foreign_key_violation(&e) => {
            return Err(StoreError::NotFound(format!("project {project}")))
        }
        Err(e) => return Err(db(e)),
    };
    events::secret_changed(conn, project, name, false, &meta.updated).await?;
    Ok(meta)
}

pub(super) async fn get_secret_ciphertext(
    conn: &mut SqliteConnection,
    project: &str,
    name: &str,
) -> StoreResult<Option<Vec<u8>>> {
    sqlx::query_scalar("SELECT value FROM secrets WHERE project = ? AND name = ?")
        .bind(project)
        .bind(name)
        .fetch_optional(conn)
        .await
        .map_err(db)
}

pub(super) async fn get_secret(
    conn: &mut SqliteConnection,
    project: &str,
    name: &str,
) -> StoreResult<Option<SecretMeta>> {
    sqlx::query_as::<_, SecretRow>(AssertSqlSafe(format!(
        "SELECT {META_COLUMNS} FROM secrets WHERE project = ? AND name = ?"
    )))
    .bind(project)
    .bind(name)
    .fetch_optional(conn)
    .await
    .map_err(db)?
    .map(SecretRow::into_meta)
    .transpose()
}

pub(super) async fn list_secrets(
    conn: &mut SqliteConnection,
    project: &str,
) -> StoreResult<Vec<SecretMeta>> {
    sqlx::query_as::<_, SecretRow>(AssertSqlSafe(format!(
        "SELECT {META_COLUMNS} FROM secrets WHERE project = ? ORDER BY name"
    )))
    .bind(project)
    .fetch_all(conn)
    .await
    .map_err(db)?
    .into_iter()
    .map(SecretRow::into_meta)
    .collect()
}

pub(super) async fn delete_secret(
    conn: &mut SqliteConnection,
    project: &str,
    name: &str,
) -> StoreResult<bool> {
    let deleted = sqlx::query("DELETE FROM secrets WHERE project = ? AND name = ?")
        .bind(project)
        .bind(name)
        .execute(&mut *conn)
        .await
        .map_err(db)?;
    if deleted.rows_affected() == 0 {
        return Ok(false);
    }
    events::secret_changed(conn, project, name, true, &now()).await?;
    Ok(true)
}
