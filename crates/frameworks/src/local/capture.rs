//! The supervisor's output capture: splitting the job's stdout/stderr into line records,
//! appending them to the log, and telling the server (the control channel) how far the log
//! goes. Plain threads and blocking IO: the supervisor runs no async runtime.
//!
//! Secret values handed in the job's `redact` list are replaced with `[REDACTED]` in every
//! captured line.

use super::protocol::ControlMessage;
use crate::log_records::{split_records, Redactor, MAX_LINE};
use chrono::Utc;
use runplane_logstore::file::FileLogWriter;
use runplane_logstore::{LogWriter, Stream};
use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

/// The supervisor's stdout, carrying [`ControlMessage`]s to the framework.
///
/// Writing must never hold up the job: when the server has died the pipe is closed (EPIPE,
/// SIGPIPE being ignored) and messages are dropped; when the server is alive but slow the pipe
/// is non-blocking and a message that does not fit is dropped (the next one carries the newer
/// absolute offset anyway). Each message is far below `PIPE_BUF`, so it is written whole or not
/// at all.
pub(crate) struct ControlChannel {
    broken: AtomicBool,
}

impl ControlChannel {
    pub(crate) fn new() -> Self {
        // Only a pipe is made non-blocking: flipping O_NONBLOCK on a terminal (someone running
        // `runplane supervise` by hand) would leak into the shell sharing it.
        // SAFETY: fstat/fcntl on fd 1 with a valid, zeroed stat buffer.
        unsafe {
            let mut stat: libc::stat = std::mem::zeroed();
            if libc::fstat(1, &mut stat) == 0 && (stat.st_mode & libc::S_IFMT) == libc::S_IFIFO {
                let flags = libc::fcntl(1, libc::F_GETFL);
                if flags >= 0 {
                    libc::fcntl(1, libc::F_SETFL, flags | libc::O_NONBLOCK);
                }
            }
        }
        ControlChannel {
            broken: AtomicBool::new(false),
        }
    }

    /// Sends a message if the pipe takes it now; returns whether it did.
    pub(crate) fn send(&self, message: &ControlMessage) -> bool {
        if self.broken.load(Ordering::Relaxed) {
            return false;
        }
        let Ok(mut line) = serde_json::to_vec(message) else {
            return false;
        };
        line.push(b'\n');
        loop {
            // SAFETY: writes from a live buffer of the given length to fd 1.
            let written = unsafe { libc::write(1, line.as_ptr().cast(), line.len()) };
            if written >= 0 {
                return written as usize == line.len();
            }
            let err = io::Error::last_os_error();
            match err.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => return false,
                _ => {
                    // EPIPE (the server is gone) or worse: stop trying, the job goes on.
                    self.broken.store(true, Ordering::Relaxed);
                    return false;
                }
            }
        }
    }

    /// Sends a message that matters (the last offset), retrying briefly while the pipe is full.
    pub(crate) fn send_patiently(&self, message: &ControlMessage, patience: Duration) {
        let deadline = Instant::now() + patience;
        while !self.send(message)
            && !self.broken.load(Ordering::Relaxed)
            && Instant::now() < deadline
        {
            thread::sleep(Duration::from_millis(10));
        }
    }
}

struct SinkState {
    writer: FileLogWriter,
    /// The first append error (reported once; later ones would only repeat it). The
    /// supervisor stops the job when it sees one: its output can no longer be kept.
    failed: Option<String>,
    /// The job's output is discarded once the log holds this many bytes.
    limit: u64,
    /// The limit was reached (and said so in the log).
    capped: bool,
}

/// The log writer shared by the stdout and stderr reader threads and the supervisor itself.
pub(crate) struct LogSink {
    state: Mutex<SinkState>,
    control: ControlChannel,
    redactor: Redactor,
}

impl LogSink {
    /// `limit`: the most bytes the log may hold before the job's (not runplane's own) output
    /// is discarded.
    pub(crate) fn new(writer: FileLogWriter, control: ControlChannel, limit: u64) -> Self {
        LogSink {
            state: Mutex::new(SinkState {
                writer,
                failed: None,
                limit,
                capped: false,
            }),
            control,
            redactor: Redactor::default(),
        }
    }

    /// Redacts `values` from the job's output (not from runplane's own `system` lines, which
    /// never contain them).
    pub(crate) fn redacting(mut self, values: &[String]) -> Self {
        self.redactor = Redactor::new(values);
        self
    }

    fn lock(&self) -> MutexGuard<'_, SinkState> {
        // A panicking reader thread must not take the log down with it.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn control(&self) -> &ControlChannel {
        &self.control
    }

    /// Appends records, then tells the server where the log ends now. The job's output stops
    /// at the log limit: the record that would cross it and everything after are discarded,
    /// and one `system` record says so. runplane's own records are always kept (they are few).
    pub(crate) fn append(&self, stream: Stream, records: &[Vec<u8>]) {
        if records.is_empty() {
            return;
        }
        let mut state = self.lock();
        let time = Utc::now();
        for record in records {
            let redacted;
            let record: &[u8] = if stream == Stream::System {
                record
            } else {
                redacted = self.redactor.apply(record);
                &redacted
            };
            if stream != Stream::System {
                if state.capped {
                    continue;
                }
                if state
                    .writer
                    .end_offset()
                    .saturating_add(record.len() as u64)
                    > state.limit
                {
                    state.capped = true;
                    let marker = format!(
                        "runplane: log limit of {} bytes reached; further output is discarded\n",
                        state.limit
                    );
                    Self::write(&mut state, Stream::System, time, marker.as_bytes());
                    continue;
                }
            }
            Self::write(&mut state, stream, time, record);
        }
        let end_offset = state.writer.end_offset();
        // Sent under the lock so offsets reach the server in increasing order.
        self.control.send(&ControlMessage::Log { end_offset });
    }

    fn write(state: &mut SinkState, stream: Stream, time: chrono::DateTime<Utc>, record: &[u8]) {
        if state.failed.is_some() {
            // The job is being stopped; the log ends where writing first failed.
            return;
        }
        if let Err(e) = state.writer.append(stream, time, record) {
            if state.failed.is_none() {
                eprintln!(
                    "runplane supervise: cannot append to the log: {e}; output is being dropped"
                );
                state.failed = Some(e.to_string());
            }
        }
    }

    /// Why the log could not be written to, once an append failed (a full disk...).
    pub(crate) fn failure(&self) -> Option<String> {
        self.lock().failed.clone()
    }

    /// A line written by runplane itself (stream `system`).
    pub(crate) fn system(&self, text: &str) {
        self.append(
            Stream::System,
            &[format!("runplane: {text}\n").into_bytes()],
        );
    }

    /// Makes the log durable and sends its final offset.
    pub(crate) fn finish(&self) {
        let mut state = self.lock();
        if let Err(e) = state.writer.sync() {
            eprintln!("runplane supervise: cannot sync the log: {e}");
        }
        let end_offset = state.writer.end_offset();
        drop(state);
        self.control
            .send_patiently(&ControlMessage::Log { end_offset }, Duration::from_secs(2));
    }
}

/// Starts a thread that copies one of the job's output pipes into the log until every holder
/// of its write end is gone, then reports on `done`.
pub(crate) fn spawn_reader(
    mut pipe: impl Read + Send + 'static,
    stream: Stream,
    sink: Arc<LogSink>,
    done: mpsc::Sender<Stream>,
) -> io::Result<()> {
    thread::Builder::new()
        .name(format!("capture-{}", stream.as_str()))
        .spawn(move || {
            let mut buf = vec![0u8; MAX_LINE];
            let mut pending = Vec::new();
            loop {
                match pipe.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        pending.extend_from_slice(&buf[..n]);
                        sink.append(stream, &split_records(&mut pending, false));
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        eprintln!(
                            "runplane supervise: reading the job's {}: {e}",
                            stream.as_str()
                        );
                        break;
                    }
                }
            }
            sink.append(stream, &split_records(&mut pending, true));
            let _ = done.send(stream);
        })?;
    Ok(())
}
