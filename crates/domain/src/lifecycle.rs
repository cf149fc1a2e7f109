//! The run lifecycle of `docs/lifecycle.md` as one explicit table. Every change of a run's state in
//! runplane goes through [`check_transition`] before the store's compare-and-set.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RunState {
    /// The run record is accepted.
    Created,
    /// The runtime merged function version + task + run into the self-contained spec.
    Built,
    /// Waiting in runplane's queue for dispatch (with a `reason` when held back).
    Ready,
    /// Handed to a framework, not yet running.
    Pending,
    /// Executing.
    Running,
    Completed,
    Error,
    /// A stop was requested and is in progress.
    Stop,
    Stopped,
    Deleting,
    Deleted,
}

impl RunState {
    pub const ALL: [RunState; 11] = [
        RunState::Created,
        RunState::Built,
        RunState::Ready,
        RunState::Pending,
        RunState::Running,
        RunState::Completed,
        RunState::Error,
        RunState::Stop,
        RunState::Stopped,
        RunState::Deleting,
        RunState::Deleted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Created => "CREATED",
            RunState::Built => "BUILT",
            RunState::Ready => "READY",
            RunState::Pending => "PENDING",
            RunState::Running => "RUNNING",
            RunState::Completed => "COMPLETED",
            RunState::Error => "ERROR",
            RunState::Stop => "STOP",
            RunState::Stopped => "STOPPED",
            RunState::Deleting => "DELETING",
            RunState::Deleted => "DELETED",
        }
    }

    /// A final outcome: nothing executes any more and nothing will unless someone acts
    /// (`resume` from STOPPED, `rerun` from any of them).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RunState::Completed | RunState::Error | RunState::Stopped | RunState::Deleted
        )
    }

    /// The run holds (or may hold) resources on a framework.
    pub fn is_active(self) -> bool {
        matches!(self, RunState::Pending | RunState::Running | RunState::Stop)
    }
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown run state {0:?} (expected one of CREATED, BUILT, READY, PENDING, RUNNING, COMPLETED, ERROR, STOP, STOPPED, DELETING, DELETED)")]
pub struct UnknownState(pub String);

impl FromStr for RunState {
    type Err = UnknownState;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RunState::ALL
            .into_iter()
            .find(|state| state.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownState(s.to_string()))
    }
}

/// Is `from → to` a legal move? This table is the single source of truth.
pub fn is_allowed(from: RunState, to: RunState) -> bool {
    use RunState::*;
    match (from, to) {
        // The happy path.
        (Created, Built) | (Built, Ready) | (Ready, Pending) | (Pending, Running) => true,
        (Running, Completed) | (Running, Error) => true,
        // The spec could not be built, or the framework could not start the attempt.
        (Created, Error) | (Built, Error) | (Pending, Error) => true,
        // A build the run waited for in the queue failed (`build_failed`).
        (Ready, Error) => true,
        // A failed attempt with retries left goes back to the queue (attempt + 1).
        (Pending, Ready) | (Running, Ready) => true,
        // Any non-terminal state can be asked to stop (a run that never started too).
        (Created | Built | Ready | Pending | Running, Stop) => true,
        // A stop ends STOPPED; a timeout's stop ends ERROR; a job that finished before the
        // stop reached it keeps its real outcome.
        (Stop, Stopped) | (Stop, Error) | (Stop, Completed) => true,
        // `resume`.
        (Stopped, Ready) => true,
        // Deletion from anywhere but an ongoing or finished deletion.
        (
            Created | Built | Ready | Pending | Running | Completed | Error | Stop | Stopped,
            Deleting,
        ) => true,
        (Deleting, Deleted) => true,
        _ => false,
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a run cannot go from {from} to {to}")]
pub struct IllegalTransition {
    pub from: RunState,
    pub to: RunState,
}

pub fn check_transition(from: RunState, to: RunState) -> Result<(), IllegalTransition> {
    if is_allowed(from, to) {
        Ok(())
    } else {
        Err(IllegalTransition { from, to })
    }
}

#[cfg(test)]
mod tests {
    use super::RunState::*;
    use super::*;
    use proptest::prelude::*;

    /// The whole table, written out a second time as the set of allowed pairs, so that a change
    /// to either one is caught.
    const ALLOWED: &[(RunState, RunState)] = &[
        (Created, Built),
        (Built, Ready),
        (Ready, Pending),
        (Pending, Running),
        (Running, Completed),
        (Running, Error),
        (Created, Error),
        (Built, Error),
        (Pending, Error),
        (Ready, Error),
        (Pending, Ready),
        (Running, Ready),
        (Created, Stop),
        (Built, Stop),
        (Ready, Stop),
        (Pending, Stop),
        (Running, Stop),
        (Stop, Stopped),
        (Stop, Error),
        (Stop, Completed),
        (Stopped, Ready),
        (Created, Deleting),
        (Built, Deleting),
        (Ready, Deleting),
        (Pending, Deleting),
        (Running, Deleting),
        (Completed, Deleting),
        (Error, Deleting),
        (Stop, Deleting),
        (Stopped, Deleting),
        (Deleting, Deleted),
    ];

    #[test]
    fn table_is_exactly_the_documented_pairs() {
        for from in RunState::ALL {
            for to in RunState::ALL {
                assert_eq!(
                    is_allowed(from, to),
                    ALLOWED.contains(&(from, to)),
                    "{from} -> {to}"
                );
            }
        }
    }

    #[test]
    fn deleted_is_a_dead_end_and_nothing_returns_to_created() {
        for to in RunState::ALL {
            assert!(!is_allowed(Deleted, to));
            assert!(!is_allowed(to, Created));
        }
    }

    #[test]
    fn states_round_trip_through_strings() {
        for state in RunState::ALL {
            assert_eq!(state.as_str().parse::<RunState>().unwrap(), state);
            let json = serde_json::to_string(&state).unwrap();
            assert_eq!(json, format!("\"{}\"", state.as_str()));
        }
        assert!("RUNNIN".parse::<RunState>().is_err());
    }

    fn any_state() -> impl Strategy<Value = RunState> {
        proptest::sample::select(RunState::ALL.to_vec())
    }

    proptest! {
        /// Walking the table at random: every reachable state can still reach DELETED, terminal
        /// states are only left by resume (STOPPED → READY) or deletion, and every non-terminal
        /// state except DELETING can be stopped.
        #[test]
        fn random_walks_respect_the_invariants(steps in proptest::collection::vec(any_state(), 1..60)) {
            let mut state = Created;
            for next in steps {
                if is_allowed(state, next) {
                    if state.is_terminal() {
                        prop_assert!(matches!((state, next), (Stopped, Ready) | (_, Deleting)));
                    }
                    state = next;
                }
                prop_assert!(is_allowed(state, Deleting) || matches!(state, Deleting | Deleted));
                if !state.is_terminal() && !matches!(state, Stop | Deleting) {
                    prop_assert!(is_allowed(state, Stop));
                }
            }
        }
    }
}
