//! Test support: a fresh, empty database per test on the PostgreSQL server named by
//! `RUNPLANE_TEST_PG_URL` (default [`DEFAULT_TEST_URL`], the cluster `scripts/setup-postgres`
//! starts). Shared by this crate's PostgreSQL tests and by any crate that wants to run its
//! tests on PostgreSQL.
//!
//! These functions panic instead of returning errors: they are test fixtures, and a test whose
//! database cannot be made must fail (never be skipped), saying what to do about it.

use super::{PostgresOptions, PostgresStore};
use sqlx::AssertSqlSafe;
use sqlx::{Connection, PgConnection};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The environment variable naming the test server (a URL whose database the tests connect
/// to in order to create theirs; the role must be allowed to create databases).
pub const TEST_URL_VAR: &str = "RUNPLANE_TEST_PG_URL";
/// The server `scripts/setup-postgres` starts.
pub const DEFAULT_TEST_URL: &str = "postgres://runplane@127.0.0.1:55432/postgres";
/// Test databases are named `rp_test_<unix seconds>_<pid>_<random>`.
const PREFIX: &str = "rp_test_";
/// Test databases older than this are dropped whoever made them.
const MAX_AGE_SECONDS: u64 = 6 * 3600;

/// The test server's URL.
pub fn server_url() -> String {
    std::env::var(TEST_URL_VAR).unwrap_or_else(|_| DEFAULT_TEST_URL.to_string())
}

/// A new, empty store in a database of its own, with the default pool settings.
pub async fn fresh_store() -> PostgresStore {
    fresh_store_with(PostgresOptions::default()).await
}

/// A new, empty store in a database of its own.
pub async fn fresh_store_with(options: PostgresOptions) -> PostgresStore {
    let url = fresh_database().await;
    PostgresStore::connect_with(&url, options)
        .await
        .unwrap_or_else(|e| panic!("cannot open the test database {url}: {e}"))
}

/// Creates a new, empty database on the test server and returns its URL. The first call of a
/// process also drops the test databases left behind by earlier test processes.
pub async fn fresh_database() -> String {
    let server = server_url();
    let mut admin = PgConnection::connect(&server).await.unwrap_or_else(|e| {
        panic!(
            "PostgreSQL is not reachable at {server} ({e}). The PostgreSQL tests need a server: \
             run `scripts/setup-postgres` (as root; `scripts/setup` runs it too), or point \
             {TEST_URL_VAR} at a server where the role may create databases."
        )
    });
    static CLEANED: AtomicBool = AtomicBool::new(false);
    if !CLEANED.swap(true, Ordering::SeqCst) {
        drop_leftovers(&mut admin, &server).await;
    }
    let name = format!(
        "{PREFIX}{}_{}_{}",
        unix_seconds(),
        std::process::id(),
        &uuid::Uuid::now_v7().simple().to_string()[20..]
    );
    sqlx::query(AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&mut admin)
        .await
        .unwrap_or_else(|e| panic!("cannot create the test database {name} on {server}: {e}"));
    // Closing is a courtesy; the database exists whatever happens to this connection.
    let _ = admin.close().await;
    with_database(&server, &name)
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Drops test databases whose process is gone (when the server is on this machine, where
/// their pid can be checked) or that are older than [`MAX_AGE_SECONDS`]. Errors are ignored:
/// another test process may be dropping the same ones.
async fn drop_leftovers(admin: &mut PgConnection, server: &str) {
    let names: Vec<String> = match sqlx::query_scalar(
        "SELECT datname FROM pg_database WHERE datname LIKE 'rp\\_test\\_%'",
    )
    .fetch_all(&mut *admin)
    .await
    {
        Ok(names) => names,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list old test databases");
            return;
        }
    };
    let local = is_loopback(server);
    let now = unix_seconds();
    for name in names {
        let Some((made, pid)) = parse_name(&name) else {
            continue;
        };
        let too_old = now.saturating_sub(made) > MAX_AGE_SECONDS;
        let orphan = local
            && pid != std::process::id()
            && !std::path::Path::new(&format!("/proc/{pid}")).exists();
        if too_old || orphan {
            let dropped = sqlx::query(AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
            )))
            .execute(&mut *admin)
            .await;
            if let Err(e) = dropped {
                tracing::debug!(database = %name, error = %e, "cannot drop an old test database");
            }
        }
    }
}

/// (unix seconds, pid) of a test database's name.
fn parse_name(name: &str) -> Option<(u64, u32)> {
    let rest = name.strip_prefix(PREFIX)?;
    let mut parts = rest.split('_');
    let made = parts.next()?.parse().ok()?;
    let pid = parts.next()?.parse().ok()?;
    Some((made, pid))
}

fn is_loopback(url: &str) -> bool {
    let host = url
        .split_once("://")
        .map(|(_, rest)| rest)
        .unwrap_or(url)
        .split(['/', '?'])
        .next()
        .unwrap_or("");
    let host = host.rsplit_once('@').map(|(_, h)| h).unwrap_or(host);
    host.starts_with("127.") || host.starts_with("localhost") || host.starts_with("[::1]")
}

/// `url` with its database (the path) replaced by `database`, query parameters kept.
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority = base.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match base[authority..].find('/') {
        Some(slash) => &base[..authority + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{base}/{database}?{query}"),
        None => format!("{base}/{database}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_get_another_database() {
        assert_eq!(
            with_database("postgres://runplane@127.0.0.1:55432/postgres", "rp_test_1"),
            "postgres://runplane@127.0.0.1:55432/rp_test_1"
        );
        assert_eq!(
            with_database("postgres://u:p@db:5432?sslmode=disable", "x"),
            "postgres://u:p@db:5432/x?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://u@h/a/b?x=1", "c"),
            "postgres://u@h/c?x=1"
        );
    }

    #[test]
    fn names_tell_their_age_and_process() {
        assert_eq!(
            parse_name("rp_test_1700000000_42_abcdef"),
            Some((1_700_000_000, 42))
        );
        assert_eq!(parse_name("rp_test_x_42_abcdef"), None);
        assert_eq!(parse_name("postgres"), None);
        assert!(is_loopback("postgres://runplane@127.0.0.1:55432/postgres"));
        assert!(is_loopback("postgres://localhost/db"));
        assert!(!is_loopback("postgres://u:p@db.example:5432/db"));
        assert!(!is_loopback("postgres://127.0.0.1@db.example/db"));
    }
}
