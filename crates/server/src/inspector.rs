//! Reading `python` functions' sources at apply time with the interpreter their runs use: the
//! IO half of [`HandlerInspector`] (the runtime owns the script and what it answers).
//!
//! The script runs as its own process, in isolated mode (`-I -S`, an empty environment, `/` as
//! its working directory: nothing from the function or the server's environment is imported),
//! with the request in a temporary file on its stdin and its answer in another, so no pipe can
//! fill up. It is killed past a timeout, and an answer past a size limit is refused: whatever
//! the code, apply answers with a problem of the source rather than hanging or crashing. Callers
//! run it off the async workers (apply normalizes in `spawn_blocking`).

use runplane_runtimes::python::{HandlerInspector, Inspection, InspectionError};
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::process::{Command, Stdio};
use std::time::Duration;
use wait_timeout::ChildExt;

/// The most the script may take (a 16 MiB source is read in a few seconds).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest answer accepted (a summary is a small fraction of the source).
pub const DEFAULT_MAX_ANSWER_BYTES: u64 = 64 * 1024 * 1024;
/// What of the script's stderr a failure reports.
const MAX_STDERR_BYTES: u64 = 4096;

/// Runs the inspection script as a process. See the module documentation.
#[derive(Debug, Clone)]
pub struct InterpreterInspector {
    pub timeout: Duration,
    pub max_answer_bytes: u64,
    /// Used when the configured interpreter cannot be started (its runs will fail to start
    /// and say so; apply still checks the code). None: no second try.
    pub fallback: Option<String>,
}

impl InterpreterInspector {
    pub fn new(fallback: Option<String>) -> Self {
        Self {
            timeout: DEFAULT_TIMEOUT,
            max_answer_bytes: DEFAULT_MAX_ANSWER_BYTES,
            fallback,
        }
    }

    fn run_with(
        &self,
        interpreter: &str,
        inspection: &Inspection<'_>,
    ) -> Result<Vec<u8>, InspectionError> {
        let io = |error: std::io::Error| InspectionError::Failed {
            status: "not run".to_string(),
            stderr: format!("a temporary file failed: {error}"),
        };
        let mut input = tempfile::tempfile().map_err(io)?;
        input.write_all(inspection.input).map_err(io)?;
        input.rewind().map_err(io)?;
        let mut answer = tempfile::tempfile().map_err(io)?;
        let mut stderr = tempfile::tempfile().map_err(io)?;
        let mut child = Command::new(interpreter)
            .args(["-I", "-S", "-c", inspection.script])
            .env_clear()
            .current_dir("/")
            .stdin(Stdio::from(input))
            .stdout(Stdio::from(answer.try_clone().map_err(io)?))
            .stderr(Stdio::from(stderr.try_clone().map_err(io)?))
            .spawn()
            .map_err(|error| InspectionError::Start {
                interpreter: interpreter.to_string(),
                reason: error.to_string(),
            })?;
        let waited = child.wait_timeout(self.timeout).map_err(io)?;
        let Some(status) = waited else {
            // Ignored: it may have exited meanwhile; the wait reaps it either way.
            let _ = child.kill();
            let _ = child.wait();
            return Err(InspectionError::TimedOut {
                seconds: self.timeout.as_secs_f64().ceil() as u64,
            });
        };
        if !status.success() {
            let mut text = String::new();
            stderr.rewind().map_err(io)?;
            // A partial or non-UTF-8 message is still worth showing as far as it goes.
            let _ = (&mut stderr)
                .take(MAX_STDERR_BYTES)
                .read_to_string(&mut text);
            return Err(InspectionError::Failed {
                status: status.to_string(),
                stderr: text.trim().to_string(),
            });
        }
        read_answer(&mut answer, self.max_answer_bytes).map_err(|error| match error {
            Some(error) => io(error),
            None => InspectionError::TooLarge {
                limit: self.max_answer_bytes,
            },
        })
    }
}

/// The answer file's contents, or None when it is over `limit`.
fn read_answer(answer: &mut File, limit: u64) -> Result<Vec<u8>, Option<std::io::Error>> {
    if answer.metadata().map_err(Some)?.len() > limit {
        return Err(None);
    }
    let mut bytes = Vec::new();
    answer.rewind().map_err(Some)?;
    answer.read_to_end(&mut bytes).map_err(Some)?;
    Ok(bytes)
}

impl HandlerInspector for InterpreterInspector {
    fn run(&self, inspection: Inspection<'_>) -> Result<Vec<u8>, InspectionError> {
        match self.run_with(inspection.interpreter, &inspection) {
            Err(InspectionError::Start {
                interpreter,
                reason,
            }) => {
                let Some(fallback) = self.fallback.as_deref().filter(|f| *f != interpreter) else {
                    return Err(InspectionError::Start {
                        interpreter,
                        reason,
                    });
                };
                tracing::warn!(
                    %interpreter, %reason, %fallback,
                    "the Python interpreter cannot be started: checking sources with the fallback"
                );
                self.run_with(fallback, &inspection)
            }
            other => other,
        }
    }
}
