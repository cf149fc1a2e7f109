//! What the engine is asked for: the container of one execution (image, command, mounts,
//! labels) and the attempt folder it mounts. Pure apart from writing the job's files.

use crate::local::prepare::{check_file_path, write_job_file};
use crate::local::protocol::describe;
use crate::ExecutionId;
use bollard::models::{ContainerCreateBody, HostConfig};
use runplane_domain::Job;
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
/// otherwise wrap it), an init process as PID 1 so that SIGTERM reaches the job.
pub fn create_body(
    image: &str,
    home: &str,
    execution: &ExecutionId,
    job: &Job,
    attempt_dir: &Path,
) -> ContainerCreateBody {
    let mut env: Vec<String> = job
        .env
        .iter()
        .filter(|(name, _)| name.as_str() != "RUNPLANE_OUTPUTS")
        .map(|(name, value)| format!("{name}={value}"))
        .collect();
    env.push(format!("RUNPLANE_OUTPUTS={OUTPUTS_MOUNT}"));
    let binds = vec![
        format!("{}:{WORK_MOUNT}:rw", attempt_dir.join("work").display()),
        format!(
            "{}:{OUTPUTS_MOUNT}:rw",
            attempt_dir.join("outputs").display()
        ),
    ];
    ContainerCreateBody {
        image: Some(image.to_string()),
        entrypoint: Some(job.command.clone()),
        cmd: Some(Vec::new()),
        env: Some(env),
        working_dir: Some(WORK_MOUNT.to_string()),
        labels: Some(labels(home, execution)),
        // Kept by the engine: a restarted server stops a recovered job with its own grace.
        stop_timeout: Some(i64::try_from(job.stop_grace_seconds).unwrap_or(i64::MAX)),
        host_config: Some(HostConfig {
            binds: Some(binds),
            init: Some(true),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// An execution's identity read back from a container's labels.
pub fn execution_of(labels: &HashMap<String, String>) -> Option<ExecutionId> {
    Some(ExecutionId {
        run_id: labels.get(LABEL_RUN)?.clone(),
        attempt: labels.get(LABEL_ATTEMPT)?.parse().ok()?,
    })
}
