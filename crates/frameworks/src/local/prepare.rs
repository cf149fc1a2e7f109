//! Materializing an attempt folder before its supervisor starts: the job's files, the outputs
//! folder, and a `job.json` in which every decision (paths, program, environment) is already
//! made, so that failures a person can fix are reported by `start` itself.

use super::procs;
use super::protocol::{JobFile, ServiceFile, JOB_FILE, OUTPUTS_DIR, SUPERVISOR_PID_FILE, WORK_DIR};
use super::spare::{Placed, Spare};
use crate::attempt::{check_file_path, write_job_file};
use crate::files::{describe, write_atomically};
use crate::ExecutionId;
use runplane_domain::Job;
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Variables a job inherits from the server when its own `env` does not set them. Everything
/// else in the server's environment stays out: runs execute user code and must not see the
/// server's credentials (`docs/security.md`).
const INHERITED_ENV: &[&str] = &[
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR",
];
/// `PATH` when neither the job nor the server has one.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Whether the supervisor recorded in an existing attempt folder still runs.
pub(crate) fn live_supervisor(attempt_dir: &Path) -> Option<i32> {
    let pid = super::protocol::read_pid_file(&attempt_dir.join(SUPERVISOR_PID_FILE))?;
    procs::is_supervisor_of(pid, attempt_dir).then_some(pid)
}

/// Creates the attempt folder and everything the supervisor reads. On error nothing is left
/// behind and the message says what to fix.
pub(crate) fn prepare(
    attempt_dir: &Path,
    logs_dir: &Path,
    execution: &ExecutionId,
    job: &Job,
    service: Option<ServiceFile>,
    spare: Option<Spare>,
) -> Result<(), String> {
    let Some(command0) = job.command.first() else {
        return Err("the job has an empty command".into());
    };
    let files = job
        .files
        .iter()
        .map(|file| Ok((check_file_path(&file.path)?, file)))
        .collect::<Result<Vec<_>, String>>()?;
    let logs_dir = std::path::absolute(logs_dir)
        .map_err(|e| format!("cannot resolve {}: {}", logs_dir.display(), describe(&e)))?;

    if attempt_dir.exists() {
        // The same attempt started again (the server crashed before recording the start):
        // refuse while its supervisor lives, otherwise start over from a clean folder.
        if let Some(pid) = live_supervisor(attempt_dir) {
            return Err(format!("already running under supervisor pid {pid}"));
        }
        fs::remove_dir_all(attempt_dir)
            .map_err(|e| format!("cannot clear {}: {}", attempt_dir.display(), describe(&e)))?;
    }
    let run_logs = logs_dir.join(&execution.run_id);
    let placed = spare.and_then(|spare| match spare.place(attempt_dir, &run_logs) {
        Ok(placed) => Some(placed),
        Err(error) => {
            tracing::debug!(%error, "cannot take the spare attempt folder");
            None
        }
    });
    if placed.is_none() {
        if let Some(parent) = attempt_dir.parent() {
            fs::create_dir_all(parent)
                .map_err(|e| format!("cannot create {}: {}", parent.display(), describe(&e)))?;
        }
        // 0700: job.json can carry secrets in the environment.
        DirBuilder::new()
            .mode(0o700)
            .create(attempt_dir)
            .map_err(|e| format!("cannot create {}: {}", attempt_dir.display(), describe(&e)))?;
    }

    let result = fill(
        attempt_dir,
        &logs_dir,
        execution,
        (job, service),
        command0,
        (&files, placed.as_ref()),
    );
    if result.is_err() {
        let _ = fs::remove_dir_all(attempt_dir);
        return result;
    }
    // The folder outlives a crash of the machine before its supervisor is spawned: a later
    // server that finds no folder knows the job never started (and may start it again).
    let synced = match &placed {
        Some(placed) => sync_dirs(&placed.to_sync),
        None => sync_parents(attempt_dir),
    };
    synced.map_err(|e| {
        let _ = fs::remove_dir_all(attempt_dir);
        format!("cannot sync {}: {}", attempt_dir.display(), describe(&e))
    })
}

/// fsync of `<runs_dir>/<run_id>` and `<runs_dir>`: the entries naming the attempt folder.
fn sync_parents(attempt_dir: &Path) -> io::Result<()> {
    for dir in attempt_dir.ancestors().skip(1).take(2) {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn sync_dirs(dirs: &[PathBuf]) -> io::Result<()> {
    for dir in dirs {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn fill(
    attempt_dir: &Path,
    logs_dir: &Path,
    execution: &ExecutionId,
    (job, service): (&Job, Option<ServiceFile>),
    command0: &str,
    (files, placed): (&[(PathBuf, &runplane_domain::FileEntry)], Option<&Placed>),
) -> Result<(), String> {
    let workdir = attempt_dir.join(WORK_DIR);
    let outputs_dir = attempt_dir.join(OUTPUTS_DIR);
    let mut premade = BTreeSet::new();
    match placed {
        Some(placed) => {
            let wanted: BTreeSet<PathBuf> = files.iter().map(|(path, _)| path.clone()).collect();
            placed.remove_unused(&workdir, &wanted);
            premade = placed
                .premade_files()
                .intersection(&wanted)
                .cloned()
                .collect();
        }
        None => {
            for dir in [&workdir, &outputs_dir] {
                fs::create_dir(dir)
                    .map_err(|e| format!("cannot create {}: {}", dir.display(), describe(&e)))?;
            }
        }
    }
    for (relative, file) in files {
        // A premade file is written once; a path listed twice then meets the file it wrote,
        // and fails like any other duplicate.
        let written = if premade.remove(relative) {
            overwrite_premade(&workdir.join(relative), file.mode, &file.contents)
        } else {
            write_job_file(&workdir, relative, file.mode, &file.contents)
        };
        written.map_err(|e| format!("cannot write job file {}: {}", file.path, describe(&e)))?;
    }

    let env = job_env(job, &outputs_dir);
    let program = resolve_program(command0, env.get("PATH").map(String::as_str), &workdir)?;
    let spec = JobFile {
        run_id: execution.run_id.clone(),
        attempt: execution.attempt,
        program,
        argv: job.command.clone(),
        env,
        stop_grace_seconds: job.stop_grace_seconds,
        log_limit_bytes: job
            .log_limit_bytes
            .unwrap_or(runplane_domain::runnable::DEFAULT_LOG_LIMIT_BYTES),
        workdir,
        outputs_dir,
        log_root: logs_dir.to_path_buf(),
        service,
        redact: job.redact.clone(),
        boot_id: procs::boot_id().map(str::to_string),
    };
    let json =
        serde_json::to_vec_pretty(&spec).map_err(|e| format!("cannot encode {JOB_FILE}: {e}"))?;
    write_atomically(attempt_dir, JOB_FILE, &json, 0o600)
        .map_err(|e| format!("cannot write {JOB_FILE}: {}", describe(&e)))
}

/// Writes a job file over the empty one a spare made (`spare.rs`): no inode is allocated.
fn overwrite_premade(path: &Path, mode: u32, contents: &[u8]) -> io::Result<()> {
    let mode = mode & 0o777;
    let mut out = OpenOptions::new()
        .write(true)
        .truncate(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    out.write_all(contents)?;
    out.set_permissions(fs::Permissions::from_mode(mode))
}

/// The job's complete environment: a few basics inherited from the server, the job's own
/// variables over them, and `RUNPLANE_OUTPUTS`.
fn job_env(job: &Job, outputs_dir: &Path) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = INHERITED_ENV
        .iter()
        .filter_map(|name| Some((name.to_string(), std::env::var(name).ok()?)))
        .collect();
    env.entry("PATH".into())
        .or_insert_with(|| DEFAULT_PATH.into());
    env.extend(job.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    env.insert(
        "RUNPLANE_OUTPUTS".into(),
        outputs_dir.to_string_lossy().into_owned(),
    );
    env
}

/// Finds the program `command[0]` names, the way `execvp` would (a name with a `/` is a path,
/// relative ones from the working folder; other names are looked up in the job's `PATH`), so
/// that a missing interpreter fails `start` with a clear reason instead of a run that dies.
pub(crate) fn resolve_program(
    name: &str,
    path_var: Option<&str>,
    workdir: &Path,
) -> Result<PathBuf, String> {
    if name.is_empty() {
        return Err("the job's command starts with an empty program name".into());
    }
    let path = if name.contains('/') {
        let path = if Path::new(name).is_absolute() {
            PathBuf::from(name)
        } else {
            workdir.join(name)
        };
        check_executable(&path).map_err(|why| format!("cannot start {name}: {why}"))?;
        path
    } else {
        let search = path_var.unwrap_or(DEFAULT_PATH);
        search
            .split(':')
            .filter(|dir| Path::new(dir).is_absolute())
            .map(|dir| Path::new(dir).join(name))
            .find(|candidate| check_executable(candidate).is_ok())
            .ok_or_else(|| format!("cannot start {name}: not found in PATH ({search})"))?
    };
    check_interpreter(&path).map_err(|why| format!("cannot start {name}: {why}"))?;
    Ok(path)
}

/// For a script, the interpreter its `#!` line names must exist too: otherwise exec fails with
/// ENOENT, which reads as if the script itself were missing (the classic "missing python").
pub(crate) fn check_interpreter(program: &Path) -> Result<(), String> {
    let mut head = [0u8; 256];
    let read = File::open(program)
        .and_then(|mut file| file.read(&mut head))
        .unwrap_or(0);
    let Some(line) = head[..read].strip_prefix(b"#!") else {
        return Ok(());
    };
    let line = line.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    match line.split_whitespace().next() {
        Some(interpreter) if Path::new(interpreter).is_absolute() => {
            check_executable(Path::new(interpreter))
                .map_err(|why| format!("interpreter {interpreter} (from its #! line): {why}"))
        }
        _ => Ok(()),
    }
}

fn check_executable(path: &Path) -> Result<(), String> {
    let meta = fs::metadata(path).map_err(|e| describe(&e))?;
    if meta.is_dir() {
        return Err("is a directory".into());
    }
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| "path contains a NUL byte".to_string())?;
    // SAFETY: access reads a valid NUL-terminated string.
    if unsafe { libc::access(c_path.as_ptr(), libc::X_OK) } != 0 {
        return Err("not executable (permission denied)".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_resolve_like_execvp_with_clear_reasons() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            resolve_program("sh", Some("/nonexistent:/bin"), dir.path()).unwrap(),
            PathBuf::from("/bin/sh")
        );
        let err = resolve_program("/usr/bin/python9", None, dir.path()).unwrap_err();
        assert_eq!(
            err,
            "cannot start /usr/bin/python9: No such file or directory"
        );
        let err = resolve_program("python9-missing", Some("/bin"), dir.path()).unwrap_err();
        assert_eq!(
            err,
            "cannot start python9-missing: not found in PATH (/bin)"
        );
        fs::write(dir.path().join("script.sh"), "#!/bin/sh\n").unwrap();
        fs::set_permissions(
            dir.path().join("script.sh"),
            fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        assert!(resolve_program("./script.sh", None, dir.path())
            .unwrap_err()
            .contains("not executable"));
        fs::set_permissions(
            dir.path().join("script.sh"),
            fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        assert_eq!(
            resolve_program("./script.sh", None, dir.path()).unwrap(),
            dir.path().join("./script.sh")
        );
        assert!(resolve_program("/tmp", None, dir.path())
            .unwrap_err()
            .contains("is a directory"));
        fs::write(
            dir.path().join("job.py"),
            "#!/usr/bin/python9 -u\nprint(1)\n",
        )
        .unwrap();
        fs::set_permissions(dir.path().join("job.py"), fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(
            resolve_program("./job.py", None, dir.path()).unwrap_err(),
            "cannot start ./job.py: interpreter /usr/bin/python9 (from its #! line): No such file or directory"
        );
    }
}
