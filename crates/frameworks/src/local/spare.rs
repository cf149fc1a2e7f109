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
//! A spare is preferably made of the working state the last cleanup kept rather than removed
//! (`Spares::recycle`): `job.json` and `work/` emptied (plain files truncated; anything else,
//! and folders left without a file, removed), `outputs/` emptied. Its inodes are then neither freed by the cleanup
//! nor allocated again by the spare, which leaves far fewer recently freed inodes behind.
//!
//! The first start of a run's first attempt renames the whole spare to `<runs_dir>/<run id>`
//! (and its log folder to `<logs_dir>/<run id>`); any other start renames its `1/` to the
//! attempt folder. The entry naming `1/` was made durable with the spare, so the start syncs
//! only the folders the rename changed.

use super::protocol::{CHILD_PID_FILE, SUPERVISOR_PID_FILE, WORK_DIR};
use super::protocol::{EXIT_FILE, JOB_FILE, OUTPUTS_DIR, SUPERVISOR_ERR_FILE};
use crate::files::temporary_name;
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
/// How deep a recycled `work/` may be (deeper: removed, as without a spare).
const MAX_DEPTH: usize = 8;

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
    /// The job files that exist, empty, in `work/`, and their folders.
    shape: Shape,
    /// The folders whose entries the rename changed: synced before the supervisor starts.
    pub(super) to_sync: Vec<PathBuf>,
}

impl Placed {
    /// The job files that exist, empty, in `work/`.
    pub(super) fn premade_files(&self) -> &BTreeSet<PathBuf> {
        &self.shape.files
    }
    /// Removes the premade files and folders of `work/` the job did not write (`written`),
    /// so that the job finds only its own files.
    pub(super) fn remove_unused(&self, workdir: &Path, written: &BTreeSet<PathBuf>) {
        for file in self.shape.files.difference(written) {
            let _ = fs::remove_file(workdir.join(file));
        }
        for dir in self.shape.dirs.iter().rev() {
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
        result.map(|to_sync| Placed {
            shape: self.shape,
            to_sync,
        })
    }

    /// The rename; returns the folders whose entries it changed.
    fn rename_to(&self, attempt_dir: &Path) -> io::Result<Vec<PathBuf>> {
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
        Ok(to_sync)
    }
}

/// The framework's spare, and the making of the next one. Clones share it.
#[derive(Clone)]
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
    /// The working state of an ended attempt, emptied, for the next spare (`recycle`).
    recycled: Option<Recycled>,
}

/// An ended attempt's `work/`, `outputs/` and `job.json`, emptied, in a folder of their own:
/// a spare made of them allocates (and the cleanup frees) none of their inodes.
struct Recycled {
    dir: PathBuf,
    shape: Shape,
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

    /// Keeps the working state of the ended attempt in `attempt_dir` for the next spare,
    /// emptied first: `job.json` and the plain files of `work/` truncated, anything else
    /// (and folders left without a file) removed, `outputs/` emptied. False when it did not (disabled, one is
    /// kept already, or something failed): the caller then removes it as before. Blocking.
    pub(super) fn recycle(&self, attempt_dir: &Path) -> bool {
        if !self.enabled || lock(&self.state).recycled.is_some() {
            return false;
        }
        let dir = self.runs_dir.join(spare_name());
        match keep_emptied(attempt_dir, &dir) {
            Ok(shape) => {
                let mut state = lock(&self.state);
                if state.recycled.is_none() {
                    state.recycled = Some(Recycled { dir, shape });
                    return true;
                }
            }
            Err(error) => {
                tracing::debug!(%error, "cannot recycle an attempt's working state");
            }
        }
        let _ = fs::remove_dir_all(&dir);
        false
    }

    /// Makes the next spare in the background, unless one is ready or being made: of the
    /// recycled working state if there is one (shaped like its job), else new and shaped like
    /// `shape`. Needs a Tokio runtime.
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
            let recycled = lock(&state).recycled.take();
            let made = match recycled {
                Some(recycled) => adopt((&runs_dir, &logs_dir), recycled),
                None => make((&runs_dir, &logs_dir), shape),
            };
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

/// A new spare's name: this process's prefix, then a count.
fn spare_name() -> String {
    format!(
        "{}{}",
        own_prefix(),
        SPARE_COUNT.fetch_add(1, Ordering::Relaxed)
    )
}

fn own_prefix() -> String {
    format!("{PREFIX}{}-", std::process::id())
}

/// Makes a spare in `runs_dir`, and its log folder in `logs_dir` (blocking).
fn make((runs_dir, logs_dir): (&Path, &Path), shape: Shape) -> io::Result<Spare> {
    let name = spare_name();
    let dir = runs_dir.join(&name);
    let result = fill(&dir, &shape);
    if result.is_err() {
        let _ = fs::remove_dir_all(&dir);
    }
    result?;
    with_log(dir, logs_dir.join(name), shape)
}

/// Makes a spare of a recycled working state (blocking); a fresh one if that fails.
fn adopt((runs_dir, logs_dir): (&Path, &Path), recycled: Recycled) -> io::Result<Spare> {
    let name = spare_name();
    let dir = runs_dir.join(&name);
    let result = (|| {
        fs::create_dir(&dir)?;
        let attempt = dir.join(FIRST_ATTEMPT);
        fs::rename(&recycled.dir, &attempt)?;
        for (name, mode) in fixed_files() {
            let path = attempt.join(name);
            if path.symlink_metadata().is_err() {
                empty_file(&path, mode)?;
            }
        }
        File::open(&dir)?.sync_all()
    })();
    if let Err(error) = result {
        let _ = fs::remove_dir_all(&dir);
        let _ = fs::remove_dir_all(&recycled.dir);
        tracing::debug!(%error, "cannot make a spare of a recycled working state");
        return make((runs_dir, logs_dir), recycled.shape);
    }
    with_log(dir, logs_dir.join(name), recycled.shape)
}

/// Empties an ended attempt's working state into `dir` (made here), and returns the shape of
/// the `work/` it keeps.
fn keep_emptied(attempt_dir: &Path, dir: &Path) -> io::Result<Shape> {
    // The environment, secrets included, is gone before anything else.
    truncate(&attempt_dir.join(JOB_FILE))?;
    let workdir = attempt_dir.join(WORK_DIR);
    let mut kept = Vec::new();
    empty_tree(&workdir, Path::new(""), &mut kept)?;
    let outputs = attempt_dir.join(OUTPUTS_DIR);
    for entry in fs::read_dir(&outputs)? {
        let path = entry?.path();
        match path.symlink_metadata()?.is_dir() {
            true => fs::remove_dir_all(&path)?,
            false => fs::remove_file(&path)?,
        }
    }
    DirBuilder::new().mode(0o700).create(dir)?;
    fs::rename(
        attempt_dir.join(JOB_FILE),
        dir.join(temporary_name(JOB_FILE)),
    )?;
    fs::rename(&workdir, dir.join(WORK_DIR))?;
    fs::rename(&outputs, dir.join(OUTPUTS_DIR))?;
    Ok(Shape::of(kept))
}

/// Truncates the plain files under `root/relative`, at most [`MAX_SHAPE_FILES`] of them,
/// recording their paths in `kept`; removes everything else, and the folders left without a
/// kept file.
fn empty_tree(root: &Path, relative: &Path, kept: &mut Vec<PathBuf>) -> io::Result<()> {
    if relative.components().count() > MAX_DEPTH {
        return Err(io::Error::other("too deep a working folder to recycle"));
    }
    for entry in fs::read_dir(root.join(relative))? {
        let entry = entry?;
        let name = relative.join(entry.file_name());
        let path = root.join(&name);
        let kind = entry.file_type()?;
        if kind.is_dir() {
            let before = kept.len();
            empty_tree(root, &name, kept)?;
            // A folder left without a kept file is not part of the shape: the next job would
            // find it, empty, among its own files.
            if kept.len() == before {
                fs::remove_dir(&path)?;
            }
        } else if kind.is_file() && kept.len() < MAX_SHAPE_FILES && truncate(&path).is_ok() {
            kept.push(name);
        } else {
            fs::remove_file(&path)?;
        }
    }
    Ok(())
}

/// Empties a plain file that is this folder's own: not a link to, nor a hard link of, a file
/// elsewhere (which emptying would reach).
fn truncate(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let file = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() || meta.nlink() != 1 {
        return Err(io::Error::other("not a plain file of its own"));
    }
    file.set_len(0)
}

/// Adds the spare's log folder; a spare without one is still a spare.
fn with_log(dir: PathBuf, logs: PathBuf, shape: Shape) -> io::Result<Spare> {
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
    for (name, mode) in fixed_files() {
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

/// The files every attempt folder gets, with their modes.
fn fixed_files() -> [(String, u32); 5] {
    [
        (temporary_name(JOB_FILE), 0o600),
        (SUPERVISOR_ERR_FILE.to_string(), 0o644),
        (temporary_name(SUPERVISOR_PID_FILE), 0o644),
        (temporary_name(CHILD_PID_FILE), 0o644),
        (temporary_name(EXIT_FILE), 0o644),
    ]
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
    let own = own_prefix();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(PREFIX) && !name.starts_with(&own) {
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
    fn a_sweep_removes_other_servers_spares_only() {
        let home = tempfile::tempdir().unwrap();
        let (runs, logs) = (home.path().join("runs"), home.path().join("logs"));
        let own = make((&runs, &logs), Shape::default()).unwrap();
        fs::create_dir_all(runs.join(".spare-0-7").join("1")).unwrap();
        fs::create_dir_all(runs.join("run-e").join("1")).unwrap();
        sweep_spares(&runs);
        let own = own.dir.file_name().unwrap().to_string_lossy().into_owned();
        let mut left = names(&runs);
        left.sort();
        assert_eq!(left, [own, "run-e".to_string()]);
        assert!(is_spare(".spare-1-2".as_ref()) && !is_spare("run-e".as_ref()));
    }

    #[test]
    fn an_ended_attempts_working_state_is_emptied_and_made_a_spare() {
        use std::os::unix::fs::symlink;
        let home = tempfile::tempdir().unwrap();
        let (runs, logs) = (home.path().join("runs"), home.path().join("logs"));
        let outside = home.path().join("outside.txt");
        fs::write(&outside, "keep me").unwrap();
        let attempt = runs.join("run-f").join("1");
        let work = attempt.join("work");
        fs::create_dir_all(work.join("src")).unwrap();
        fs::create_dir_all(attempt.join("outputs/model")).unwrap();
        fs::write(
            attempt.join("job.json"),
            "{\"env\": {\"TOKEN\": \"s3cret\"}}",
        )
        .unwrap();
        fs::write(work.join("runner.py"), "print(1)").unwrap();
        fs::write(work.join("src/main.py"), "x = 1").unwrap();
        fs::write(attempt.join("outputs/results.json"), "{}").unwrap();
        fs::write(attempt.join("outputs/model/w.bin"), "weights").unwrap();
        symlink(&outside, work.join("link.txt")).unwrap();
        // A folder holding nothing to keep goes, with what it holds.
        fs::create_dir_all(work.join("tmp/deeper")).unwrap();
        symlink(&outside, work.join("tmp/deeper/only-a-link")).unwrap();
        fs::hard_link(&outside, work.join("hard.txt")).unwrap();
        fs::write(attempt.join("exit.json"), "{}").unwrap();

        let spares = Spares::new(runs.clone(), logs.clone(), true);
        assert!(spares.recycle(&attempt));
        // What stays is the attempt's record; the rest is gone from it.
        assert_eq!(names(&attempt), ["exit.json"]);
        assert_eq!(
            fs::read_to_string(&outside).unwrap(),
            "keep me",
            "links are not followed"
        );
        assert!(!spares.recycle(&attempt), "one recycled state at a time");

        let recycled = lock(&spares.state).recycled.take().unwrap();
        let spare = adopt((&runs, &logs), recycled).unwrap();
        assert_eq!(spare.shape, shape(&["runner.py", "src/main.py"]));
        let next = runs.join("run-g").join("1");
        spare.place(&next, &logs.join("run-g")).unwrap();
        let mut kept = names(&next.join("work"));
        kept.sort();
        assert_eq!(kept, ["runner.py", "src"]);
        for file in [
            "work/runner.py",
            "work/src/main.py",
            ".job.json.tmp",
            "supervisor.err",
        ] {
            assert_eq!(fs::metadata(next.join(file)).unwrap().len(), 0, "{file}");
        }
        assert!(names(&next.join("outputs")).is_empty());
    }
}
