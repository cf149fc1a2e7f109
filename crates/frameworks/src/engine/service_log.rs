//! One log writer per service attempt, shared by the followers of all its replicas.
//!
//! The log store allows one writer per attempt (an exclusive lock), and offsets must stay
//! those of one append-only file: every replica's records go through this one writer, each
//! follower assembling its own lines before handing them over whole. The writer appends and
//! fsyncs on a thread of its own (`log_thread.rs`), never on a tokio worker.

use crate::log_records::Redactor;
use crate::log_thread::LogThread;
use crate::{EventKind, EventSender, ExecutionId, FrameworkEvent};
use chrono::{DateTime, Utc};
use runplane_logstore::file::FileLogWriter;
use runplane_logstore::{LogWriter, Stream};

pub struct ServiceLog {
    execution: ExecutionId,
    redactor: Redactor,
    thread: LogThread<State>,
}

struct State {
    execution: ExecutionId,
    events: EventSender,
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
    ) -> std::io::Result<Self> {
        let end = writer.end_offset();
        let state = State {
            execution: execution.clone(),
            events,
            writer,
            limit,
            capped: end >= limit,
            reported: end,
            failed: false,
        };
        Ok(ServiceLog {
            thread: LogThread::spawn(format!("log-{}", execution.run_id), state)?,
            execution,
            redactor,
        })
    }

    /// Appends a replica's complete records (redacted, within the attempt's cap); does not
    /// wait for the writer.
    pub fn append(&self, stream: Stream, time: DateTime<Utc>, records: Vec<Vec<u8>>) {
        if records.is_empty() {
            return;
        }
        let records: Vec<Vec<u8>> = records
            .iter()
            .map(|record| self.redactor.apply(record).into_owned())
            .collect();
        self.thread.run(move |state| {
            for record in records {
                if state.capped || state.failed {
                    break;
                }
                if state.writer.end_offset() + record.len() as u64 > state.limit {
                    state.capped = true;
                    let note = format!(
                        "log limit of {} bytes reached: the rest of the output is discarded\n",
                        state.limit
                    );
                    write(state, Stream::System, Utc::now(), note.as_bytes());
                    break;
                }
                write(state, stream, time, &record);
            }
            state.report();
        });
    }

    /// `data` as it would be stored.
    pub fn redact<'a>(&self, data: &'a [u8]) -> std::borrow::Cow<'a, [u8]> {
        self.redactor.apply(data)
    }

    /// A line of the framework's own (replica started, ready, exited...).
    pub fn system(&self, text: &str) {
        let line = format!("{text}\n");
        let time = Utc::now();
        self.thread.run(move |state| {
            if state.capped || state.failed {
                return;
            }
            write(state, Stream::System, time, line.as_bytes());
            state.report();
        });
    }

    /// Makes the log durable, once everything handed over before is written and reported.
    pub async fn sync(&self) {
        let synced = self.thread.ask(|state| state.writer.sync()).await;
        if let Some(Err(e)) = synced {
            tracing::warn!(execution = ?self.execution, "cannot sync the service log: {e}");
        }
    }
}

impl State {
    /// Tells the controller where the log ends, when it moved (on the writer's thread).
    fn report(&mut self) {
        let end = self.writer.end_offset();
        if end == self.reported {
            return;
        }
        self.reported = end;
        let _ = self.events.blocking_send(FrameworkEvent {
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
