//! The catalog aggregate of the store: [`CatalogStore`] and the types it takes and returns.

use crate::{Put, StoreResult};
use async_trait::async_trait;
use runplane_domain::{FunctionVersion, Project, Task};

/// Projects, function versions and tasks: what users apply.
#[async_trait]
pub trait CatalogStore: Send + Sync + 'static {
    async fn ensure_project(&self, name: &str, created_by: &str) -> StoreResult<Project>;
    async fn get_project(&self, name: &str) -> StoreResult<Option<Project>>;
    async fn list_projects(&self) -> StoreResult<Vec<Project>>;

    /// Stores a new function version, unless a version of (project, name) with the same
    /// `status.hash` exists: then returns that one with `created: false`. The project must exist.
    async fn put_function_version(
        &self,
        version: FunctionVersion,
    ) -> StoreResult<Put<FunctionVersion>>;
    /// The given version, or the newest (latest) when `version` is None.
    async fn get_function(
        &self,
        project: &str,
        name: &str,
        version: Option<&str>,
    ) -> StoreResult<Option<FunctionVersion>>;
    /// The latest version of every function of the project, by name.
    async fn list_functions(&self, project: &str) -> StoreResult<Vec<FunctionVersion>>;
    /// Every version, newest first.
    async fn list_function_versions(
        &self,
        project: &str,
        name: &str,
    ) -> StoreResult<Vec<FunctionVersion>>;
    /// Deletes every version; false when there was none.
    async fn delete_function(&self, project: &str, name: &str) -> StoreResult<bool>;

    /// Inserts or replaces a task (keeping its `created`).
    async fn put_task(&self, task: Task) -> StoreResult<Task>;
    async fn get_task(&self, project: &str, name: &str) -> StoreResult<Option<Task>>;
    async fn list_tasks(&self, project: &str) -> StoreResult<Vec<Task>>;
    async fn delete_task(&self, project: &str, name: &str) -> StoreResult<bool>;
}
