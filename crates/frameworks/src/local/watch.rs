//! Waking on writes to log files (inotify), for executions re-attached after a server restart.
//!
//! A re-attached supervisor has no control pipe to this process any more, so its log offsets
//! cannot be heard; instead its log file is watched. A re-attached service is followed the
//! same way through its attempt folder, where `service.json` is replaced by renames. One inotify instance serves every watched
//! file: instances are a scarce per-user resource (128 by default), watches are not.

use std::collections::HashMap;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::Notify;

/// The shared inotify instance; cheap to clone.
#[derive(Clone)]
pub(crate) struct LogWatcher {
    inner: Arc<Inner>,
}

struct Inner {
    fd: AsyncFd<OwnedFd>,
    /// Watch descriptor → who to wake.
    wakers: Mutex<HashMap<i32, Arc<Notify>>>,
}

impl Inner {
    fn wakers(&self) -> MutexGuard<'_, HashMap<i32, Arc<Notify>>> {
        // Every update is one statement: the map stays consistent across a panicking holder.
        self.wakers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One watched file; the watch is removed when this is dropped.
pub(crate) struct Watch {
    owner: Arc<Inner>,
    wd: i32,
    notify: Arc<Notify>,
}

impl Watch {
    /// Resolves after the file was modified (at least once) since the last call.
    pub(crate) async fn changed(&self) {
        self.notify.notified().await
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.owner.wakers().remove(&self.wd);
        // SAFETY: removes a watch descriptor from our own inotify fd; a stale wd only fails.
        unsafe { libc::inotify_rm_watch(self.owner.fd.as_raw_fd(), self.wd) };
    }
}

impl LogWatcher {
    /// Creates the inotify instance and the task that reads it. Must run inside a tokio
    /// runtime.
    pub(crate) fn new() -> io::Result<LogWatcher> {
        // SAFETY: inotify_init1 takes flags and returns a new fd or -1.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the fd was just created and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: an OwnedFd keeps its fd open and returns the same one until dropped.
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }?;
        let inner = Arc::new(Inner {
            fd,
            wakers: Mutex::new(HashMap::new()),
        });
        // The task lives as long as the runtime (the server's whole life).
        tokio::spawn(read_events(inner.clone()));
        Ok(LogWatcher { inner })
    }

    /// Starts watching `path` for writes.
    pub(crate) fn watch(&self, path: &Path) -> io::Result<Watch> {
        self.add(path, libc::IN_MODIFY | libc::IN_CLOSE_WRITE)
    }

    /// Starts watching the folder `dir` for files renamed into it (atomic replacements such as
    /// `service.json`'s): a watch on the file itself would follow the replaced inode.
    pub(crate) fn watch_renames_in(&self, dir: &Path) -> io::Result<Watch> {
        self.add(dir, libc::IN_MOVED_TO)
    }

    fn add(&self, path: &Path, mask: u32) -> io::Result<Watch> {
        let c_path = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path has a NUL byte"))?;
        // SAFETY: a valid inotify fd and a NUL-terminated path that outlives the call.
        let wd =
            unsafe { libc::inotify_add_watch(self.inner.fd.as_raw_fd(), c_path.as_ptr(), mask) };
        if wd < 0 {
            return Err(io::Error::last_os_error());
        }
        let notify = self
            .inner
            .wakers()
            .entry(wd)
            .or_insert_with(|| Arc::new(Notify::new()))
            .clone();
        Ok(Watch {
            owner: self.inner.clone(),
            wd,
            notify,
        })
    }
}

async fn read_events(strong: Arc<Inner>) {
    // Aligned for inotify_event; big enough for many events without names (file watches).
    let mut buf = vec![0u64; 512];
    loop {
        let mut guard = match strong.fd.readable().await {
            Ok(guard) => guard,
            Err(e) => {
                tracing::warn!(error = %e, "the log watcher failed; re-attached logs fall back to a slow tick");
                return;
            }
        };
        let bytes = buf.len() * 8;
        // SAFETY: reads at most `bytes` into our own buffer from our own fd.
        let read = unsafe { libc::read(strong.fd.as_raw_fd(), buf.as_mut_ptr().cast(), bytes) };
        if read < 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::WouldBlock {
                guard.clear_ready();
                continue;
            }
            if error.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            tracing::warn!(error = %error, "reading the log watcher failed; re-attached logs fall back to a slow tick");
            return;
        }
        // SAFETY: the kernel wrote `read` bytes of whole inotify_event records into `buf`.
        let data = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), read as usize) };
        let wakers = strong.wakers();
        let header = std::mem::size_of::<libc::inotify_event>();
        let mut at = 0;
        while at + header <= data.len() {
            // SAFETY: a whole header lies at `at`; read_unaligned needs no alignment.
            let event: libc::inotify_event =
                unsafe { std::ptr::read_unaligned(data[at..].as_ptr().cast()) };
            if let Some(notify) = wakers.get(&event.wd) {
                notify.notify_one();
            }
            at += header + event.len as usize;
        }
    }
}
