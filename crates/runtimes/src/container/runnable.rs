//! A run of a `container` function as a [`Job`] (action `job`) or a [`Service`] of such jobs
//! (`deploy`: workers that serve nothing; `serve`: HTTP on the spec's `port`).
//!
//! The job's environment, later entries winning: the spec's `env`, the task's `env`, the run's
//! parameters (`RUNPLANE_PARAM_<NAME>`), then `RUNPLANE_RUN_ID` and `RUNPLANE_PROJECT` (who the
//! run is cannot be overridden). The framework adds `RUNPLANE_OUTPUTS`.

use super::check::param_env;
use super::spec::ContainerSpec;
use super::SERVE;
use crate::RuntimeError;
use runplane_domain::{Job, Run, Service};

fn spec_of(run: &Run) -> Result<ContainerSpec, RuntimeError> {
    ContainerSpec::from_value(&run.spec.function_spec).map_err(RuntimeError::BadSpec)
}

/// The job of a run whose action is `job`.
pub(crate) fn job(run: &Run) -> Result<Job, RuntimeError> {
    replica_job(run, &spec_of(run)?)
}

/// The command in the image with the run's settings: a job, or one replica of a service.
fn replica_job(run: &Run, spec: &ContainerSpec) -> Result<Job, RuntimeError> {
    let image = spec.image.clone().ok_or_else(|| {
        RuntimeError::BadSpec("the function has no image: run its build first".to_string())
    })?;
    if spec.command.is_empty() {
        return Err(RuntimeError::BadSpec(
            "the function has no command".to_string(),
        ));
    }
    let params = param_env(&run.spec.parameters)
        .map_err(|invalid| RuntimeError::BadSpec(invalid.to_string()))?;
    let mut env = spec.env.clone();
    env.extend(run.spec.settings.env.clone());
    env.extend(params);
    env.insert("RUNPLANE_RUN_ID".to_string(), run.metadata.id.clone());
    env.insert("RUNPLANE_PROJECT".to_string(), run.metadata.project.clone());
    Ok(Job {
        command: spec.argv(),
        env,
        files: Vec::new(),
        stop_grace_seconds: run.spec.settings.stop_grace_seconds,
        log_limit_bytes: run.spec.settings.log_limit_bytes,
        image: Some(image),
        // Secrets are the controller's to add, at dispatch: the runtime never sees them.
        redact: Vec::new(),
        volumes: spec.volumes.clone(),
        limits: run.spec.settings.resources.as_ref().map(|r| r.limits()),
    })
}

/// The service of a run whose action is `deploy` or `serve`.
pub(crate) fn service(run: &Run) -> Result<Service, RuntimeError> {
    let spec = spec_of(run)?;
    let replica = replica_job(run, &spec)?;
    let serves = run.spec.action == SERVE;
    let port = if serves {
        Some(spec.port.ok_or_else(|| {
            RuntimeError::BadSpec("serve needs the function's `port`, which is not set".into())
        })?)
    } else {
        None
    };
    Ok(Service {
        replica,
        replicas: run.spec.settings.replicas(),
        readiness_path: if serves {
            spec.readiness_path().to_string()
        } else {
            super::spec::DEFAULT_READINESS_PATH.to_string()
        },
        ready_timeout_seconds: run.spec.settings.ready_timeout_seconds(),
        port,
        http: serves,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::{ContainerConfig, ContainerRuntime};
    use super::*;
    use crate::Runtime;
    use runplane_domain::{
        Limits, Resources, RunMetadata, RunSettings, RunSpec, RunState, RunStatus, Runnable, Volume,
    };
    use serde_json::{json, Map, Value};
    use std::collections::BTreeMap;

    pub(crate) const RUN_ID: &str = "0190d7a8-0000-7000-8000-00000000abcd";
    pub(crate) const VERSION: &str = "0123456789abcdef0123";

    /// A run of `spec` (as submitted) for `action` with `parameters`, as the controller would
    /// build it.
    pub(crate) fn run_of(spec: Value, action: &str, parameters: Value) -> Run {
        let function_spec = ContainerRuntime::default()
            .normalize_function(&spec)
            .unwrap();
        let now = chrono::DateTime::<chrono::Utc>::from_timestamp(1_700_000_000, 0).unwrap();
        Run {
            kind: format!("container+{action}:run"),
            metadata: RunMetadata {
                id: RUN_ID.into(),
                project: "demo".into(),
                labels: Default::default(),
                created: now,
                updated: now,
                created_by: "anonymous".into(),
            },
            spec: RunSpec {
                function: format!("store://demo/function/container/hello:{VERSION}"),
                function_name: "hello".into(),
                function_version: VERSION.into(),
                runtime: "container".into(),
                action: action.into(),
                task: None,
                framework: "engine".into(),
                parameters: parameters.as_object().cloned().unwrap_or_else(Map::new),
                settings: RunSettings {
                    env: BTreeMap::from([
                        ("FROM_TASK".into(), "task".into()),
                        ("SHARED".into(), "task wins".into()),
                        ("RUNPLANE_RUN_ID".into(), "spoofed".into()),
                    ]),
                    stop_grace_seconds: 7,
                    log_limit_bytes: Some(4096),
                    ..RunSettings::default()
                },
                function_spec,
                inputs: Default::default(),
                reuse: Default::default(),
            },
            status: RunStatus {
                state: RunState::Pending,
                attempt: 1,
                reason: None,
                message: None,
                results: None,
                rerun_of: None,
                service: None,
                step_of: None,
                produced_by: None,
                workflow: None,
                owner: None,
                artifacts: Default::default(),
                transitions: Vec::new(),
                attempts: Vec::new(),
            },
        }
    }

    pub(crate) fn busybox(extra: Value) -> Value {
        let mut spec = json!({
            "image": "localhost/runplane-busybox:latest",
            "command": ["/bin/sh", "-c"],
            "args": ["echo hello"],
        });
        if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
            spec.extend(extra.clone());
        }
        spec
    }

    fn runnable(run: &Run) -> Runnable {
        ContainerRuntime::new(ContainerConfig::default())
            .to_runnable(run)
            .unwrap()
    }

    #[test]
    fn a_job_run_becomes_a_job_in_the_image() {
        let spec = busybox(json!({
            "env": {"SHARED": "spec", "FROM_SPEC": "spec"},
            "volumes": [{"host_path": "/srv/data/", "container_path": "/data", "read_only": true}],
        }));
        let mut run = run_of(
            spec,
            "job",
            json!({"name": "ada", "n": 3, "opts": {"a": [1]}}),
        );
        run.spec.settings.resources = Some(Resources {
            cpu: Some(0.5),
            memory: Some(json!("64Mi")),
        });
        let Runnable::Job(job) = runnable(&run) else {
            panic!("not a job");
        };
        let expected = Job {
            command: vec!["/bin/sh".into(), "-c".into(), "echo hello".into()],
            env: BTreeMap::from([
                ("FROM_SPEC".into(), "spec".into()),
                ("FROM_TASK".into(), "task".into()),
                ("SHARED".into(), "task wins".into()),
                ("RUNPLANE_PARAM_NAME".into(), "ada".into()),
                ("RUNPLANE_PARAM_N".into(), "3".into()),
                ("RUNPLANE_PARAM_OPTS".into(), r#"{"a":[1]}"#.into()),
                ("RUNPLANE_RUN_ID".into(), RUN_ID.into()),
                ("RUNPLANE_PROJECT".into(), "demo".into()),
            ]),
            files: Vec::new(),
            stop_grace_seconds: 7,
            log_limit_bytes: Some(4096),
            image: Some("localhost/runplane-busybox:latest".into()),
            redact: Vec::new(),
            volumes: vec![Volume {
                host_path: "/srv/data".into(),
                container_path: "/data".into(),
                read_only: true,
            }],
            limits: Some(Limits {
                cpus: Some(0.5),
                memory_bytes: Some(64 * 1024 * 1024),
            }),
        };
        assert_eq!(job, expected);
    }

    #[test]
    fn parameters_override_the_task_env_but_not_who_the_run_is() {
        let mut run = run_of(busybox(json!({})), "job", json!({"x": "from run"}));
        run.spec
            .settings
            .env
            .insert("RUNPLANE_PARAM_X".into(), "from task".into());
        run.spec
            .settings
            .env
            .insert("RUNPLANE_PROJECT".into(), "other".into());
        let Runnable::Job(job) = runnable(&run) else {
            panic!("not a job");
        };
        assert_eq!(job.env["RUNPLANE_PARAM_X"], "from run");
        assert_eq!(job.env["RUNPLANE_PROJECT"], "demo");
        assert_eq!(job.env["RUNPLANE_RUN_ID"], RUN_ID);
        assert_eq!(job.limits, None);
    }

    #[test]
    fn a_deploy_run_is_a_service_that_serves_nothing() {
        let mut run = run_of(busybox(json!({"port": 8080})), "deploy", json!({}));
        run.spec.settings.replicas = Some(3);
        run.spec.settings.ready_timeout_seconds = Some(42);
        let Runnable::Service(service) = runnable(&run) else {
            panic!("not a service");
        };
        let Runnable::Job(job) = runnable(&Run {
            spec: RunSpec {
                action: "job".into(),
                ..run.spec.clone()
            },
            ..run.clone()
        }) else {
            panic!("not a job");
        };
        assert_eq!(
            service,
            Service {
                replica: job,
                replicas: 3,
                readiness_path: "/".into(),
                ready_timeout_seconds: 42,
                port: None,
                http: false,
            }
        );
    }

    #[test]
    fn a_serve_run_is_an_http_service_on_the_port() {
        let run = run_of(
            busybox(json!({"port": 8080, "readiness_path": "/healthz"})),
            "serve",
            json!({"model": "m1"}),
        );
        let Runnable::Service(service) = runnable(&run) else {
            panic!("not a service");
        };
        assert_eq!(
            (
                service.http,
                service.port,
                service.readiness_path.as_str(),
                service.replicas
            ),
            (true, Some(8080), "/healthz", 1)
        );
        assert_eq!(
            service.ready_timeout_seconds,
            RunSettings::default().ready_timeout_seconds()
        );
        assert_eq!(service.replica.env["RUNPLANE_PARAM_MODEL"], "m1");
        assert_eq!(
            service.replica.image.as_deref(),
            Some("localhost/runplane-busybox:latest")
        );

        let run = run_of(busybox(json!({"port": 80})), "serve", json!({}));
        let Runnable::Service(service) = runnable(&run) else {
            panic!("not a service");
        };
        assert_eq!(service.readiness_path, "/");
    }

    #[test]
    fn unusable_snapshots_are_refused() {
        let runtime = ContainerRuntime::default();
        let mut run = run_of(busybox(json!({})), "serve", json!({}));
        let error = runtime.to_runnable(&run).unwrap_err();
        assert!(error.to_string().contains("port"), "{error}");

        run.spec.action = "train".into();
        assert!(matches!(
            runtime.to_runnable(&run),
            Err(RuntimeError::UnknownAction { .. })
        ));

        let mut run = run_of(
            json!({"build": {"containerfile": "FROM x\n"}}),
            "job",
            json!({}),
        );
        let error = runtime.to_runnable(&run).unwrap_err();
        assert!(error.to_string().contains("no image"), "{error}");
        run.spec.function_spec = json!({"image": 3});
        assert!(matches!(
            runtime.to_runnable(&run),
            Err(RuntimeError::BadSpec(_))
        ));

        let run = run_of(busybox(json!({})), "job", json!({"not valid": 1}));
        assert!(matches!(
            runtime.to_runnable(&run),
            Err(RuntimeError::BadSpec(_))
        ));
    }
}
