//! Environments: the packages of a function's lock, installed once per lock into
//! `<environments_dir>/<lock hash>` by a `build` run with `target: environment`, and shared by
//! every run of every version with that lock.
//!
//! - [`prerequisite`]: a run of a locked function waits for its environment (the controller
//!   starts the build, once per lock, and holds the run until the folder exists);
//! - [`attach`]: a job or replica of a locked function gets the folder on `PYTHONPATH` and as a
//!   read-only volume at the same path, so that the same job works as a host process and in a
//!   container;
//! - [`build_job`]: the build itself, `build_env.py` (embedded) run with the interpreter. It
//!   installs the lock with `uv pip install --target` into a temporary folder and renames it
//!   into place, so the folder exists only once complete; an exclusive `flock` on
//!   `<hash>.lock` makes concurrent builds of one lock wait for each other (see the script).

use super::requirements::LockSpec;
use super::spec::PythonSpec;
use super::PythonConfig;
use super::BUILD;
use crate::{Prerequisite, RuntimeError};
use runplane_domain::{FileEntry, Job, Run, Volume};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// The builder, embedded so that what runs always matches the runtime that prepared it.
pub(crate) const BUILD_ENV: &str = include_str!("build_env.py");
pub(crate) const BUILD_ENV_FILE: &str = "build_env.py";
/// The builder's settings, beside it in the working directory.
pub(crate) const BUILD_FILE: &str = "build.json";
/// The lock's text, the `-r` file of `uv pip install`.
pub(crate) const LOCK_FILE: &str = "lock.txt";
/// `Prerequisite::key` prefix: one build per lock, whatever the function.
pub(crate) const KEY_PREFIX: &str = "python-env:";
/// The framework environments are built on: the host, where `uv` and the folder are.
pub(crate) const BUILD_FRAMEWORK: &str = "local";

/// `build`'s `target` parameter.
pub(crate) const TARGET: &str = "target";
pub(crate) const TARGET_ENVIRONMENT: &str = "environment";
pub(crate) const TARGET_IMAGE: &str = "image";

/// The folder of the environment of `lock`.
pub(crate) fn path(config: &PythonConfig, lock: &LockSpec) -> String {
    format!(
        "{}/{}",
        config.environments_dir.trim_end_matches('/'),
        lock.hash
    )
}

/// Whether `run` is itself the build of an environment.
pub(crate) fn is_environment_build(run: &Run) -> bool {
    run.spec.action == BUILD
        && run.spec.parameters.get(TARGET).and_then(Value::as_str) == Some(TARGET_ENVIRONMENT)
}

/// See the module documentation. An unreadable spec needs nothing: `to_runnable` reports it.
pub(crate) fn prerequisite(run: &Run, config: &PythonConfig) -> Option<Prerequisite> {
    if is_environment_build(run) {
        return None;
    }
    let spec = PythonSpec::from_value(&run.spec.function_spec).ok()?;
    let lock = spec.lock.as_ref()?;
    Some(Prerequisite {
        key: format!("{KEY_PREFIX}{}", lock.hash),
        ready_path: path(config, lock),
        action: BUILD.to_string(),
        parameters: Map::from_iter([(TARGET.to_string(), json!(TARGET_ENVIRONMENT))]),
        framework: BUILD_FRAMEWORK.to_string(),
    })
}

/// Gives `job` what the spec runs with: its environment (locked specs) and its image (built
/// versions). See the module documentation.
pub(crate) fn attach(job: &mut Job, spec: &PythonSpec, config: &PythonConfig) {
    if let Some(lock) = &spec.lock {
        let folder = path(config, lock);
        // The task may add to PYTHONPATH; the environment's packages come first.
        let python_path = match job.env.get("PYTHONPATH").filter(|p| !p.is_empty()) {
            Some(task) => format!("{folder}:{task}"),
            None => folder.clone(),
        };
        job.env.insert("PYTHONPATH".to_string(), python_path);
        job.volumes.push(Volume {
            host_path: folder.clone(),
            container_path: folder,
            read_only: true,
        });
    }
    if let Some(image) = &spec.image {
        job.image = Some(image.clone());
    }
}

/// The job of a `build` run with `target: environment`.
pub(crate) fn build_job(
    run: &Run,
    spec: &PythonSpec,
    config: &PythonConfig,
) -> Result<Job, RuntimeError> {
    let lock = spec.lock.as_ref().ok_or_else(|| {
        RuntimeError::BadSpec(
            "an environment build needs a function with requirements and its lock".to_string(),
        )
    })?;
    let settings = json!({
        "uv": config.uv,
        "python": config.interpreter,
        "environments_dir": config.environments_dir,
        "hash": lock.hash,
        "lock": LOCK_FILE,
    });
    let settings =
        serde_json::to_vec(&settings).map_err(|error| RuntimeError::BadSpec(error.to_string()))?;
    let files = vec![
        FileEntry {
            path: BUILD_ENV_FILE.to_string(),
            mode: 0o644,
            contents: BUILD_ENV.as_bytes().to_vec(),
        },
        FileEntry {
            path: BUILD_FILE.to_string(),
            mode: 0o644,
            contents: settings,
        },
        FileEntry {
            path: LOCK_FILE.to_string(),
            mode: 0o644,
            contents: lock.text.as_bytes().to_vec(),
        },
    ];
    // uv's cache beside the environments by default: on the same filesystem, so installs
    // hard-link from it, and independent of the home of whoever runs the server. TLS trusts
    // the system's certificate store: frameworks pass no SSL_CERT_FILE through, and a site's
    // own CA is installed there. The task may change both, and set anything else uv reads
    // (UV_INDEX_URL for a mirror).
    let mut env = BTreeMap::from([
        ("PYTHONUNBUFFERED".to_string(), "1".to_string()),
        ("PYTHONDONTWRITEBYTECODE".to_string(), "1".to_string()),
        (
            "UV_CACHE_DIR".to_string(),
            format!("{}/.cache", config.environments_dir.trim_end_matches('/')),
        ),
        ("UV_NATIVE_TLS".to_string(), "1".to_string()),
    ]);
    env.extend(run.spec.settings.env.clone());
    env.insert("RUNPLANE_RUN_ID".to_string(), run.metadata.id.clone());
    env.insert("RUNPLANE_PROJECT".to_string(), run.metadata.project.clone());
    Ok(Job {
        command: vec![config.interpreter.clone(), BUILD_ENV_FILE.to_string()],
        env,
        files,
        stop_grace_seconds: run.spec.settings.stop_grace_seconds,
        log_limit_bytes: run.spec.settings.log_limit_bytes,
        image: None,
        redact: Vec::new(),
        // Writable: the build creates the environment there (container frameworks).
        volumes: vec![Volume {
            host_path: config.environments_dir.clone(),
            container_path: config.environments_dir.clone(),
            read_only: false,
        }],
        limits: run.spec.settings.resources.as_ref().map(|r| r.limits()),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::requirements::lock_hash;
    use super::super::runnable::tests::run_of;
    use super::super::PythonRuntime;
    use super::*;
    use crate::Runtime;
    use runplane_domain::Runnable;

    const LOCK: &str = "six==1.17.0\n";

    pub(crate) fn locked_run(action: &str, parameters: Value) -> Run {
        let mut run = run_of(
            json!({"source": {"code": "def handler(request=None):\n    return 1\n"}, "handler": "handler", "requirements": ["six"]}),
            parameters,
        );
        run.spec.function_spec["lock"] = json!({"text": LOCK, "hash": lock_hash(LOCK)});
        run.spec.action = action.to_string();
        run
    }

    fn runtime() -> PythonRuntime {
        PythonRuntime {
            config: PythonConfig {
                environments_dir: "/srv/envs/".to_string(),
                uv: "/usr/local/bin/uv".to_string(),
                ..PythonConfig::default()
            },
            ..PythonRuntime::default()
        }
    }

    #[test]
    fn requirements_are_resolved_once_into_a_lock() {
        let runtime = runtime();
        let spec = runtime
            .normalize_function(&json!({"source": {"code": "def handler():\n    pass\n"}, "handler": "handler", "requirements": ["six>=1", "requests"], "python_version": "3.11"}))
            .unwrap();
        let wanted = runtime.dependencies(&spec).unwrap();
        assert_eq!(wanted.requirements, ["six>=1", "requests"]);
        assert_eq!(wanted.python_version.as_deref(), Some("3.11"));
        let lock = crate::Lock {
            text: LOCK.to_string(),
            hash: lock_hash(LOCK),
        };
        let locked = runtime.with_lock(spec.clone(), &lock);
        assert_eq!(
            locked["lock"],
            json!({"text": LOCK, "hash": lock_hash(LOCK)})
        );
        // Still a valid spec, the same version, and still what the server resolves.
        assert_eq!(runtime.normalize_function(&locked).unwrap(), locked);
        assert_eq!(runtime.hash_input(&locked), runtime.hash_input(&spec));
        assert_eq!(runtime.dependencies(&locked), Some(wanted));

        let plain = runtime
            .normalize_function(&json!({"source": {"code": "def handler():\n    pass\n"}, "handler": "handler", "requirements": []}))
            .unwrap();
        assert_eq!(runtime.dependencies(&plain), None);
    }

    #[test]
    fn locked_runs_need_their_environment_built_once_per_lock() {
        let runtime = runtime();
        let hash = lock_hash(LOCK);
        for (action, parameters) in [
            ("job", json!({})),
            ("serve", json!({})),
            ("build", json!({})),
            ("build", json!({"target": "image"})),
        ] {
            let got = runtime
                .prerequisite(&locked_run(action, parameters))
                .unwrap();
            assert_eq!(got.key, format!("python-env:{hash}"));
            assert_eq!(got.ready_path, format!("/srv/envs/{hash}"));
            assert_eq!(got.action, "build");
            assert_eq!(
                got.parameters,
                Map::from_iter([("target".into(), json!("environment"))])
            );
            assert_eq!(got.framework, "local");
        }
        // The build of the environment itself waits for nothing.
        let build = locked_run("build", json!({"target": "environment"}));
        assert_eq!(runtime.prerequisite(&build), None);
        // Nor does a function without requirements.
        let plain = run_of(
            json!({"source": {"code": "def handler():\n    pass\n"}, "handler": "handler"}),
            json!({}),
        );
        assert_eq!(runtime.prerequisite(&plain), None);
    }

    #[test]
    fn locked_jobs_and_replicas_see_their_environment() {
        let runtime = runtime();
        let folder = format!("/srv/envs/{}", lock_hash(LOCK));
        let mut job_run = locked_run("job", json!({}));
        job_run
            .spec
            .settings
            .env
            .insert("PYTHONPATH".into(), "/extra".into());
        let Runnable::Job(job) = runtime.to_runnable(&job_run).unwrap() else {
            panic!("not a job")
        };
        let Runnable::Service(service) = runtime
            .to_runnable(&locked_run("serve", json!({})))
            .unwrap()
        else {
            panic!("not a service")
        };
        assert_eq!(job.env["PYTHONPATH"], format!("{folder}:/extra"));
        assert_eq!(service.replica.env["PYTHONPATH"], folder);
        for job in [&job, &service.replica] {
            assert_eq!(
                job.volumes,
                [Volume {
                    host_path: folder.clone(),
                    container_path: folder.clone(),
                    read_only: true
                }]
            );
            assert_eq!(job.image, None);
        }

        // A built version runs in its image.
        let mut built = locked_run("job", json!({}));
        built.spec.function_spec["image"] = json!("localhost/runplane/demo-hello:abc");
        let Runnable::Job(job) = runtime.to_runnable(&built).unwrap() else {
            panic!("not a job")
        };
        assert_eq!(
            job.image.as_deref(),
            Some("localhost/runplane/demo-hello:abc")
        );

        // Without a lock: no environment at all.
        let plain = run_of(
            json!({"source": {"code": "def handler():\n    pass\n"}, "handler": "handler"}),
            json!({}),
        );
        let Runnable::Job(job) = runtime.to_runnable(&plain).unwrap() else {
            panic!("not a job")
        };
        assert!(job.volumes.is_empty());
        assert!(!job.env.contains_key("PYTHONPATH"));
    }

    #[test]
    fn an_environment_build_is_a_job_of_the_builder() {
        let runtime = runtime();
        let mut run = locked_run("build", json!({"target": "environment"}));
        run.spec
            .settings
            .env
            .insert("UV_INDEX_URL".into(), "http://mirror/simple".into());
        let Runnable::Job(job) = runtime.to_runnable(&run).unwrap() else {
            panic!("not a job")
        };
        assert_eq!(job.command, ["/usr/bin/python3", "build_env.py"]);
        let paths: Vec<&str> = job.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["build_env.py", "build.json", "lock.txt"]);
        assert_eq!(job.files[0].contents, BUILD_ENV.as_bytes());
        assert_eq!(job.files[2].contents, LOCK.as_bytes());
        let settings: Value = serde_json::from_slice(&job.files[1].contents).unwrap();
        assert_eq!(
            settings,
            json!({"uv": "/usr/local/bin/uv", "python": "/usr/bin/python3", "environments_dir": "/srv/envs/", "hash": lock_hash(LOCK), "lock": "lock.txt"})
        );
        assert_eq!(job.env["UV_CACHE_DIR"], "/srv/envs/.cache");
        assert_eq!(job.env["UV_NATIVE_TLS"], "1");
        assert_eq!(job.env["UV_INDEX_URL"], "http://mirror/simple");
        assert_eq!(job.env["RUNPLANE_RUN_ID"], run.metadata.id);
        assert!(!job.env.contains_key("PYTHONPATH"));
        assert_eq!(job.volumes.len(), 1);
        assert!(!job.volumes[0].read_only);

        // Without a lock there is nothing to build.
        let mut unlocked = run.clone();
        unlocked
            .spec
            .function_spec
            .as_object_mut()
            .unwrap()
            .remove("lock");
        let error = runtime.to_runnable(&unlocked).unwrap_err();
        assert!(error.to_string().contains("requirements"), "{error}");
    }
}
