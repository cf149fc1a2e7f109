//! A supervisor started ahead of need: `runplane supervise -` waits, blocked on its stdin, for
//! the attempt folder it is to supervise, then runs exactly as `runplane supervise <folder>`.
//!
//! Why: starting the supervisor is an exec of this whole binary (about a millisecond and a
//! half of loading and relocating here), and it sits on the path from one workflow step to
//! the next. With a standby, that path pays a write to a pipe instead. The next standby is
//! spawned when an execution ends: its exec then overlaps the server recording that end, on
//! the core the job just left, rather than the start of the next job.
//!
//! The framework keeps at most one standby. It is spawned exactly as a supervisor is (its own
//! process group, the server's environment) but with its stdin a pipe from the server and its
//! stderr `/dev/null`. The server writes the folder's absolute path and a NUL; the supervisor
//! makes `<folder>/supervisor.err` its stderr and `/dev/null` its stdin, as a directly spawned
//! supervisor has them, and keeps the pipe (close-on-exec: the job never sees it). It makes the
//! folder its working directory: that, and not its command line, tells a later server which
//! folder it supervises (`procs::is_supervisor_of`). A standby that reads the end of its stdin
//! before a whole path (the server exited, or dropped it) exits at once with status 0,
//! touching nothing: it never owned an execution.
//!
//! The pipe then carries one more thing: [`ACK`], once the server has recorded the
//! execution's end in its store ([`Framework::cleanup`](crate::Framework::cleanup) comes
//! after that). A supervisor that gets it within [`ACK_PATIENCE`] of writing `exit.json`
//! leaves the file to the page cache; one that does not (the server died, or never got
//! there) makes it durable, as a directly spawned supervisor always does, so that a later
//! server finds the outcome even after a crash of the machine.

use super::protocol::SUPERVISOR_ERR_FILE;
use crate::files::describe;
use std::ffi::OsString;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::process::ChildStdin;

/// The `runplane supervise` argument that asks for a standby rather than naming a folder.
pub const STANDBY_ARG: &str = "-";

/// Ends the path the server writes on a standby's stdin (no path contains it).
const TERMINATOR: u8 = 0;

/// The byte that says the server has recorded the execution's end.
pub const ACK: u8 = b'R';

/// How long a supervisor whose server is listening waits for [`ACK`] after writing
/// `exit.json`; the server sends it a store transaction after reading the file.
pub const ACK_PATIENCE: Duration = Duration::from_secs(5);

/// What a standby was given.
pub(super) struct Assignment {
    pub(super) attempt_dir: PathBuf,
    /// The pipe from the server, for [`recorded`] (`None` if it could not be kept).
    pub(super) acks: Option<File>,
}

/// Supervisor side: waits for the attempt folder on stdin and takes the standard streams a
/// directly spawned supervisor has. `None` when the server went away first.
pub(super) fn await_assignment() -> Option<Assignment> {
    // SAFETY: fd 0 is open for the whole process; ManuallyDrop keeps this File from closing it.
    let stdin = ManuallyDrop::new(unsafe { File::from_raw_fd(0) });
    let mut path = Vec::new();
    match BufReader::new(&*stdin).read_until(TERMINATOR, &mut path) {
        Ok(_) if path.pop() == Some(TERMINATOR) && !path.is_empty() => {}
        _ => return None,
    }
    let attempt_dir = PathBuf::from(OsString::from_vec(path));
    // SAFETY: F_DUPFD_CLOEXEC takes a descriptor number and a minimum; fd 0 is open.
    let kept = unsafe { libc::fcntl(0, libc::F_DUPFD_CLOEXEC, 3) };
    // SAFETY: a descriptor fcntl just returned, owned by nothing else.
    let acks = (kept >= 0).then(|| unsafe { File::from_raw_fd(kept) });
    // Errors here leave this process's stderr at /dev/null; the supervision that follows still
    // writes its outcome to exit.json, where the framework looks first.
    let _ = redirect(0, File::open("/dev/null"));
    let _ = redirect(2, File::create(attempt_dir.join(SUPERVISOR_ERR_FILE)));
    // Our command line does not name the folder: the working directory does, for a later
    // server that checks a recorded pid (`procs::is_supervisor_of`).
    if let Err(e) = std::env::set_current_dir(&attempt_dir) {
        eprintln!(
            "runplane supervise: cannot enter {}: {}",
            attempt_dir.display(),
            describe(&e)
        );
    }
    Some(Assignment { attempt_dir, acks })
}

/// Whether the server says, within `patience`, that it recorded the end.
pub(super) fn recorded(acks: &File, patience: Duration) -> bool {
    let mut poll = libc::pollfd {
        fd: acks.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let timeout = i32::try_from(patience.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: one valid pollfd, and its count.
    if unsafe { libc::poll(&mut poll, 1, timeout) } != 1 {
        return false;
    }
    let mut byte = [0u8; 1];
    matches!((&*acks).read(&mut byte), Ok(1)) && byte[0] == ACK
}

/// Makes `fd` refer to the file `opened` (then closed: the descriptor keeps it open).
fn redirect(fd: i32, opened: io::Result<File>) -> io::Result<()> {
    let file = opened?;
    // SAFETY: dup2 takes two descriptor numbers; `file` is open for the call.
    if unsafe { libc::dup2(file.as_raw_fd(), fd) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Server side: tells a supervisor that its execution's end is recorded (see the module
/// documentation). A failure only costs the supervisor its fsyncs.
pub(crate) async fn acknowledge(mut acks: ChildStdin) {
    let _ = acks.write_all(&[ACK]).await;
}

/// Server side: the one spare supervisor, if any.
#[derive(Clone, Default)]
pub(crate) struct Standby(Arc<Mutex<Option<tokio::process::Child>>>);

impl Standby {
    fn lock(&self) -> MutexGuard<'_, Option<tokio::process::Child>> {
        // One Option behind it: consistent whatever a panicking holder did.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Hands `attempt_dir` to the spare supervisor, if there is one that is still waiting:
    /// the supervisor, and the pipe to [`acknowledge`] its end on. `None` when there is none
    /// (the caller spawns one directly).
    pub(crate) async fn assign(
        &self,
        attempt_dir: &Path,
    ) -> Option<(tokio::process::Child, ChildStdin)> {
        let mut child = self.lock().take()?;
        let mut stdin = child.stdin.take()?;
        let mut message = attempt_dir.as_os_str().to_os_string().into_vec();
        message.push(TERMINATOR);
        // A standby that died (killed while it waited) has closed the pipe: EPIPE.
        match stdin.write_all(&message).await {
            Ok(()) => Some((child, stdin)),
            Err(e) => {
                tracing::debug!(error = %describe(&e), "the standby supervisor is gone; starting one");
                None
            }
        }
    }

    /// A replenishment for the follower of the execution just handed a supervisor to run
    /// when that execution ends (`monitor.rs`): the next standby's exec then overlaps the
    /// server recording the end, not the next job's start.
    pub(crate) fn later(&self, supervisor: &[String]) -> Replenish {
        Replenish {
            standby: self.clone(),
            supervisor: supervisor.to_vec(),
        }
    }

    /// Starts a spare supervisor in the background unless one is already waiting.
    fn replenish(&self, supervisor: &[String]) {
        if self.lock().is_some() {
            return;
        }
        let Ok((_, mut command)) = super::supervisor_command(
            supervisor,
            STANDBY_ARG.as_ref(),
            (Stdio::piped(), Stdio::null()),
        ) else {
            return;
        };
        let standby = self.clone();
        // The spawn blocks this thread until the exec: keep it off the runtime's workers.
        tokio::task::spawn_blocking(move || match command.spawn() {
            Ok(child) => {
                let mut slot = standby.lock();
                if slot.is_none() {
                    *slot = Some(child);
                }
                // else: another replenish won; dropping `child` closes its stdin and it exits.
            }
            Err(e) => {
                tracing::warn!(error = %describe(&e), "cannot start a standby supervisor; supervisors start on demand");
            }
        });
    }
}

/// See [`Standby::later`].
pub(crate) struct Replenish {
    standby: Standby,
    supervisor: Vec<String>,
}

impl Replenish {
    pub(crate) fn now(self) {
        self.standby.replenish(&self.supervisor);
    }
}
