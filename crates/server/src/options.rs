//! Server configuration, with the embedded defaults of `docs/configuration.md`.

use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Where to listen; loopback unless `insecure_no_auth`.
    pub listen: SocketAddr,
    /// `$RUNPLANE_HOME`: the SQLite database, logs and run folders live here.
    pub home: PathBuf,
    /// The interpreter of Python runs.
    pub python: String,
    /// At most this many runs are PENDING or RUNNING at once, server-wide.
    pub max_concurrent_runs: u32,
    /// The command that starts a local run's supervisor (argv prefix; the attempt folder is
    /// appended). The `runplane` binary passes `[itself, "supervise"]`.
    pub supervisor: Vec<String>,
    /// Allow listening on a non-loopback address without authentication.
    pub insecure_no_auth: bool,
    /// Enables the `engine` framework (containers on a Docker-API engine) next to `local`.
    pub engine: Option<EngineSettings>,
    /// The key that encrypts secrets; `secret_key_path()` when None (created if missing).
    pub secret_key_file: Option<PathBuf>,
    /// The `uv` executable: resolves requirements into locks, builds environments.
    pub uv: String,
    /// The framework of runs that name none; it must be enabled.
    pub default_framework: String,
    /// `--artifact-store`: where artifacts are kept; `$RUNPLANE_HOME/artifacts` when None.
    pub artifact_store: Option<String>,
    /// `--store`: `postgres://...` or `sqlite:PATH`; SQLite in the home when None.
    pub store: Option<String>,
    /// `--shared-dir`: logs, run folders and default artifacts, shared by replicas; the home
    /// when None.
    pub shared_dir: Option<PathBuf>,
    /// This server among the replicas of a shared store.
    pub replica: crate::controller::replicas::ReplicaOptions,
    /// Enables the `kubernetes` framework.
    pub kubernetes: Option<KubernetesOptions>,
}

/// The `kubernetes` framework's settings (`--kubernetes-*`).
#[derive(Debug, Clone)]
pub struct KubernetesOptions {
    /// The namespace runs are created in.
    pub namespace: String,
    /// The image of runs that name none.
    pub image: String,
    /// The `runplane.io/instance` label of this deployment's objects.
    pub instance: String,
    /// Admin-defined profiles (YAML).
    pub profiles_file: Option<PathBuf>,
    /// Where jobs upload their outputs: this server's `/api/v1/outputs` as pods reach it.
    pub outputs_url: Option<String>,
    /// A kubeconfig; in-cluster configuration (or `$KUBECONFIG`) when None.
    pub kubeconfig: Option<PathBuf>,
    /// The Kaniko image of builds; builds are refused without it (and without `registry`).
    pub kaniko_image: Option<String>,
    /// Where builds push (`--registry`).
    pub registry: Option<String>,
}

#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// The engine's Docker-API unix socket (Podman's `podman system service`, or Docker's).
    pub socket: PathBuf,
    /// The image of runs that name none, and the base of Python images built on the engine;
    /// it must hold the configured Python interpreter.
    pub image: String,
    /// Where images built on the engine are pushed (`host:port[/prefix]`).
    pub registry: Option<String>,
}

pub const DEFAULT_ENGINE_IMAGE: &str = "localhost/runplane-python:latest";

pub const DEFAULT_LISTEN: &str = "127.0.0.1:7420";
pub const DEFAULT_PYTHON: &str = "/usr/bin/python3";
pub const DEFAULT_UV: &str = "uv";
pub const DEFAULT_MAX_CONCURRENT_RUNS: u32 = 64;

impl ServerOptions {
    pub fn database_path(&self) -> PathBuf {
        self.home.join("runplane.db")
    }

    /// Where what replicas share lives: `shared_dir`, else the home.
    fn shared(&self) -> &PathBuf {
        self.shared_dir.as_ref().unwrap_or(&self.home)
    }

    pub fn logs_dir(&self) -> PathBuf {
        self.shared().join("logs")
    }

    /// Python environments built from locks, one folder per lock hash.
    pub fn environments_dir(&self) -> PathBuf {
        self.home.join("envs")
    }

    /// The artifact store: `artifact_store` when set, else `$RUNPLANE_HOME/artifacts`.
    pub fn artifact_store(
        &self,
    ) -> Result<crate::artifacts::ArtifactStore, crate::artifacts::ArtifactStoreError> {
        let cache = self.home.join("artifact-cache");
        match &self.artifact_store {
            Some(url) => crate::artifacts::ArtifactStore::from_url(url, &cache),
            None => {
                crate::artifacts::ArtifactStore::local(&self.shared().join("artifacts"), &cache)
            }
        }
    }

    pub fn runs_dir(&self) -> PathBuf {
        self.shared().join("runs")
    }

    /// The engine framework's attempt folders: apart from the local framework's, whose
    /// recovery removes every attempt folder it was not handed.
    pub fn engine_runs_dir(&self) -> PathBuf {
        self.shared().join("engine")
    }

    /// The secret key's file, and whether the server may create it: only the default one is
    /// created; a named file that is missing is an error (a typo must not silently start a
    /// server whose secrets nothing can decrypt).
    pub fn secret_key_path(&self) -> (PathBuf, bool) {
        match &self.secret_key_file {
            Some(path) => (path.clone(), false),
            None => (self.home.join("secret.key"), true),
        }
    }
}
