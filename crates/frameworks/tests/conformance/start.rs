//! A start that cannot happen: the trait's `StartFailed`, and no execution at all.

use super::{exec, shell, Harness, Platform};
use crate::support::TestResult;
use runplane_domain::Runnable;
use runplane_frameworks::{Framework, FrameworkError};
use std::time::Duration;

/// `start` answers `StartFailed` naming the program (the execution never started, so no
/// `Started`/`Exited`), leaves no working state, and the execution is unknown afterwards.
pub async fn a_missing_program_fails_to_start_and_leaves_nothing<P: Platform>() -> TestResult {
    let mut h = Harness::<P>::new("missing").await?;
    let execution = exec("missing");
    let mut job = h.marked(shell(""));
    job.command = vec!["/nonexistent/program".into(), "arg".into()];
    let answer = h
        .framework()?
        .start(execution.clone(), Runnable::Job(job))
        .await;
    match answer {
        Err(FrameworkError::StartFailed {
            execution: failed,
            message,
        }) => {
            ensure!(failed == execution, "{failed:?}");
            ensure!(
                message.contains("/nonexistent/program"),
                "the message names the program: {message:?}"
            );
        }
        other => return Err(format!("expected StartFailed, got {other:?}")),
    }
    let state = h.working_state(&execution).await?;
    ensure!(state.is_empty(), "a failed start leaves nothing: {state:?}");
    h.until_nothing_runs(&execution).await?;
    ensure!(
        matches!(
            h.framework()?.stop(&execution).await,
            Err(FrameworkError::UnknownExecution(_))
        ),
        "a failed start is not an execution"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    ensure!(
        h.pending_event().is_none(),
        "no events after a failed start"
    );
    Ok(())
}
