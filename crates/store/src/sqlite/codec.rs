//! Conversions between domain values and SQLite column values.
//!
//! Every decoder returns `StoreError::Database` on bad data instead of panicking: a row written
//! by another version (or edited by hand) must not take the server down.

use crate::{StoreError, StoreResult};
use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};
use runplane_domain::RunState;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Maps any sqlx error to the store's opaque database error.
pub(crate) fn db(err: sqlx::Error) -> StoreError {
    StoreError::Database(err.to_string())
}

/// Whether `err` is a violation of a UNIQUE or PRIMARY KEY constraint.
pub(crate) fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(e) if e.is_unique_violation())
}

/// Whether `err` is a violation of a FOREIGN KEY constraint (e.g. an unknown project).
pub(crate) fn is_foreign_key_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(e) if e.is_foreign_key_violation())
}

/// The time of a change the store stamps itself, in microseconds: the precision every backend
/// (PostgreSQL included) keeps, so that what is written reads back equal.
pub(crate) fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// RFC 3339, UTC, always nine fractional digits: fixed width, so that text order is time order
/// (range filters compare the text) and nanoseconds round-trip.
pub(crate) fn ts(at: &DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Nanos, true)
}

pub(crate) fn parse_ts(column: &str, text: &str) -> StoreResult<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .map(|at| at.with_timezone(&Utc))
        .map_err(|e| corrupt(column, e))
}

pub(crate) fn parse_opt_ts(column: &str, text: Option<&str>) -> StoreResult<Option<DateTime<Utc>>> {
    text.map(|t| parse_ts(column, t)).transpose()
}

pub(crate) fn to_json<T: Serialize>(column: &str, value: &T) -> StoreResult<String> {
    serde_json::to_string(value)
        .map_err(|e| StoreError::Database(format!("cannot encode {column}: {e}")))
}

pub(crate) fn from_json<T: DeserializeOwned>(column: &str, text: &str) -> StoreResult<T> {
    serde_json::from_str(text).map_err(|e| corrupt(column, e))
}

pub(crate) fn parse_state(column: &str, text: &str) -> StoreResult<RunState> {
    text.parse().map_err(|e| corrupt(column, e))
}

/// Attempt numbers are `u32` in the domain and INTEGER (i64) in SQLite.
pub(crate) fn to_u32(column: &str, value: i64) -> StoreResult<u32> {
    u32::try_from(value).map_err(|e| corrupt(column, e))
}

pub(crate) fn to_i32(column: &str, value: Option<i64>) -> StoreResult<Option<i32>> {
    value
        .map(|v| i32::try_from(v).map_err(|e| corrupt(column, e)))
        .transpose()
}

fn corrupt(column: &str, err: impl std::fmt::Display) -> StoreError {
    StoreError::Database(format!("corrupt value in column {column}: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn timestamps_are_fixed_width_and_round_trip() {
        let at = Utc.with_ymd_and_hms(2024, 5, 1, 12, 0, 0).unwrap();
        assert_eq!(ts(&at), "2024-05-01T12:00:00.000000000Z");
        let now = Utc::now();
        assert_eq!(parse_ts("t", &ts(&now)).unwrap(), now);
        assert!(parse_ts("t", "yesterday").is_err());
    }
}
