//! One log writer per service attempt, shared by the followers of all its replicas.
//!
//! The log store allows one writer per attempt (an exclusive lock), and offsets must stay
//! those of one append-only file: every replica's records go through this one writer, each
//! follower assembling its own lines before handing them over whole.

use crate::local::capture::Redactor;
use crate::{EventKind, EventSender, ExecutionId, FrameworkEvent};
use chrono::{DateTime, Utc};
use runplane_logstore::file::FileLogWriter;
use runplane_logstore::{LogWriter, Stream};
use std::sync::{Mutex, MutexGuard};

pub struct ServiceLog {
    execution: ExecutionId,
    events: EventSender,
    redactor: Redactor,
    state: Mutex<State>,
}

struct State {
    writer: FileLogWriter,
    limit: u64,
    capped: bool,
    /// The last end reported with `LogAppended`.
    reported: u64,
    /// Set once a write failed: the rest is not written (a torn state must not grow).
    failed: bool,
}

impl ServiceLog {
    pub fn new(
        execution: ExecutionId,
        events: EventSender,
        writer: FileLogWriter,
        limit: u64,
        redactor: Redactor,
    ) -> Self {
        let end = writer.end_offset();
        ServiceLog {
            execution,
            events,
            redactor,
            state: Mutex::new(State {
                writer,
                limit,
                capped: end >= limit,
                reported: end,
                failed: false,
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends a replica's complete records (redacted, within the attempt's cap).
    pub fn append(&self, stream: Stream, time: DateTime<Utc>, records: Vec<Vec<u8>>) {
        if records.is_empty() {
            return;
        }
        let mut state = self.state();
        for record in records {
            if state.capped || state.failed {
                break;
            }
            let record = self.redactor.apply(&record);
            if state.writer.end_offset() + record.len() as u64 > state.limit {
                state.capped = true;
                let note = format!(
                    "log limit of {} bytes reached: the rest of the output is discarded\n",
                    state.limit
                );
                write(&mut state, Stream::System, Utc::now(), note.as_bytes());
                break;
            }
            write(&mut state, stream, time, &record);
        }
        self.report(state);
    }

    /// `data` as it would be stored.
    pub fn redact<'a>(&self, data: &'a [u8]) -> std::borrow::Cow<'a, [u8]> {
        self.redactor.apply(data)
    }

    /// A line of the framework's own (replica started, ready, exited...).
    pub fn system(&self, text: &str) {
        let mut state = self.state();
        if state.capped || state.failed {
            return;
        }
        write(
            &mut state,
            Stream::System,
            Utc::now(),
            format!("{text}\n").as_bytes(),
        );
        self.report(state);
    }

    pub fn sync(&self) {
        let mut state = self.state();
        if let Err(e) = state.writer.sync() {
            tracing::warn!(execution = ?self.execution, "cannot sync the service log: {e}");
        }
    }

    fn report(&self, mut state: MutexGuard<'_, State>) {
        let end = state.writer.end_offset();
        if end == state.reported {
            return;
        }
        state.reported = end;
        drop(state);
        let _ = self.events.send(FrameworkEvent {
            execution: self.execution.clone(),
            kind: EventKind::LogAppended { end_offset: end },
        });
    }
}

fn write(state: &mut State, stream: Stream, time: DateTime<Utc>, data: &[u8]) {
    if let Err(e) = state.writer.append(stream, time, data) {
        tracing::warn!("cannot write a service log: {e}; the rest of its output is lost");
        state.failed = true;
    }
}
