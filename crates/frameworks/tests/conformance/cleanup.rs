//! Cleanup: the working state of an ended execution goes, its log stays.

use super::{exec, exited, shell, Harness, Platform};
use crate::support::TestResult;
use runplane_domain::{FileEntry, Runnable};
use runplane_frameworks::{Framework, FrameworkError};
use runplane_logstore::Stream;

pub async fn cleanup_removes_working_state_and_keeps_the_log<P: Platform>() -> TestResult {
    let mut h = Harness::<P>::new("cleanup").await?;
    let execution = exec("cleanup");
    let mut job = shell("echo kept; exec sleep 300");
    job.files = vec![FileEntry {
        path: "a/b.txt".into(),
        mode: 0o600,
        contents: b"x".to_vec(),
    }];
    h.start(&execution, job).await?;
    h.until_started(&execution).await?;
    h.until_logged(&execution, "kept\n").await?;
    ensure!(
        matches!(
            h.framework()?
                .start(execution.clone(), Runnable::Job(shell("true")))
                .await,
            Err(FrameworkError::StartFailed { .. })
        ),
        "no second start of a running execution"
    );

    h.stop(&execution).await?;
    exited(&h.until_end(&execution).await?)?;
    let state = h.working_state(&execution).await?;
    ensure!(
        !state.is_empty(),
        "an ended execution keeps its working state until cleanup"
    );
    h.cleanup(&execution).await?;
    let state = h.working_state(&execution).await?;
    ensure!(state.is_empty(), "cleanup leaves nothing: {state:?}");
    ensure!(
        h.lines(&execution, Stream::Stdout)? == ["kept\n"],
        "the log is kept"
    );
    h.cleanup(&execution)
        .await
        .map_err(|e| format!("cleanup twice is fine: {e}"))?;
    Ok(())
}

/// `cleanup` is for ended executions: a running one is refused and goes on.
pub async fn cleanup_refuses_a_running_execution<P: Platform>() -> TestResult {
    let mut h = Harness::<P>::new("early-cleanup").await?;
    let execution = exec("early-cleanup");
    let mut job = shell("echo running; exec sleep 300");
    job.stop_grace_seconds = 1;
    h.start(&execution, job).await?;
    h.until_started(&execution).await?;
    h.until_logged(&execution, "running\n").await?;
    let answer = h.framework()?.cleanup(&execution).await;
    let running = h.still_running(&execution).await?;
    ensure!(
        answer.is_err(),
        "cleanup of a running execution is refused; it answered Ok, and then still ran: \
         {running:?}"
    );
    ensure!(
        !running.is_empty(),
        "the execution still runs after the refused cleanup"
    );
    h.stop(&execution).await?;
    exited(&h.until_end(&execution).await?)?;
    h.cleanup(&execution).await?;
    Ok(())
}
