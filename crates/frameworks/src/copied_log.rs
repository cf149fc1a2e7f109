//! What a previous server already copied of a job's or service's output, so that the
//! followers of a recovered execution copy the rest once.
//!
//! The engine replays a container's whole output, with timestamps of one-second precision
//! (Podman), and the replicas' lines share one log without saying whose they are: a time
//! cut-off alone would drop lines of one replica that were still on their way when another
//! replica's line of the same second was stored. So output older than a window before the
//! log's last output record counts as copied, and lines inside it are matched against the
//! records stored there, each record matching one line (lines, not frames: the engine may
//! hand a line over in several frames).

use chrono::{DateTime, TimeDelta, Utc};
use runplane_logstore::file::FileLogStore;
use runplane_logstore::{LogStore, Stream};
use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

/// How far before the last stored output line frames are matched one by one; older frames
/// were copied long before the server stopped.
const WINDOW: TimeDelta = TimeDelta::seconds(60);

type Key = (i64, &'static str, u64);

pub struct CopiedLog {
    since: DateTime<Utc>,
    unmatched: Mutex<HashMap<Key, u32>>,
}

impl CopiedLog {
    /// `None` when the log holds no output yet: everything is to be copied.
    pub fn read(logs: &FileLogStore, run_id: &str, attempt: u32) -> Option<CopiedLog> {
        let mut records: Vec<Key> = Vec::new();
        let mut offset = 0;
        while let Ok(chunk) = logs.read(run_id, attempt, offset, 1 << 20) {
            if chunk.records.is_empty() {
                break;
            }
            offset = chunk.next_offset;
            records.extend(
                chunk
                    .records
                    .iter()
                    .filter(|r| r.stream != Stream::System)
                    .map(|r| key(r.time, r.stream, &r.data)),
            );
        }
        let last = records.iter().map(|k| k.0).max()?;
        let since = DateTime::from_timestamp_micros(last)? - WINDOW;
        let mut unmatched = HashMap::new();
        for record in records
            .into_iter()
            .filter(|k| k.0 >= since.timestamp_micros())
        {
            *unmatched.entry(record).or_insert(0) += 1;
        }
        Some(CopiedLog {
            since,
            unmatched: Mutex::new(unmatched),
        })
    }

    /// From when the engine must replay the output: anything older counts as copied.
    pub fn since(&self) -> DateTime<Utc> {
        self.since
    }

    /// Whether output of this time was copied long ago, whatever it is.
    pub fn is_old(&self, time: DateTime<Utc>) -> bool {
        time < self.since
    }

    /// Whether this record (a whole line, redacted as it would be stored, with the time of
    /// the frame that completed it) is already in the log.
    pub fn contains(&self, time: DateTime<Utc>, stream: Stream, data: &[u8]) -> bool {
        if self.is_old(time) {
            return true;
        }
        let mut unmatched = self.unmatched.lock().unwrap_or_else(|e| e.into_inner());
        match unmatched.get_mut(&key(time, stream, data)) {
            Some(count) if *count > 0 => {
                *count -= 1;
                true
            }
            _ => false,
        }
    }
}

fn key(time: DateTime<Utc>, stream: Stream, data: &[u8]) -> Key {
    let mut hasher = DefaultHasher::new();
    data.hash(&mut hasher);
    (time.timestamp_micros(), stream.as_str(), hasher.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use runplane_logstore::LogWriter;

    #[test]
    fn each_stored_line_matches_one_frame_and_old_frames_count_as_copied() {
        let tmp = tempfile::tempdir().unwrap();
        let logs = FileLogStore::new(tmp.path().to_path_buf());
        assert!(CopiedLog::read(&logs, "r", 1).is_none());
        let t = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let mut writer = logs.open_writer("r", 1).unwrap();
        writer.append(Stream::Stdout, t, b"same\n").unwrap();
        writer.append(Stream::System, t, b"note\n").unwrap();
        drop(writer);
        let copied = CopiedLog::read(&logs, "r", 1).unwrap();
        // Two replicas printed "same" in that second; one of them was stored.
        assert!(copied.contains(t, Stream::Stdout, b"same\n"));
        assert!(!copied.contains(t, Stream::Stdout, b"same\n"));
        assert!(!copied.contains(t, Stream::Stderr, b"other\n"));
        assert!(copied.contains(t - TimeDelta::seconds(61), Stream::Stdout, b"old\n"));
    }
}
