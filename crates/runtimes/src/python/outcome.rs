//! How a run of a `python` function ended, from its exit status and the files the runner left
//! in its outputs folder (never from its stdout, which belongs to the user's code).
//!
//! | outcome | state | reason |
//! | --- | --- | --- |
//! | exit 0, `results.json` valid and within `max_results_bytes` | COMPLETED | `succeeded`, results = the JSON (absent when the handler returned None) |
//! | exit 0 without `results.json` (the handler called `sys.exit(0)`) | COMPLETED | `succeeded`, no results |
//! | exit 0, `results.json` too large or not JSON | ERROR | `invalid_output` |
//! | exit ≠ 0 with `error.json` `ResultNotSerializable` / `ResultTooLarge` | ERROR | `invalid_output` |
//! | exit ≠ 0 with another `error.json` | ERROR | `failed`, `<type>: <message>` |
//! | exit N ≠ 0 without `error.json` | ERROR | `failed`, `the process exited with code N` |
//! | a signal while the run was in STOP | ERROR | the stop's reason (`user`, `timeout`, ...) |
//! | SIGSEGV, SIGABRT, SIGBUS, SIGFPE, SIGILL | ERROR | `failed` (the process crashed) |
//! | any other signal | ERROR | `killed` |
//! | neither an exit code nor a signal | ERROR | `lost` |
//!
//! A service (`serve`) runs until it is stopped, and the controller ends stopped services (and
//! those the framework gave up on, `ExitOutcome::failure`) without asking the runtime. So an
//! outcome of a serve run that reaches [`interpret`] outside STOP means its processes ended on
//! their own: ERROR `failed`, with the runner's `error.json` (an import or init failure) when
//! there is one.
//!
//! Build runs are read by `build.rs` (an environment build like a job, its failures
//! `build_failed`; an image build from the framework's `image.json`).

use super::{build, PythonConfig, BUILD, SERVE};
use crate::outcome::{describe_signal, error, is_crash, stopped, succeeded};
use crate::Interpretation;
use runplane_domain::{reason, ExitOutcome, Run, RunState};
use serde::Deserialize;

pub(crate) const ERROR_FILE: &str = "error.json";
/// Longest message kept from `error.json`.
const MAX_MESSAGE_CHARS: usize = 4096;
/// `error.json` types that mean the handler ran but its return value could not be kept.
const OUTPUT_ERRORS: &[&str] = &["ResultNotSerializable", "ResultTooLarge"];

/// What the runner writes on failure.
#[derive(Deserialize)]
struct ErrorFile {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    message: String,
}

/// See the module documentation; builds are `build.rs`'s.
pub(crate) fn interpret(run: &Run, outcome: &ExitOutcome, config: &PythonConfig) -> Interpretation {
    if run.spec.action == SERVE {
        return service_ended(run, outcome, run.status.state == RunState::Stop);
    }
    if run.spec.action == BUILD {
        return build::interpret(run, outcome, config);
    }
    job_ended(run, outcome, config)
}

/// A process that runs to completion ended: the table in the module documentation.
pub(crate) fn job_ended(run: &Run, outcome: &ExitOutcome, config: &PythonConfig) -> Interpretation {
    let stopping = run.status.state == RunState::Stop;
    match (outcome.exit_code, outcome.signal) {
        (Some(0), _) => succeeded(outcome, config.max_results_bytes),
        (Some(code), _) if stopping => stopped(
            run,
            format!("the process exited with code {code} while stopping"),
        ),
        (Some(code), _) => failed(outcome, code),
        (None, Some(signal)) if stopping => {
            stopped(run, format!("ended by {}", describe_signal(signal)))
        }
        (None, Some(signal)) if is_crash(signal) => error(
            reason::FAILED,
            format!("the process crashed with {}", describe_signal(signal)),
        ),
        (None, Some(signal)) => error(
            reason::KILLED,
            format!("killed by {}", describe_signal(signal)),
        ),
        (None, None) => error(
            reason::LOST,
            "the process ended without an exit code or a signal".to_string(),
        ),
    }
}

/// The runner's `error.json`, when it left a readable one.
fn recorded_error(outcome: &ExitOutcome) -> Option<ErrorFile> {
    outcome
        .outputs
        .get(ERROR_FILE)
        .filter(|file| !file.is_truncated())
        .and_then(|file| serde_json::from_slice::<ErrorFile>(&file.contents).ok())
}

/// A service's processes ended: see the module documentation.
fn service_ended(run: &Run, outcome: &ExitOutcome, stopping: bool) -> Interpretation {
    let how = match (outcome.exit_code, outcome.signal) {
        (Some(code), _) => format!("the process exited with code {code}"),
        (None, Some(signal)) => format!("the process was ended by {}", describe_signal(signal)),
        (None, None) => "the process ended without an exit code or a signal".to_string(),
    };
    if stopping {
        return stopped(run, format!("the service stopped: {how}"));
    }
    let message = match recorded_error(outcome) {
        Some(recorded) => format!(
            "the service ended on its own ({how}): {}: {}",
            recorded.kind, recorded.message
        ),
        None => format!("the service ended on its own ({how}); a service runs until it is stopped"),
    };
    error(reason::FAILED, truncate(&message))
}

fn failed(outcome: &ExitOutcome, code: i32) -> Interpretation {
    match recorded_error(outcome) {
        Some(recorded) => {
            let reason = if OUTPUT_ERRORS.contains(&recorded.kind.as_str()) {
                reason::INVALID_OUTPUT
            } else {
                reason::FAILED
            };
            let message = truncate(&format!("{}: {}", recorded.kind, recorded.message));
            error(reason, message)
        }
        None => error(
            reason::FAILED,
            format!("the process exited with code {code}"),
        ),
    }
}

fn truncate(text: &str) -> String {
    match text.char_indices().nth(MAX_MESSAGE_CHARS) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::runnable::tests::run_of;
    use super::super::PythonRuntime;
    use super::*;
    use crate::Runtime;
    use runplane_domain::{OutputFile, Transition};
    use serde_json::json;
    use std::collections::BTreeMap;

    fn run() -> Run {
        run_of(
            json!({"source": {"code": "def handler():\n    pass\n"}, "handler": "handler"}),
            json!({}),
        )
    }

    fn outcome(
        exit_code: Option<i32>,
        signal: Option<i32>,
        files: &[(&str, &[u8])],
    ) -> ExitOutcome {
        ExitOutcome {
            exit_code,
            signal,
            outputs: files
                .iter()
                .map(|(name, contents)| {
                    let file = OutputFile {
                        contents: contents.to_vec(),
                        size: contents.len() as u64,
                    };
                    (name.to_string(), file)
                })
                .collect::<BTreeMap<_, _>>(),
            failure: None,
            outputs_dir: None,
        }
    }

    fn interpret(outcome: &ExitOutcome) -> Interpretation {
        PythonRuntime::default().interpret(&run(), outcome)
    }

    #[test]
    fn success_carries_the_results() {
        let got = interpret(&outcome(
            Some(0),
            None,
            &[
                ("results.json", br#"{"a": [1, 2]}"#),
                ("metrics.jsonl", b""),
            ],
        ));
        assert_eq!(got.state, RunState::Completed);
        assert_eq!(got.reason, "succeeded");
        assert_eq!(got.results, Some(json!({"a": [1, 2]})));
        assert_eq!(got.message, None);
        for files in [&[("results.json", &b"null"[..])][..], &[]] {
            let got = interpret(&outcome(Some(0), None, files));
            assert_eq!((got.state, got.results), (RunState::Completed, None));
        }
    }

    #[test]
    fn bad_results_are_invalid_output() {
        let got = interpret(&outcome(Some(0), None, &[("results.json", b"{not json")]));
        assert_eq!(
            (got.state, got.reason.as_str()),
            (RunState::Error, "invalid_output")
        );
        let big = vec![b'1'; 2 * 1024 * 1024];
        let got = interpret(&outcome(Some(0), None, &[("results.json", &big)]));
        assert_eq!(got.reason, "invalid_output");
        assert!(got
            .message
            .unwrap()
            .contains("2097152 bytes, more than the 1048576 allowed"));
        let mut cut = outcome(Some(0), None, &[("results.json", b"[1,")]);
        cut.outputs.get_mut("results.json").unwrap().size = 10 * 1024 * 1024;
        assert_eq!(interpret(&cut).reason, "invalid_output");
        let got = interpret(&outcome(
            Some(1),
            None,
            &[(
                "error.json",
                br#"{"type": "ResultNotSerializable", "message": "set", "where": null}"#,
            )],
        ));
        assert_eq!(
            (got.reason.as_str(), got.message.as_deref()),
            ("invalid_output", Some("ResultNotSerializable: set"))
        );
    }

    #[test]
    fn failures_carry_the_exception() {
        let got = interpret(&outcome(
            Some(1),
            None,
            &[(
                "error.json",
                br#"{"type": "ValueError", "message": "bad n", "where": "main.py:3"}"#,
            )],
        ));
        assert_eq!(got.state, RunState::Error);
        assert_eq!(got.reason, "failed");
        assert_eq!(got.message.as_deref(), Some("ValueError: bad n"));
        let got = interpret(&outcome(Some(3), None, &[]));
        assert_eq!(
            (got.reason.as_str(), got.message.as_deref()),
            ("failed", Some("the process exited with code 3"))
        );
        let got = interpret(&outcome(Some(1), None, &[("error.json", b"{\"type\": ")]));
        assert_eq!(
            got.message.as_deref(),
            Some("the process exited with code 1")
        );
        let long = format!(r#"{{"type": "E", "message": "{}"}}"#, "x".repeat(10_000));
        let got = interpret(&outcome(Some(1), None, &[("error.json", long.as_bytes())]));
        assert!(got.message.unwrap().chars().count() < 4200);
    }

    #[test]
    fn a_service_that_ends_on_its_own_failed() {
        let mut served = run_of(
            json!({"source": {"code": "def handler(request):\n    pass\n"}, "handler": "handler"}),
            json!({}),
        );
        served.spec.action = "serve".into();
        let runtime = PythonRuntime::default();
        let got = runtime.interpret(&served, &outcome(Some(0), None, &[("results.json", b"1")]));
        assert_eq!(
            (got.state, got.reason.as_str()),
            (RunState::Error, "failed")
        );
        assert_eq!(
            got.message.as_deref(),
            Some("the service ended on its own (the process exited with code 0); a service runs until it is stopped")
        );
        assert_eq!(got.results, None);
        let got = runtime.interpret(
            &served,
            &outcome(
                Some(1),
                None,
                &[(
                    "error.json",
                    br#"{"type": "OSError", "message": "no model", "where": "main.py:2"}"#,
                )],
            ),
        );
        assert_eq!(
            got.message.as_deref(),
            Some(
                "the service ended on its own (the process exited with code 1): OSError: no model"
            )
        );
        let got = runtime.interpret(&served, &outcome(None, Some(9), &[]));
        assert_eq!(got.reason, "failed");
        assert!(got.message.unwrap().contains("signal 9 (SIGKILL)"));

        served.status.state = RunState::Stop;
        let got = runtime.interpret(&served, &outcome(Some(0), None, &[]));
        assert_eq!((got.state, got.reason.as_str()), (RunState::Error, "user"));
    }

    #[test]
    fn signals_are_kills_crashes_or_stops() {
        let got = interpret(&outcome(None, Some(9), &[]));
        assert_eq!(
            (got.state, got.reason.as_str()),
            (RunState::Error, "killed")
        );
        assert_eq!(got.message.as_deref(), Some("killed by signal 9 (SIGKILL)"));
        let got = interpret(&outcome(None, Some(11), &[]));
        assert_eq!(
            (got.reason.as_str(), got.message.as_deref()),
            (
                "failed",
                Some("the process crashed with signal 11 (SIGSEGV)")
            )
        );
        assert_eq!(
            interpret(&outcome(None, Some(64), &[])).message.as_deref(),
            Some("killed by signal 64")
        );
        assert_eq!(interpret(&outcome(None, None, &[])).reason, "lost");

        let mut stopping = run();
        stopping.status.state = RunState::Stop;
        let got = PythonRuntime::default().interpret(&stopping, &outcome(None, Some(15), &[]));
        assert_eq!((got.state, got.reason.as_str()), (RunState::Error, "user"));
        stopping.status.transitions.push(Transition {
            from: Some(RunState::Running),
            to: RunState::Stop,
            at: stopping.metadata.created,
            attempt: 1,
            reason: Some("timeout".into()),
            message: None,
        });
        let got = PythonRuntime::default().interpret(&stopping, &outcome(None, Some(9), &[]));
        assert_eq!(got.reason, "timeout");
        // A handler that finished before the stop landed still succeeded.
        let got = PythonRuntime::default().interpret(
            &stopping,
            &outcome(Some(0), None, &[("results.json", b"1")]),
        );
        assert_eq!(
            (got.state, got.results),
            (RunState::Completed, Some(json!(1)))
        );
    }
}
