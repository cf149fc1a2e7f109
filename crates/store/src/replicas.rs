//! The replicas aggregate of the store: [`ReplicaStore`] and the types it takes and returns.

use crate::StoreResult;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use runplane_domain::Run;

/// Server replicas sharing one store: their leases and the runs each one follows.
#[async_trait]
pub trait ReplicaStore: Send + Sync + 'static {
    /// Whether several server processes may share this store (each then holds a lease and
    /// owns the runs it claimed). False for a store only one process can open.
    fn is_shared(&self) -> bool {
        false
    }
    /// Records that server replica `id` is alive until `lease_until` (creating its record).
    async fn renew_replica_lease(&self, id: &str, lease_until: DateTime<Utc>) -> StoreResult<()>;
    /// The replicas with a lease record, and until when it runs, by id.
    async fn list_replicas(&self) -> StoreResult<Vec<(String, DateTime<Utc>)>>;
    /// Makes replica `to` the owner of every active run (PENDING, RUNNING, STOP, DELETING)
    /// owned by no replica or by one whose lease ended before `expired_before`, and forgets
    /// those replicas. One transaction: a run is adopted by exactly one replica. Returns the
    /// runs adopted.
    async fn adopt_orphaned_runs(
        &self,
        to: &str,
        expired_before: DateTime<Utc>,
    ) -> StoreResult<Vec<Run>>;
    /// The active runs replica `owner` follows.
    async fn runs_owned_by(&self, owner: &str) -> StoreResult<Vec<Run>>;
}
