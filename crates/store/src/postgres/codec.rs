//! Conversions between domain values and PostgreSQL column values, and the module's error type.
//!
//! Every decoder returns `StoreError::Database` on bad data instead of panicking: a row written
//! by another version (or edited by hand) must not take the server down.

use crate::{StoreError, StoreResult};
use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};
use runplane_domain::RunState;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// What this module's functions fail with: an answer of the store (`Conflict`, `NotFound`,
/// a corrupt row...) handed back as it is, or an error of the database, which the store may
/// retry ([`Failure::is_retryable`]) before it becomes a `StoreError::Database`.
#[derive(Debug)]
pub(crate) enum Failure {
    Store(StoreError),
    Sql(sqlx::Error),
}

impl From<StoreError> for Failure {
    fn from(err: StoreError) -> Self {
        Failure::Store(err)
    }
}

impl From<sqlx::Error> for Failure {
    fn from(err: sqlx::Error) -> Self {
        Failure::Sql(err)
    }
}

impl From<Failure> for StoreError {
    fn from(failure: Failure) -> Self {
        match failure {
            Failure::Store(err) => err,
            Failure::Sql(err) => db(err),
        }
    }
}

impl Failure {
    /// A serialization failure or a deadlock: the transaction was rolled back by the server
    /// and running it again from the start is the documented remedy.
    pub(crate) fn is_retryable(&self) -> bool {
        match self {
            Failure::Sql(sqlx::Error::Database(e)) => {
                matches!(e.code().as_deref(), Some("40001") | Some("40P01"))
            }
            _ => false,
        }
    }
}

pub(crate) type PgResult<T> = Result<T, Failure>;

/// Maps any sqlx error to the store's opaque database error, with the SQLSTATE when there is
/// one (it says more than the message to whoever reads the log).
pub(crate) fn db(err: sqlx::Error) -> StoreError {
    match &err {
        sqlx::Error::Database(e) => match e.code() {
            Some(code) => StoreError::Database(format!("{err} (SQLSTATE {code})")),
            None => StoreError::Database(err.to_string()),
        },
        _ => StoreError::Database(err.to_string()),
    }
}

/// Whether `err` is a violation of a UNIQUE or PRIMARY KEY constraint.
pub(crate) fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(e) if e.is_unique_violation())
}

/// Whether `err` is a violation of a FOREIGN KEY constraint (e.g. an unknown project).
pub(crate) fn is_foreign_key_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(e) if e.is_foreign_key_violation())
}

/// The time of a change the store stamps itself, in microseconds: what TIMESTAMPTZ keeps, so
/// that what is written reads back equal.
pub(crate) fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// A time as the column keeps it: TIMESTAMPTZ has microseconds (sqlx would truncate finer
/// digits too; doing it here makes the event documents agree with the columns).
pub(crate) fn micros(at: &DateTime<Utc>) -> DateTime<Utc> {
    at.trunc_subsecs(6)
}

/// A time inside a JSON document (event data): RFC 3339, UTC, nine fractional digits, exactly
/// as the SQLite store writes it, so that both stores tell the same events.
pub(crate) fn ts_text(at: &DateTime<Utc>) -> String {
    micros(at).to_rfc3339_opts(SecondsFormat::Nanos, true)
}

/// Free text (messages, reasons, descriptions, fire errors) as PostgreSQL can store it: TEXT
/// cannot hold the NUL character, which SQLite keeps, and such text can come from user code
/// (an exception's message). NUL becomes U+FFFD rather than failing the write, which would
/// leave, say, a run that cannot be moved to ERROR. JSON documents need nothing: serde_json
/// writes NUL as `\u0000`.
pub(crate) fn text(value: Option<&str>) -> Option<String> {
    value.map(|v| v.replace('\0', "\u{FFFD}"))
}

pub(crate) fn to_json<T: Serialize>(column: &str, value: &T) -> StoreResult<String> {
    serde_json::to_string(value)
        .map_err(|e| StoreError::Database(format!("cannot encode {column}: {e}")))
}

pub(crate) fn from_json<T: DeserializeOwned>(column: &str, text: &str) -> StoreResult<T> {
    serde_json::from_str(text).map_err(|e| corrupt(column, e))
}

pub(crate) fn opt_from_json<T: DeserializeOwned>(
    column: &str,
    text: Option<&str>,
) -> StoreResult<Option<T>> {
    text.map(|t| from_json(column, t)).transpose()
}

pub(crate) fn parse_state(column: &str, text: &str) -> StoreResult<RunState> {
    text.parse().map_err(|e| corrupt(column, e))
}

/// Attempt numbers are `u32` in the domain and BIGINT in PostgreSQL.
pub(crate) fn to_u32(column: &str, value: i64) -> StoreResult<u32> {
    u32::try_from(value).map_err(|e| corrupt(column, e))
}

/// Counts and event ids are never negative.
pub(crate) fn to_u64(column: &str, value: i64) -> StoreResult<u64> {
    u64::try_from(value).map_err(|e| corrupt(column, e))
}

pub(crate) fn corrupt(column: &str, err: impl std::fmt::Display) -> StoreError {
    StoreError::Database(format!("corrupt value in column {column}: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn event_times_match_the_sqlite_format_at_microseconds() {
        let at = Utc.with_ymd_and_hms(2024, 5, 1, 12, 0, 0).unwrap()
            + chrono::Duration::nanoseconds(123_456_789);
        assert_eq!(ts_text(&at), "2024-05-01T12:00:00.123456000Z");
        assert_eq!(micros(&at).timestamp_subsec_nanos(), 123_456_000);
    }

    #[test]
    fn nul_characters_are_replaced() {
        assert_eq!(text(Some("a\0b")).as_deref(), Some("a\u{FFFD}b"));
        assert_eq!(text(Some("plain")).as_deref(), Some("plain"));
        assert_eq!(text(None), None);
    }

    #[test]
    fn only_serialization_failures_and_deadlocks_are_retried() {
        assert!(!Failure::Store(StoreError::InvalidCursor).is_retryable());
        assert!(!Failure::Sql(sqlx::Error::RowNotFound).is_retryable());
    }
}
