//! What goes into a job (files with their modes, env, secrets) and what comes out (outputs).

use super::{exec, python, shell, Harness, Platform, SERVER_ONLY_VAR};
use crate::support::TestResult;
use runplane_domain::{FileEntry, REDACTED};
use runplane_logstore::Stream;

pub async fn files_env_and_outputs_reach_and_leave_the_job<P: Platform>() -> TestResult {
    let mut h = Harness::<P>::new("values").await?;
    let execution = exec("values");
    let script = format!(
        "#!/bin/sh\n\
         cat data/input.txt\n\
         stat -c %a data/input.txt main.sh\n\
         echo \"$1 $GREETING\"\n\
         echo \"${{{SERVER_ONLY_VAR}:-absent}}\"\n\
         printf '{{\"ok\":true}}' > \"$RUNPLANE_OUTPUTS/result.json\"\n\
         mkdir \"$RUNPLANE_OUTPUTS/nested\" && echo x > \"$RUNPLANE_OUTPUTS/nested/deep.txt\"\n"
    );
    let mut job = shell("");
    job.command = vec!["./main.sh".into(), "arg".into()];
    job.env.insert("GREETING".into(), "hello world".into());
    job.files = vec![
        FileEntry {
            path: "main.sh".into(),
            mode: 0o755,
            contents: script.into_bytes(),
        },
        FileEntry {
            path: "data/input.txt".into(),
            mode: 0o640,
            contents: b"input data\n".to_vec(),
        },
    ];
    let outcome = h.run_to_end(&execution, job).await?;
    ensure!(outcome.exit_code == Some(0), "{outcome:?}");
    let stdout = h.lines(&execution, Stream::Stdout)?;
    ensure!(
        stdout
            == [
                "input data\n",
                "640\n",
                "755\n",
                "arg hello world\n",
                "absent\n"
            ],
        "files, modes, argv and env as the job saw them: {stdout:?}"
    );
    let result = outcome
        .outputs
        .get("result.json")
        .ok_or_else(|| format!("no result.json output: {outcome:?}"))?;
    ensure!(
        result.contents == br#"{"ok":true}"# && result.size == 11,
        "{result:?}"
    );
    // Outputs are the folder's top level (`ExitOutcome::outputs`).
    ensure!(
        outcome.outputs.keys().all(|name| name == "result.json"),
        "only top-level files: {:?}",
        outcome.outputs.keys()
    );
    Ok(())
}

/// A secret handed in env and listed in `redact` works inside the job, but the log never
/// holds it, on either stream.
pub async fn secrets_are_usable_but_redacted_from_the_log<P: Platform>() -> TestResult {
    let mut h = Harness::<P>::new("secrets").await?;
    let execution = exec("secrets");
    let secret = "s3cr3t-value";
    let mut job = python(
        "import os, sys\n\
         token = os.environ['API_TOKEN']\n\
         print('token=' + token, flush=True)\n\
         print(token + ' twice ' + token, file=sys.stderr, flush=True)\n\
         with open(os.path.join(os.environ['RUNPLANE_OUTPUTS'], 'token.txt'), 'w') as f:\n\
         \x20   f.write(token)\n",
    );
    job.env.insert("API_TOKEN".into(), secret.into());
    job.redact = vec![secret.into()];
    let outcome = h.run_to_end(&execution, job).await?;
    ensure!(outcome.exit_code == Some(0), "{outcome:?}");
    let token = outcome
        .outputs
        .get("token.txt")
        .ok_or_else(|| format!("no token.txt output: {outcome:?}"))?;
    ensure!(
        token.contents == secret.as_bytes(),
        "the job read the secret: {token:?}"
    );
    ensure!(
        h.lines(&execution, Stream::Stdout)? == [format!("token={REDACTED}\n")],
        "{:?}",
        h.lines(&execution, Stream::Stdout)
    );
    ensure!(
        h.lines(&execution, Stream::Stderr)? == [format!("{REDACTED} twice {REDACTED}\n")],
        "{:?}",
        h.lines(&execution, Stream::Stderr)
    );
    let anywhere = h
        .log(&execution)?
        .iter()
        .any(|r| String::from_utf8_lossy(&r.data).contains(secret));
    ensure!(!anywhere, "the secret is in the log");
    Ok(())
}
