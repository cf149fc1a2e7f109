//! Whether a created container's program exists, before it is started: a missing one would
//! otherwise start (the init process runs) and fail its exec, which looks like a job that ran
//! and exited 1, instead of a start that could not happen.
//!
//! The engine answers a stat of a path in a created container's filesystem, mounts included
//! (`HEAD /containers/{id}/archive`). Only a definite "not found" fails the start: when the
//! engine cannot tell, the start goes on and the exec's own failure is what the job reports.

use super::container::WORK_MOUNT;
use bollard::errors::Error as DockerError;
use bollard::query_parameters::ContainerArchiveInfoOptions;
use bollard::Docker;

/// What `execvp` searches when the container's environment sets no `PATH`.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Go's `os.ModeDir`, the bit the engine's stat sets for a directory.
const MODE_DIR: u32 = 1 << 31;

/// Checks that `program` (the command's first word) resolves in `container` as the kernel
/// will see it: an absolute path, a path relative to the working directory, or a bare name
/// searched on the container's `PATH`.
pub async fn check(docker: &Docker, container: &str, program: &str) -> Result<(), String> {
    if program.contains('/') {
        let path = if program.starts_with('/') {
            program.to_string()
        } else {
            format!("{WORK_MOUNT}/{program}")
        };
        return match exists(docker, container, &path).await {
            Some(false) => Err(format!(
                "the program {program} does not exist in the container's image or mounts"
            )),
            _ => Ok(()),
        };
    }
    let path = container_path(docker, container).await;
    for dir in path.split(':').filter(|dir| dir.starts_with('/')) {
        if exists(docker, container, &format!("{dir}/{program}")).await != Some(false) {
            return Ok(());
        }
    }
    Err(format!(
        "the program {program} is not found on the container's PATH ({path})"
    ))
}

/// The container's `PATH` (the image's, or the job's own).
async fn container_path(docker: &Docker, container: &str) -> String {
    let env = docker
        .inspect_container(container, None)
        .await
        .ok()
        .and_then(|inspected| inspected.config?.env)
        .unwrap_or_default();
    env.iter()
        .rev()
        .find_map(|var| var.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH)
        .to_string()
}

/// `Some(true)` for a file (or a link), `Some(false)` when there is none (or a directory),
/// `None` when the engine cannot tell.
async fn exists(docker: &Docker, container: &str, path: &str) -> Option<bool> {
    let options = ContainerArchiveInfoOptions {
        path: path.to_string(),
    };
    match docker
        .get_container_archive_info(container, Some(options))
        .await
    {
        Ok(stat) => Some(stat.file_mode & MODE_DIR == 0),
        Err(DockerError::DockerResponseServerError {
            status_code: 404, ..
        }) => Some(false),
        Err(e) => {
            tracing::debug!("stat of {path} in container {container}: {e}");
            None
        }
    }
}
