//! stdout and stderr into the log store: the right stream, in order, complete.

use super::{exec, shell, Harness, Platform};
use crate::support::TestResult;
use runplane_logstore::Stream;

pub async fn stdout_and_stderr_are_logged_by_stream_in_order<P: Platform>() -> TestResult {
    let mut h = Harness::<P>::new("streams").await?;
    let execution = exec("streams");
    let outcome = h
        .run_to_end(
            &execution,
            shell(
                "echo 'out 1'; echo 'err 1' >&2; echo 'out 2'; echo 'err 2' >&2; \
                 echo '  spaced  '; echo; printf 'no newline'",
            ),
        )
        .await?;
    ensure!(outcome.exit_code == Some(0), "{outcome:?}");
    let stdout = h.lines(&execution, Stream::Stdout)?;
    ensure!(
        stdout == ["out 1\n", "out 2\n", "  spaced  \n", "\n", "no newline"],
        "stdout records: {stdout:?}"
    );
    let stderr = h.lines(&execution, Stream::Stderr)?;
    ensure!(stderr == ["err 1\n", "err 2\n"], "stderr records: {stderr:?}");
    let system = h.lines(&execution, Stream::System)?;
    ensure!(system.is_empty(), "no system records for a plain run: {system:?}");
    Ok(())
}

/// Far more than a pipe buffer at once: nothing is lost, duplicated or reordered.
pub async fn a_burst_of_lines_is_logged_complete<P: Platform>() -> TestResult {
    let mut h = Harness::<P>::new("burst").await?;
    let execution = exec("burst");
    let outcome = h
        .run_to_end(
            &execution,
            shell(
                "i=0; while [ $i -lt 10000 ]; do echo \"line $i\"; i=$((i+1)); done; \
                 echo 'err end' >&2",
            ),
        )
        .await?;
    ensure!(outcome.exit_code == Some(0), "{outcome:?}");
    let stdout = h.lines(&execution, Stream::Stdout)?;
    ensure!(stdout.len() == 10000, "{} stdout records", stdout.len());
    for (i, line) in stdout.iter().enumerate() {
        ensure!(*line == format!("line {i}\n"), "record {i}: {line:?}");
    }
    let stderr = h.lines(&execution, Stream::Stderr)?;
    ensure!(stderr == ["err end\n"], "stderr records: {stderr:?}");
    Ok(())
}
