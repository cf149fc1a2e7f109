//! The artifacts aggregate of the store: [`ArtifactStore`] and the types it takes and returns.

use crate::{Put, StoreResult};
use async_trait::async_trait;
use runplane_domain::Artifact;
use std::collections::BTreeMap;

/// Artifact versions and their lineage (which runs consume which version).
#[async_trait]
pub trait ArtifactStore: Send + Sync + 'static {
    /// Stores an artifact version unless the project already has one of the same name with
    /// the same `spec.hash` (then returns that one, `created: false`, and changes nothing).
    /// A new version appends an `artifact` event (`{"type":"artifact","project","name",
    /// "version","key","produced_by","at"}`) in the same transaction. `status.consumers` is
    /// not stored. `NotFound` when the project does not exist.
    async fn put_artifact(&self, artifact: Artifact) -> StoreResult<Put<Artifact>>;
    /// One version, or the newest one when `version` is None.
    async fn get_artifact(
        &self,
        project: &str,
        name: &str,
        version: Option<&str>,
    ) -> StoreResult<Option<Artifact>>;
    /// The newest version of each of the project's artifacts, by name; with `produced_by`,
    /// every version that run produced instead.
    async fn list_artifacts(
        &self,
        project: &str,
        produced_by: Option<&str>,
    ) -> StoreResult<Vec<Artifact>>;
    /// Every version of one artifact, newest first (empty when there is none).
    async fn artifact_versions(&self, project: &str, name: &str) -> StoreResult<Vec<Artifact>>;
    /// Removes every version of the artifact (lineage rows stay) and returns them, so that
    /// the caller can remove their files; appends an `artifact` event with `"deleted": true`.
    /// Empty when there was none.
    async fn delete_artifact(&self, project: &str, name: &str) -> StoreResult<Vec<Artifact>>;
    /// Records that run `run_id` consumes the artifact versions `inputs` (param → key).
    /// Idempotent: recording a param again replaces its key.
    async fn put_run_inputs(
        &self,
        project: &str,
        run_id: &str,
        inputs: &BTreeMap<String, String>,
    ) -> StoreResult<()>;
    /// Ids of the runs that consume the artifact version `key`, sorted.
    async fn artifact_consumers(&self, key: &str) -> StoreResult<Vec<String>>;
}
