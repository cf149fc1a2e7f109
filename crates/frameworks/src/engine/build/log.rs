//! The build's log: the builder's output as stdout line records, runplane's own notes (the
//! builder's error, the push) as `system` lines, all under the attempt's log cap.

use crate::log_records::split_records;
use chrono::Utc;
use runplane_logstore::file::FileLogWriter;
use runplane_logstore::{LogWriter, Stream};

pub struct BuildLog {
    writer: FileLogWriter,
    pending: Vec<u8>,
    limit: u64,
    written: u64,
    capped: bool,
    end: u64,
    reported: u64,
}

impl BuildLog {
    pub fn new(writer: FileLogWriter, limit: u64) -> Self {
        let end = writer.end_offset();
        BuildLog {
            writer,
            pending: Vec::new(),
            limit,
            written: end,
            capped: end >= limit,
            end,
            reported: end,
        }
    }

    /// Builder output: complete lines are written, a partial one waits for the rest.
    pub fn output(&mut self, text: &str) -> Result<(), String> {
        self.pending.extend_from_slice(text.as_bytes());
        for record in split_records(&mut self.pending, false) {
            self.append(Stream::Stdout, &record)?;
        }
        Ok(())
    }

    /// A line of runplane's own, after any partial builder line.
    pub fn system(&mut self, line: &str) -> Result<(), String> {
        self.flush_partial()?;
        let mut record = line.trim_end().as_bytes().to_vec();
        record.push(b'\n');
        self.append(Stream::System, &record)
    }

    fn flush_partial(&mut self) -> Result<(), String> {
        for record in split_records(&mut self.pending, true) {
            self.append(Stream::Stdout, &record)?;
        }
        Ok(())
    }

    /// Writes what is pending and makes the log durable.
    pub fn finish(&mut self) -> Result<(), String> {
        self.flush_partial()?;
        self.writer
            .sync()
            .map_err(|e| format!("cannot sync the log: {e}"))
    }

    fn append(&mut self, stream: Stream, record: &[u8]) -> Result<(), String> {
        if self.capped {
            return Ok(());
        }
        if self.written + record.len() as u64 > self.limit {
            self.capped = true;
            let note = format!(
                "log limit of {} bytes reached: the rest of the output is discarded\n",
                self.limit
            );
            self.end = self
                .writer
                .append(Stream::System, Utc::now(), note.as_bytes())
                .map_err(|e| format!("cannot write the log: {e}"))?;
            return Ok(());
        }
        self.written += record.len() as u64;
        self.end = self
            .writer
            .append(stream, Utc::now(), record)
            .map_err(|e| format!("cannot write the log: {e}"))?;
        Ok(())
    }

    /// The log's new end, when it moved since the last call.
    pub fn take_news(&mut self) -> Option<u64> {
        (self.end != self.reported).then(|| {
            self.reported = self.end;
            self.end
        })
    }
}
