//! The supervisor's output capture: splitting the job's stdout/stderr into line records,
//! appending them to the log, and telling the server (the control channel) how far the log
//! goes. Plain threads and blocking IO: the supervisor runs no async runtime.
//!
//! Secret values handed in the job's `redact` list are replaced with `[REDACTED]` in every
//! captured line.

use super::protocol::ControlMessage;
use chrono::Utc;
use runplane_domain::REDACTED;
use runplane_logstore::file::FileLogWriter;
use runplane_logstore::{LogWriter, Stream};
use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

/// The longest record: a line longer than this is cut into several records, so a job writing
/// gigabytes without a newline cannot make the supervisor buffer it all.
pub(crate) const MAX_LINE: usize = 64 * 1024;

/// Takes the complete records off the front of `pending`: each line *with* its `\n` (so the
/// records concatenate back to the exact output), cutting lines at [`MAX_LINE`]; at the end of
/// the stream the partial last line too.
pub(crate) fn split_records(pending: &mut Vec<u8>, at_eof: bool) -> Vec<Vec<u8>> {
    let mut records = Vec::new();
    let mut start = 0;
    loop {
        let rest = &pending[start..];
        let take = match rest.iter().position(|b| *b == b'\n') {
            Some(newline) if newline < MAX_LINE => newline + 1,
            _ if rest.len() >= MAX_LINE => MAX_LINE,
            _ => break,
        };
        records.push(rest[..take].to_vec());
        start += take;
    }
    if at_eof && start < pending.len() {
        records.push(pending[start..].to_vec());
        start = pending.len();
    }
    pending.drain(..start);
    records
}

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

/// Replaces secret values in the job's output with [`REDACTED`] before it reaches the log.
///
/// It works on records, which are whole lines (see [`split_records`]): a value is found
/// wherever it sits in a line, however many writes the job used to print it. It escapes only
/// when a line longer than [`MAX_LINE`] is cut inside the value, or when the job transforms
/// it (encodes, reverses, prints it a character per line).
#[derive(Default)]
pub(crate) struct Redactor {
    /// Longest first, so that a value containing another is replaced whole.
    values: Vec<Vec<u8>>,
}

/// Shorter values are not redacted: replacing every `a` or `42` would wreck the log and
/// protect nothing.
pub(crate) const MIN_REDACTED_LEN: usize = 4;

impl Redactor {
    pub(crate) fn new(values: &[String]) -> Redactor {
        let mut values: Vec<Vec<u8>> = values
            .iter()
            .filter(|value| value.len() >= MIN_REDACTED_LEN)
            .map(|value| value.as_bytes().to_vec())
            .collect();
        values.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        values.dedup();
        Redactor { values }
    }

    /// `record` with every value replaced; borrowed when nothing matched (the common case).
    pub(crate) fn apply<'a>(&self, record: &'a [u8]) -> std::borrow::Cow<'a, [u8]> {
        let mut out = std::borrow::Cow::Borrowed(record);
        for value in &self.values {
            if let Some(replaced) = replace_all(&out, value, REDACTED.as_bytes()) {
                out = std::borrow::Cow::Owned(replaced);
            }
        }
        out
    }
}

/// `haystack` with every `needle` replaced, or None when there is none.
fn replace_all(haystack: &[u8], needle: &[u8], with: &[u8]) -> Option<Vec<u8>> {
    let first = find(haystack, needle)?;
    let mut out = Vec::with_capacity(haystack.len());
    out.extend_from_slice(&haystack[..first]);
    out.extend_from_slice(with);
    let mut rest = &haystack[first + needle.len()..];
    while let Some(at) = find(rest, needle) {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(with);
        rest = &rest[at + needle.len()..];
    }
    out.extend_from_slice(rest);
    Some(out)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || needle.len() > haystack.len() {
        return None;
    }
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_keep_their_newline_and_partial_lines_wait() {
        let mut pending = b"a\nbc\n\npartial".to_vec();
        assert_eq!(
            split_records(&mut pending, false),
            vec![b"a\n".to_vec(), b"bc\n".to_vec(), b"\n".to_vec()]
        );
        assert_eq!(pending, b"partial");
        pending.extend_from_slice(b" line\nnext");
        assert_eq!(
            split_records(&mut pending, false),
            vec![b"partial line\n".to_vec()]
        );
        assert_eq!(split_records(&mut pending, true), vec![b"next".to_vec()]);
        assert!(pending.is_empty());
        assert!(split_records(&mut pending, true).is_empty());
    }

    #[test]
    fn redaction_replaces_every_value_longest_first() {
        let redactor = Redactor::new(&[
            "s3cr3t".to_string(),
            "s3cr3t-and-more".to_string(),
            "abc".to_string(), // too short: left alone
        ]);
        assert_eq!(
            &*redactor.apply(b"token=s3cr3t-and-more, again s3cr3t s3cr3ts3cr3t abc\n"),
            b"token=[REDACTED], again [REDACTED] [REDACTED][REDACTED] abc\n"
        );
        assert!(matches!(
            redactor.apply(b"nothing here\n"),
            std::borrow::Cow::Borrowed(_)
        ));
        assert_eq!(&*Redactor::new(&[]).apply(b"s3cr3t"), b"s3cr3t");
    }

    /// A value printed in pieces (several writes of one unterminated line) is still one
    /// record once the line ends, and is redacted in it.
    #[test]
    fn redaction_sees_a_line_written_in_pieces() {
        let redactor = Redactor::new(&["hunter2-value".to_string()]);
        let mut pending = b"key=hunt".to_vec();
        assert!(split_records(&mut pending, false).is_empty());
        pending.extend_from_slice(b"er2-val");
        assert!(split_records(&mut pending, false).is_empty());
        pending.extend_from_slice(b"ue!\n");
        let records = split_records(&mut pending, false);
        assert_eq!(records.len(), 1);
        assert_eq!(&*redactor.apply(&records[0]), b"key=[REDACTED]!\n");
    }

    #[test]
    fn long_lines_are_cut_at_the_limit() {
        let mut pending = vec![b'x'; MAX_LINE * 2 + 10];
        pending.push(b'\n');
        pending.extend_from_slice(b"tail");
        let records = split_records(&mut pending, false);
        assert_eq!(
            records.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![MAX_LINE, MAX_LINE, 11]
        );
        assert_eq!(pending, b"tail");

        let mut pending = vec![b'y'; MAX_LINE - 1];
        pending.push(b'\n');
        assert_eq!(
            split_records(&mut pending, false).len(),
            1,
            "a line of exactly MAX_LINE bytes is one record"
        );
    }
}
