//! The events aggregate of the store: [`EventStore`] and the types it takes and returns.

use crate::StoreResult;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;

/// One entry of the durable event log: an entity change, appended in the same transaction as
/// the change itself, so that the log never tells of a change that was rolled back nor misses
/// one that was committed.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    /// Strictly increasing and never reused; clients resume after the last id they saw.
    pub id: u64,
    pub at: DateTime<Utc>,
    pub project: String,
    /// What changed: `run`, `function`, `task`, `service` or `secret` (also the SSE event
    /// name).
    pub kind: String,
    /// The change, as JSON (`type` repeats `kind`).
    pub data: Value,
}

/// The largest page [`Store::events_after`] returns, whatever it is asked for.
pub const MAX_EVENTS_PAGE: u32 = 1000;

/// The durable event log and the positions its durable readers keep in it.
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Events with an id greater than `after`, oldest first, at most `limit` of them (0 means
    /// 100, capped at [`MAX_EVENTS_PAGE`]); only those of `project` when given. Every change
    /// method above appends its events in its own transaction (`transition`, `create_run`, a
    /// `put_function_version` that creates a version, `put_task`, `put_service`,
    /// `put_secret`, a `delete_secret`, `delete_service` or `set_service_status` that changed
    /// something). Implementations must make
    /// ids visible in increasing order (a reader that saw id N never finds a smaller one
    /// later): resuming after an id relies on it. SQLite has it for free (one writer at a
    /// time); PostgreSQL serializes its appends under an advisory lock (see [`postgres`](crate::postgres)).
    async fn events_after(
        &self,
        after: u64,
        project: Option<&str>,
        limit: u32,
    ) -> StoreResult<Vec<StoredEvent>>;
    /// The id of the newest event (0 when there is none): where a reader that wants only what
    /// happens from now on starts.
    async fn latest_event_id(&self) -> StoreResult<u64>;
    /// A durable reader's position in the event log (None: never stored).
    async fn get_cursor(&self, name: &str) -> StoreResult<Option<u64>>;
    async fn set_cursor(&self, name: &str, position: u64) -> StoreResult<()>;
    /// Bumped whenever the event log may have grown through another process (PostgreSQL:
    /// `LISTEN`); None when no other process writes to this store.
    fn appends_elsewhere(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }
}
