//! The framework conformance suite (`conformance/`) against the `local` framework: real
//! supervisors, real processes on this machine.
//!
//! Like `local.rs`, this binary has its own `main` (`harness = false`) because it is also the
//! supervisor the framework under test starts (`<this binary> supervise <attempt dir>`).

#[macro_use]
mod support;
mod conformance;

use conformance::{Platform, SERVER_ONLY_VAR};
use runplane_frameworks::local::{protocol::EXIT_FILE, LocalFramework, LocalOptions};
use runplane_frameworks::{EventSender, ExecutionId};
use std::path::{Path, PathBuf};

struct Local;

fn attempt_dir(runs: &Path, execution: &ExecutionId) -> PathBuf {
    runs.join(&execution.run_id)
        .join(execution.attempt.to_string())
}

impl Platform for Local {
    type Framework = LocalFramework;

    async fn framework(
        runs: &Path,
        logs: &Path,
        events: EventSender,
    ) -> Result<LocalFramework, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let options = LocalOptions {
            runs_dir: runs.to_path_buf(),
            logs_dir: logs.to_path_buf(),
            supervisor: vec![exe.to_string_lossy().into_owned(), "supervise".into()],
            shared_runs_dir: false,
        };
        Ok(LocalFramework::new(options, events))
    }

    /// The job's processes carry the harness's marker; nothing else runs for it.
    async fn still_running(_runs: &Path, _execution: &ExecutionId) -> Result<Vec<String>, String> {
        Ok(Vec::new())
    }

    /// The supervisor writes `exit.json` when the job has ended.
    async fn has_ended(runs: &Path, execution: &ExecutionId) -> Result<bool, String> {
        Ok(attempt_dir(runs, execution).join(EXIT_FILE).exists())
    }

    /// The job's folders and its `job.json` (which may hold secrets); `exit.json` and the
    /// supervisor's files are kept on purpose (a restarted server reads them).
    async fn working_state(runs: &Path, execution: &ExecutionId) -> Result<Vec<String>, String> {
        let dir = attempt_dir(runs, execution);
        Ok(["work", "outputs", "job.json"]
            .into_iter()
            .map(|name| dir.join(name))
            .filter(|path| path.exists())
            .map(|path| path.display().to_string())
            .collect())
    }

    /// Everything a local execution leaves is under the harness's temporary folder.
    fn discard(_runs: &Path) {}
}

fn main() {
    support::supervise_if_asked();
    // SAFETY: single-threaded at this point (no runtime, no test has run).
    unsafe { std::env::set_var(SERVER_ONLY_VAR, "leaked") };
    let tests: Vec<(&str, support::TestFn)> = conformance_cases!(Local);
    support::run_suite(&tests, &[]);
}
