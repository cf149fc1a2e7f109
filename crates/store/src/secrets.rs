//! The secrets aggregate of the store: [`SecretStore`] and the types it takes and returns.

use crate::StoreResult;
use async_trait::async_trait;
use runplane_domain::SecretMeta;

/// Secrets, stored as ciphertext the store never reads.
#[async_trait]
pub trait SecretStore: Send + Sync + 'static {
    /// Creates the secret `(project, name)` or replaces its value (keeping `created` and
    /// `created_by`). `ciphertext` is opaque to the store: the server encrypts before and
    /// decrypts after. Appends a `secret` event (`{"type":"secret","project","name","at"}`,
    /// never the value) in the same transaction. `NotFound` when the project does not exist.
    async fn put_secret(
        &self,
        project: &str,
        name: &str,
        ciphertext: &[u8],
        caller: &str,
    ) -> StoreResult<SecretMeta>;
    /// A secret's metadata, never its value.
    async fn get_secret(&self, project: &str, name: &str) -> StoreResult<Option<SecretMeta>>;
    /// The stored ciphertext, for the controller to decrypt at dispatch.
    async fn get_secret_ciphertext(
        &self,
        project: &str,
        name: &str,
    ) -> StoreResult<Option<Vec<u8>>>;
    /// The project's secrets (metadata only), by name.
    async fn list_secrets(&self, project: &str) -> StoreResult<Vec<SecretMeta>>;
    /// Removes the secret; appends a `secret` event with `"deleted": true`. False when there
    /// was none.
    async fn delete_secret(&self, project: &str, name: &str) -> StoreResult<bool>;
}
