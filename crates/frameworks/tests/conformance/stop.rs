//! Stopping: SIGTERM first, SIGKILL after the job's grace (the framework's half of a run
//! timeout: the controller's timeout is a stop), idempotent, nothing left running.

use super::{exec, exited, shell, Harness, Platform, PROMPTLY};
use crate::support::TestResult;
use runplane_logstore::Stream;
use std::time::{Duration, Instant};

pub async fn stop_reaches_a_job_that_handles_sigterm<P: Platform>() -> TestResult {
    let mut h = Harness::<P>::new("graceful").await?;
    let execution = exec("graceful");
    let mut job =
        shell("trap 'echo got TERM; exit 0' TERM; echo ready; while true; do sleep 0.1; done");
    job.stop_grace_seconds = 30;
    h.start(&execution, job).await?;
    h.until_started(&execution).await?;
    // The trap is in place once "ready" is logged.
    h.until_logged(&execution, "ready\n").await?;

    let stopping = Instant::now();
    h.stop(&execution).await?;
    h.stop(&execution)
        .await
        .map_err(|e| format!("stop is idempotent: {e}"))?;
    let kinds = h.until_end(&execution).await?;
    let took = stopping.elapsed();
    let outcome = exited(&kinds)?;
    ensure!(
        outcome.exit_code == Some(0) && outcome.signal.is_none(),
        "the job handled SIGTERM and exited 0: {outcome:?}"
    );
    ensure!(took < PROMPTLY, "ended {took:?} after the stop, grace 30 s");
    let stdout = h.lines(&execution, Stream::Stdout)?;
    ensure!(stdout == ["ready\n", "got TERM\n"], "{stdout:?}");
    h.until_nothing_runs(&execution).await?;
    h.stop(&execution)
        .await
        .map_err(|e| format!("stop after the end is fine: {e}"))?;
    Ok(())
}

pub async fn a_job_ignoring_sigterm_is_killed_after_the_grace<P: Platform>() -> TestResult {
    let mut h = Harness::<P>::new("stubborn").await?;
    let execution = exec("stubborn");
    let grace = 2;
    let mut job = shell("trap '' TERM; echo ready; while true; do sleep 0.1; done");
    job.stop_grace_seconds = grace;
    h.start(&execution, job).await?;
    h.until_started(&execution).await?;
    h.until_logged(&execution, "ready\n").await?;

    let stopping = Instant::now();
    h.stop(&execution).await?;
    let kinds = h.until_end(&execution).await?;
    let took = stopping.elapsed();
    let outcome = exited(&kinds)?;
    ensure!(outcome.signal == Some(9), "SIGKILLed: {outcome:?}");
    ensure!(
        took >= Duration::from_secs(grace) - Duration::from_millis(100),
        "killed only after the grace of {grace} s: {took:?}"
    );
    ensure!(took < PROMPTLY, "killed soon after the grace: {took:?}");
    h.until_nothing_runs(&execution).await?;
    Ok(())
}

/// The job's main process exits while a background child still holds its output open: the
/// execution ends anyway, and the child with it.
pub async fn background_processes_do_not_outlive_the_job<P: Platform>() -> TestResult {
    let mut h = Harness::<P>::new("leftover").await?;
    let execution = exec("leftover");
    let started = Instant::now();
    let outcome = h
        .run_to_end(&execution, shell("sleep 1000 & echo done"))
        .await?;
    ensure!(
        started.elapsed() < PROMPTLY,
        "ended promptly: {:?}",
        started.elapsed()
    );
    ensure!(outcome.exit_code == Some(0), "{outcome:?}");
    ensure!(
        h.lines(&execution, Stream::Stdout)? == ["done\n"],
        "{:?}",
        h.lines(&execution, Stream::Stdout)
    );
    h.until_nothing_runs(&execution).await?;
    Ok(())
}
