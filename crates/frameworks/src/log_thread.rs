//! A log writer's own thread. Appending to a log and fsyncing it are blocking file IO: a
//! framework's followers run on tokio workers, so each execution's log writer state lives on a
//! thread of its own and the followers hand it work. Jobs run one at a time in the order they
//! were handed over; the thread ends when the last handle is dropped (after the jobs queued).
//!
//! A follower that hands over a batch waits for the thread now and then ([`LogThread::ask`]),
//! which keeps the queue of jobs short when the disk is slower than the source.

use std::io;
use std::sync::mpsc;
use std::thread;

type Job<S> = Box<dyn FnOnce(&mut S) + Send>;

/// A handle on the thread that owns a log writer state `S`; clones share the thread.
pub(crate) struct LogThread<S> {
    jobs: mpsc::Sender<Job<S>>,
}

impl<S> Clone for LogThread<S> {
    fn clone(&self) -> Self {
        LogThread {
            jobs: self.jobs.clone(),
        }
    }
}

impl<S: Send + 'static> LogThread<S> {
    /// Starts the thread `name`, owning `state`.
    pub(crate) fn spawn(name: String, mut state: S) -> io::Result<Self> {
        let (jobs, queue) = mpsc::channel::<Job<S>>();
        thread::Builder::new().name(name).spawn(move || {
            for job in queue {
                job(&mut state);
            }
        })?;
        Ok(LogThread { jobs })
    }

    /// Runs `job` on the thread after the jobs handed over before; does not wait.
    pub(crate) fn run(&self, job: impl FnOnce(&mut S) + Send + 'static) {
        // The thread only ends once every handle is gone: sending cannot fail while it lives,
        // and a panicked thread has nothing left to write to.
        let _ = self.jobs.send(Box::new(job));
    }

    /// Runs `job` on the thread and waits (without blocking a worker) for its answer; `None`
    /// when the thread is gone (it panicked).
    pub(crate) async fn ask<R: Send + 'static>(
        &self,
        job: impl FnOnce(&mut S) -> R + Send + 'static,
    ) -> Option<R> {
        let (answer, answered) = tokio::sync::oneshot::channel();
        self.run(move |state| {
            let _ = answer.send(job(state));
        });
        answered.await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_run_in_order_off_the_runtime() {
        let log = LogThread::spawn("test-log".into(), Vec::new()).unwrap();
        for i in 0..100 {
            log.run(move |state: &mut Vec<i32>| state.push(i));
        }
        let (seen, thread) = log
            .ask(|state| (state.clone(), thread::current().name().map(str::to_string)))
            .await
            .unwrap();
        assert_eq!(seen, (0..100).collect::<Vec<_>>());
        assert_eq!(thread.as_deref(), Some("test-log"));
    }
}
