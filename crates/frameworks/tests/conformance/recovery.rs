//! A restarted server (`Framework::recover` on a new instance, the same folders): running jobs
//! are followed again, ended ones report their real outcome, unknown ones are lost.

use super::{exec, exited, open_gate, shell, wait_for_gate, Harness, Platform, PROMPTLY};
use crate::support::TestResult;
use runplane_frameworks::{EventKind, Framework, FrameworkError};
use runplane_logstore::Stream;
use std::time::Instant;

pub async fn recover_follows_a_running_job_again<P: Platform>() -> TestResult {
    let mut h = Harness::<P>::new("survivor").await?;
    let execution = exec("survivor");
    let job = shell(&format!(
        "echo before; {}; echo after; echo '{{}}' > \"$RUNPLANE_OUTPUTS/results.json\"; exit 5",
        wait_for_gate("gate")
    ));
    h.start(&execution, job).await?;
    h.until_started(&execution).await?;
    h.until_logged(&execution, "before\n").await?;

    h.up().await?;
    h.recover(std::slice::from_ref(&execution)).await?;
    // Recovering again changes nothing: it is already followed.
    h.recover(std::slice::from_ref(&execution)).await?;
    open_gate(&h.work_dir(&execution), "gate")?;
    let kinds = h.until_end(&execution).await?;
    let outcome = h.check_contract(&execution, &kinds)?;
    ensure!(
        outcome.exit_code == Some(5) && outcome.outputs.contains_key("results.json"),
        "its real outcome: {outcome:?}"
    );
    ensure!(
        kinds.iter().filter(|k| **k == EventKind::Started).count() == 1,
        "one Started: {kinds:?}"
    );
    // Every line once: nothing copied twice by the second follower, nothing missed.
    let stdout = h.lines(&execution, Stream::Stdout)?;
    ensure!(stdout == ["before\n", "after\n"], "{stdout:?}");
    Ok(())
}

/// The job ends while no framework runs: the next instance reports `Exited` with its real
/// code and outputs (never a second start), and its log holds what it wrote meanwhile. The
/// trait's doc names only `Exited` here, but `local` sends `Started` first (engine does not):
/// `Started`/`LogAppended` before `Exited` are tolerated until the doc or local is settled.
pub async fn recover_reports_a_job_that_ended_while_down<P: Platform>() -> TestResult {
    let mut h = Harness::<P>::new("ended").await?;
    let execution = exec("ended");
    let job = shell(&format!(
        "echo waiting; {}; echo bye; echo done > \"$RUNPLANE_OUTPUTS/done.txt\"; exit 4",
        wait_for_gate("gate")
    ));
    h.start(&execution, job).await?;
    h.until_started(&execution).await?;
    h.until_logged(&execution, "waiting\n").await?;

    h.down();
    open_gate(&h.work_dir(&execution), "gate")?;
    h.until_ended_unwatched(&execution).await?;
    h.up().await?;
    h.recover(std::slice::from_ref(&execution)).await?;
    let kinds = h.until_end(&execution).await?;
    ensure!(
        kinds.iter().all(|k| matches!(
            k,
            EventKind::Started | EventKind::LogAppended { .. } | EventKind::Exited(_)
        )),
        "{kinds:?}"
    );
    let outcome = exited(&kinds)?;
    ensure!(
        outcome.exit_code == Some(4)
            && outcome
                .outputs
                .get("done.txt")
                .map(|f| f.contents.as_slice())
                == Some(b"done\n".as_slice()),
        "its real outcome: {outcome:?}"
    );
    let stdout = h.lines(&execution, Stream::Stdout)?;
    ensure!(stdout == ["waiting\n", "bye\n"], "{stdout:?}");
    Ok(())
}

pub async fn recover_reports_an_unknown_execution_as_lost<P: Platform>() -> TestResult {
    let mut h = Harness::<P>::new("never").await?;
    let never = exec("never-started");
    h.recover(std::slice::from_ref(&never)).await?;
    let kinds = h.until_end(&never).await?;
    // A framework that can tell its code never ran says so (the controller then starts the
    // run again); otherwise it is lost.
    ensure!(
        matches!(
            kinds.as_slice(),
            [EventKind::Lost { message } | EventKind::NeverStarted { message }] if !message.is_empty()
        ),
        "Lost or NeverStarted alone, with a message: {kinds:?}"
    );
    ensure!(
        matches!(
            h.framework()?.stop(&never).await,
            Err(FrameworkError::UnknownExecution(_))
        ),
        "a lost execution is unknown to stop"
    );
    Ok(())
}

pub async fn stop_reaches_a_recovered_job<P: Platform>() -> TestResult {
    let mut h = Harness::<P>::new("recovered-stop").await?;
    let execution = exec("recovered-stop");
    let mut job = shell("echo ready; exec sleep 300");
    job.stop_grace_seconds = 30;
    h.start(&execution, job).await?;
    h.until_started(&execution).await?;
    h.until_logged(&execution, "ready\n").await?;

    h.up().await?;
    h.recover(std::slice::from_ref(&execution)).await?;
    h.until_started(&execution).await?;
    let stopping = Instant::now();
    h.stop(&execution).await?;
    let kinds = h.until_end(&execution).await?;
    let took = stopping.elapsed();
    let outcome = exited(&kinds)?;
    ensure!(outcome.signal == Some(15), "ended by SIGTERM: {outcome:?}");
    ensure!(took < PROMPTLY, "ended {took:?} after the stop");
    h.until_nothing_runs(&execution).await?;
    Ok(())
}
