//! How a run of a `container` function ended, from its exit status and its outputs folder.
//!
//! | outcome | state | reason |
//! | --- | --- | --- |
//! | exit 0, no `results.json` | COMPLETED | `succeeded`, no results |
//! | exit 0, `results.json` JSON within `max_results_bytes` | COMPLETED | `succeeded`, results = the JSON |
//! | exit 0, `results.json` too large or not JSON | ERROR | `invalid_output` |
//! | exit N ≠ 0 | ERROR | `failed`, `the container exited with code N` |
//! | SIGSEGV, SIGABRT, SIGBUS, SIGFPE, SIGILL | ERROR | `failed` (crashed) |
//! | any other signal | ERROR | `killed` |
//! | anything but success while the run was in STOP | ERROR | the stop's reason (`user`, `timeout`, ...) |
//! | neither an exit code nor a signal | ERROR | `lost` |
//!
//! Services (`deploy`, `serve`) run until stopped; one whose containers ended on their own
//! failed. Builds are read in `build.rs`. Framework failures (`ExitOutcome::failure`: a service
//! never ready, a build that failed, an OOM kill) are applied by the controller without asking.

use super::{build, ContainerConfig, BUILD, DEPLOY, SERVE};
use crate::outcome::{describe_signal, error, is_crash, stopped, succeeded};
use crate::Interpretation;
use runplane_domain::{reason, ExitOutcome, Run, RunState};

/// See the module documentation.
pub(crate) fn interpret(
    run: &Run,
    outcome: &ExitOutcome,
    config: &ContainerConfig,
) -> Interpretation {
    let stopping = run.status.state == RunState::Stop;
    match run.spec.action.as_str() {
        BUILD => return build::interpret(run, outcome),
        DEPLOY | SERVE => return service_ended(run, outcome, stopping),
        _ => {}
    }
    match (outcome.exit_code, outcome.signal) {
        (Some(0), _) => succeeded(outcome, config.max_results_bytes),
        (Some(code), _) if stopping => stopped(
            run,
            format!("the container exited with code {code} while stopping"),
        ),
        (Some(code), _) => error(
            reason::FAILED,
            format!("the container exited with code {code}"),
        ),
        (None, Some(signal)) if stopping => {
            stopped(run, format!("ended by {}", describe_signal(signal)))
        }
        (None, Some(signal)) if is_crash(signal) => error(
            reason::FAILED,
            format!(
                "the container's process crashed with {}",
                describe_signal(signal)
            ),
        ),
        (None, Some(signal)) => error(
            reason::KILLED,
            format!("killed by {}", describe_signal(signal)),
        ),
        (None, None) => error(
            reason::LOST,
            "the container ended without an exit code or a signal".to_string(),
        ),
    }
}

fn service_ended(run: &Run, outcome: &ExitOutcome, stopping: bool) -> Interpretation {
    let how = match (outcome.exit_code, outcome.signal) {
        (Some(code), _) => format!("the container exited with code {code}"),
        (None, Some(signal)) => format!("the container was ended by {}", describe_signal(signal)),
        (None, None) => "the container ended without an exit code or a signal".to_string(),
    };
    if stopping {
        return stopped(run, format!("the service stopped: {how}"));
    }
    error(
        reason::FAILED,
        format!("the service ended on its own ({how}); a service runs until it is stopped"),
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::runnable::tests::{busybox, run_of};
    use super::super::ContainerRuntime;
    use super::*;
    use crate::Runtime;
    use runplane_domain::{OutputFile, Transition};
    use serde_json::json;

    pub(crate) fn outcome(
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
                .collect(),
            failure: None,
            outputs_dir: None,
        }
    }

    fn interpret(action: &str, outcome: &ExitOutcome) -> Interpretation {
        let run = run_of(busybox(json!({"port": 80})), action, json!({}));
        ContainerRuntime::default().interpret(&run, outcome)
    }

    fn summary(got: &Interpretation) -> (RunState, &str, Option<&str>) {
        (got.state, got.reason.as_str(), got.message.as_deref())
    }

    #[test]
    fn a_job_that_exits_0_completes_with_its_results() {
        let got = interpret(
            "job",
            &outcome(Some(0), None, &[("results.json", br#"{"a": [1, 2]}"#)]),
        );
        assert_eq!(summary(&got), (RunState::Completed, "succeeded", None));
        assert_eq!(got.results, Some(json!({"a": [1, 2]})));
        assert_eq!(got.new_version, None);
        for files in [
            &[("results.json", &b"null"[..])][..],
            &[("other.txt", b"x")],
        ] {
            let got = interpret("job", &outcome(Some(0), None, files));
            assert_eq!((got.state, got.results), (RunState::Completed, None));
        }
    }

    #[test]
    fn bad_results_are_invalid_output() {
        let got = interpret(
            "job",
            &outcome(Some(0), None, &[("results.json", b"{nope")]),
        );
        assert_eq!(got.reason, "invalid_output");
        assert!(got.message.unwrap().contains("not valid JSON"));
        let big = vec![b'1'; 2 * 1024 * 1024];
        let got = interpret("job", &outcome(Some(0), None, &[("results.json", &big)]));
        assert_eq!(got.reason, "invalid_output");
        let mut cut = outcome(Some(0), None, &[("results.json", b"[1,")]);
        cut.outputs.get_mut("results.json").unwrap().size = 10 * 1024 * 1024;
        let got = interpret("job", &cut);
        assert_eq!(got.reason, "invalid_output");
        assert!(got.message.unwrap().contains("10485760 bytes"));
    }

    #[test]
    fn failures_kills_and_losses() {
        let got = interpret("job", &outcome(Some(3), None, &[("results.json", b"1")]));
        assert_eq!(
            summary(&got),
            (
                RunState::Error,
                "failed",
                Some("the container exited with code 3")
            )
        );
        assert_eq!(got.results, None);
        let got = interpret("job", &outcome(None, Some(9), &[]));
        assert_eq!(
            summary(&got),
            (
                RunState::Error,
                "killed",
                Some("killed by signal 9 (SIGKILL)")
            )
        );
        let got = interpret("job", &outcome(None, Some(11), &[]));
        assert_eq!(got.reason, "failed");
        assert!(got
            .message
            .unwrap()
            .contains("crashed with signal 11 (SIGSEGV)"));
        assert_eq!(interpret("job", &outcome(None, None, &[])).reason, "lost");
    }

    #[test]
    fn a_stopped_run_ends_with_the_stops_reason() {
        let mut run = run_of(busybox(json!({})), "job", json!({}));
        run.status.state = RunState::Stop;
        let runtime = ContainerRuntime::default();
        let got = runtime.interpret(&run, &outcome(None, Some(15), &[]));
        assert_eq!((got.state, got.reason.as_str()), (RunState::Error, "user"));
        run.status.transitions.push(Transition {
            from: Some(RunState::Running),
            to: RunState::Stop,
            at: run.metadata.created,
            attempt: 1,
            reason: Some("timeout".into()),
            message: None,
        });
        let got = runtime.interpret(&run, &outcome(Some(143), None, &[]));
        assert_eq!(got.reason, "timeout");
        // A job that finished before the stop landed still succeeded.
        let got = runtime.interpret(&run, &outcome(Some(0), None, &[("results.json", b"7")]));
        assert_eq!(
            (got.state, got.results),
            (RunState::Completed, Some(json!(7)))
        );
    }

    #[test]
    fn a_service_that_ends_on_its_own_failed() {
        for action in ["deploy", "serve"] {
            let got = interpret(action, &outcome(Some(0), None, &[("results.json", b"1")]));
            assert_eq!(
                summary(&got),
                (
                    RunState::Error,
                    "failed",
                    Some("the service ended on its own (the container exited with code 0); a service runs until it is stopped")
                ),
                "{action}"
            );
            assert_eq!(got.results, None);
            let mut run = run_of(busybox(json!({"port": 80})), action, json!({}));
            run.status.state = RunState::Stop;
            let got = ContainerRuntime::default().interpret(&run, &outcome(None, Some(15), &[]));
            assert_eq!((got.state, got.reason.as_str()), (RunState::Error, "user"));
            assert!(got.message.unwrap().contains("SIGTERM"));
        }
    }
}
