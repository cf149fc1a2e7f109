//! The attempt's log cap: output past it is discarded, the job goes on.

use super::{exec, shell, Harness, Platform};
use crate::support::TestResult;
use runplane_logstore::Stream;

pub async fn output_past_the_log_limit_is_discarded_with_one_marker<P: Platform>() -> TestResult {
    let mut h = Harness::<P>::new("capped").await?;
    let execution = exec("capped");
    let limit: u64 = 64 * 1024;
    let mut job = shell(
        "i=0; while [ $i -lt 20000 ]; do \
           echo \"line $i ................................................................\"; \
           i=$((i+1)); \
         done; echo 'late err' >&2; echo done > \"$RUNPLANE_OUTPUTS/done.txt\"",
    );
    job.log_limit_bytes = Some(limit);
    let outcome = h.run_to_end(&execution, job).await?;
    ensure!(
        outcome.exit_code == Some(0) && outcome.outputs.contains_key("done.txt"),
        "the job ran to its end: {outcome:?}"
    );
    let records = h.log(&execution)?;
    let system: Vec<String> = records
        .iter()
        .filter(|r| r.stream == Stream::System)
        .map(|r| String::from_utf8_lossy(&r.data).into_owned())
        .collect();
    ensure!(
        system.len() == 1 && system[0].contains("log limit of 65536 bytes"),
        "one marker naming the limit: {system:?}"
    );
    ensure!(
        records.last().map(|r| r.stream) == Some(Stream::System),
        "nothing after the marker"
    );
    let stdout = h.lines(&execution, Stream::Stdout)?;
    ensure!(
        stdout.len() > 100 && stdout.len() < 20000,
        "a prefix was kept: {} lines",
        stdout.len()
    );
    for (i, line) in stdout.iter().enumerate() {
        ensure!(
            line.starts_with(&format!("line {i} ")),
            "in order: {i}: {line:?}"
        );
    }
    let kept: u64 = records.iter().map(|r| r.data.len() as u64).sum();
    ensure!(
        kept <= limit + 200,
        "the log stops near the limit: {kept} bytes"
    );
    Ok(())
}
