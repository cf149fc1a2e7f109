//! Snapshot tests (insta, YAML) of every manifest the kubernetes framework generates, and the
//! clear errors bad input gets before anything reaches a cluster. The snapshots live in
//! `tests/snapshots/`; after an intended change, review and accept them
//! (`INSTA_UPDATE=always cargo test -p runplane-frameworks --test kubernetes_manifests`, then
//! `git diff`).

use runplane_domain::{Build, FileEntry, Job, Limits, Service, Volume};
use runplane_frameworks::kubernetes::manifests::{
    build_objects, job_objects, object_name, run_id_label, service_objects, ManifestError,
};
use runplane_frameworks::kubernetes::profiles::Profiles;
use runplane_frameworks::kubernetes::{BuildSettings, KubernetesSettings};
use runplane_frameworks::ExecutionId;
use std::collections::BTreeMap;
use std::path::PathBuf;

const PROFILES: &str = r#"
profiles:
  gpu:
    node_selector: { "nvidia.com/gpu.present": "true" }
    tolerations:
      - { key: nvidia.com/gpu, operator: Exists, effect: NoSchedule }
    runtime_class: nvidia
    labels: { team: ml }
    resources:
      requests: { ephemeral-storage: 1Gi }
  small:
    resources:
      limits: { cpu: 250m, memory: 256Mi }
"#;

fn settings() -> KubernetesSettings {
    let mut settings = KubernetesSettings::new(
        "runplane-runs",
        PathBuf::from("/var/lib/runplane/k8s"),
        PathBuf::from("/var/lib/runplane/logs"),
    );
    settings.instance = "prod".into();
    settings.profiles = Profiles::from_yaml(PROFILES).expect("profiles");
    settings.outputs_url = Some("http://runplane.runplane.svc:7420/api/v1/outputs".into());
    settings.token_key = b"test key".to_vec();
    settings.image_pull_secrets = vec!["pull-secret".into()];
    settings.build = Some(BuildSettings {
        registry: "registry.internal:5000/runplane".into(),
        kaniko_image: "registry.internal:5000/kaniko/executor:v1.23.2".into(),
        insecure: true,
        push_secret: Some("registry-auth".into()),
    });
    settings
}

fn execution() -> ExecutionId {
    ExecutionId {
        run_id: "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b".into(),
        attempt: 2,
    }
}

fn python_job() -> Job {
    Job {
        command: vec!["/usr/bin/python3".into(), "runner.py".into()],
        env: BTreeMap::from([
            ("PYTHONUNBUFFERED".into(), "1".into()),
            ("API_KEY".into(), "s3cr3t".into()),
            ("RUNPLANE_PROFILE".into(), "gpu".into()),
            ("RUNPLANE_GPUS".into(), "2".into()),
            ("RUNPLANE_TIMEOUT_SECONDS".into(), "600".into()),
        ]),
        files: vec![
            FileEntry {
                path: "runner.py".into(),
                mode: 0o644,
                contents: b"print('runner')\n".to_vec(),
            },
            FileEntry {
                path: "src/pkg/it's.py".into(),
                mode: 0o755,
                contents: b"def handler():\n    return 1\n".to_vec(),
            },
            FileEntry {
                path: "data.bin".into(),
                mode: 0o600,
                contents: vec![0, 159, 146, 150],
            },
        ],
        stop_grace_seconds: 15,
        log_limit_bytes: None,
        image: Some("localhost/runplane-python:latest".into()),
        redact: vec!["s3cr3t".into()],
        volumes: vec![Volume {
            host_path: "/mnt/datasets".into(),
            container_path: "/data".into(),
            read_only: true,
        }],
        limits: Some(Limits {
            cpus: Some(1.5),
            memory_bytes: Some(512 << 20),
        }),
    }
}

fn token() -> Option<&'static str> {
    Some("0123456789abcdef")
}

#[test]
fn a_job_with_files_secrets_profile_and_limits() {
    let objects = job_objects(&settings(), &execution(), &python_job(), token()).unwrap();
    insta::assert_yaml_snapshot!("job_full_config_map", objects.config_map.unwrap());
    insta::assert_yaml_snapshot!("job_full_secret", objects.secret.unwrap());
    insta::assert_yaml_snapshot!("job_full_job", objects.job);
}

#[test]
fn a_minimal_job() {
    let mut settings = settings();
    settings.outputs_url = None;
    settings.image_pull_secrets.clear();
    let job = Job {
        command: vec!["echo".into(), "hi".into()],
        stop_grace_seconds: 10,
        ..Default::default()
    };
    let objects = job_objects(&settings, &execution(), &job, None).unwrap();
    assert!(objects.config_map.is_none(), "no files, no uploader");
    assert!(objects.secret.is_none(), "no secrets, no token");
    insta::assert_yaml_snapshot!("job_minimal_job", objects.job);
}

fn python_service(http: bool) -> Service {
    let mut replica = python_job();
    replica.env.remove("RUNPLANE_GPUS");
    replica.env.remove("RUNPLANE_TIMEOUT_SECONDS");
    replica
        .env
        .insert("RUNPLANE_PROFILE".into(), "small".into());
    replica.limits = Some(Limits {
        cpus: None,
        memory_bytes: Some(1 << 30),
    });
    replica.volumes.clear();
    Service {
        replica,
        replicas: 3,
        readiness_path: "/_runplane/ready".into(),
        ready_timeout_seconds: 120,
        port: None,
        http,
    }
}

#[test]
fn a_service() {
    let objects = service_objects(&settings(), &execution(), &python_service(true), None).unwrap();
    insta::assert_yaml_snapshot!("service_config_map", objects.config_map.unwrap());
    insta::assert_yaml_snapshot!("service_secret", objects.secret.unwrap());
    insta::assert_yaml_snapshot!("service_deployment", objects.deployment);
    insta::assert_yaml_snapshot!("service_service", objects.service.unwrap());
}

#[test]
fn a_deploy_without_http() {
    let mut service = python_service(false);
    service.replica.files.clear();
    service.port = Some(9000);
    let objects = service_objects(&settings(), &execution(), &service, None).unwrap();
    assert!(objects.service.is_none(), "nothing routes to a worker");
    assert!(objects.config_map.is_none());
    insta::assert_yaml_snapshot!("deploy_deployment", objects.deployment);
}

fn build() -> Build {
    Build {
        containerfile: "FROM localhost/runplane-python:latest\nCOPY runner.py /opt/\n".into(),
        context: vec![FileEntry {
            path: "runner.py".into(),
            mode: 0o644,
            contents: b"print('runner')\n".to_vec(),
        }],
        context_dirs: Vec::new(),
        image: "demo/hello:abc123".into(),
        push: true,
        args: BTreeMap::from([("PYTHON".into(), "3.11".into())]),
        log_limit_bytes: None,
    }
}

#[test]
fn a_kaniko_build() {
    let objects = build_objects(&settings(), &execution(), &build()).unwrap();
    assert_eq!(
        objects.destination,
        "registry.internal:5000/runplane/demo/hello:abc123"
    );
    insta::assert_yaml_snapshot!("build_config_map", objects.config_map);
    insta::assert_yaml_snapshot!("build_job", objects.job);
}

#[test]
fn names_and_labels_fit_kubernetes() {
    assert_eq!(
        object_name(&execution()),
        "rp-0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b-2"
    );
    let odd = ExecutionId {
        run_id: "Run_With.Odd/Chars-and-a-very-long-tail-that-goes-on-and-on".into(),
        attempt: 10,
    };
    let name = object_name(&odd);
    assert!(name.len() <= 63, "{name}");
    assert!(name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'));
    assert_ne!(
        name,
        object_name(&ExecutionId {
            run_id: "run_with.odd/chars-and-a-very-long-tail-that-goes-on-and-on".into(),
            attempt: 10,
        }),
        "ids that differ only in what was cleaned get different names"
    );
    let label = run_id_label(&odd.run_id);
    assert!(label.len() <= 63, "{label}");
}

fn job_error(job: Job) -> String {
    job_objects(&settings(), &execution(), &job, None)
        .unwrap_err()
        .to_string()
}

#[test]
fn bad_input_gets_a_clear_reason() {
    let with_env = |name: &str, value: &str| {
        let mut job = python_job();
        job.env.insert(name.into(), value.into());
        job
    };
    assert_eq!(
        job_error(with_env("RUNPLANE_PROFILE", "huge")),
        "unknown profile \"huge\"; the profiles are: gpu, small"
    );
    assert_eq!(
        job_error(with_env("RUNPLANE_GPUS", "two")),
        "env.RUNPLANE_GPUS: \"two\" is not a whole number"
    );
    assert_eq!(
        job_error(with_env("RUNPLANE_TIMEOUT_SECONDS", "0")),
        "env.RUNPLANE_TIMEOUT_SECONDS: must be at least 1"
    );
    let mut job = python_job();
    job.limits = Some(Limits {
        cpus: Some(f64::NAN),
        memory_bytes: None,
    });
    assert_eq!(
        job_error(job),
        "limits.cpus: NaN must be a positive number of cores"
    );
    let mut job = python_job();
    job.limits = Some(Limits {
        cpus: None,
        memory_bytes: Some(0),
    });
    assert!(job_error(job).starts_with("limits.memory_bytes:"));
    let mut job = python_job();
    job.files.push(FileEntry {
        path: "big.bin".into(),
        mode: 0o644,
        contents: vec![0; 2 << 20],
    });
    assert!(job_error(job).starts_with("files: the job's files take"));
    let mut job = python_job();
    job.files[0].path = "../escape.py".into();
    assert!(job_error(job).starts_with("files[0].path:"));
    let mut job = python_job();
    job.volumes[0].container_path = "/runplane/work/x".into();
    assert!(job_error(job).starts_with("volumes[0].container_path:"));
    let mut job = python_job();
    job.command.clear();
    assert_eq!(job_error(job), "command: the job has an empty command");

    let mut settings = settings();
    settings.build = None;
    let error = build_objects(&settings, &execution(), &build()).unwrap_err();
    assert!(matches!(error, ManifestError::Unsupported(_)), "{error}");
    let mut with_dirs = build();
    with_dirs
        .context_dirs
        .push(runplane_domain::runnable::ContextDir {
            host_path: "/envs/x".into(),
            path: "env".into(),
        });
    let error = build_objects(&self::settings(), &execution(), &with_dirs).unwrap_err();
    assert!(error.to_string().starts_with("context_dirs:"), "{error}");
}

#[test]
fn a_profile_with_a_bad_quantity_is_refused_at_load() {
    let error = Profiles::from_yaml("profiles: { x: { resources: { requests: { cpu: lots } } } }")
        .unwrap_err()
        .to_string();
    assert_eq!(
        error,
        "profiles.x.resources.requests.cpu: \"lots\" is not a Kubernetes quantity (like 500m, 2, 1.5Gi, 64M)"
    );
}

#[test]
fn the_example_deployments_profiles_load() {
    // deploy/kubernetes/configmap.yaml carries the profiles a cluster install starts with.
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/kubernetes/configmap.yaml"
    ))
    .expect("deploy/kubernetes/configmap.yaml");
    let config_map: serde_json::Value = serde_yaml_ng::from_str(&text).unwrap();
    let profiles = config_map["data"]["profiles.yaml"].as_str().unwrap();
    let profiles = Profiles::from_yaml(profiles).expect("the example profiles are valid");
    assert!(profiles.profile(Some("gpu")).unwrap().is_some());
    assert!(
        profiles.profile(None).unwrap().is_some(),
        "a default profile"
    );
}

#[test]
fn the_example_deployment_manifests_are_well_typed() {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::{
        ConfigMap, Namespace, PersistentVolumeClaim, Secret, Service, ServiceAccount,
    };
    use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
    use serde::Deserialize;
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/kubernetes");
    let mut kinds = Vec::new();
    for entry in std::fs::read_dir(dir).expect("deploy/kubernetes") {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for document in serde_yaml_ng::Deserializer::from_str(&text) {
            let value = serde_json::Value::deserialize(document).unwrap();
            let kind = value["kind"].as_str().unwrap_or_default().to_string();
            let checked = match kind.as_str() {
                "Namespace" => serde_json::from_value::<Namespace>(value).map(drop),
                "ServiceAccount" => serde_json::from_value::<ServiceAccount>(value).map(drop),
                "Role" => serde_json::from_value::<Role>(value).map(drop),
                "RoleBinding" => serde_json::from_value::<RoleBinding>(value).map(drop),
                "ConfigMap" => serde_json::from_value::<ConfigMap>(value).map(drop),
                "Secret" => serde_json::from_value::<Secret>(value).map(drop),
                "Deployment" => serde_json::from_value::<Deployment>(value).map(drop),
                "Service" => serde_json::from_value::<Service>(value).map(drop),
                "PersistentVolumeClaim" => {
                    serde_json::from_value::<PersistentVolumeClaim>(value).map(drop)
                }
                other => panic!("{}: unexpected kind {other:?}", path.display()),
            };
            checked.unwrap_or_else(|e| panic!("{}: {kind}: {e}", path.display()));
            kinds.push(kind);
        }
    }
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "ConfigMap",
            "Deployment",
            "Namespace",
            "Namespace",
            "PersistentVolumeClaim",
            "Role",
            "RoleBinding",
            "Secret",
            "Service",
            "ServiceAccount"
        ]
    );
}
