//! What the engine is asked for: the container of one execution (image, command, mounts,
//! labels) and the attempt folder it mounts. Pure apart from writing the job's files.

use crate::attempt::{check_file_path, write_job_file};
use crate::files::describe;
use crate::ExecutionId;
use bollard::models::{ContainerCreateBody, HostConfig, PortBinding};
use runplane_domain::{Job, Limits, Volume};
use std::collections::HashMap;
use std::fs;
use std::path::Path;

/// Where the job's files are mounted inside the container, and its working directory.
pub const WORK_MOUNT: &str = "/runplane/work";
/// Where the outputs folder is mounted; `RUNPLANE_OUTPUTS` names it.
pub const OUTPUTS_MOUNT: &str = "/runplane/outputs";

/// The labels a restarted server finds its containers by. `home` keeps two servers sharing
/// one engine from taking each other's containers.
pub const LABEL_RUN: &str = "runplane.run";
pub const LABEL_ATTEMPT: &str = "runplane.attempt";
pub const LABEL_HOME: &str = "runplane.home";
/// On a service's containers only: the replica index.
pub const LABEL_REPLICA: &str = "runplane.replica";

/// The port a replica listens on inside its container when the service names none
/// (`RUNPLANE_PORT`).
pub const DEFAULT_SERVICE_PORT: u16 = 8080;

/// Writes the job's files into `<attempt>/work` and makes an empty `<attempt>/outputs`.
pub fn materialize(attempt_dir: &Path, job: &Job) -> Result<(), String> {
    let files = job
        .files
        .iter()
        .map(|file| Ok((check_file_path(&file.path)?, file)))
        .collect::<Result<Vec<_>, String>>()?;
    if attempt_dir.exists() {
        // Left by a start that failed half-way or a crash before cleanup: never by a live
        // container (the caller checked for one).
        fs::remove_dir_all(attempt_dir)
            .map_err(|e| format!("cannot clear {}: {}", attempt_dir.display(), describe(&e)))?;
    }
    let work = attempt_dir.join("work");
    let outputs = attempt_dir.join("outputs");
    for dir in [&work, &outputs] {
        fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {}", dir.display(), describe(&e)))?;
    }
    for (relative, file) in files {
        write_job_file(&work, &relative, file.mode, &file.contents)
            .map_err(|e| format!("cannot write job file {}: {}", file.path, describe(&e)))?;
    }
    if !job.redact.is_empty() {
        // Outside the mounted folders, for a restarted server's follower; removed with the
        // attempt folder at cleanup.
        let json = serde_json::to_vec(&job.redact).map_err(|e| e.to_string())?;
        write_job_file(attempt_dir, Path::new(REDACT_FILE), 0o600, &json)
            .map_err(|e| format!("cannot write {REDACT_FILE}: {}", describe(&e)))?;
    }
    Ok(())
}

/// The values to redact from an attempt's log (secrets), beside its `work/` folder.
pub const REDACT_FILE: &str = "redact.json";

/// What `materialize` recorded to redact; nothing when there is no such file.
pub fn redactions(attempt_dir: &Path) -> Vec<String> {
    fs::read(attempt_dir.join(REDACT_FILE))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

pub fn labels(home: &str, execution: &ExecutionId) -> HashMap<String, String> {
    HashMap::from([
        (LABEL_RUN.to_string(), execution.run_id.clone()),
        (LABEL_ATTEMPT.to_string(), execution.attempt.to_string()),
        (LABEL_HOME.to_string(), home.to_string()),
    ])
}

/// The create request: the command as the entrypoint (an image's own entrypoint would
/// otherwise wrap it), an init process as PID 1 so that SIGTERM reaches the job, the job's
/// volumes and limits. Bad volumes or limits are refused with the field they are in.
pub fn create_body(
    image: &str,
    home: &str,
    execution: &ExecutionId,
    job: &Job,
    attempt_dir: &Path,
) -> Result<ContainerCreateBody, String> {
    let mut env: Vec<String> = job
        .env
        .iter()
        .filter(|(name, _)| name.as_str() != "RUNPLANE_OUTPUTS")
        .map(|(name, value)| format!("{name}={value}"))
        .collect();
    env.push(format!("RUNPLANE_OUTPUTS={OUTPUTS_MOUNT}"));
    let mut binds = vec![
        format!("{}:{WORK_MOUNT}:rw", attempt_dir.join("work").display()),
        format!(
            "{}:{OUTPUTS_MOUNT}:rw",
            attempt_dir.join("outputs").display()
        ),
    ];
    for (i, volume) in job.volumes.iter().enumerate() {
        binds.push(bind(i, volume)?);
    }
    let mut host_config = HostConfig {
        binds: Some(binds),
        init: Some(true),
        ..Default::default()
    };
    if let Some(limits) = &job.limits {
        apply_limits(&mut host_config, limits)?;
    }
    Ok(ContainerCreateBody {
        image: Some(image.to_string()),
        entrypoint: Some(job.command.clone()),
        cmd: Some(Vec::new()),
        env: Some(env),
        working_dir: Some(WORK_MOUNT.to_string()),
        labels: Some(labels(home, execution)),
        // Kept by the engine: a restarted server stops a recovered job with its own grace.
        stop_timeout: Some(i64::try_from(job.stop_grace_seconds).unwrap_or(i64::MAX)),
        host_config: Some(host_config),
        ..Default::default()
    })
}

/// What one replica of a service adds to its job's container: its index (label and
/// `RUNPLANE_REPLICA`) and, when it serves HTTP, `container_port` published on loopback.
pub struct ReplicaPort {
    pub container_port: u16,
    /// The host port to ask for; `None` lets the engine choose a free one.
    pub host_port: Option<u16>,
}

pub fn replica_body(
    mut body: ContainerCreateBody,
    index: u32,
    port: Option<ReplicaPort>,
    port_is_default: bool,
) -> ContainerCreateBody {
    if let Some(labels) = body.labels.as_mut() {
        labels.insert(LABEL_REPLICA.to_string(), index.to_string());
    }
    let env = body.env.get_or_insert_with(Vec::new);
    env.retain(|entry| {
        !entry.starts_with("RUNPLANE_REPLICA=") && !entry.starts_with("RUNPLANE_PORT=")
    });
    env.push(format!("RUNPLANE_REPLICA={index}"));
    if let Some(port) = port {
        if port_is_default {
            env.push(format!("RUNPLANE_PORT={}", port.container_port));
        }
        let key = format!("{}/tcp", port.container_port);
        body.exposed_ports = Some(vec![key.clone()]);
        let binding = PortBinding {
            host_ip: Some("127.0.0.1".to_string()),
            host_port: Some(port.host_port.map(|p| p.to_string()).unwrap_or_default()),
        };
        let host_config = body.host_config.get_or_insert_with(Default::default);
        host_config.port_bindings = Some(HashMap::from([(key, Some(vec![binding]))]));
    }
    body
}

/// `host:container[:ro]`, both absolute, no `:` (the engine's separator) in either.
fn bind(i: usize, volume: &Volume) -> Result<String, String> {
    for (field, path) in [
        ("host_path", &volume.host_path),
        ("container_path", &volume.container_path),
    ] {
        if !path.starts_with('/') || path.contains(':') || path.contains('\0') {
            return Err(format!(
                "volumes[{i}].{field} {path:?} must be an absolute path without ':'"
            ));
        }
    }
    if [WORK_MOUNT, OUTPUTS_MOUNT]
        .iter()
        .any(|mount| Path::new(&volume.container_path).starts_with(mount))
    {
        return Err(format!(
            "volumes[{i}].container_path {:?} is inside runplane's own mounts ({WORK_MOUNT}, {OUTPUTS_MOUNT})",
            volume.container_path
        ));
    }
    if !Path::new(&volume.host_path).exists() {
        return Err(format!(
            "volumes[{i}].host_path {:?} does not exist",
            volume.host_path
        ));
    }
    let mode = if volume.read_only { "ro" } else { "rw" };
    Ok(format!(
        "{}:{}:{mode}",
        volume.host_path, volume.container_path
    ))
}

/// cpus as CFS quota (`nano_cpus`), memory as a hard limit with no swap beyond it (swap equal
/// to memory), so that going past it is an OOM kill rather than swapping.
fn apply_limits(host_config: &mut HostConfig, limits: &Limits) -> Result<(), String> {
    if let Some(cpus) = limits.cpus {
        if !cpus.is_finite() || cpus <= 0.0 || cpus > 4096.0 {
            return Err(format!(
                "limits.cpus {cpus} must be a positive number of cores"
            ));
        }
        let nano = (cpus * 1e9).round() as i64;
        host_config.nano_cpus = Some(nano.max(1_000_000));
    }
    if let Some(memory) = limits.memory_bytes {
        // Below a few MiB the engine refuses to start anything; say so first.
        if memory < MIN_MEMORY_BYTES {
            return Err(format!(
                "limits.memory_bytes {memory} is below the {MIN_MEMORY_BYTES} bytes minimum"
            ));
        }
        let memory = i64::try_from(memory)
            .map_err(|_| format!("limits.memory_bytes {memory} is too large"))?;
        host_config.memory = Some(memory);
        host_config.memory_swap = Some(memory);
    }
    Ok(())
}

/// The smallest memory limit accepted (the engine's own minimum is 6 MiB).
pub const MIN_MEMORY_BYTES: u64 = 6 * 1024 * 1024;

/// An execution's identity read back from a container's labels.
pub fn execution_of(labels: &HashMap<String, String>) -> Option<ExecutionId> {
    Some(ExecutionId {
        run_id: labels.get(LABEL_RUN)?.clone(),
        attempt: labels.get(LABEL_ATTEMPT)?.parse().ok()?,
    })
}

/// The replica index of a service container; `None` for a job's.
pub fn replica_of(labels: &HashMap<String, String>) -> Option<u32> {
    labels.get(LABEL_REPLICA)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use runplane_domain::{Limits, Volume};

    fn execution() -> ExecutionId {
        ExecutionId {
            run_id: "r".into(),
            attempt: 1,
        }
    }

    #[test]
    fn limits_and_replica_ports_reach_the_create_request() {
        let job = Job {
            command: vec!["serve".into()],
            limits: Some(Limits {
                cpus: Some(0.5),
                memory_bytes: Some(64 << 20),
            }),
            volumes: vec![Volume {
                host_path: "/".into(),
                container_path: "/host".into(),
                read_only: true,
            }],
            ..Default::default()
        };
        let body = create_body("img", "/home", &execution(), &job, Path::new("/a")).unwrap();
        let host = body.host_config.as_ref().unwrap();
        assert_eq!(host.nano_cpus, Some(500_000_000));
        assert_eq!(host.memory, Some(64 << 20));
        assert_eq!(host.memory_swap, Some(64 << 20), "no swap beyond the limit");
        assert!(host
            .binds
            .as_ref()
            .unwrap()
            .contains(&"/:/host:ro".to_string()));

        let port = ReplicaPort {
            container_port: DEFAULT_SERVICE_PORT,
            host_port: None,
        };
        let body = replica_body(body, 2, Some(port), true);
        let env = body.env.as_ref().unwrap();
        assert!(env.contains(&"RUNPLANE_REPLICA=2".to_string()));
        assert!(env.contains(&"RUNPLANE_PORT=8080".to_string()));
        assert_eq!(replica_of(body.labels.as_ref().unwrap()), Some(2));
        let bindings = body.host_config.unwrap().port_bindings.unwrap();
        let binding = &bindings["8080/tcp"].as_ref().unwrap()[0];
        assert_eq!(binding.host_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(binding.host_port.as_deref(), Some(""));
    }

    #[test]
    fn bad_volumes_and_limits_name_their_field() {
        let error = |job: Job| {
            create_body("img", "/home", &execution(), &job, Path::new("/a")).unwrap_err()
        };
        let volume = |host: &str, container: &str| Job {
            volumes: vec![Volume {
                host_path: host.into(),
                container_path: container.into(),
                read_only: false,
            }],
            ..Default::default()
        };
        assert!(error(volume("rel", "/x")).starts_with("volumes[0].host_path"));
        assert!(error(volume("/", "x")).starts_with("volumes[0].container_path"));
        assert!(error(volume("/a:b", "/x")).starts_with("volumes[0].host_path"));
        assert!(error(volume("/", WORK_MOUNT)).contains("runplane's own mounts"));
        assert!(error(volume("/no/such/folder", "/x")).contains("does not exist"));
        let limits = |cpus, memory| Job {
            limits: Some(Limits {
                cpus,
                memory_bytes: memory,
            }),
            ..Default::default()
        };
        assert!(error(limits(Some(0.0), None)).starts_with("limits.cpus"));
        assert!(error(limits(Some(f64::NAN), None)).starts_with("limits.cpus"));
        assert!(error(limits(None, Some(1024))).starts_with("limits.memory_bytes"));
    }
}
