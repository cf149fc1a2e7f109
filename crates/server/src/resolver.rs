//! Resolving a function version's declared dependencies into a lock, once, when the version is
//! first stored: `uv pip compile` against the configured package index, for the interpreter
//! runs use. The lock is what every run of the version installs, so two runs never see
//! different packages.

use runplane_runtimes::{Dependencies, Lock};
use sha2::{Digest, Sha256};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// Longest a resolution may take (a cold index cache over a slow network).
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(300);
/// How much of uv's error output a client is shown.
const MAX_MESSAGE_BYTES: usize = 4000;

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The requirements cannot be satisfied, or name something that does not exist: the
    /// user's to fix (422 on `spec.requirements`).
    #[error("{0}")]
    Unsatisfiable(String),
    /// The resolver itself cannot run: the server's to fix (503).
    #[error("cannot resolve requirements on this server: {0}")]
    Unavailable(String),
}

#[derive(Debug, Clone)]
pub struct Resolver {
    /// The `uv` executable.
    pub uv: String,
    /// The interpreter the lock is resolved for (the one runs use).
    pub python: String,
}

impl Resolver {
    pub async fn lock(&self, dependencies: &Dependencies) -> Result<Lock, ResolveError> {
        let mut command = Command::new(&self.uv);
        command
            .args([
                "pip",
                "compile",
                "-",
                "--quiet",
                "--no-header",
                "--no-annotate",
            ])
            .args(["--python", &self.python]);
        if let Some(version) = &dependencies.python_version {
            command.args(["--python-version", version]);
        }
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .map_err(|error| ResolveError::Unavailable(format!("{}: {error}", self.uv)))?;
        let input = dependencies.requirements.join("\n") + "\n";
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(input.as_bytes())
                .await
                .map_err(|error| ResolveError::Unavailable(format!("writing to uv: {error}")))?;
        }
        let output = tokio::time::timeout(RESOLVE_TIMEOUT, child.wait_with_output())
            .await
            .map_err(|_| {
                ResolveError::Unavailable(format!(
                    "uv did not finish within {} s",
                    RESOLVE_TIMEOUT.as_secs()
                ))
            })?
            .map_err(|error| ResolveError::Unavailable(format!("waiting for uv: {error}")))?;
        if !output.status.success() {
            return Err(ResolveError::Unsatisfiable(tail(&output.stderr)));
        }
        let text = String::from_utf8(output.stdout)
            .map_err(|_| ResolveError::Unavailable("uv printed a lock that is not UTF-8".into()))?;
        let hash = hex::encode(Sha256::digest(text.as_bytes()));
        Ok(Lock { text, hash })
    }
}

/// The end of uv's message, where the reason is, as one trimmed string.
fn tail(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let text = text.trim();
    if text.len() <= MAX_MESSAGE_BYTES {
        return text.to_string();
    }
    let mut start = text.len() - MAX_MESSAGE_BYTES;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("...{}", &text[start..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolver() -> Resolver {
        Resolver {
            uv: std::env::var("RUNPLANE_UV").unwrap_or_else(|_| "uv".into()),
            python: "/usr/bin/python3".into(),
        }
    }

    #[tokio::test]
    async fn a_requirement_resolves_to_a_pinned_lock() {
        let lock = resolver()
            .lock(&Dependencies {
                requirements: vec!["six>=1.16,<1.18".into()],
                python_version: None,
            })
            .await
            .expect("six resolves");
        assert!(
            lock.text.lines().any(|line| line.starts_with("six==1.1")),
            "{}",
            lock.text
        );
        assert!(
            !lock.text.contains("uv pip compile"),
            "no header: {}",
            lock.text
        );
        assert_eq!(lock.hash.len(), 64);
    }

    #[tokio::test]
    async fn a_package_that_does_not_exist_is_the_users_problem() {
        let error = resolver()
            .lock(&Dependencies {
                requirements: vec!["runplane-no-such-package-xyz==1.0".into()],
                python_version: None,
            })
            .await
            .expect_err("nothing to resolve to");
        match error {
            ResolveError::Unsatisfiable(message) => {
                assert!(
                    message.contains("runplane-no-such-package-xyz"),
                    "{message}"
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_missing_uv_is_the_servers_problem() {
        let resolver = Resolver {
            uv: "/nonexistent/uv".into(),
            python: "/usr/bin/python3".into(),
        };
        let error = resolver
            .lock(&Dependencies {
                requirements: vec!["six".into()],
                python_version: None,
            })
            .await
            .expect_err("no uv");
        assert!(matches!(error, ResolveError::Unavailable(_)), "{error:?}");
    }
}
