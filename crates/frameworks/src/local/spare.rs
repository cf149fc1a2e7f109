//! An attempt folder made ahead of need, so that starting an execution allocates no inode.
//!
//! Why: every file and folder created on the path from one job's end to the next job's start
//! is an inode allocation, and on ext4 without a journal (this project's CI machines) an
//! allocation skips, one buffer lookup each, every inode freed in its group during the last
//! one to six minutes (`recently_deleted` in the kernel's `ialloc.c`). After a mass deletion
//! nearby (a test suite's temporary folders, a previous server's home) each allocation costs
//! a fraction of a millisecond, and an attempt folder is about fifteen of them. A spare moves
//! them off that path: it is made while a job runs, and taken by the next start with a
//! rename.
//!
//! A spare is `<runs_dir>/.spare-<pid>-<n>/1/` (a run id never starts with a dot) holding
//! `work/`, `outputs/`, and empty files under the names the server and the supervisor write
//! next: `.job.json.tmp`, `supervisor.err`, the temporaries `.supervisor.pid.tmp`,
//! `.child.pid.tmp` and `.exit.json.tmp` (renamed over their final names, which keeps their
//! inode), and the job files of the last job started ([`Shape`]), which a job of the same
//! function will write again. Opening an existing file truncates it, allocating nothing;
//! whatever the new job does not use is removed before its supervisor starts.
//!
//! Beside it, `<logs_dir>/.spare-<pid>-<n>/1.log` is the log of a first attempt, empty, for
//! the supervisor to open (the log store's layout is `<logs_dir>/<run id>/<attempt>.log`).
//!
//! The first start of a run's first attempt renames the whole spare to `<runs_dir>/<run id>`
//! (and its log folder to `<logs_dir>/<run id>`); any other start renames its `1/` to the
//! attempt folder. The entry naming `1/` was made durable with the spare, so the start syncs
//! only the folders the rename changed.

use super::protocol::{temporary_name, EXIT_FILE, JOB_FILE, OUTPUTS_DIR, SUPERVISOR_ERR_FILE};
use super::protocol::{CHILD_PID_FILE, SUPERVISOR_PID_FILE, WORK_DIR};
use std::collections::BTreeSet;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// What a spare's name starts with.
const PREFIX: &str = ".spare-";
/// The attempt folder inside a spare: the name of a run's first attempt.
const FIRST_ATTEMPT: &str = "1";
/// Jobs with more files than this leave no shape: the next job rarely has the same ones.
const MAX_SHAPE_FILES: usize = 16;

/// The job files of a job, relative to `work/`: what a spare makes in advance for the next.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Shape {
    /// Folders holding the files, parents before children.
    dirs: Vec<PathBuf>,
    files: BTreeSet<PathBuf>,
}

impl Shape {
    /// The shape of a job whose files are `files` (checked relative paths).
    pub(super) fn of(files: impl IntoIterator<Item = PathBuf>) -> Shape {
        let files: BTreeSet<PathBuf> = files.into_iter().collect();
        if files.len() > MAX_SHAPE_FILES {
            return Shape::default();
        }
        let mut dirs: Vec<PathBuf> = files
            .iter()
            .flat_map(|file| file.ancestors().skip(1))
            .filter(|dir| !dir.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        dirs.sort_by_key(|dir| dir.components().count());
        Shape { dirs, files }
    }
}

/// A spare taken for one start.
#[derive(Debug)]
pub(crate) struct Spare {
    dir: PathBuf,
    /// The log folder, if it could be made.
    logs: Option<PathBuf>,
    shape: Shape,
}

/// A spare moved into place as an attempt folder.
#[derive(Debug)]
pub(crate) struct Placed {
    /// The job files that exist, empty, in `work/`.
    pub(super) files: BTreeSet<PathBuf>,
    /// The folders among them, parents first.
    dirs: Vec<PathBuf>,
    /// The folders whose entries the rename changed: synced before the supervisor starts.
    pub(super) to_sync: Vec<PathBuf>,
}

impl Placed {
    /// Removes the premade files and folders of `work/` the job did not write (`written`),
    /// so that the job finds only its own files.
    pub(super) fn remove_unused(&self, workdir: &Path, written: &BTreeSet<PathBuf>) {
        for file in self.files.difference(written) {
            let _ = fs::remove_file(workdir.join(file));
        }
        for dir in self.dirs.iter().rev() {
            if !written.iter().any(|file| file.starts_with(dir)) {
                let _ = fs::remove_dir(workdir.join(dir));
            }
        }
    }
}

impl Spare {
    /// Renames the spare to `attempt_dir`, which must not exist, and its log folder to
    /// `run_logs` (the run's folder in the log store) for a first attempt. On error the spare
    /// is removed and the caller makes the folder as if there had been none.
    pub(super) fn place(self, attempt_dir: &Path, run_logs: &Path) -> io::Result<Placed> {
        let result = self.rename_to(attempt_dir);
        if result.is_err() {
            let _ = fs::remove_dir_all(&self.dir);
        }
        if let Some(logs) = &self.logs {
            // The supervisor makes the log when this is not done.
            let first = attempt_dir.file_name() == Some(FIRST_ATTEMPT.as_ref());
            if !first || run_logs.exists() || fs::rename(logs, run_logs).is_err() {
                let _ = fs::remove_dir_all(logs);
            }
        }
        result
    }

    fn rename_to(&self, attempt_dir: &Path) -> io::Result<Placed> {
        let (Some(run_dir), Some(runs_dir)) = (
            attempt_dir.parent(),
            attempt_dir.parent().and_then(Path::parent),
        ) else {
            return Err(io::Error::other("an attempt folder has a run folder"));
        };
        let to_sync =
            if attempt_dir.file_name() == Some(FIRST_ATTEMPT.as_ref()) && !run_dir.exists() {
                fs::rename(&self.dir, run_dir)?;
                vec![runs_dir.to_path_buf()]
            } else {
                let created = !run_dir.exists();
                fs::create_dir_all(run_dir)?;
                fs::rename(self.dir.join(FIRST_ATTEMPT), attempt_dir)?;
                let _ = fs::remove_dir(&self.dir);
                let mut to_sync = vec![run_dir.to_path_buf()];
                if created {
                    to_sync.push(runs_dir.to_path_buf());
                }
                to_sync
            };
        Ok(Placed {
            files: self.shape.files.clone(),
            dirs: self.shape.dirs.clone(),
            to_sync,
        })
    }
}

/// The framework's spare, and the making of the next one.
pub(super) struct Spares {
    runs_dir: PathBuf,
    logs_dir: PathBuf,
    /// Off when other servers share the runs folder: each would remove the others' spares.
    enabled: bool,
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    ready: Option<Spare>,
    making: bool,
    /// Whether spares left by an earlier server were removed.
    swept: bool,
}

static SPARE_COUNT: AtomicU64 = AtomicU64::new(0);

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Spares {
    /// Spares for attempt folders in `runs_dir` and logs in `logs_dir` (absolute paths, as
    /// the attempt folders' and the supervisors' are).
    pub(super) fn new(runs_dir: PathBuf, logs_dir: PathBuf, enabled: bool) -> Self {
        Spares {
            runs_dir,
            logs_dir,
            enabled,
            state: Arc::default(),
        }
    }

    /// The spare, if one is ready.
    pub(super) fn take(&self) -> Option<Spare> {
        lock(&self.state).ready.take()
    }

    /// Makes the next spare in the background, for jobs shaped like `shape`, unless one is
    /// ready or being made. Needs a Tokio runtime.
    pub(super) fn replenish(&self, shape: Shape) {
        if !self.enabled {
            return;
        }
        {
            let mut state = lock(&self.state);
            if state.ready.is_some() || state.making {
                return;
            }
            state.making = true;
        }
        let state = Arc::clone(&self.state);
        let (runs_dir, logs_dir) = (self.runs_dir.clone(), self.logs_dir.clone());
        tokio::task::spawn_blocking(move || {
            let sweep = !lock(&state).swept;
            if sweep {
                sweep_spares(&runs_dir);
                sweep_spares(&logs_dir);
            }
            let made = make((&runs_dir, &logs_dir), shape);
            if let Err(error) = &made {
                tracing::debug!(%error, "cannot make a spare attempt folder");
            }
            let mut state = lock(&state);
            state.making = false;
            state.swept = true;
            state.ready = made.ok();
        });
    }
}

/// Makes a spare in `runs_dir`, and its log folder in `logs_dir` (blocking).
fn make((runs_dir, logs_dir): (&Path, &Path), shape: Shape) -> io::Result<Spare> {
    let name = format!(
        "{PREFIX}{}-{}",
        std::process::id(),
        SPARE_COUNT.fetch_add(1, Ordering::Relaxed)
    );
    let dir = runs_dir.join(&name);
    let result = fill(&dir, &shape);
    if result.is_err() {
        let _ = fs::remove_dir_all(&dir);
    }
    result?;
    let logs = logs_dir.join(&name);
    let logs = match make_log(&logs) {
        Ok(()) => Some(logs),
        Err(_) => {
            let _ = fs::remove_dir_all(&logs);
            None
        }
    };
    Ok(Spare { dir, logs, shape })
}

fn make_log(logs: &Path) -> io::Result<()> {
    fs::create_dir_all(logs)?;
    empty_file(&logs.join(format!("{FIRST_ATTEMPT}.log")), 0o644)
}

fn fill(dir: &Path, shape: &Shape) -> io::Result<()> {
    fs::create_dir_all(dir.parent().unwrap_or(dir))?;
    fs::create_dir(dir)?;
    let attempt = dir.join(FIRST_ATTEMPT);
    // 0700 like every attempt folder: job.json can carry secrets.
    DirBuilder::new().mode(0o700).create(&attempt)?;
    let workdir = attempt.join(WORK_DIR);
    fs::create_dir(&workdir)?;
    fs::create_dir(attempt.join(OUTPUTS_DIR))?;
    for (name, mode) in [
        (temporary_name(JOB_FILE), 0o600),
        (SUPERVISOR_ERR_FILE.to_string(), 0o644),
        (temporary_name(SUPERVISOR_PID_FILE), 0o644),
        (temporary_name(CHILD_PID_FILE), 0o644),
        (temporary_name(EXIT_FILE), 0o644),
    ] {
        empty_file(&attempt.join(name), mode)?;
    }
    for sub in &shape.dirs {
        fs::create_dir(workdir.join(sub))?;
    }
    for file in &shape.files {
        empty_file(&workdir.join(file), 0o600)?;
    }
    // The entry naming `1/` outlives a crash of the machine, as `prepare` makes the entries
    // naming a folder it creates: a start then syncs only the folder it renames the spare
    // into. (What `1/` holds is not synced, in a spare or not: only the folder's existence
    // tells a later server whether a job may have started.)
    File::open(dir)?.sync_all()
}

fn empty_file(path: &Path, mode: u32) -> io::Result<()> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map(drop)
}

/// Removes the spares an earlier server left in `runs_dir` (blocking).
fn sweep_spares(runs_dir: &Path) {
    let Ok(entries) = fs::read_dir(runs_dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(PREFIX) {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// Whether a name in the runs folder is a spare's rather than a run's.
pub(super) fn is_spare(name: &std::ffi::OsStr) -> bool {
    name.to_string_lossy().starts_with(PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .collect()
    }

    fn shape(files: &[&str]) -> Shape {
        Shape::of(files.iter().map(PathBuf::from))
    }

    #[test]
    fn a_shape_lists_parents_before_children() {
        let shape = shape(&["runner.py", "src/pkg/mod.py", "src/main.py"]);
        assert_eq!(
            shape.dirs,
            vec![PathBuf::from("src"), PathBuf::from("src/pkg")]
        );
        assert_eq!(shape.files.len(), 3);
    }

    #[test]
    fn a_job_with_many_files_leaves_no_shape() {
        let names: Vec<String> = (0..=MAX_SHAPE_FILES).map(|i| format!("f{i}")).collect();
        let shape = Shape::of(names.iter().map(PathBuf::from));
        assert_eq!(shape, Shape::default());
    }

    #[test]
    fn a_first_attempt_takes_the_whole_spare() {
        let home = tempfile::tempdir().unwrap();
        let (runs, logs) = (home.path().join("runs"), home.path().join("logs"));
        let spare = make((&runs, &logs), shape(&["runner.py", "src/main.py"])).unwrap();
        let attempt = runs.join("run-a").join("1");
        let placed = spare.place(&attempt, &logs.join("run-a")).unwrap();
        assert_eq!(placed.to_sync, vec![runs.clone()]);
        assert_eq!(fs::metadata(logs.join("run-a/1.log")).unwrap().len(), 0);
        for made in [
            "work/runner.py",
            "work/src/main.py",
            ".job.json.tmp",
            "supervisor.err",
        ] {
            let meta = fs::metadata(attempt.join(made)).unwrap();
            assert_eq!(meta.len(), 0, "{made}");
        }
        assert!(attempt.join("outputs").is_dir());
        // Nothing of the spare is left under its own name.
        assert_eq!(names(&runs), ["run-a"]);
    }

    #[test]
    fn a_later_attempt_takes_the_inner_folder() {
        let home = tempfile::tempdir().unwrap();
        let (runs, logs) = (home.path().join("runs"), home.path().join("logs"));
        fs::create_dir_all(runs.join("run-b").join("1")).unwrap();
        let spare = make((&runs, &logs), Shape::default()).unwrap();
        let attempt = runs.join("run-b").join("2");
        let placed = spare.place(&attempt, &logs.join("run-b")).unwrap();
        assert_eq!(placed.to_sync, vec![runs.join("run-b")]);
        assert!(attempt.join("work").is_dir());
        assert_eq!(
            fs::read_dir(&runs).unwrap().count(),
            1,
            "the spare's folder is gone"
        );
        // A later attempt's log is the supervisor's to make: the spare's log folder goes.
        assert!(names(&logs).is_empty());
    }

    #[test]
    fn unused_premade_files_are_removed() {
        let home = tempfile::tempdir().unwrap();
        let (runs, logs) = (home.path().join("runs"), home.path().join("logs"));
        let spare = make(
            (&runs, &logs),
            shape(&["runner.py", "lib/a.py", "src/main.py"]),
        )
        .unwrap();
        let attempt = runs.join("run-c").join("1");
        let placed = spare.place(&attempt, &logs.join("run-c")).unwrap();
        let workdir = attempt.join("work");
        let written: BTreeSet<PathBuf> = ["runner.py", "src/main.py"].map(PathBuf::from).into();
        placed.remove_unused(&workdir, &written);
        assert!(workdir.join("runner.py").exists());
        assert!(workdir.join("src/main.py").exists());
        assert!(!workdir.join("lib").exists(), "an unused folder is removed");
    }

    #[test]
    fn a_failed_placement_removes_the_spare() {
        let home = tempfile::tempdir().unwrap();
        let (runs, logs) = (home.path().join("runs"), home.path().join("logs"));
        let spare = make((&runs, &logs), Shape::default()).unwrap();
        let dir = spare.dir.clone();
        // The attempt folder exists and is not empty: the rename fails.
        let attempt = runs.join("run-d").join("2");
        fs::create_dir_all(attempt.join("x")).unwrap();
        assert!(spare.place(&attempt, &logs.join("run-d")).is_err());
        assert!(!dir.exists());
        assert_eq!(fs::read_dir(&logs).unwrap().count(), 0);
    }

    #[test]
    fn a_sweep_removes_spares_only() {
        let home = tempfile::tempdir().unwrap();
        let (runs, logs) = (home.path().join("runs"), home.path().join("logs"));
        make((&runs, &logs), Shape::default()).unwrap();
        fs::create_dir_all(runs.join("run-e").join("1")).unwrap();
        sweep_spares(&runs);
        assert_eq!(names(&runs), ["run-e"]);
        assert!(is_spare(".spare-1-2".as_ref()) && !is_spare("run-e".as_ref()));
    }
}
