//! stdout and stderr into the log store: the right stream, in order, complete.

use super::{exec, exited, shell, Harness, Platform};
use crate::support::TestResult;
use runplane_frameworks::EventKind;
use runplane_logstore::Stream;

/// `LogAppended { end_offset }` says where the log now ends: the last one before `Exited` is
/// the log's end, whether the job wrote one line or many (a reader that trusts it misses
/// nothing).
pub async fn log_appended_announces_the_whole_log<P: Platform>() -> TestResult {
    let mut h = Harness::<P>::new("announced").await?;
    for (name, script) in [
        ("one-line", "echo only"),
        ("lines", "echo a; echo b >&2; echo c"),
    ] {
        let execution = exec(name);
        h.start(&execution, shell(script)).await?;
        let kinds = h.until_end(&execution).await?;
        exited(&kinds)?;
        let announced: Vec<u64> = kinds
            .iter()
            .filter_map(|k| match k {
                EventKind::LogAppended { end_offset } => Some(*end_offset),
                _ => None,
            })
            .collect();
        let end = h.log_end(&execution)?;
        ensure!(end > 0, "{name}: the job's output is logged");
        ensure!(
            announced.last() == Some(&end),
            "{name}: the last LogAppended of {announced:?} is the log's end {end}"
        );
    }
    Ok(())
}

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
    ensure!(
        stderr == ["err 1\n", "err 2\n"],
        "stderr records: {stderr:?}"
    );
    let system = h.lines(&execution, Stream::System)?;
    ensure!(
        system.is_empty(),
        "no system records for a plain run: {system:?}"
    );
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
    let first_missing = (0..10000).find(|i| stdout.get(*i) != Some(&format!("line {i}\n")));
    ensure!(
        stdout.len() == 10000,
        "{} stdout records; the first one missing or wrong: line {first_missing:?}; the last \
         one: {:?}",
        stdout.len(),
        stdout.last()
    );
    for (i, line) in stdout.iter().enumerate() {
        ensure!(*line == format!("line {i}\n"), "record {i}: {line:?}");
    }
    let stderr = h.lines(&execution, Stream::Stderr)?;
    ensure!(stderr == ["err end\n"], "stderr records: {stderr:?}");
    Ok(())
}
