//! `runplane server`.

use clap::Args;
use runplane_server::options::{
    EngineSettings, KubernetesOptions, DEFAULT_ENGINE_IMAGE, DEFAULT_LISTEN,
    DEFAULT_MAX_CONCURRENT_RUNS, DEFAULT_PYTHON, DEFAULT_UV,
};
use runplane_server::{Server, ServerOptions};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Address to listen on.
    #[arg(long, env = "RUNPLANE_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub home: HomeArgs,
    /// Listen on a non-loopback address without authentication (only behind a network policy).
    #[arg(long)]
    pub insecure_no_auth: bool,
    /// Enable the `engine` framework (runs as containers) on this Docker-API socket, e.g.
    /// Podman's `/run/runplane-podman.sock`. `local` stays the default framework.
    #[arg(long, env = "RUNPLANE_ENGINE_SOCKET")]
    pub engine_socket: Option<PathBuf>,
    /// The image of engine runs that name none; it must hold the Python interpreter.
    #[arg(long, env = "RUNPLANE_ENGINE_IMAGE", default_value = DEFAULT_ENGINE_IMAGE)]
    pub engine_image: String,
    /// Push images built on the engine to this registry (`host:port[/prefix]`); without it
    /// they stay in the engine's own store.
    #[arg(long, env = "RUNPLANE_REGISTRY")]
    pub registry: Option<String>,
    /// The framework of runs whose task and request name none (`local`, or `engine` when
    /// enabled).
    #[arg(long, env = "RUNPLANE_DEFAULT_FRAMEWORK", default_value = "local")]
    pub default_framework: String,
    /// Where artifacts are kept: a local folder (default `$RUNPLANE_HOME/artifacts`).
    #[arg(long, env = "RUNPLANE_ARTIFACT_STORE")]
    pub artifact_store: Option<String>,
    /// The store: `postgres://user@host:port/db` (several replicas may share it), or
    /// `sqlite:PATH`; default: SQLite in `$RUNPLANE_HOME`.
    #[arg(long, env = "RUNPLANE_STORE")]
    pub store: Option<String>,
    /// This server's name among the replicas of a shared store: stable across its restarts
    /// (a pod's name), unique among live replicas. Default: the host's name.
    #[arg(long, env = "RUNPLANE_REPLICA_ID")]
    pub replica_id: Option<String>,
    /// A replica whose lease was not renewed for this long is dead: another adopts its runs.
    #[arg(long, env = "RUNPLANE_REPLICA_LEASE_SECONDS", default_value_t = 15)]
    pub replica_lease_seconds: u64,
    /// Where logs, run folders and (by default) artifacts live, when replicas share them (one
    /// host, or a shared filesystem); default: `$RUNPLANE_HOME`.
    #[arg(long, env = "RUNPLANE_SHARED_DIR")]
    pub shared_dir: Option<PathBuf>,
    #[command(flatten)]
    pub kubernetes: KubernetesArgs,
}

/// The `kubernetes` framework (enabled by `--kubernetes-namespace`).
#[derive(Debug, Args)]
pub struct KubernetesArgs {
    /// Enable the `kubernetes` framework: runs become Jobs and Deployments in this namespace.
    #[arg(long, env = "RUNPLANE_KUBERNETES_NAMESPACE")]
    pub kubernetes_namespace: Option<String>,
    /// The image of Kubernetes runs that name none; it must hold the Python interpreter.
    #[arg(long, env = "RUNPLANE_KUBERNETES_IMAGE", default_value = DEFAULT_ENGINE_IMAGE)]
    pub kubernetes_image: String,
    /// The `runplane.io/instance` label of this deployment's objects (how a restarted server
    /// finds its runs again).
    #[arg(long, env = "RUNPLANE_KUBERNETES_INSTANCE", default_value = "runplane")]
    pub kubernetes_instance: String,
    /// Admin-defined profiles (YAML: name → node selector, tolerations, runtime class, ...).
    #[arg(long, env = "RUNPLANE_KUBERNETES_PROFILES")]
    pub kubernetes_profiles: Option<PathBuf>,
    /// This server's `/api/v1/outputs` as pods reach it; jobs upload their outputs there.
    #[arg(long, env = "RUNPLANE_KUBERNETES_OUTPUTS_URL")]
    pub kubernetes_outputs_url: Option<String>,
    /// A kubeconfig file; default: in-cluster configuration, else `$KUBECONFIG`.
    #[arg(long, env = "RUNPLANE_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// The Kaniko executor image of builds on Kubernetes (they push to `--registry`).
    #[arg(long, env = "RUNPLANE_KANIKO_IMAGE")]
    pub kaniko_image: Option<String>,
}

/// Settings shared by `server` and `quickstart`.
#[derive(Debug, Args)]
pub struct HomeArgs {
    /// State, logs and run folders (default ~/.runplane).
    #[arg(long, env = "RUNPLANE_HOME")]
    pub home: Option<PathBuf>,
    /// The Python interpreter of runs.
    #[arg(long, env = "RUNPLANE_PYTHON", default_value = DEFAULT_PYTHON)]
    pub python: String,
    /// At most this many runs execute at once.
    #[arg(long, env = "RUNPLANE_MAX_CONCURRENT_RUNS", default_value_t = DEFAULT_MAX_CONCURRENT_RUNS)]
    pub max_concurrent_runs: u32,
    /// The key that encrypts secrets (32 bytes, mode 0600); default
    /// $RUNPLANE_HOME/secret.key, created on first start.
    #[arg(long, env = "RUNPLANE_SECRET_KEY_FILE")]
    pub secret_key_file: Option<PathBuf>,
    /// The `uv` executable that resolves Python requirements and builds environments.
    #[arg(long, env = "RUNPLANE_UV", default_value = DEFAULT_UV)]
    pub uv: String,
}

impl HomeArgs {
    pub fn options(
        &self,
        listen: SocketAddr,
        insecure_no_auth: bool,
    ) -> anyhow::Result<ServerOptions> {
        let home = match &self.home {
            Some(home) => home.clone(),
            None => std::env::var_os("HOME")
                .map(|home| PathBuf::from(home).join(".runplane"))
                .ok_or_else(|| anyhow::anyhow!("neither --home, RUNPLANE_HOME nor HOME is set"))?,
        };
        let exe = std::env::current_exe()?;
        Ok(ServerOptions {
            listen,
            home,
            python: self.python.clone(),
            max_concurrent_runs: self.max_concurrent_runs,
            supervisor: vec![exe.display().to_string(), "supervise".to_string()],
            insecure_no_auth,
            engine: None,
            secret_key_file: self.secret_key_file.clone(),
            uv: self.uv.clone(),
            default_framework: "local".to_string(),
            artifact_store: None,
            store: None,
            shared_dir: None,
            replica: Default::default(),
            kubernetes: None,
        })
    }
}

pub async fn run(args: ServerArgs) -> anyhow::Result<()> {
    let mut options = args.home.options(args.listen, args.insecure_no_auth)?;
    let kube = args.kubernetes;
    options.kubernetes = kube
        .kubernetes_namespace
        .map(|namespace| KubernetesOptions {
            namespace,
            image: kube.kubernetes_image,
            instance: kube.kubernetes_instance,
            profiles_file: kube.kubernetes_profiles,
            outputs_url: kube.kubernetes_outputs_url,
            kubeconfig: kube.kubeconfig,
            kaniko_image: kube.kaniko_image,
            registry: args.registry.clone(),
        });
    options.engine = args.engine_socket.map(|socket| EngineSettings {
        socket,
        image: args.engine_image,
        registry: args.registry,
    });
    options.default_framework = args.default_framework;
    options.artifact_store = args.artifact_store;
    options.store = args.store;
    options.shared_dir = args.shared_dir;
    if let Some(id) = args.replica_id {
        options.replica.id = id;
    }
    if args.replica_lease_seconds < 3 {
        anyhow::bail!("--replica-lease-seconds must be at least 3");
    }
    options.replica.lease = std::time::Duration::from_secs(args.replica_lease_seconds);
    let home = options.home.clone();
    let server = Server::bind(options).await?;
    eprintln!(
        "runplane server listening on http://{} (home {})",
        server
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default(),
        home.display()
    );
    server.serve(shutdown_signal()).await?;
    eprintln!("runplane server stopped; runs still executing keep running");
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
}
