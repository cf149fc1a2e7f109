//! The controller's side of secrets: values are encrypted before they reach the store and
//! decrypted only at dispatch, into the env of the attempt that needs them.

use super::{Controller, ControllerError};
use crate::secrets::MAX_SECRET_BYTES;
use runplane_domain::invalid::Problems;
use runplane_domain::names::validate_name;
use runplane_domain::{Invalid, SecretMeta};
use std::collections::BTreeMap;

/// Why the secrets of a run could not be handed to it at dispatch.
#[derive(Debug, thiserror::Error)]
pub enum SecretsForRunError {
    /// The secret was deleted after the run was submitted.
    #[error("secret {secret:?} (for {var}) no longer exists in project {project}")]
    Missing {
        project: String,
        secret: String,
        var: String,
    },
    #[error(transparent)]
    Other(#[from] ControllerError),
}

/// What a dispatched attempt gets: the env additions and the values to keep out of its log.
#[derive(Default)]
pub struct SecretEnv {
    pub env: BTreeMap<String, String>,
    pub redact: Vec<String>,
}

impl Controller {
    /// Creates the secret or replaces its value. Answers metadata only.
    pub async fn put_secret(
        &self,
        project: &str,
        name: &str,
        value: &str,
        caller: &str,
    ) -> Result<SecretMeta, ControllerError> {
        validate_name("project", project)?;
        let mut problems = Problems::new();
        problems.check(validate_name("name", name));
        if value.is_empty() {
            problems.add("value", "must not be empty");
        } else if value.len() > MAX_SECRET_BYTES {
            problems.add(
                "value",
                format!(
                    "is {} bytes, more than the {MAX_SECRET_BYTES} a secret may hold",
                    value.len()
                ),
            );
        }
        problems.finish()?;
        let ciphertext = self.inner.options.secrets.encrypt(project, name, value)?;
        self.store().ensure_project(project, caller).await?;
        let meta = self
            .store()
            .put_secret(project, name, &ciphertext, caller)
            .await?;
        self.bus().events_appended();
        Ok(meta)
    }

    pub async fn delete_secret(&self, project: &str, name: &str) -> Result<bool, ControllerError> {
        let deleted = self.store().delete_secret(project, name).await?;
        if deleted {
            self.bus().events_appended();
        }
        Ok(deleted)
    }

    /// Every secret of `references` (env var → secret name) must exist: the problems name the
    /// field `secrets.VAR` of each one that does not.
    pub(crate) async fn check_secrets_exist(
        &self,
        project: &str,
        references: &BTreeMap<String, String>,
    ) -> Result<(), ControllerError> {
        if references.is_empty() {
            return Ok(());
        }
        let existing: Vec<String> = self
            .store()
            .list_secrets(project)
            .await?
            .into_iter()
            .map(|meta| meta.name)
            .collect();
        let mut problems = Problems::new();
        for (var, secret) in references {
            if !existing.contains(secret) {
                problems.add(
                    format!("secrets.{var}"),
                    format!("secret {secret:?} does not exist in project {project}"),
                );
            }
        }
        Ok(problems.finish()?)
    }

    /// Decrypts the secrets a run refers to, at dispatch.
    pub(crate) async fn secret_env(
        &self,
        project: &str,
        references: &BTreeMap<String, String>,
    ) -> Result<SecretEnv, SecretsForRunError> {
        let mut out = SecretEnv::default();
        for (var, secret) in references {
            let Some(ciphertext) = self
                .store()
                .get_secret_ciphertext(project, secret)
                .await
                .map_err(ControllerError::from)?
            else {
                return Err(SecretsForRunError::Missing {
                    project: project.to_string(),
                    secret: secret.clone(),
                    var: var.clone(),
                });
            };
            let value = self
                .inner
                .options
                .secrets
                .decrypt(project, secret, &ciphertext)
                .map_err(ControllerError::from)?;
            out.env.insert(var.clone(), value.clone());
            if !out.redact.contains(&value) {
                out.redact.push(value);
            }
        }
        Ok(out)
    }
}

/// Checks the env var names of a secrets map (`field.VAR`), like `env`'s.
pub fn validate_secret_refs(
    field: &str,
    references: &BTreeMap<String, String>,
) -> Result<(), Invalid> {
    let mut problems = Problems::new();
    for (var, secret) in references {
        if var.is_empty() || var.contains('=') || var.contains('\0') {
            problems.add(
                format!("{field}.{var}"),
                "not a valid environment variable name",
            );
        } else if var.starts_with("RUNPLANE_") {
            // Added after the runtime's own variables: it would override the run's identity.
            problems.add(
                format!("{field}.{var}"),
                "RUNPLANE_ variables are runplane's own",
            );
        }
        problems.check(validate_name(&format!("{field}.{var}"), secret));
    }
    problems.finish()
}
