//! Artifacts: the files and folders runs log (`context.log_artifact`), kept in an object store
//! (the `object_store` crate; the local filesystem under `$RUNPLANE_HOME/artifacts` by default)
//! under `<project>/<name>/<version>/<relative path>`, with their versions and lineage in the
//! `Store`.
//!
//! - [`collect`]: when an attempt ends, stores what the run logged in its outputs folder;
//! - [`content`]: scanning and hashing a logged folder (the version is its content).

pub mod collect;
pub mod content;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutPayload};
use runplane_domain::Artifact;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum ArtifactStoreError {
    #[error("artifact store: {0}")]
    Backend(#[from] object_store::Error),
    #[error("artifact store: invalid object path {0:?}: {1}")]
    Path(String, object_store::path::Error),
    #[error("artifact store: {0}")]
    Io(String),
    #[error("artifact store: unsupported URL {0:?} (supported: a local folder path)")]
    Unsupported(String),
}

/// Where artifact files live. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ArtifactStore {
    objects: Arc<dyn ObjectStore>,
    /// The folder of the local backend: inputs are handed to runs straight from it.
    local_root: Option<PathBuf>,
    /// Downloads of remote artifacts handed to runs as inputs, one folder per content hash.
    cache_dir: PathBuf,
}

impl ArtifactStore {
    /// The local filesystem backend rooted at `root` (created if missing).
    pub fn local(root: &Path, cache_dir: &Path) -> Result<ArtifactStore, ArtifactStoreError> {
        std::fs::create_dir_all(root).map_err(|e| {
            ArtifactStoreError::Io(format!("cannot create {}: {e}", root.display()))
        })?;
        let root = std::path::absolute(root)
            .map_err(|e| ArtifactStoreError::Io(format!("{}: {e}", root.display())))?;
        Ok(ArtifactStore {
            objects: Arc::new(LocalFileSystem::new_with_prefix(&root)?),
            local_root: Some(root),
            cache_dir: cache_dir.to_path_buf(),
        })
    }

    /// From `--artifact-store`: a local folder (`/path` or `file:///path`). S3-compatible URLs
    /// need the `aws` feature of `object_store`, which this build does not enable yet.
    pub fn from_url(url: &str, cache_dir: &Path) -> Result<ArtifactStore, ArtifactStoreError> {
        if let Some(path) = url.strip_prefix("file://") {
            return ArtifactStore::local(Path::new(path), cache_dir);
        }
        if url.starts_with('/') {
            return ArtifactStore::local(Path::new(url), cache_dir);
        }
        Err(ArtifactStoreError::Unsupported(url.to_string()))
    }

    fn object_path(text: &str) -> Result<ObjectPath, ArtifactStoreError> {
        ObjectPath::parse(text).map_err(|e| ArtifactStoreError::Path(text.to_string(), e))
    }

    /// Uploads one file of an artifact to `<prefix>/<relative>`. Idempotent: a version's
    /// objects are its content, so writing them again writes the same bytes.
    pub async fn upload_file(
        &self,
        prefix: &str,
        relative: &str,
        source: &Path,
    ) -> Result<(), ArtifactStoreError> {
        let bytes = tokio::fs::read(source).await.map_err(|e| {
            ArtifactStoreError::Io(format!("cannot read {}: {e}", source.display()))
        })?;
        let path = Self::object_path(&format!("{prefix}/{relative}"))?;
        self.objects.put(&path, PutPayload::from(bytes)).await?;
        Ok(())
    }

    /// The relative paths and sizes of a version's files, sorted.
    pub async fn list(
        &self,
        artifact: &Artifact,
    ) -> Result<Vec<(String, u64)>, ArtifactStoreError> {
        let prefix = Self::object_path(&artifact.spec.path)?;
        let mut files: Vec<(String, u64)> = self
            .objects
            .list(Some(&prefix))
            .map_ok(|meta| {
                let relative = meta
                    .location
                    .prefix_match(&prefix)
                    .map(|parts| {
                        parts
                            .map(|p| p.as_ref().to_string())
                            .collect::<Vec<_>>()
                            .join("/")
                    })
                    .unwrap_or_default();
                (relative, meta.size)
            })
            .try_collect()
            .await?;
        files.sort();
        Ok(files)
    }

    /// One file of a version, by its relative path.
    pub async fn read(
        &self,
        artifact: &Artifact,
        relative: &str,
    ) -> Result<Bytes, ArtifactStoreError> {
        let path = Self::object_path(&format!("{}/{relative}", artifact.spec.path))?;
        Ok(self.objects.get(&path).await?.bytes().await?)
    }

    /// A dir artifact as a tar archive of its files (paths relative to its folder).
    pub async fn tar(&self, artifact: &Artifact) -> Result<Vec<u8>, ArtifactStoreError> {
        let mut builder = tar::Builder::new(Vec::new());
        for (relative, _) in self.list(artifact).await? {
            let bytes = self.read(artifact, &relative).await?;
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            header.set_mtime(artifact.metadata.created.timestamp().max(0) as u64);
            builder
                .append_data(&mut header, &relative, bytes.as_ref())
                .map_err(|e| ArtifactStoreError::Io(format!("tar: {e}")))?;
        }
        builder
            .into_inner()
            .map_err(|e| ArtifactStoreError::Io(format!("tar: {e}")))
    }

    /// Removes every file of the versions (after the store forgot them).
    pub async fn remove(&self, artifact: &Artifact) -> Result<(), ArtifactStoreError> {
        for (relative, _) in self.list(artifact).await? {
            let path = Self::object_path(&format!("{}/{relative}", artifact.spec.path))?;
            match self.objects.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(error) => return Err(error.into()),
            }
        }
        Ok(())
    }

    /// A local folder holding the version's files, for a run that takes it as an input: the
    /// stored folder itself on the local backend (read-only by convention), else a download
    /// into the cache (one folder per content hash, reused).
    pub async fn materialize(&self, artifact: &Artifact) -> Result<PathBuf, ArtifactStoreError> {
        if let Some(root) = &self.local_root {
            return Ok(root.join(&artifact.spec.path));
        }
        let target = self.cache_dir.join(&artifact.spec.hash);
        if tokio::fs::try_exists(&target).await.unwrap_or(false) {
            return Ok(target);
        }
        let partial =
            self.cache_dir
                .join(format!(".{}.{}", artifact.spec.hash, uuid::Uuid::now_v7()));
        for (relative, _) in self.list(artifact).await? {
            let bytes = self.read(artifact, &relative).await?;
            let file = partial.join(&relative);
            if let Some(parent) = file.parent() {
                tokio::fs::create_dir_all(parent)
                    .await
                    .map_err(|e| ArtifactStoreError::Io(format!("{}: {e}", parent.display())))?;
            }
            tokio::fs::write(&file, &bytes)
                .await
                .map_err(|e| ArtifactStoreError::Io(format!("{}: {e}", file.display())))?;
        }
        tokio::fs::create_dir_all(&partial)
            .await
            .map_err(|e| ArtifactStoreError::Io(format!("{}: {e}", partial.display())))?;
        // A rename makes the cache entry appear whole; a racing download of the same hash
        // loses the rename and its copy is dropped.
        if tokio::fs::rename(&partial, &target).await.is_err() {
            let _ = tokio::fs::remove_dir_all(&partial).await;
        }
        Ok(target)
    }
}
