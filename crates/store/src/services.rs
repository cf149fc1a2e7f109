//! The services aggregate of the store: [`ServiceStore`] and the types it takes and returns.

use crate::StoreResult;
use async_trait::async_trait;
use runplane_domain::{ServiceRecord, ServiceStatus};

/// Service names pointing at runs, and the replica status of a service run.
#[async_trait]
pub trait ServiceStore: Send + Sync + 'static {
    /// Points the service `(project, name)` at `run_id`, creating the service when it does
    /// not exist (`created` is kept when it does). Appends a `service` event
    /// (`{"type":"service","project","name","run_id","at"}`) in the same transaction.
    /// `NotFound` when the project or the run does not exist (the run must be one of the
    /// project's). The name keeps pointing at `run_id` if that run is deleted later: the run
    /// id is not a foreign key, and moving or removing the name is the controller's job.
    async fn put_service(
        &self,
        project: &str,
        name: &str,
        run_id: &str,
    ) -> StoreResult<ServiceRecord>;
    async fn get_service(&self, project: &str, name: &str) -> StoreResult<Option<ServiceRecord>>;
    /// The project's services, by name.
    async fn list_services(&self, project: &str) -> StoreResult<Vec<ServiceRecord>>;
    /// Every service of every project (start-up recovery of the gateway's routes).
    async fn all_services(&self) -> StoreResult<Vec<ServiceRecord>>;
    /// Removes the service, only while it still points at `run_id` (a newer run that took
    /// the name over keeps it). Appends a `service` event with `"deleted": true`. False when
    /// there was nothing to remove.
    async fn delete_service(&self, project: &str, name: &str, run_id: &str) -> StoreResult<bool>;
    /// Replaces `status.service` of the run while its attempt is `attempt` (any state), and
    /// appends a `run` event like a transition's with `"change": "service"` and the ready /
    /// desired replica counts. False when the run is gone or on another attempt.
    async fn set_service_status(
        &self,
        run_id: &str,
        attempt: u32,
        status: &ServiceStatus,
    ) -> StoreResult<bool>;
}
