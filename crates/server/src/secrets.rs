//! Encryption of secrets at rest: ChaCha20-Poly1305 under one server key.
//!
//! A stored value is `VERSION || nonce (12 bytes) || ciphertext + tag`, with a fresh random
//! nonce per value and the secret's `(project, name)` as associated data: a ciphertext copied
//! onto another secret's row fails to decrypt instead of handing out the wrong value.
//!
//! The key is 32 random bytes in a file only its owner may read: `$RUNPLANE_HOME/secret.key`,
//! created on first start, or a file given with `--secret-key-file`. Losing it loses every
//! secret; it is never stored in the database.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use std::fmt;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

pub const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 12;
/// The format of a stored value, so that a later key rotation or cipher can tell them apart.
const FORMAT_V1: u8 = 1;
/// The largest secret value, in bytes of UTF-8.
pub const MAX_SECRET_BYTES: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SecretKeyError {
    // `error`, not `source`: the message already says it, and a source would be printed
    // twice by error chains (`{:#}`).
    #[error("cannot use the secret key file {path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error("the secret key file {path} holds {len} bytes, expected {KEY_LEN}: it is not a runplane key (restore the right file, or move it away to start without the existing secrets)")]
    WrongSize { path: String, len: u64 },
    #[error("the secret key file {path} is readable by others (mode {mode:o}): chmod 600 it")]
    TooOpen { path: String, mode: u32 },
    #[error("no randomness available: {0}")]
    Random(String),
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The value was not encrypted by this key for this secret (or was altered).
    #[error("secret {0} cannot be decrypted with this server's key")]
    Decrypt(String),
    #[error("secret {0} is not valid UTF-8")]
    NotUtf8(String),
    #[error("cannot encrypt secret {0}")]
    Encrypt(String),
    #[error("no randomness available: {0}")]
    Random(String),
}

/// The server's secret key. Its `Debug` never shows the bytes.
#[derive(Clone)]
pub struct SecretKey([u8; KEY_LEN]);

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(..)")
    }
}

impl SecretKey {
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> SecretKey {
        SecretKey(bytes)
    }

    /// A key for another purpose (e.g. signing run-scoped tokens), derived from this one so
    /// that the encryption key itself is never used for anything else.
    pub fn derive(&self, purpose: &str) -> Vec<u8> {
        use sha2::Digest;
        let mut hasher = sha2::Sha256::new();
        hasher.update(b"runplane key derivation\0");
        hasher.update(purpose.as_bytes());
        hasher.update(b"\0");
        hasher.update(self.0);
        hasher.finalize().to_vec()
    }

    /// A new random key (tests, and the first start of a server).
    pub fn generate() -> Result<SecretKey, SecretKeyError> {
        let mut bytes = [0u8; KEY_LEN];
        getrandom::getrandom(&mut bytes).map_err(|e| SecretKeyError::Random(e.to_string()))?;
        Ok(SecretKey(bytes))
    }

    /// Reads the key at `path`; when it does not exist and `create` is set, writes a new one
    /// there (mode 0600, never replacing a file that appeared meanwhile).
    pub fn load_or_create(path: &Path, create: bool) -> Result<SecretKey, SecretKeyError> {
        let io = |error| SecretKeyError::Io {
            path: path.display().to_string(),
            error,
        };
        match std::fs::metadata(path) {
            Ok(_) => Self::load(path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                let key = Self::generate()?;
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(io)?;
                file.write_all(&key.0).map_err(io)?;
                file.sync_all().map_err(io)?;
                tracing::info!(path = %path.display(), "created the secret key");
                Ok(key)
            }
            Err(e) => Err(io(e)),
        }
    }

    fn load(path: &Path) -> Result<SecretKey, SecretKeyError> {
        let io = |error| SecretKeyError::Io {
            path: path.display().to_string(),
            error,
        };
        let metadata = std::fs::metadata(path).map_err(io)?;
        // Checked before reading: a key others could read may already be known to them.
        let mode = metadata.mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(SecretKeyError::TooOpen {
                path: path.display().to_string(),
                mode,
            });
        }
        if metadata.len() != KEY_LEN as u64 {
            return Err(SecretKeyError::WrongSize {
                path: path.display().to_string(),
                len: metadata.len(),
            });
        }
        let bytes = std::fs::read(path).map_err(io)?;
        let bytes: [u8; KEY_LEN] =
            bytes
                .try_into()
                .map_err(|bytes: Vec<u8>| SecretKeyError::WrongSize {
                    path: path.display().to_string(),
                    len: bytes.len() as u64,
                })?;
        Ok(SecretKey(bytes))
    }
}

/// Encrypts and decrypts secret values under the server's key.
#[derive(Clone)]
pub struct SecretBox {
    cipher: ChaCha20Poly1305,
}

impl fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretBox(..)")
    }
}

/// Binds a ciphertext to its secret. Names are DNS-1123, so the NUL separators are
/// unambiguous.
fn associated_data(project: &str, name: &str) -> Vec<u8> {
    format!("runplane-secret\0{project}\0{name}").into_bytes()
}

impl SecretBox {
    pub fn new(key: &SecretKey) -> SecretBox {
        SecretBox {
            cipher: ChaCha20Poly1305::new(Key::from_slice(&key.0)),
        }
    }

    pub fn encrypt(&self, project: &str, name: &str, value: &str) -> Result<Vec<u8>, SecretError> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::getrandom(&mut nonce).map_err(|e| SecretError::Random(e.to_string()))?;
        let aad = associated_data(project, name);
        let sealed = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: value.as_bytes(),
                    aad: &aad,
                },
            )
            .map_err(|_| SecretError::Encrypt(format!("{project}/{name}")))?;
        let mut stored = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
        stored.push(FORMAT_V1);
        stored.extend_from_slice(&nonce);
        stored.extend_from_slice(&sealed);
        Ok(stored)
    }

    pub fn decrypt(&self, project: &str, name: &str, stored: &[u8]) -> Result<String, SecretError> {
        let what = || format!("{project}/{name}");
        let Some((&FORMAT_V1, rest)) = stored.split_first() else {
            return Err(SecretError::Decrypt(what()));
        };
        if rest.len() < NONCE_LEN {
            return Err(SecretError::Decrypt(what()));
        }
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let aad = associated_data(project, name);
        let plain = self
            .cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: &aad,
                },
            )
            .map_err(|_| SecretError::Decrypt(what()))?;
        String::from_utf8(plain).map_err(|_| SecretError::NotUtf8(what()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn sealed() -> (SecretBox, Vec<u8>) {
        let secrets = SecretBox::new(&SecretKey::generate().expect("key"));
        let stored = secrets
            .encrypt("demo", "token", "hunter2-value")
            .expect("encrypt");
        (secrets, stored)
    }

    #[test]
    fn round_trip_and_fresh_nonces() {
        let (secrets, stored) = sealed();
        assert_eq!(
            secrets.decrypt("demo", "token", &stored).expect("decrypt"),
            "hunter2-value"
        );
        assert!(!stored.windows("hunter2".len()).any(|w| w == b"hunter2"));
        let again = secrets
            .encrypt("demo", "token", "hunter2-value")
            .expect("encrypt");
        assert_ne!(stored, again, "every value gets its own nonce");
        assert_eq!(
            secrets.encrypt("demo", "e", "").map(|s| s.len()).ok(),
            Some(1 + 12 + 16)
        );
    }

    #[test]
    fn another_key_cannot_decrypt() {
        let (_, stored) = sealed();
        let other = SecretBox::new(&SecretKey::generate().expect("key"));
        assert!(matches!(
            other.decrypt("demo", "token", &stored),
            Err(SecretError::Decrypt(_))
        ));
    }

    #[test]
    fn a_ciphertext_moved_to_another_secret_fails() {
        let (secrets, stored) = sealed();
        for (project, name) in [("demo", "other"), ("other", "token")] {
            assert!(
                matches!(
                    secrets.decrypt(project, name, &stored),
                    Err(SecretError::Decrypt(_))
                ),
                "{project}/{name}"
            );
        }
    }

    #[test]
    fn altered_or_short_ciphertexts_fail() {
        let (secrets, mut stored) = sealed();
        for bad in [&[][..], &[FORMAT_V1][..], &[2u8; 40][..]] {
            assert!(secrets.decrypt("demo", "token", bad).is_err());
        }
        let last = stored.len() - 1;
        stored[last] ^= 1;
        assert!(secrets.decrypt("demo", "token", &stored).is_err());
    }

    #[test]
    fn key_file_is_created_0600_and_read_back() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("secret.key");
        let created = SecretKey::load_or_create(&path, true).expect("create");
        let metadata = std::fs::metadata(&path).expect("metadata");
        assert_eq!(metadata.permissions().mode() & 0o777, 0o600);
        assert_eq!(metadata.len(), 32);
        let loaded = SecretKey::load_or_create(&path, true).expect("load");
        assert_eq!(created.0, loaded.0, "a second start reads the same key");
    }

    #[test]
    fn key_files_that_are_open_or_wrong_sized_or_missing_are_refused() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("secret.key");
        std::fs::write(&path, [7u8; 32]).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let error = SecretKey::load_or_create(&path, true).expect_err("readable by others");
        assert!(matches!(error, SecretKeyError::TooOpen { .. }), "{error}");
        assert!(error.to_string().contains("chmod 600"), "{error}");

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        std::fs::write(&path, [7u8; 16]).expect("write");
        let error = SecretKey::load_or_create(&path, true).expect_err("short");
        assert!(
            matches!(error, SecretKeyError::WrongSize { len: 16, .. }),
            "{error}"
        );

        let missing = dir.path().join("nowhere.key");
        let error = SecretKey::load_or_create(&missing, false).expect_err("missing");
        assert!(matches!(error, SecretKeyError::Io { .. }), "{error}");
        assert!(!missing.exists(), "a named key file is never created");
    }
}
