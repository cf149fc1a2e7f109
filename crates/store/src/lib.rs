//! runplane's durable state: one trait per aggregate ([`RunStore`], [`CatalogStore`],
//! [`EventStore`], [`TriggerStore`], [`ServiceStore`], [`SecretStore`], [`ArtifactStore`],
//! [`ReplicaStore`]), [`Store`] for a type that implements them all, and two implementations:
//! [`sqlite`] (the embedded default, one file, one writer at a time) and `postgres` (feature
//! `postgres`; production: any number of server replicas writing to one database at once).
//! Both pass one conformance suite (feature `testing`, enabled only by dev-dependencies), so that they behave the same.
//!
//! Must not depend on runtimes, frameworks or the server: it stores entities of
//! `runplane-domain` and enforces the run lifecycle's compare-and-set, nothing more.

mod artifacts;
mod catalog;
#[cfg(feature = "testing")]
pub mod conformance;
mod cursor;
mod events;
#[cfg(feature = "postgres")]
pub mod postgres;
mod replicas;
mod runs;
mod secrets;
mod services;
pub mod sqlite;
mod triggers;

pub use artifacts::ArtifactStore;
pub use catalog::CatalogStore;
pub use events::{EventStore, StoredEvent, MAX_EVENTS_PAGE};
pub use replicas::ReplicaStore;
pub use runs::{
    ActiveCounts, AttemptUpdate, IdempotencyKey, RunPage, RunQuery, RunStore, TaskLimit,
    TransitionRequest,
};
pub use secrets::SecretStore;
pub use services::ServiceStore;
pub use triggers::{FireBatch, NextFireSwap, TriggerStore};

use runplane_domain::{lifecycle::IllegalTransition, RunState};

/// Every aggregate trait, for code that calls store methods on a concrete store
/// (`SqliteStore`) or a generic `S: Store`: `use runplane_store::prelude::*;`. Calls through
/// `dyn Store` need no import.
pub mod prelude {
    pub use crate::{
        ArtifactStore, CatalogStore, EventStore, ReplicaStore, RunStore, SecretStore, ServiceStore,
        Store, TriggerStore,
    };
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The compare-and-set lost: the run is no longer in the expected state/attempt.
    #[error("run {run_id} is {current_state} (attempt {current_attempt}), expected {expected_state} (attempt {expected_attempt})")]
    Conflict {
        run_id: String,
        expected_state: RunState,
        expected_attempt: u32,
        current_state: RunState,
        current_attempt: u32,
    },
    #[error(transparent)]
    IllegalTransition(#[from] IllegalTransition),
    #[error("{0} not found")]
    NotFound(String),
    /// The same Idempotency-Key was used before with a different request.
    #[error("idempotency key {key:?} was already used for a different request (run {run_id})")]
    IdempotencyMismatch { key: String, run_id: String },
    #[error("invalid cursor")]
    InvalidCursor,
    /// A claim refused because the run's task already has `limit` active runs.
    #[error("task {task} of project {project} already has {limit} active runs")]
    TaskLimitReached {
        project: String,
        task: String,
        limit: u32,
    },
    #[error("database error: {0}")]
    Database(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// The result of an insert that may find the entity already there.
#[derive(Debug, Clone, PartialEq)]
pub struct Put<T> {
    pub value: T,
    /// false when an identical entity existed (same content hash, same idempotency key).
    pub created: bool,
}

/// runplane's durable state: every aggregate's store. Every method is atomic;
/// [`RunStore::transition`] is a compare-and-set. Callers that need one aggregate only take
/// its trait (e.g. `Arc<dyn RunStore>`); a type that implements them all is a `Store`.
pub trait Store:
    CatalogStore
    + RunStore
    + EventStore
    + TriggerStore
    + ServiceStore
    + SecretStore
    + ArtifactStore
    + ReplicaStore
{
}

impl<T> Store for T where
    T: CatalogStore
        + RunStore
        + EventStore
        + TriggerStore
        + ServiceStore
        + SecretStore
        + ArtifactStore
        + ReplicaStore
{
}
