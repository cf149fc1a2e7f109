//! The file-backed [`LogStore`]: one append-only file per run attempt,
//! `<root>/<run_id>/<attempt>.log`.
//!
//! # Format
//!
//! A log file is a sequence of records, each framed as
//!
//! ```text
//! [u32 LE data_len][u8 stream][i64 LE unix_micros][data: data_len bytes][u32 LE crc32]
//! ```
//!
//! where the CRC-32 covers the 13 header bytes and the data. A record's offset is the byte
//! position of its first header byte, so offsets are stable forever and a reader can resume from
//! any offset it was handed without an index.
//!
//! The framing exists for crashes: the process appending (the `runplane supervise` process of a
//! local run) can die in the middle of a write, or the machine can lose power before the page
//! cache reaches the disk. Both leave an incomplete or garbled *tail*; the checksum and the
//! length let readers stop in front of it and let the next writer cut it off before appending,
//! so no reader ever sees a half record or garbage.
//!
//! Stream code 0 is deliberately invalid: a tail of zeros (what some filesystems show after a
//! power loss) never decodes as a record.
//!
//! # Concurrency
//!
//! One writer per log at a time (enforced with an exclusive `flock`, so a second writer fails
//! instead of truncating records the first one is writing); any number of readers, in any
//! process, concurrently with the writer. Each record is written with one `write` of a prebuilt
//! buffer to a file opened with `O_APPEND`, and a reader only reads bytes below the file size,
//! so a concurrent reader sees a prefix of the records followed at most by an incomplete one,
//! which it treats as the current end.

use crate::{LogChunk, LogError, LogRecord, LogStore, LogWriter, Stream};
use chrono::{DateTime, Utc};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Bytes before a record's data: length (4), stream (1), time (8).
const HEADER_LEN: usize = 13;
/// Bytes after a record's data: the CRC-32.
const TRAILER_LEN: usize = 4;
/// The largest data a single record may carry. Writers split output long before this (the
/// supervisor flushes partial lines at 64 KiB); the bound mostly keeps a reader that was handed
/// a bad offset from trusting a garbage length and allocating gigabytes.
pub const MAX_RECORD_DATA: usize = 16 << 20;

/// Stores each run attempt's log in its own file under `root`.
#[derive(Debug, Clone)]
pub struct FileLogStore {
    root: PathBuf,
}

impl FileLogStore {
    /// A store rooted at `root`; nothing is created until a writer is opened.
    pub fn new(root: PathBuf) -> Self {
        FileLogStore { root }
    }

    /// The folder holding every run's logs.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file holding the log of one run attempt (whether or not it exists yet).
    pub fn log_path(&self, run_id: &str, attempt: u32) -> Result<PathBuf, LogError> {
        Ok(self.run_dir(run_id)?.join(format!("{attempt}.log")))
    }

    fn run_dir(&self, run_id: &str) -> Result<PathBuf, LogError> {
        check_component(run_id)?;
        Ok(self.root.join(run_id))
    }

    /// Opens the log of a run attempt for appending, like [`LogStore::writer`], but returns the
    /// concrete writer (the supervisor keeps it without boxing).
    pub fn open_writer(&self, run_id: &str, attempt: u32) -> Result<FileLogWriter, LogError> {
        let dir = self.run_dir(run_id)?;
        fs::create_dir_all(&dir)?;
        let path = dir.join(format!("{attempt}.log"));
        FileLogWriter::open(path)
    }
}

/// Run ids become folder names: refuse anything that could leave `root` or is not one plain
/// path component.
fn check_component(run_id: &str) -> Result<(), LogError> {
    let bad = run_id.is_empty()
        || run_id == "."
        || run_id == ".."
        || run_id.contains('/')
        || run_id.contains('\0');
    if bad {
        return Err(LogError::Io(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid run id for a log path: {run_id:?}"),
        )));
    }
    Ok(())
}

impl LogStore for FileLogStore {
    fn writer(&self, run_id: &str, attempt: u32) -> Result<Box<dyn LogWriter>, LogError> {
        Ok(Box::new(self.open_writer(run_id, attempt)?))
    }

    fn read(
        &self,
        run_id: &str,
        attempt: u32,
        offset: u64,
        max_bytes: usize,
    ) -> Result<LogChunk, LogError> {
        let path = self.log_path(run_id, attempt)?;
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // A log that does not exist reads as empty; only its start is a valid offset.
                return if offset == 0 {
                    Ok(LogChunk {
                        records: Vec::new(),
                        next_offset: 0,
                    })
                } else {
                    Err(LogError::BadOffset { offset })
                };
            }
            Err(e) => return Err(e.into()),
        };
        read_records(file, offset, max_bytes)
    }

    fn attempts(&self, run_id: &str) -> Result<Vec<u32>, LogError> {
        let dir = self.run_dir(run_id)?;
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut attempts = Vec::new();
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".log")) else {
                continue;
            };
            // Only names this store writes: canonical decimal numbers (no "01.log").
            if let Ok(attempt) = stem.parse::<u32>() {
                if attempt.to_string() == stem {
                    attempts.push(attempt);
                }
            }
        }
        attempts.sort_unstable();
        Ok(attempts)
    }

    fn delete(&self, run_id: &str) -> Result<(), LogError> {
        let dir = self.run_dir(run_id)?;
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// Appends to one attempt's log file; holds an exclusive `flock` on it while open.
#[derive(Debug)]
pub struct FileLogWriter {
    file: File,
    path: PathBuf,
    end: u64,
    /// Where the log ended at the last sync, when nothing was appended since: a sync then
    /// has nothing to make durable (a job that printed nothing costs no fdatasync).
    synced_end: Option<u64>,
    /// Reused encoding buffer, so an append is one allocation-free `write`.
    buf: Vec<u8>,
    /// Set when a failed write could not be rolled back: appending after an unknown tail would
    /// put records behind garbage, so the writer refuses instead.
    poisoned: bool,
}

impl FileLogWriter {
    fn open(path: PathBuf) -> Result<Self, LogError> {
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)?;
        lock_exclusive(&file, &path)?;
        let len = file.metadata()?.len();
        let valid_end = scan_valid_end(&file)?;
        if valid_end < len {
            tracing::warn!(
                path = %path.display(),
                dropped_bytes = len - valid_end,
                "dropping a torn or corrupt tail from a log (a writer died mid-record)"
            );
            file.set_len(valid_end)?;
            file.sync_all()?;
        }
        Ok(FileLogWriter {
            file,
            path,
            end: valid_end,
            // An empty log holds nothing to lose; a previous writer's records may not be
            // durable yet.
            synced_end: (valid_end == 0).then_some(0),
            buf: Vec::new(),
            poisoned: false,
        })
    }

    /// The file this writer appends to.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Refuses a second concurrent writer: its torn-tail scan would cut off a record the first one
/// is in the middle of writing.
fn lock_exclusive(file: &File, path: &Path) -> io::Result<()> {
    // SAFETY: flock only reads the descriptor number, which `file` keeps open for the call.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.kind() == io::ErrorKind::WouldBlock {
        return Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            format!("log {} is already open by another writer", path.display()),
        ));
    }
    Err(err)
}

impl LogWriter for FileLogWriter {
    fn append(
        &mut self,
        stream: Stream,
        time: DateTime<Utc>,
        data: &[u8],
    ) -> Result<u64, LogError> {
        if self.poisoned {
            return Err(LogError::Io(io::Error::other(format!(
                "log {} is in an unknown state after a failed write",
                self.path.display()
            ))));
        }
        if data.len() > MAX_RECORD_DATA {
            return Err(LogError::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "log record of {} bytes exceeds the {MAX_RECORD_DATA} byte limit",
                    data.len()
                ),
            )));
        }
        encode_record(&mut self.buf, stream, time, data);
        let offset = self.end;
        if let Err(e) = self.file.write_all(&self.buf) {
            // Part of the record may be on disk: cut it off so the next append starts at a
            // record boundary, or refuse further appends if even that fails.
            if self.file.set_len(self.end).is_err() {
                self.poisoned = true;
            }
            self.synced_end = None;
            return Err(e.into());
        }
        self.end += self.buf.len() as u64;
        Ok(offset)
    }

    fn sync(&mut self) -> Result<(), LogError> {
        if self.synced_end == Some(self.end) {
            return Ok(());
        }
        self.file.sync_data()?;
        self.synced_end = Some(self.end);
        Ok(())
    }

    fn end_offset(&self) -> u64 {
        self.end
    }
}

fn stream_code(stream: Stream) -> u8 {
    match stream {
        Stream::Stdout => 1,
        Stream::Stderr => 2,
        Stream::System => 3,
    }
}

fn stream_from_code(code: u8) -> Option<Stream> {
    match code {
        1 => Some(Stream::Stdout),
        2 => Some(Stream::Stderr),
        3 => Some(Stream::System),
        _ => None,
    }
}

fn encode_record(buf: &mut Vec<u8>, stream: Stream, time: DateTime<Utc>, data: &[u8]) {
    buf.clear();
    buf.reserve(HEADER_LEN + data.len() + TRAILER_LEN);
    // Callers bound data.len() by MAX_RECORD_DATA, which fits in a u32.
    buf.extend_from_slice(&(data.len() as u32).to_le_bytes());
    buf.push(stream_code(stream));
    buf.extend_from_slice(&time.timestamp_micros().to_le_bytes());
    buf.extend_from_slice(data);
    let crc = crc32fast::hash(buf);
    buf.extend_from_slice(&crc.to_le_bytes());
}

/// A decoded, not yet checksummed, record header.
struct Header {
    bytes: [u8; HEADER_LEN],
    data_len: usize,
    stream: Stream,
    time: DateTime<Utc>,
}

fn parse_header(bytes: [u8; HEADER_LEN]) -> Option<Header> {
    let data_len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
    if data_len > MAX_RECORD_DATA {
        return None;
    }
    let stream = stream_from_code(bytes[4])?;
    let mut micros = [0u8; 8];
    micros.copy_from_slice(&bytes[5..13]);
    let time = DateTime::<Utc>::from_timestamp_micros(i64::from_le_bytes(micros))?;
    Some(Header {
        bytes,
        data_len,
        stream,
        time,
    })
}

/// What reading the next record from a position found.
enum Next {
    Record {
        stream: Stream,
        time: DateTime<Utc>,
        data: Vec<u8>,
        len: u64,
    },
    /// Clean end of file: nothing after the position.
    End,
    /// Some bytes, but not a whole record: a writer is mid-append, or died mid-append.
    Incomplete,
    /// A whole record's worth of bytes that do not form a record.
    Invalid,
}

/// Reads until `buf` is full or the file ends; returns how many bytes were read.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Reads the next record. `budget` is consulted after the header: when it returns false for the
/// record's data length, nothing more is read and `None` comes back (the position is unchanged
/// as far as the caller is concerned).
fn next_record(
    reader: &mut impl Read,
    budget: impl FnOnce(usize) -> bool,
) -> io::Result<Option<Next>> {
    let mut header = [0u8; HEADER_LEN];
    match read_full(reader, &mut header)? {
        0 => return Ok(Some(Next::End)),
        n if n < HEADER_LEN => return Ok(Some(Next::Incomplete)),
        _ => {}
    }
    let Some(header) = parse_header(header) else {
        return Ok(Some(Next::Invalid));
    };
    if !budget(header.data_len) {
        return Ok(None);
    }
    let mut rest = vec![0u8; header.data_len + TRAILER_LEN];
    if read_full(reader, &mut rest)? < rest.len() {
        return Ok(Some(Next::Incomplete));
    }
    let crc_at = header.data_len;
    let stored = u32::from_le_bytes([
        rest[crc_at],
        rest[crc_at + 1],
        rest[crc_at + 2],
        rest[crc_at + 3],
    ]);
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&header.bytes);
    hasher.update(&rest[..crc_at]);
    if hasher.finalize() != stored {
        return Ok(Some(Next::Invalid));
    }
    rest.truncate(crc_at);
    let len = (HEADER_LEN + header.data_len + TRAILER_LEN) as u64;
    Ok(Some(Next::Record {
        stream: header.stream,
        time: header.time,
        data: rest,
        len,
    }))
}

/// The end of the longest prefix of whole, valid records.
fn scan_valid_end(file: &File) -> io::Result<u64> {
    let mut reader = BufReader::with_capacity(256 << 10, file);
    reader.seek(SeekFrom::Start(0))?;
    let mut end = 0u64;
    while let Some(Next::Record { len, .. }) = next_record(&mut reader, |_| true)? {
        end += len;
    }
    Ok(end)
}

/// Whether walking whole, valid records from the start of the file lands exactly on `offset`.
fn is_record_boundary(file: &File, offset: u64) -> io::Result<bool> {
    let mut reader = BufReader::with_capacity(256 << 10, file);
    reader.seek(SeekFrom::Start(0))?;
    let mut position = 0u64;
    while position < offset {
        match next_record(&mut reader, |_| true)? {
            Some(Next::Record { len, .. }) => position += len,
            _ => return Ok(false),
        }
    }
    Ok(position == offset)
}

fn read_records(mut file: File, offset: u64, max_bytes: usize) -> Result<LogChunk, LogError> {
    let len = file.metadata()?.len();
    if offset > len {
        return Err(LogError::BadOffset { offset });
    }
    file.seek(SeekFrom::Start(offset))?;
    let mut reader = BufReader::with_capacity(64 << 10, file);
    let mut records = Vec::new();
    let mut data_bytes = 0usize;
    let mut position = offset;
    loop {
        let first = records.is_empty();
        let fits = |data_len: usize| first || data_bytes.saturating_add(data_len) <= max_bytes;
        match next_record(&mut reader, fits)? {
            None | Some(Next::End) | Some(Next::Incomplete) => break,
            Some(Next::Invalid) if first => {
                // Either the caller's offset is not a record start, or it is the end of the
                // valid records and a crash left garbage behind them (which the next writer
                // will cut off). Only the second is a place to stop quietly; telling them apart
                // takes a walk from the start, which only corrupt logs ever pay for.
                return if is_record_boundary(reader.get_ref(), offset)? {
                    Ok(LogChunk {
                        records,
                        next_offset: offset,
                    })
                } else {
                    Err(LogError::BadOffset { offset })
                };
            }
            // Corruption after valid records: hand out what is valid; the reader will be told
            // about the bad spot if it resumes there.
            Some(Next::Invalid) => break,
            Some(Next::Record {
                stream,
                time,
                data,
                len,
            }) => {
                data_bytes += data.len();
                records.push(LogRecord {
                    offset: position,
                    time,
                    stream,
                    data,
                });
                position += len;
            }
        }
    }
    Ok(LogChunk {
        records,
        next_offset: position,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    fn time(micros: i64) -> DateTime<Utc> {
        DateTime::<Utc>::from_timestamp_micros(micros).expect("valid test time")
    }

    fn read_all(store: &FileLogStore, run: &str, attempt: u32) -> Vec<LogRecord> {
        let mut out = Vec::new();
        let mut offset = 0;
        loop {
            let chunk = store.read(run, attempt, offset, 100).expect("read");
            if chunk.records.is_empty() {
                return out;
            }
            offset = chunk.next_offset;
            out.extend(chunk.records);
        }
    }

    #[test]
    fn append_then_read_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileLogStore::new(dir.path().to_path_buf());
        let mut writer = store.writer("run-1", 1).unwrap();
        let inputs = [
            (Stream::Stdout, b"hello\n".to_vec()),
            (Stream::Stderr, b"".to_vec()),
            (Stream::System, vec![0u8, 255, 10, 13]),
        ];
        let mut offsets = Vec::new();
        for (i, (stream, data)) in inputs.iter().enumerate() {
            offsets.push(
                writer
                    .append(*stream, time(1_700_000_000_000_000 + i as i64), data)
                    .unwrap(),
            );
        }
        writer.sync().unwrap();
        assert_eq!(offsets[0], 0);
        let chunk = store.read("run-1", 1, 0, usize::MAX).unwrap();
        assert_eq!(chunk.next_offset, writer.end_offset());
        assert_eq!(chunk.records.len(), 3);
        for (i, record) in chunk.records.iter().enumerate() {
            assert_eq!(record.offset, offsets[i]);
            assert_eq!(record.stream, inputs[i].0);
            assert_eq!(record.data, inputs[i].1);
            assert_eq!(record.time, time(1_700_000_000_000_000 + i as i64));
        }
        // At the end: empty, same offset.
        let tail = store.read("run-1", 1, chunk.next_offset, 10).unwrap();
        assert!(tail.records.is_empty());
        assert_eq!(tail.next_offset, chunk.next_offset);
    }

    #[test]
    fn reads_return_at_least_one_record_and_respect_max_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileLogStore::new(dir.path().to_path_buf());
        let mut writer = store.open_writer("r", 0).unwrap();
        writer
            .append(Stream::Stdout, time(0), &[b'x'; 1000])
            .unwrap();
        writer.append(Stream::Stdout, time(0), &[b'y'; 10]).unwrap();
        writer.append(Stream::Stdout, time(0), &[b'z'; 10]).unwrap();
        let chunk = store.read("r", 0, 0, 1).unwrap();
        assert_eq!(chunk.records.len(), 1);
        let chunk = store.read("r", 0, chunk.next_offset, 20).unwrap();
        assert_eq!(chunk.records.len(), 2);
    }

    #[test]
    fn missing_logs_read_as_empty() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileLogStore::new(dir.path().to_path_buf());
        let chunk = store.read("nothing", 3, 0, 10).unwrap();
        assert!(chunk.records.is_empty());
        assert_eq!(chunk.next_offset, 0);
        assert!(matches!(
            store.read("nothing", 3, 5, 10),
            Err(LogError::BadOffset { offset: 5 })
        ));
        assert_eq!(store.attempts("nothing").unwrap(), Vec::<u32>::new());
        store.delete("nothing").unwrap();
    }

    #[test]
    fn offsets_inside_records_or_past_the_end_are_bad() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileLogStore::new(dir.path().to_path_buf());
        let mut writer = store.open_writer("r", 1).unwrap();
        writer
            .append(Stream::Stdout, time(5), b"first line\n")
            .unwrap();
        let second = writer
            .append(Stream::Stderr, time(6), b"second line\n")
            .unwrap();
        let end = writer.end_offset();
        for offset in 1..end {
            if offset == second {
                continue;
            }
            match store.read("r", 1, offset, 1000) {
                Err(LogError::BadOffset { offset: o }) => assert_eq!(o, offset),
                // Inside the last record, the bytes up to the end can look like an incomplete
                // record (a writer mid-append); that reads as "nothing yet", never as data.
                Ok(chunk) => assert!(
                    chunk.records.is_empty(),
                    "offset {offset} returned {chunk:?}"
                ),
                Err(e) => panic!("offset {offset}: {e}"),
            }
        }
        assert!(matches!(
            store.read("r", 1, end + 1, 10),
            Err(LogError::BadOffset { .. })
        ));
    }

    #[test]
    fn path_components_are_validated() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileLogStore::new(dir.path().to_path_buf());
        for bad in ["", ".", "..", "a/b", "../x", "a\0b"] {
            match store.writer(bad, 1) {
                Err(LogError::Io(e)) => {
                    assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{bad:?}")
                }
                other => panic!("{bad:?}: {:?}", other.map(|_| ())),
            }
            assert!(store.read(bad, 1, 0, 1).is_err());
            assert!(store.attempts(bad).is_err());
            assert!(store.delete(bad).is_err());
        }
    }

    #[test]
    fn attempts_are_listed_and_delete_removes_the_run() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileLogStore::new(dir.path().to_path_buf());
        for attempt in [10, 2, 1] {
            store
                .writer("run", attempt)
                .unwrap()
                .append(Stream::Stdout, time(0), b"x")
                .unwrap();
        }
        fs::write(dir.path().join("run").join("notes.txt"), b"ignored").unwrap();
        fs::write(dir.path().join("run").join("07.log"), b"ignored").unwrap();
        assert_eq!(store.attempts("run").unwrap(), vec![1, 2, 10]);
        store.delete("run").unwrap();
        assert!(!dir.path().join("run").exists());
        assert_eq!(store.attempts("run").unwrap(), Vec::<u32>::new());
    }

    #[test]
    fn a_second_writer_is_refused_while_the_first_is_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileLogStore::new(dir.path().to_path_buf());
        let first = store.writer("r", 1).unwrap();
        match store.writer("r", 1) {
            Err(LogError::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::WouldBlock),
            other => panic!("{:?}", other.map(|_| ())),
        }
        drop(first);
        store.writer("r", 1).unwrap();
    }

    #[test]
    fn records_over_the_limit_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileLogStore::new(dir.path().to_path_buf());
        let mut writer = store.writer("r", 1).unwrap();
        let big = vec![0u8; MAX_RECORD_DATA + 1];
        assert!(writer.append(Stream::Stdout, time(0), &big).is_err());
        assert_eq!(writer.end_offset(), 0);
        writer.append(Stream::Stdout, time(0), b"ok").unwrap();
        assert_eq!(read_all(&store, "r", 1).len(), 1);
    }

    #[test]
    fn torn_tails_are_dropped_on_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileLogStore::new(dir.path().to_path_buf());
        let path = store.log_path("r", 1).unwrap();
        let mut expected = Vec::new();
        {
            let mut writer = store.writer("r", 1).unwrap();
            for i in 0..5 {
                let data = format!("line {i}\n").into_bytes();
                writer.append(Stream::Stdout, time(i), &data).unwrap();
                expected.push(data);
            }
        }
        let good_len = fs::metadata(&path).unwrap().len();

        // Every way a crash can cut the next record short, plus a zero-filled tail.
        let mut full = Vec::new();
        encode_record(&mut full, Stream::Stderr, time(99), b"torn record payload");
        let mut tails: Vec<Vec<u8>> = (1..full.len()).map(|n| full[..n].to_vec()).collect();
        tails.push(vec![0u8; 64]);
        let mut corrupt = full.clone();
        corrupt[HEADER_LEN + 2] ^= 0xff;
        tails.push(corrupt);

        for tail in tails {
            let mut file = OpenOptions::new().append(true).open(&path).unwrap();
            file.write_all(&tail).unwrap();
            drop(file);
            // Readers stop in front of the tail.
            let records = read_all(&store, "r", 1);
            assert_eq!(
                records.iter().map(|r| r.data.clone()).collect::<Vec<_>>(),
                expected
            );

            let mut writer = store.writer("r", 1).unwrap();
            assert_eq!(fs::metadata(&path).unwrap().len(), good_len);
            assert_eq!(writer.end_offset(), good_len);
            let offset = writer
                .append(Stream::System, time(7), b"after crash")
                .unwrap();
            assert_eq!(offset, good_len);
            drop(writer);
            let records = read_all(&store, "r", 1);
            assert_eq!(records.len(), expected.len() + 1);
            assert_eq!(records.last().unwrap().data, b"after crash");
            assert_eq!(records.last().unwrap().stream, Stream::System);
            // Put the file back for the next tail.
            OpenOptions::new()
                .write(true)
                .open(&path)
                .unwrap()
                .set_len(good_len)
                .unwrap();
        }
    }

    #[test]
    fn a_concurrent_reader_sees_a_prefix_and_never_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(FileLogStore::new(dir.path().to_path_buf()));
        let total = 3000usize;
        let record = |i: usize| -> Vec<u8> {
            let len = (i * 7919) % 3000;
            (0..len).map(|j| (i + j) as u8).collect()
        };
        let mut writer = store.open_writer("r", 1).unwrap();
        let done = Arc::new(AtomicBool::new(false));
        let reader = {
            let store = store.clone();
            let done = done.clone();
            std::thread::spawn(move || {
                let mut offset = 0;
                let mut seen = 0usize;
                loop {
                    let finished = done.load(Ordering::Acquire);
                    let chunk = store.read("r", 1, offset, 4096).expect("concurrent read");
                    let mut at = offset;
                    for r in &chunk.records {
                        // Records are contiguous: each starts where the previous one ended.
                        assert_eq!(r.offset, at);
                        at += (HEADER_LEN + r.data.len() + TRAILER_LEN) as u64;
                        assert_eq!(r.data, record(seen), "record {seen}");
                        assert_eq!(r.stream, [Stream::Stdout, Stream::Stderr][seen % 2]);
                        seen += 1;
                    }
                    assert_eq!(at, chunk.next_offset);
                    offset = chunk.next_offset;
                    if chunk.records.is_empty() && finished {
                        return seen;
                    }
                }
            })
        };
        for i in 0..total {
            let stream = [Stream::Stdout, Stream::Stderr][i % 2];
            writer.append(stream, time(i as i64), &record(i)).unwrap();
        }
        done.store(true, Ordering::Release);
        assert_eq!(reader.join().unwrap(), total);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn resuming_from_any_returned_offset_yields_exactly_the_suffix(
            records in prop::collection::vec(
                (0u8..3, any::<i64>().prop_map(|t| t % 4_000_000_000_000_000), prop::collection::vec(any::<u8>(), 0..300)),
                0..40,
            ),
            max_bytes in prop::collection::vec(0usize..700, 1..8),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let store = FileLogStore::new(dir.path().to_path_buf());
            let mut writer = store.writer("p", 7).unwrap();
            let mut written = Vec::new();
            for (s, t, data) in &records {
                let stream = [Stream::Stdout, Stream::Stderr, Stream::System][*s as usize];
                let offset = writer.append(stream, time(*t), data).unwrap();
                written.push(LogRecord { offset, time: time(*t), stream, data: data.clone() });
            }
            let end = writer.end_offset();

            // Walk the log with varying chunk sizes, collecting every offset handed out.
            let mut offsets = vec![0u64];
            let mut walked = Vec::new();
            let mut offset = 0;
            for step in 0.. {
                let limit = max_bytes[step % max_bytes.len()];
                let chunk = store.read("p", 7, offset, limit).unwrap();
                if chunk.records.is_empty() {
                    prop_assert_eq!(chunk.next_offset, end);
                    break;
                }
                let data: usize = chunk.records.iter().map(|r| r.data.len()).sum();
                prop_assert!(chunk.records.len() == 1 || data <= limit);
                offsets.extend(chunk.records.iter().map(|r| r.offset));
                offsets.push(chunk.next_offset);
                walked.extend(chunk.records);
                offset = chunk.next_offset;
            }
            prop_assert_eq!(&walked, &written);

            // From every offset, reading to the end gives exactly the suffix.
            for &start in &offsets {
                let mut got = Vec::new();
                let mut at = start;
                loop {
                    let chunk = store.read("p", 7, at, max_bytes[0]).unwrap();
                    if chunk.records.is_empty() {
                        break;
                    }
                    at = chunk.next_offset;
                    got.extend(chunk.records);
                }
                let suffix: Vec<_> = written.iter().filter(|r| r.offset >= start).cloned().collect();
                prop_assert_eq!(got, suffix);
            }
        }
    }
}
