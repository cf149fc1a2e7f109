//! The triggers aggregate of the store: [`TriggerStore`] and the types it takes and returns.

use crate::StoreResult;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use runplane_domain::trigger::{Fire, Trigger};
use runplane_domain::Run;

/// A scheduler's (expected `next_fire`, new `next_fire`).
pub type NextFireSwap = (Option<DateTime<Utc>>, Option<DateTime<Utc>>);

/// What one fire of a trigger writes, in one transaction (see [`Store::fire_trigger`]).
#[derive(Debug, Clone, PartialEq)]
pub struct FireBatch {
    pub project: String,
    pub trigger: String,
    /// Schedulers: (the `next_fire` expected, the new one): a compare-and-set that makes the
    /// whole batch happen once. None for lifecycle and webhook fires.
    pub next_fire: Option<NextFireSwap>,
    /// The fire records (unique per trigger and `dedup_key`), each with the run it created.
    pub fires: Vec<(Fire, Option<Run>)>,
}

/// Triggers and their fires.
#[async_trait]
pub trait TriggerStore: Send + Sync + 'static {
    // triggers
    /// Creates or replaces a trigger (keeping `created`, `paused` and an existing token
    /// hash), with `status.next_fire` as given. Appends a `trigger` event. `NotFound` when
    /// the project does not exist. Returns it as stored.
    async fn put_trigger(
        &self,
        trigger: &Trigger,
        token_hash: Option<&str>,
    ) -> StoreResult<Trigger>;
    /// A trigger with its fire counts (`status.token` is never filled).
    async fn get_trigger(&self, project: &str, name: &str) -> StoreResult<Option<Trigger>>;
    /// The project's triggers (every project's when None), by name.
    async fn list_triggers(&self, project: Option<&str>) -> StoreResult<Vec<Trigger>>;
    /// Removes a trigger and its fire records (its runs stay); appends a `trigger` event.
    async fn delete_trigger(&self, project: &str, name: &str) -> StoreResult<bool>;
    /// Pauses or resumes a trigger, setting its `next_fire`; None when it does not exist.
    async fn set_trigger_paused(
        &self,
        project: &str,
        name: &str,
        paused: bool,
        next_fire: Option<DateTime<Utc>>,
    ) -> StoreResult<Option<Trigger>>;
    /// The sha256 (hex) of a webhook trigger's token.
    async fn trigger_token_hash(&self, project: &str, name: &str) -> StoreResult<Option<String>>;
    /// One fire, atomically: the scheduler's compare-and-set on `next_fire` (when given; only
    /// while the trigger is not paused), the fire records and the runs they created (with their
    /// events, as `create_run`). False, and nothing written, when the compare-and-set lost or a
    /// fire's dedup key was already used: another fire did the work.
    async fn fire_trigger(&self, batch: FireBatch) -> StoreResult<bool>;
    /// A trigger's fires, newest first (at most `limit`; 0 means 100, capped at 1000).
    async fn list_fires(&self, project: &str, trigger: &str, limit: u32) -> StoreResult<Vec<Fire>>;
}
