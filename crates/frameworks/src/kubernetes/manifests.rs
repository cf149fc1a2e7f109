//! What the cluster is asked for: pure functions from a [`Runnable`]'s parts and the
//! framework's settings to Kubernetes objects. No IO here, so that every manifest is checked
//! by a snapshot test, and a bad input (an invalid quantity, an unknown profile, files too
//! large for a ConfigMap) is refused with a clear reason before anything is created.
//!
//! Per execution (run id, attempt), all named [`object_name`]:
//! - a job: a ConfigMap of its files (copied into the writable working directory by an init
//!   container: ConfigMap volumes are read-only and cannot hold nested paths everywhere), a
//!   Secret (the env values that are secrets, the run-scoped token), and a `batch/v1` Job
//!   with no Kubernetes-level retries (`backoffLimit: 0`: runplane owns retries);
//! - a service: the same ConfigMap and Secret, a Deployment (readiness probe, rolling update
//!   that never drops below the wanted count) and, when it serves HTTP, a Service;
//! - a build: a ConfigMap holding the context as one `tar.gz`, and a Job running Kaniko that
//!   pushes to the configured registry and leaves the digest as its termination message.

use super::profiles::{is_label_value, Profile, ProfileError};
use super::quantity::{check_quantity, cpu_quantity, memory_quantity, QuantityError};
use super::KubernetesSettings;
use crate::attempt::check_file_path;
use crate::ExecutionId;
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::batch::v1::{Job as K8sJob, JobSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    EnvVarSource, HTTPGetAction, HostPathVolumeSource, LocalObjectReference, PodSpec,
    PodTemplateSpec, Probe, ResourceRequirements, Secret, SecretKeySelector, SecretVolumeSource,
    Service as K8sService, ServicePort, ServiceSpec, Volume as K8sVolume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::ByteString;
use runplane_domain::{Build, Job, Service, Volume};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::Path;

/// Every object runplane creates carries this label (`=runplane`): what the watchers and a
/// restarted server select on.
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "runplane";
/// The run id (sanitised into a label value; the exact id is in [`ANNOTATION_RUN_ID`]).
pub const LABEL_RUN_ID: &str = "runplane.io/run-id";
pub const LABEL_ATTEMPT: &str = "runplane.io/attempt";
/// Which server's objects these are: two servers sharing a namespace leave each other's alone.
pub const LABEL_INSTANCE: &str = "runplane.io/instance";
/// `job`, `service` or `build`.
pub const LABEL_KIND: &str = "runplane.io/kind";
/// The exact run id, which a label value may not be able to hold.
pub const ANNOTATION_RUN_ID: &str = "runplane.io/run-id";

pub const KIND_JOB: &str = "job";
pub const KIND_SERVICE: &str = "service";
pub const KIND_BUILD: &str = "build";

/// Where the job's files are copied to and its working directory (as on the engine).
pub const WORK_MOUNT: &str = "/runplane/work";
/// The outputs folder; `RUNPLANE_OUTPUTS` names it.
pub const OUTPUTS_MOUNT: &str = "/runplane/outputs";
/// Where the ConfigMap of the job's files is mounted (read-only).
pub const FILES_MOUNT: &str = "/runplane/files";
/// The container that runs the job (logs are read from it).
pub const MAIN_CONTAINER: &str = "main";
/// The init container that copies the files into the working directory.
pub const FILES_CONTAINER: &str = "files";
/// The port a service replica listens on when the service names none (`RUNPLANE_PORT`).
pub const DEFAULT_SERVICE_PORT: u16 = 8080;
/// A ConfigMap holds at most 1 MiB (the API server's object size limit for it).
pub const CONFIG_MAP_MAX_BYTES: usize = 1024 * 1024;
/// The env var holding the run-scoped token (from the Secret) and the upload address.
pub const TOKEN_ENV: &str = "RUNPLANE_TOKEN";
pub const OUTPUTS_URL_ENV: &str = "RUNPLANE_OUTPUTS_URL";
/// The ConfigMap key of the outputs uploader.
pub const UPLOADER_KEY: &str = "runplane-upload.py";
/// The ConfigMap key of a build's context archive.
pub const CONTEXT_KEY: &str = "context.tar.gz";

/// The outputs uploader run after the job's process when uploads are configured (stdlib
/// Python: the images that have outputs are Python runs).
const UPLOADER: &str = include_str!("upload.py");

/// Runs the job's command as a child, passes SIGTERM on, then uploads the outputs folder and
/// exits with the child's code. The uploader's complaints go to the termination message, not
/// to the job's log (stdout and stderr belong to the user's code).
const UPLOAD_WRAPPER: &str = r#""$@" &
child=$!
trap 'kill -TERM "$child" 2>/dev/null' TERM INT
while :; do wait "$child"; code=$?; kill -0 "$child" 2>/dev/null || break; done
python3 /runplane/files/runplane-upload.py 2>/dev/termination-log || true
exit "$code""#;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error(transparent)]
    Quantity(#[from] QuantityError),
    #[error(transparent)]
    Profile(#[from] ProfileError),
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("{0}")]
    Unsupported(String),
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ManifestError {
    ManifestError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// Settings a run picks that the [`Runnable`](runplane_domain::Runnable) has no field for yet:
/// taken out of the job's env (a task's `env`), so that they never reach the container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunOptions {
    /// `RUNPLANE_PROFILE`: an admin-defined profile's name.
    pub profile: Option<String>,
    /// `RUNPLANE_GPUS`: how many GPUs (the settings' `gpu_resource`).
    pub gpus: Option<u32>,
    /// `RUNPLANE_TIMEOUT_SECONDS`: the Job's `activeDeadlineSeconds`.
    pub timeout_seconds: Option<u64>,
}

pub const PROFILE_ENV: &str = "RUNPLANE_PROFILE";
pub const GPUS_ENV: &str = "RUNPLANE_GPUS";
pub const TIMEOUT_ENV: &str = "RUNPLANE_TIMEOUT_SECONDS";

impl RunOptions {
    /// Removes the options from `env`; a value that does not parse is an error naming it.
    pub fn take(env: &mut BTreeMap<String, String>) -> Result<RunOptions, ManifestError> {
        let number = |name: &str, value: Option<String>| -> Result<Option<u64>, ManifestError> {
            value
                .map(|text| {
                    text.trim().parse::<u64>().map_err(|_| {
                        invalid(
                            format!("env.{name}"),
                            format!("{text:?} is not a whole number"),
                        )
                    })
                })
                .transpose()
        };
        let profile = env.remove(PROFILE_ENV).filter(|p| !p.is_empty());
        let gpus = number(GPUS_ENV, env.remove(GPUS_ENV))?
            .map(|n| u32::try_from(n).map_err(|_| invalid(format!("env.{GPUS_ENV}"), "too large")))
            .transpose()?;
        let timeout_seconds = number(TIMEOUT_ENV, env.remove(TIMEOUT_ENV))?;
        if timeout_seconds == Some(0) {
            return Err(invalid(format!("env.{TIMEOUT_ENV}"), "must be at least 1"));
        }
        Ok(RunOptions {
            profile,
            gpus,
            timeout_seconds,
        })
    }
}

/// The objects of a job execution, in the order they are created.
#[derive(Debug, Clone, PartialEq)]
pub struct JobObjects {
    pub config_map: Option<ConfigMap>,
    pub secret: Option<Secret>,
    pub job: K8sJob,
}

/// The objects of a service execution.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceObjects {
    pub config_map: Option<ConfigMap>,
    pub secret: Option<Secret>,
    pub deployment: Deployment,
    /// Only for services that serve HTTP.
    pub service: Option<K8sService>,
}

/// The objects of an image build.
#[derive(Debug, Clone, PartialEq)]
pub struct BuildObjects {
    pub config_map: ConfigMap,
    pub job: K8sJob,
    /// Where the image is pushed (`registry/repo:tag`).
    pub destination: String,
}

/// The name of every object of an execution: `rp-<run id>-<attempt>`, a DNS-1123 label (at
/// most 63 characters). A run id that is not already lowercase alphanumerics and dashes of a
/// safe length is cut and made unique again with a hash of the whole id.
pub fn object_name(execution: &ExecutionId) -> String {
    let clean: String = execution
        .run_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let safe = clean == execution.run_id && clean.len() <= 40 && !clean.ends_with('-');
    let id = if safe {
        clean
    } else {
        let mut cut: String = clean.chars().take(30).collect();
        while cut.ends_with('-') {
            cut.pop();
        }
        format!("{cut}-{}", short_hash(&execution.run_id))
    };
    format!("rp-{}-{}", id.trim_start_matches('-'), execution.attempt)
}

fn short_hash(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    digest[..4].iter().map(|b| format!("{b:02x}")).collect()
}

/// The run id as a label value: itself when it is one, else a sanitised form with a hash.
pub fn run_id_label(run_id: &str) -> String {
    if is_label_value(run_id) {
        return run_id.to_string();
    }
    let mut clean: String = run_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .take(50)
        .collect();
    clean = clean
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string();
    if clean.is_empty() {
        short_hash(run_id)
    } else {
        format!("{clean}-{}", short_hash(run_id))
    }
}

/// The labels of an execution's objects (and of its pods).
pub fn labels(
    settings: &KubernetesSettings,
    execution: &ExecutionId,
    kind: &str,
    profile: Option<&Profile>,
) -> BTreeMap<String, String> {
    let mut labels = profile.map(|p| p.labels.clone()).unwrap_or_default();
    labels.extend([
        (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
        (LABEL_RUN_ID.to_string(), run_id_label(&execution.run_id)),
        (LABEL_ATTEMPT.to_string(), execution.attempt.to_string()),
        (LABEL_INSTANCE.to_string(), settings.instance.clone()),
        (LABEL_KIND.to_string(), kind.to_string()),
    ]);
    labels
}

/// What selects exactly one execution's pods.
pub fn selector_labels(
    settings: &KubernetesSettings,
    execution: &ExecutionId,
) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_RUN_ID.to_string(), run_id_label(&execution.run_id)),
        (LABEL_ATTEMPT.to_string(), execution.attempt.to_string()),
        (LABEL_INSTANCE.to_string(), settings.instance.clone()),
    ])
}

/// The label selector of every object this server manages.
pub fn managed_selector(settings: &KubernetesSettings) -> String {
    format!(
        "{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_INSTANCE}={}",
        settings.instance
    )
}

/// An execution read back from an object's metadata (the annotation holds the exact run id).
pub fn execution_of(meta: &ObjectMeta) -> Option<ExecutionId> {
    let run_id = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_RUN_ID))?
        .clone();
    let attempt = meta.labels.as_ref()?.get(LABEL_ATTEMPT)?.parse().ok()?;
    Some(ExecutionId { run_id, attempt })
}

fn meta(
    settings: &KubernetesSettings,
    execution: &ExecutionId,
    kind: &str,
    profile: Option<&Profile>,
) -> ObjectMeta {
    ObjectMeta {
        name: Some(object_name(execution)),
        namespace: Some(settings.namespace.clone()),
        labels: Some(labels(settings, execution, kind, profile)),
        annotations: Some(BTreeMap::from([(
            ANNOTATION_RUN_ID.to_string(),
            execution.run_id.clone(),
        )])),
        ..Default::default()
    }
}

/// An owner reference to `owner` (a Job or Deployment): the garbage collector removes the
/// owned ConfigMap and Secret with it.
pub fn owner_reference(kind: &str, api_version: &str, name: &str, uid: &str) -> OwnerReference {
    OwnerReference {
        api_version: api_version.to_string(),
        kind: kind.to_string(),
        name: name.to_string(),
        uid: uid.to_string(),
        controller: Some(false),
        block_owner_deletion: Some(false),
    }
}

/// A job execution's objects. `token` is the run-scoped token for uploads (in the Secret).
pub fn job_objects(
    settings: &KubernetesSettings,
    execution: &ExecutionId,
    job: &Job,
    token: Option<&str>,
) -> Result<JobObjects, ManifestError> {
    let mut job = job.clone();
    let options = RunOptions::take(&mut job.env)?;
    let profile = settings.profiles.profile(options.profile.as_deref())?;
    let pod = Pod::new(settings, execution, &job, &options, profile, token, false)?;
    let spec = pod.spec(settings, "Never")?;
    let k8s_job = K8sJob {
        metadata: meta(settings, execution, KIND_JOB, profile),
        spec: Some(JobSpec {
            backoff_limit: Some(0),
            active_deadline_seconds: options
                .timeout_seconds
                .map(|s| i64::try_from(s).unwrap_or(i64::MAX)),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(settings, execution, KIND_JOB, profile)),
                    annotations: Some(BTreeMap::from([(
                        ANNOTATION_RUN_ID.to_string(),
                        execution.run_id.clone(),
                    )])),
                    ..Default::default()
                }),
                spec: Some(spec),
            },
            ..Default::default()
        }),
        status: None,
    };
    Ok(JobObjects {
        config_map: pod.config_map(settings, execution, KIND_JOB, profile),
        secret: pod.secret(settings, execution, KIND_JOB, profile),
        job: k8s_job,
    })
}

/// A service execution's objects.
pub fn service_objects(
    settings: &KubernetesSettings,
    execution: &ExecutionId,
    service: &Service,
    token: Option<&str>,
) -> Result<ServiceObjects, ManifestError> {
    let mut job = service.replica.clone();
    let options = RunOptions::take(&mut job.env)?;
    let profile = settings.profiles.profile(options.profile.as_deref())?;
    if service.http && !service.readiness_path.starts_with('/') {
        return Err(invalid(
            "readiness_path",
            format!("{:?} must start with '/'", service.readiness_path),
        ));
    }
    let port = service.port.unwrap_or(DEFAULT_SERVICE_PORT);
    if port == 0 {
        return Err(invalid("port", "0 is not a port"));
    }
    if service.port.is_none() {
        job.env.insert(
            "RUNPLANE_PORT".to_string(),
            DEFAULT_SERVICE_PORT.to_string(),
        );
    }
    let pod = Pod::new(settings, execution, &job, &options, profile, token, true)?;
    let mut spec = pod.spec(settings, "Always")?;
    if service.http {
        let main = &mut spec.containers[0];
        main.ports = Some(vec![ContainerPort {
            name: Some("http".to_string()),
            container_port: i32::from(port),
            protocol: Some("TCP".to_string()),
            ..Default::default()
        }]);
        main.readiness_probe = Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some(service.readiness_path.clone()),
                port: IntOrString::String("http".to_string()),
                ..Default::default()
            }),
            period_seconds: Some(2),
            failure_threshold: Some(3),
            timeout_seconds: Some(2),
            ..Default::default()
        });
    }
    let selector = selector_labels(settings, execution);
    let pod_labels = labels(settings, execution, KIND_SERVICE, profile);
    let deployment = Deployment {
        metadata: meta(settings, execution, KIND_SERVICE, profile),
        spec: Some(DeploymentSpec {
            replicas: Some(i32::try_from(service.replicas).unwrap_or(i32::MAX)),
            selector: LabelSelector {
                match_labels: Some(selector.clone()),
                ..Default::default()
            },
            // Never fewer ready replicas than wanted while a new pod template rolls out.
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".to_string()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(1)),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            progress_deadline_seconds: Some(
                i32::try_from(service.ready_timeout_seconds.max(1)).unwrap_or(i32::MAX),
            ),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(BTreeMap::from([(
                        ANNOTATION_RUN_ID.to_string(),
                        execution.run_id.clone(),
                    )])),
                    ..Default::default()
                }),
                spec: Some(spec),
            },
            ..Default::default()
        }),
        status: None,
    };
    let k8s_service = service.http.then(|| K8sService {
        metadata: meta(settings, execution, KIND_SERVICE, profile),
        spec: Some(ServiceSpec {
            selector: Some(selector),
            ports: Some(vec![ServicePort {
                name: Some("http".to_string()),
                port: 80,
                target_port: Some(IntOrString::String("http".to_string())),
                protocol: Some("TCP".to_string()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    });
    Ok(ServiceObjects {
        config_map: pod.config_map(settings, execution, KIND_SERVICE, profile),
        secret: pod.secret(settings, execution, KIND_SERVICE, profile),
        deployment,
        service: k8s_service,
    })
}

/// A build's objects: the context as one archive in a ConfigMap, and a Kaniko Job.
pub fn build_objects(
    settings: &KubernetesSettings,
    execution: &ExecutionId,
    build: &Build,
) -> Result<BuildObjects, ManifestError> {
    let Some(builder) = &settings.build else {
        return Err(ManifestError::Unsupported(
            "image builds are not configured for the kubernetes framework (no build registry)"
                .to_string(),
        ));
    };
    if !build.context_dirs.is_empty() {
        return Err(invalid(
            "context_dirs",
            "host folders cannot be sent to a cluster; build from files only",
        ));
    }
    if build.image.is_empty() || build.image.contains(char::is_whitespace) {
        return Err(invalid(
            "image",
            format!("{:?} is not an image reference", build.image),
        ));
    }
    let archive = context_archive(build)?;
    if archive.len() > CONFIG_MAP_MAX_BYTES - 1024 {
        return Err(invalid(
            "context",
            format!(
                "the build context compresses to {} bytes; a ConfigMap holds at most {CONFIG_MAP_MAX_BYTES}",
                archive.len()
            ),
        ));
    }
    let destination = destination(&builder.registry, &build.image);
    let mut args = vec![
        format!("--context=tar://{FILES_MOUNT}/{CONTEXT_KEY}"),
        "--dockerfile=Containerfile".to_string(),
        format!("--destination={destination}"),
        // The digest is what the framework reports as the built image: the termination
        // message carries it back without any outputs upload.
        "--digest-file=/dev/termination-log".to_string(),
    ];
    if !build.push {
        args.push("--no-push".to_string());
    }
    if builder.insecure {
        args.push("--insecure".to_string());
        args.push("--skip-tls-verify".to_string());
    }
    for (name, value) in &build.args {
        args.push(format!("--build-arg={name}={value}"));
    }
    let mut mounts = vec![VolumeMount {
        name: "files".to_string(),
        mount_path: FILES_MOUNT.to_string(),
        read_only: Some(true),
        ..Default::default()
    }];
    let mut volumes = vec![K8sVolume {
        name: "files".to_string(),
        config_map: Some(ConfigMapVolumeSource {
            name: object_name(execution),
            ..Default::default()
        }),
        ..Default::default()
    }];
    if let Some(secret) = &builder.push_secret {
        // A docker config.json (type kubernetes.io/dockerconfigjson) where Kaniko reads it.
        mounts.push(VolumeMount {
            name: "registry-auth".to_string(),
            mount_path: "/kaniko/.docker".to_string(),
            read_only: Some(true),
            ..Default::default()
        });
        volumes.push(K8sVolume {
            name: "registry-auth".to_string(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.clone()),
                items: Some(vec![k8s_openapi::api::core::v1::KeyToPath {
                    key: ".dockerconfigjson".to_string(),
                    path: "config.json".to_string(),
                    mode: None,
                }]),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    let pod_labels = labels(settings, execution, KIND_BUILD, None);
    let job = K8sJob {
        metadata: meta(settings, execution, KIND_BUILD, None),
        spec: Some(JobSpec {
            backoff_limit: Some(0),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(BTreeMap::from([(
                        ANNOTATION_RUN_ID.to_string(),
                        execution.run_id.clone(),
                    )])),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    restart_policy: Some("Never".to_string()),
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    service_account_name: settings.service_account.clone(),
                    image_pull_secrets: pull_secrets(settings),
                    containers: vec![Container {
                        name: MAIN_CONTAINER.to_string(),
                        image: Some(builder.kaniko_image.clone()),
                        args: Some(args),
                        volume_mounts: Some(mounts),
                        termination_message_policy: Some("File".to_string()),
                        ..Default::default()
                    }],
                    volumes: Some(volumes),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        status: None,
    };
    let config_map = ConfigMap {
        metadata: meta(settings, execution, KIND_BUILD, None),
        binary_data: Some(BTreeMap::from([(
            CONTEXT_KEY.to_string(),
            ByteString(archive),
        )])),
        ..Default::default()
    };
    Ok(BuildObjects {
        config_map,
        job,
        destination,
    })
}

/// `image` pushed to `registry` unless it already names a registry (`host.domain/...`,
/// `host:port/...`, `localhost/...`).
pub fn destination(registry: &str, image: &str) -> String {
    let names_registry = image.split_once('/').is_some_and(|(first, _)| {
        first.contains('.') || first.contains(':') || first == "localhost"
    });
    if names_registry || registry.is_empty() {
        image.to_string()
    } else {
        format!("{}/{image}", registry.trim_end_matches('/'))
    }
}

/// The build context as a gzipped tar with fixed times and owners (the same build makes the
/// same bytes), the Containerfile at its root.
fn context_archive(build: &Build) -> Result<Vec<u8>, ManifestError> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    let mut add = |path: &str, mode: u32, contents: &[u8]| -> Result<(), ManifestError> {
        let mut header = tar::Header::new_gnu();
        header.set_size(contents.len() as u64);
        header.set_mode(mode & 0o7777);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        header.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut header, path, contents)
            .map_err(|e| invalid("context", format!("cannot archive {path}: {e}")))
    };
    add("Containerfile", 0o644, build.containerfile.as_bytes())?;
    for (i, file) in build.context.iter().enumerate() {
        let path =
            check_file_path(&file.path).map_err(|m| invalid(format!("context[{i}].path"), m))?;
        add(&path.to_string_lossy(), file.mode, &file.contents)?;
    }
    let gz = tar
        .into_inner()
        .map_err(|e| invalid("context", format!("cannot archive: {e}")))?;
    gz.finish()
        .map_err(|e| invalid("context", format!("cannot compress: {e}")))
}

fn pull_secrets(settings: &KubernetesSettings) -> Option<Vec<LocalObjectReference>> {
    (!settings.image_pull_secrets.is_empty()).then(|| {
        settings
            .image_pull_secrets
            .iter()
            .map(|name| LocalObjectReference { name: name.clone() })
            .collect()
    })
}

/// The pod of a job or of a service replica, before it becomes a template.
struct Pod<'a> {
    job: &'a Job,
    execution: &'a ExecutionId,
    image: String,
    profile: Option<&'a Profile>,
    /// ConfigMap keys (`f0`, `f1`, ...) and what they become.
    files: Vec<(String, String, u32, &'a [u8])>,
    /// Env names whose values are secrets, held in the Secret.
    secret_env: BTreeMap<String, String>,
    plain_env: BTreeMap<String, String>,
    resources: Option<ResourceRequirements>,
    upload: bool,
    token: Option<&'a str>,
}

impl<'a> Pod<'a> {
    fn new(
        settings: &KubernetesSettings,
        execution: &'a ExecutionId,
        job: &'a Job,
        options: &RunOptions,
        profile: Option<&'a Profile>,
        token: Option<&'a str>,
        service: bool,
    ) -> Result<Pod<'a>, ManifestError> {
        if job.command.is_empty() {
            return Err(invalid("command", "the job has an empty command"));
        }
        let mut files = Vec::new();
        let mut size = 0usize;
        for (i, file) in job.files.iter().enumerate() {
            let path =
                check_file_path(&file.path).map_err(|m| invalid(format!("files[{i}].path"), m))?;
            size += file.contents.len();
            files.push((
                format!("f{i}"),
                path.to_string_lossy().into_owned(),
                file.mode & 0o7777,
                file.contents.as_slice(),
            ));
        }
        // The uploader rides in the same ConfigMap; what is left is the job's own budget.
        let budget = CONFIG_MAP_MAX_BYTES - UPLOADER.len() - 4096;
        if size > budget {
            return Err(invalid(
                "files",
                format!(
                    "the job's files take {size} bytes; a ConfigMap holds at most {budget} of them"
                ),
            ));
        }
        let mut secret_env = BTreeMap::new();
        let mut plain_env = BTreeMap::new();
        for (name, value) in &job.env {
            if name == "RUNPLANE_OUTPUTS" || name == TOKEN_ENV || name == OUTPUTS_URL_ENV {
                continue;
            }
            if !value.is_empty() && job.redact.iter().any(|secret| secret == value) {
                secret_env.insert(name.clone(), value.clone());
            } else {
                plain_env.insert(name.clone(), value.clone());
            }
        }
        // Services upload nothing: they have no end to upload at.
        let upload = !service && settings.outputs_url.is_some() && token.is_some();
        if upload {
            plain_env.insert(
                OUTPUTS_URL_ENV.to_string(),
                outputs_url(settings.outputs_url.as_deref().unwrap_or(""), execution),
            );
        }
        Ok(Pod {
            job,
            execution,
            image: job
                .image
                .clone()
                .unwrap_or_else(|| settings.default_image.clone()),
            profile,
            files,
            secret_env,
            plain_env,
            resources: resources(settings, job, options, profile)?,
            upload,
            token: token.filter(|_| upload),
        })
    }

    fn has_secret(&self) -> bool {
        !self.secret_env.is_empty() || self.token.is_some()
    }

    fn has_config_map(&self) -> bool {
        !self.files.is_empty() || self.upload
    }

    fn env(&self) -> Vec<EnvVar> {
        let name = object_name(self.execution);
        let mut env: Vec<EnvVar> = self
            .plain_env
            .iter()
            .map(|(key, value)| EnvVar {
                name: key.clone(),
                value: Some(value.clone()),
                value_from: None,
            })
            .collect();
        let secret_names = self
            .secret_env
            .keys()
            .cloned()
            .chain(self.token.map(|_| TOKEN_ENV.to_string()));
        for key in secret_names {
            env.push(EnvVar {
                name: key.clone(),
                value: None,
                value_from: Some(EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: name.clone(),
                        key,
                        optional: Some(false),
                    }),
                    ..Default::default()
                }),
            });
        }
        env.push(EnvVar {
            name: "RUNPLANE_OUTPUTS".to_string(),
            value: Some(OUTPUTS_MOUNT.to_string()),
            value_from: None,
        });
        env
    }

    fn spec(&self, settings: &KubernetesSettings, restart: &str) -> Result<PodSpec, ManifestError> {
        let name = object_name(self.execution);
        let mut volumes = vec![empty_dir("work"), empty_dir("outputs")];
        let mut mounts = vec![
            mount("work", WORK_MOUNT, false),
            mount("outputs", OUTPUTS_MOUNT, false),
        ];
        let mut init = Vec::new();
        if self.has_config_map() {
            volumes.push(K8sVolume {
                name: "files".to_string(),
                config_map: Some(ConfigMapVolumeSource {
                    name: name.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            });
            mounts.push(mount("files", FILES_MOUNT, true));
        }
        if !self.files.is_empty() {
            init.push(Container {
                name: FILES_CONTAINER.to_string(),
                image: Some(self.image.clone()),
                command: Some(vec![
                    "/bin/sh".to_string(),
                    "-c".to_string(),
                    copy_script(&self.files),
                ]),
                volume_mounts: Some(vec![
                    mount("files", FILES_MOUNT, true),
                    mount("work", WORK_MOUNT, false),
                ]),
                termination_message_policy: Some("FallbackToLogsOnError".to_string()),
                ..Default::default()
            });
        }
        for (i, volume) in self.job.volumes.iter().enumerate() {
            let (k8s_volume, volume_mount) = host_volume(i, volume)?;
            volumes.push(k8s_volume);
            mounts.push(volume_mount);
        }
        let command = if self.upload {
            let mut wrapped = vec![
                "/bin/sh".to_string(),
                "-c".to_string(),
                UPLOAD_WRAPPER.to_string(),
                "runplane-job".to_string(),
            ];
            wrapped.extend(self.job.command.iter().cloned());
            wrapped
        } else {
            self.job.command.clone()
        };
        let main = Container {
            name: MAIN_CONTAINER.to_string(),
            image: Some(self.image.clone()),
            command: Some(command),
            args: Some(Vec::new()),
            env: Some(self.env()),
            working_dir: Some(WORK_MOUNT.to_string()),
            resources: self.resources.clone(),
            volume_mounts: Some(mounts),
            // A container that dies before writing a termination message (a missing program,
            // a crash) leaves the end of its log there: the reason a run shows.
            termination_message_policy: Some("FallbackToLogsOnError".to_string()),
            ..Default::default()
        };
        Ok(PodSpec {
            restart_policy: Some(restart.to_string()),
            termination_grace_period_seconds: Some(
                i64::try_from(self.job.stop_grace_seconds).unwrap_or(i64::MAX),
            ),
            // Runs execute user code: no API credentials, no service env of the namespace.
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            service_account_name: settings.service_account.clone(),
            image_pull_secrets: pull_secrets(settings),
            node_selector: self
                .profile
                .filter(|p| !p.node_selector.is_empty())
                .map(|p| p.node_selector.clone()),
            tolerations: self
                .profile
                .filter(|p| !p.tolerations.is_empty())
                .map(|p| p.tolerations.clone()),
            runtime_class_name: self.profile.and_then(|p| p.runtime_class.clone()),
            init_containers: (!init.is_empty()).then_some(init),
            containers: vec![main],
            volumes: Some(volumes),
            ..Default::default()
        })
    }

    fn config_map(
        &self,
        settings: &KubernetesSettings,
        execution: &ExecutionId,
        kind: &str,
        profile: Option<&Profile>,
    ) -> Option<ConfigMap> {
        if !self.has_config_map() {
            return None;
        }
        let mut data = BTreeMap::new();
        let mut binary = BTreeMap::new();
        for (key, _, _, contents) in &self.files {
            match std::str::from_utf8(contents) {
                Ok(text) => {
                    data.insert(key.clone(), text.to_string());
                }
                Err(_) => {
                    binary.insert(key.clone(), ByteString(contents.to_vec()));
                }
            }
        }
        if self.upload {
            data.insert(UPLOADER_KEY.to_string(), UPLOADER.to_string());
        }
        Some(ConfigMap {
            metadata: meta(settings, execution, kind, profile),
            data: (!data.is_empty()).then_some(data),
            binary_data: (!binary.is_empty()).then_some(binary),
            ..Default::default()
        })
    }

    fn secret(
        &self,
        settings: &KubernetesSettings,
        execution: &ExecutionId,
        kind: &str,
        profile: Option<&Profile>,
    ) -> Option<Secret> {
        if !self.has_secret() {
            return None;
        }
        let mut data: BTreeMap<String, ByteString> = self
            .secret_env
            .iter()
            .map(|(k, v)| (k.clone(), ByteString(v.as_bytes().to_vec())))
            .collect();
        if let Some(token) = self.token {
            data.insert(TOKEN_ENV.to_string(), ByteString(token.as_bytes().to_vec()));
        }
        Some(Secret {
            metadata: meta(settings, execution, kind, profile),
            type_: Some("Opaque".to_string()),
            data: Some(data),
            ..Default::default()
        })
    }
}

/// Where an execution's runner uploads its outputs: `<base>/<run id>/<attempt>`.
pub fn outputs_url(base: &str, execution: &ExecutionId) -> String {
    format!(
        "{}/{}/{}",
        base.trim_end_matches('/'),
        execution.run_id,
        execution.attempt
    )
}

/// The init container's script: each ConfigMap key copied to its path with its mode.
fn copy_script(files: &[(String, String, u32, &[u8])]) -> String {
    let mut script = String::from("set -e\ncd /runplane/work\n");
    for (key, path, mode, _) in files {
        if let Some(parent) = Path::new(path)
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
        {
            script.push_str(&format!("mkdir -p {}\n", quote(&parent.to_string_lossy())));
        }
        script.push_str(&format!(
            "cp {FILES_MOUNT}/{key} {path}\nchmod {mode:o} {path}\n",
            path = quote(path)
        ));
    }
    script
}

/// A shell word: single quotes, with `'` spelled `'\''`.
fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

fn empty_dir(name: &str) -> K8sVolume {
    K8sVolume {
        name: name.to_string(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Default::default()
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.to_string(),
        mount_path: path.to_string(),
        read_only: read_only.then_some(true),
        ..Default::default()
    }
}

/// A job's volume as a `hostPath` on the node: the same folder must exist there (shared
/// storage mounted on every node, or a node selected by profile).
fn host_volume(i: usize, volume: &Volume) -> Result<(K8sVolume, VolumeMount), ManifestError> {
    for (field, path) in [
        ("host_path", &volume.host_path),
        ("container_path", &volume.container_path),
    ] {
        if !path.starts_with('/') || path.contains('\0') {
            return Err(invalid(
                format!("volumes[{i}].{field}"),
                format!("{path:?} must be an absolute path"),
            ));
        }
    }
    if ["/runplane"]
        .iter()
        .any(|mount| Path::new(&volume.container_path).starts_with(mount))
    {
        return Err(invalid(
            format!("volumes[{i}].container_path"),
            format!(
                "{:?} is inside runplane's own mounts (/runplane)",
                volume.container_path
            ),
        ));
    }
    let name = format!("volume-{i}");
    Ok((
        K8sVolume {
            name: name.clone(),
            host_path: Some(HostPathVolumeSource {
                path: volume.host_path.clone(),
                type_: Some("Directory".to_string()),
            }),
            ..Default::default()
        },
        mount(&name, &volume.container_path, volume.read_only),
    ))
}

/// Requests and limits: the run's cpus and memory (requested as much as limited: a run gets
/// what it asked for), its GPUs, then what its profile adds for names the run left out.
fn resources(
    settings: &KubernetesSettings,
    job: &Job,
    options: &RunOptions,
    profile: Option<&Profile>,
) -> Result<Option<ResourceRequirements>, ManifestError> {
    let mut limits: BTreeMap<String, Quantity> = BTreeMap::new();
    let mut requests: BTreeMap<String, Quantity> = BTreeMap::new();
    if let Some(job_limits) = &job.limits {
        if let Some(cpus) = job_limits.cpus {
            let cpu = cpu_quantity("limits.cpus", cpus)?;
            limits.insert("cpu".to_string(), cpu.clone());
            requests.insert("cpu".to_string(), cpu);
        }
        if let Some(memory) = job_limits.memory_bytes {
            let memory = memory_quantity("limits.memory_bytes", memory)?;
            limits.insert("memory".to_string(), memory.clone());
            requests.insert("memory".to_string(), memory);
        }
    }
    if let Some(gpus) = options.gpus.filter(|g| *g > 0) {
        // Extended resources are limits only (a request must equal the limit if given).
        limits.insert(settings.gpu_resource.clone(), Quantity(gpus.to_string()));
    }
    if let Some(profile) = profile {
        for (map, defaults) in [
            (&mut requests, &profile.resources.requests),
            (&mut limits, &profile.resources.limits),
        ] {
            for (name, value) in defaults {
                if !map.contains_key(name) {
                    map.insert(name.clone(), check_quantity(name, value)?);
                }
            }
        }
    }
    if limits.is_empty() && requests.is_empty() {
        return Ok(None);
    }
    Ok(Some(ResourceRequirements {
        limits: (!limits.is_empty()).then_some(limits),
        requests: (!requests.is_empty()).then_some(requests),
        ..Default::default()
    }))
}
