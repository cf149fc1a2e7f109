//! A scripted framework, for testing what drives frameworks (the controller) without
//! processes: it executes nothing. Each call it gets is recorded and handed to the test
//! through a [`Script`], and the test answers with the events a real framework would send
//! (started, log appended, exited, lost...), when it chooses. Compiled with the `scripted`
//! feature only: it never ships.

use crate::{EventKind, EventSender, ExecutionId, Framework, FrameworkError, FrameworkEvent};
use async_trait::async_trait;
use runplane_domain::{ExitOutcome, OutputFile, Runnable};
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// How long a [`Script`] waits for an expected call before it fails the test.
pub const CALL_PATIENCE: Duration = Duration::from_secs(30);

/// A call the framework received, in the order received.
#[derive(Debug, Clone)]
pub enum Call {
    Start {
        execution: ExecutionId,
        runnable: Box<Runnable>,
    },
    Recover(Vec<ExecutionId>),
    Stop(ExecutionId),
    Scale {
        execution: ExecutionId,
        replicas: u32,
    },
    Cleanup(ExecutionId),
}

/// The framework half: give it to the code under test.
pub struct ScriptedFramework {
    name: &'static str,
    calls: mpsc::UnboundedSender<Call>,
    /// Messages of the next starts that fail (`StartFailed`), in order.
    failing_starts: Arc<Mutex<VecDeque<String>>>,
}

/// The test's half: the calls the framework got, and a way to send its events.
pub struct Script {
    calls: mpsc::UnboundedReceiver<Call>,
    events: EventSender,
    failing_starts: Arc<Mutex<VecDeque<String>>>,
    /// Calls received but not yet taken by an `expect_*`, oldest first.
    pending: VecDeque<Call>,
}

/// A scripted framework named `name` that sends its events on `events`.
pub fn scripted(name: &'static str, events: EventSender) -> (ScriptedFramework, Script) {
    let (sender, receiver) = mpsc::unbounded_channel();
    let failing_starts = Arc::new(Mutex::new(VecDeque::new()));
    (
        ScriptedFramework {
            name,
            calls: sender,
            failing_starts: failing_starts.clone(),
        },
        Script {
            calls: receiver,
            events,
            failing_starts,
            pending: VecDeque::new(),
        },
    )
}

impl ScriptedFramework {
    fn record(&self, call: Call) {
        // The script is gone when its test ended: nothing is left to tell.
        let _ = self.calls.send(call);
    }
}

#[async_trait]
impl Framework for ScriptedFramework {
    fn name(&self) -> &'static str {
        self.name
    }

    async fn start(
        &self,
        execution: ExecutionId,
        runnable: Runnable,
    ) -> Result<(), FrameworkError> {
        let failure = self.failing_starts.lock().unwrap().pop_front();
        self.record(Call::Start {
            execution: execution.clone(),
            runnable: Box::new(runnable),
        });
        match failure {
            Some(message) => Err(FrameworkError::StartFailed { execution, message }),
            None => Ok(()),
        }
    }

    async fn recover(&self, executions: Vec<ExecutionId>) -> Result<(), FrameworkError> {
        self.record(Call::Recover(executions));
        Ok(())
    }

    async fn stop(&self, execution: &ExecutionId) -> Result<(), FrameworkError> {
        self.record(Call::Stop(execution.clone()));
        Ok(())
    }

    async fn scale(&self, execution: &ExecutionId, replicas: u32) -> Result<(), FrameworkError> {
        self.record(Call::Scale {
            execution: execution.clone(),
            replicas,
        });
        Ok(())
    }

    async fn cleanup(&self, execution: &ExecutionId) -> Result<(), FrameworkError> {
        self.record(Call::Cleanup(execution.clone()));
        Ok(())
    }
}

impl Script {
    /// The next start fails with `message` (`StartFailed`), as a framework that cannot start
    /// an execution answers.
    pub fn fail_next_start(&self, message: &str) {
        self.failing_starts
            .lock()
            .unwrap()
            .push_back(message.to_string());
    }

    /// Waits for the first call (received or yet to come) that `wanted` picks, and takes it;
    /// calls it passes over stay for later `expect_*`. Panics after [`CALL_PATIENCE`].
    pub async fn expect<T>(&mut self, what: &str, wanted: impl Fn(&Call) -> Option<T>) -> T {
        if let Some(index) = self.pending.iter().position(|call| wanted(call).is_some()) {
            let call = self.pending.remove(index).expect("a pending call");
            return wanted(&call).expect("picked");
        }
        let deadline = tokio::time::Instant::now() + CALL_PATIENCE;
        loop {
            let call = tokio::time::timeout_at(deadline, self.calls.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "the framework got no {what} (calls left: {:?})",
                        self.pending
                    )
                })
                .expect("the framework is gone");
            if let Some(found) = wanted(&call) {
                return found;
            }
            self.pending.push_back(call);
        }
    }

    /// The next start of any execution.
    pub async fn expect_start(&mut self) -> (ExecutionId, Runnable) {
        self.expect("start", |call| match call {
            Call::Start {
                execution,
                runnable,
            } => Some((execution.clone(), (**runnable).clone())),
            _ => None,
        })
        .await
    }

    /// The next stop of `execution`.
    pub async fn expect_stop(&mut self, execution: &ExecutionId) {
        self.expect("stop", |call| match call {
            Call::Stop(stopped) if stopped == execution => Some(()),
            _ => None,
        })
        .await
    }

    /// The cleanup of `execution`.
    pub async fn expect_cleanup(&mut self, execution: &ExecutionId) {
        self.expect("cleanup", |call| match call {
            Call::Cleanup(cleaned) if cleaned == execution => Some(()),
            _ => None,
        })
        .await
    }

    /// The next scale of `execution`: the replicas asked for.
    pub async fn expect_scale(&mut self, execution: &ExecutionId) -> u32 {
        self.expect("scale", |call| match call {
            Call::Scale {
                execution: scaled,
                replicas,
            } if scaled == execution => Some(*replicas),
            _ => None,
        })
        .await
    }

    /// Sends one event about `execution`, as the framework would.
    pub async fn send(&self, execution: &ExecutionId, kind: EventKind) {
        let event = FrameworkEvent {
            execution: execution.clone(),
            kind,
        };
        if self.events.send(event).await.is_err() {
            panic!("the controller stopped reading framework events");
        }
    }

    pub async fn started(&self, execution: &ExecutionId) {
        self.send(execution, EventKind::Started).await;
    }

    /// The execution exited with `exit_code`, leaving `outputs` (file name → contents).
    pub async fn exited(&self, execution: &ExecutionId, exit_code: i32, outputs: &[(&str, &[u8])]) {
        self.send(
            execution,
            EventKind::Exited(outcome(Some(exit_code), None, outputs)),
        )
        .await;
    }

    /// The execution was killed by `signal` (after a stop, or the kernel's OOM killer).
    pub async fn killed(&self, execution: &ExecutionId, signal: i32) {
        self.send(
            execution,
            EventKind::Exited(outcome(None, Some(signal), &[])),
        )
        .await;
    }
}

/// An exit outcome with in-memory outputs.
pub fn outcome(
    exit_code: Option<i32>,
    signal: Option<i32>,
    outputs: &[(&str, &[u8])],
) -> ExitOutcome {
    ExitOutcome {
        exit_code,
        signal,
        outputs: outputs
            .iter()
            .map(|(name, contents)| {
                (
                    name.to_string(),
                    OutputFile {
                        contents: contents.to_vec(),
                        size: contents.len() as u64,
                    },
                )
            })
            .collect::<BTreeMap<_, _>>(),
        failure: None,
        outputs_dir: None,
    }
}
