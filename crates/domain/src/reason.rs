//! Machine-readable reasons carried by run transitions and by READY runs that wait.
//! They are plain strings on the wire (new frameworks may add their own), named here once.

pub const SUBMITTED: &str = "submitted";
pub const DISPATCHED: &str = "dispatched";
pub const STARTED: &str = "started";
pub const SUCCEEDED: &str = "succeeded";
/// The handler raised, or the process exited non-zero.
pub const FAILED: &str = "failed";
/// The framework could not start the run (missing interpreter, bad working directory...).
pub const START_FAILED: &str = "start_failed";
/// The run's process can no longer be found.
pub const LOST: &str = "lost";
pub const TIMEOUT: &str = "timeout";
pub const OOM_KILLED: &str = "oom_killed";
/// Killed by a signal nobody in runplane sent.
pub const KILLED: &str = "killed";
/// The build the run needed (its environment or image) failed, or this build run failed.
pub const BUILD_FAILED: &str = "build_failed";
/// READY runs waiting for a build they need (an environment for their lock).
pub const WAITING_FOR_BUILD: &str = "waiting_for_build";
/// The run's outputs broke a rule (results too large, not JSON...).
pub const INVALID_OUTPUT: &str = "invalid_output";
/// A person (or API client) asked to stop the run.
pub const USER: &str = "user";
/// A service run whose name a newer run took over.
pub const REPLACED: &str = "replaced";
/// A service replica did not answer its readiness check in time.
pub const NOT_READY: &str = "not_ready";
/// A secret the run refers to was deleted after the run was submitted.
pub const SECRET_MISSING: &str = "secret_missing";
/// An input artifact of the run could not be made a local path (deleted, unreadable).
pub const INPUT_UNAVAILABLE: &str = "input_unavailable";
pub const RESUMED: &str = "resumed";
pub const DELETED: &str = "deleted";
/// READY runs waiting for a slot: the global concurrency limit is reached.
pub const GLOBAL_CONCURRENCY_LIMIT: &str = "global_concurrency_limit";
/// READY runs waiting for a slot: their task's concurrency limit is reached.
pub const TASK_CONCURRENCY_LIMIT: &str = "task_concurrency_limit";
/// An attempt ended in ERROR with retries left: the run went back to READY as the next attempt.
pub const RETRYING: &str = "retrying";
/// An attempt whose code never ran (its server died between claiming and starting it): the
/// run went back to READY as the next attempt, whatever its retry policy says.
pub const REQUEUED: &str = "requeued";
/// READY runs waiting for a slot: a retry's backoff delay has not passed yet.
pub const RETRY_BACKOFF: &str = "retry_backoff";

/// The reasons an attempt may end with in ERROR that a retry policy may list in `on`. Stops
/// (`user`, `replaced`, `timeout`) end the run for good and are not retried.
pub const RETRYABLE: &[&str] = &[
    FAILED,
    LOST,
    KILLED,
    START_FAILED,
    OOM_KILLED,
    INVALID_OUTPUT,
];
/// What `retry.on` means when a policy does not say.
pub const DEFAULT_RETRY_ON: &[&str] = &[FAILED, LOST, KILLED];
