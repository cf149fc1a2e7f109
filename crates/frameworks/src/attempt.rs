//! Attempt folders: where a framework keeps the working state of one execution
//! (`<runs_dir>/<run_id>/<attempt>`), and what may be written into them. Every framework that
//! keeps files on the server's disk uses these, so their layouts and checks stay the same.

use crate::files::describe;
use crate::ExecutionId;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Run ids become folder names: exactly one plain path component.
pub(crate) fn check_run_id(run_id: &str) -> Result<(), String> {
    if run_id.is_empty()
        || run_id == "."
        || run_id == ".."
        || run_id.contains('/')
        || run_id.contains('\0')
    {
        return Err(format!("invalid run id for a folder name: {run_id:?}"));
    }
    Ok(())
}

/// `<runs_dir>/<run_id>/<attempt>`, made absolute (the supervisor runs elsewhere and its
/// command line names the folder).
pub(crate) fn attempt_dir(runs_dir: &Path, execution: &ExecutionId) -> Result<PathBuf, String> {
    check_run_id(&execution.run_id)?;
    let runs_dir = std::path::absolute(runs_dir)
        .map_err(|e| format!("cannot resolve {}: {}", runs_dir.display(), describe(&e)))?;
    Ok(runs_dir
        .join(&execution.run_id)
        .join(execution.attempt.to_string()))
}

/// A job file path: relative, made of plain components only (no `..`, no `/x`, no `./`).
pub(crate) fn check_file_path(path: &str) -> Result<PathBuf, String> {
    // Checked on the raw text, not on `Path::components` (which quietly drops `.` and empty
    // segments): what is accepted is exactly what gets written.
    let plain = !path.contains('\0')
        && path
            .split('/')
            .all(|segment| !matches!(segment, "" | "." | ".."));
    if !plain {
        return Err(format!(
            "job file path {path:?} must be relative, without '..', '.' or empty segments"
        ));
    }
    Ok(PathBuf::from(path))
}

/// A readiness path goes into an HTTP request line as it is: it must be an absolute path
/// made of visible ASCII.
pub(crate) fn check_readiness_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') || !path.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "readiness path {path:?} must start with '/' and hold no spaces or control characters"
        ));
    }
    Ok(())
}

pub(crate) fn write_job_file(
    workdir: &Path,
    relative: &Path,
    mode: u32,
    contents: &[u8],
) -> io::Result<()> {
    let path = workdir.join(relative);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)?;
    }
    // create_new: two entries for one path, or a file where a folder is needed, is an error
    // rather than a silent overwrite. Set-id bits are dropped.
    let mode = mode & 0o777;
    let mut out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&path)?;
    out.write_all(contents)?;
    // The umask may have removed bits the job asked for.
    out.set_permissions(fs::Permissions::from_mode(mode))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_paths_must_stay_inside_the_work_folder() {
        for good in ["a", "a/b.py", "dir/sub/file"] {
            assert!(check_file_path(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "./a",
            "a/./b",
            "a//b",
            "a/",
            "a\0",
        ] {
            assert!(check_file_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn readiness_paths_fit_in_a_request_line() {
        assert!(check_readiness_path("/_runplane/ready?x=1").is_ok());
        for bad in ["", "ready", "/a b", "/a\r\nX: y"] {
            assert!(check_readiness_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn run_ids_are_single_components() {
        assert!(check_run_id("run-1").is_ok());
        for bad in ["", ".", "..", "a/b", "a\0"] {
            assert!(check_run_id(bad).is_err());
        }
    }
}
