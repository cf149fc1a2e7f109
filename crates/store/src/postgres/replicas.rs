//! Server replicas' leases and the ownership of active runs.

use super::codec::PgResult;
use super::runs::{active_runs_where, OWNED_STATES};
use super::Write;
use chrono::{DateTime, Utc};
use runplane_domain::Run;
use sqlx::PgConnection;

pub(super) async fn renew_lease(
    w: &mut Write,
    id: &str,
    lease_until: DateTime<Utc>,
) -> PgResult<()> {
    sqlx::query(
        "INSERT INTO replicas (id, lease_until) VALUES ($1, $2)
         ON CONFLICT (id) DO UPDATE SET lease_until = excluded.lease_until",
    )
    .bind(id)
    .bind(lease_until)
    .execute(w.conn())
    .await?;
    Ok(())
}

pub(super) async fn list(conn: &mut PgConnection) -> PgResult<Vec<(String, DateTime<Utc>)>> {
    Ok(
        sqlx::query_as("SELECT id, lease_until FROM replicas ORDER BY id")
            .fetch_all(&mut *conn)
            .await?,
    )
}

/// The guarded UPDATE decides: a run whose owner another adopter already changed no longer
/// matches (READ COMMITTED re-checks the WHERE clause against the committed row), so a run is
/// adopted by exactly one replica.
pub(super) async fn adopt(
    w: &mut Write,
    to: &str,
    expired_before: DateTime<Utc>,
) -> PgResult<Vec<Run>> {
    let states: Vec<&str> = OWNED_STATES.iter().map(|s| s.as_str()).collect();
    let ids: Vec<(String,)> = sqlx::query_as(
        "UPDATE runs SET owner = $1
         WHERE state = ANY($2) AND (owner IS NULL OR (owner <> $1
             AND owner IN (SELECT id FROM replicas WHERE lease_until < $3)))
         RETURNING id",
    )
    .bind(to)
    .bind(&states)
    .bind(expired_before)
    .fetch_all(w.conn())
    .await?;
    sqlx::query("DELETE FROM replicas WHERE id <> $1 AND lease_until < $2")
        .bind(to)
        .bind(expired_before)
        .execute(w.conn())
        .await?;
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<String> = ids.into_iter().map(|(id,)| id).collect();
    active_runs_where(w.conn(), "r.id = ANY($1)", &ids).await
}

pub(super) async fn owned_by(conn: &mut PgConnection, owner: &str) -> PgResult<Vec<Run>> {
    let owner = vec![owner.to_string()];
    active_runs_where(conn, "r.owner = ANY($1)", &owner).await
}
