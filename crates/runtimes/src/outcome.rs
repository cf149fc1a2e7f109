//! What every runtime reads the same way from an execution's end: results from
//! `$RUNPLANE_OUTPUTS/results.json`, the reason of a stop, how a signal is named.

use crate::Interpretation;
use runplane_domain::{reason, ExitOutcome, Run, RunState};
use serde_json::Value;

/// The output file whose JSON becomes the run's results.
pub(crate) const RESULTS_FILE: &str = "results.json";

pub(crate) fn error(reason: &str, message: String) -> Interpretation {
    Interpretation {
        state: RunState::Error,
        reason: reason.to_string(),
        message: Some(message),
        results: None,
        new_version: None,
    }
}

/// The run was being stopped: it ends with the stop's own reason (`user`, `timeout`, ...),
/// which the controller turns into STOPPED or ERROR.
pub(crate) fn stopped(run: &Run, message: String) -> Interpretation {
    let stop_reason = run
        .status
        .transitions
        .iter()
        .rev()
        .find(|t| t.to == RunState::Stop)
        .and_then(|t| t.reason.clone())
        .unwrap_or_else(|| reason::USER.to_string());
    error(&stop_reason, message)
}

/// COMPLETED with `results.json` (absent or `null`: no results), or ERROR `invalid_output`
/// when it is larger than `max_results_bytes` or not JSON.
pub(crate) fn succeeded(outcome: &ExitOutcome, max_results_bytes: usize) -> Interpretation {
    let results = match outcome.outputs.get(RESULTS_FILE) {
        None => None,
        Some(file) if file.is_truncated() || file.size > max_results_bytes as u64 => {
            return error(
                reason::INVALID_OUTPUT,
                format!(
                    "{RESULTS_FILE} is {} bytes, more than the {max_results_bytes} allowed for a \
                     run's results",
                    file.size
                ),
            );
        }
        Some(file) => match serde_json::from_slice::<Value>(&file.contents) {
            Ok(Value::Null) => None,
            Ok(value) => Some(value),
            Err(parse_error) => {
                return error(
                    reason::INVALID_OUTPUT,
                    format!("{RESULTS_FILE} is not valid JSON: {parse_error}"),
                );
            }
        },
    };
    Interpretation {
        state: RunState::Completed,
        reason: reason::SUCCEEDED.to_string(),
        message: None,
        results,
        new_version: None,
    }
}

/// Signals that mean the process crashed on its own rather than being killed.
pub(crate) fn is_crash(signal: i32) -> bool {
    matches!(signal, 4 | 6 | 7 | 8 | 11)
}

/// `signal 9 (SIGKILL)`; numbers are Linux's.
pub(crate) fn describe_signal(signal: i32) -> String {
    let name = match signal {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        24 => "SIGXCPU",
        25 => "SIGXFSZ",
        _ => return format!("signal {signal}"),
    };
    format!("signal {signal} ({name})")
}
