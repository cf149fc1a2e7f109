//! Server replicas' leases and the ownership of active runs. A SQLite store has one server
//! process (the home is locked), so on SQLite this only carries ownership across restarts.

use super::codec::{db, parse_ts, ts};
use super::runs::active_runs_where;
use crate::StoreResult;
use chrono::{DateTime, Utc};
use runplane_domain::Run;
use sqlx::SqliteConnection;

pub(super) async fn renew_lease(
    conn: &mut SqliteConnection,
    id: &str,
    lease_until: &DateTime<Utc>,
) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO replicas (id, lease_until) VALUES (?, ?)
         ON CONFLICT (id) DO UPDATE SET lease_until = excluded.lease_until",
    )
    .bind(id)
    .bind(ts(lease_until))
    .execute(&mut *conn)
    .await
    .map_err(db)?;
    Ok(())
}

pub(super) async fn list(conn: &mut SqliteConnection) -> StoreResult<Vec<(String, DateTime<Utc>)>> {
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT id, lease_until FROM replicas ORDER BY id")
            .fetch_all(&mut *conn)
            .await
            .map_err(db)?;
    rows.into_iter()
        .map(|(id, until)| Ok((id, parse_ts("lease_until", &until)?)))
        .collect()
}

/// Inside the caller's write transaction.
pub(super) async fn adopt(
    conn: &mut SqliteConnection,
    to: &str,
    expired_before: &DateTime<Utc>,
) -> StoreResult<Vec<Run>> {
    let expired = ts(expired_before);
    // A replica's record only goes away here, together with its runs: an owner without a
    // record cannot be left behind.
    let orphaned = "(r.owner IS NULL OR (r.owner <> ? \
                    AND r.owner IN (SELECT id FROM replicas WHERE lease_until < ?)))";
    let runs = active_runs_where(conn, orphaned, &[to.to_string(), expired.clone()]).await?;
    for run in &runs {
        sqlx::query("UPDATE runs SET owner = ? WHERE id = ?")
            .bind(to)
            .bind(&run.metadata.id)
            .execute(&mut *conn)
            .await
            .map_err(db)?;
    }
    sqlx::query("DELETE FROM replicas WHERE id <> ? AND lease_until < ?")
        .bind(to)
        .bind(&expired)
        .execute(&mut *conn)
        .await
        .map_err(db)?;
    Ok(runs)
}

pub(super) async fn owned_by(conn: &mut SqliteConnection, owner: &str) -> StoreResult<Vec<Run>> {
    active_runs_where(conn, "r.owner = ?", &[owner.to_string()]).await
}
