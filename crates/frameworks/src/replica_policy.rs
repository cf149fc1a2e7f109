//! How a service's replicas are supervised, whichever framework runs them: a replica that
//! exits is restarted after a delay that doubles with each restart (up to a cap) and starts
//! over once a replica stayed ready long enough; and how its exits read in a `not_ready`
//! message.

use std::time::Duration;

/// The first restart delay of a replica; it doubles with each restart up to [`BACKOFF_CAP`].
pub(crate) const BACKOFF_START: Duration = Duration::from_millis(250);
pub(crate) const BACKOFF_CAP: Duration = Duration::from_secs(10);
/// A replica that stayed ready this long before it exited starts over at [`BACKOFF_START`].
pub(crate) const BACKOFF_RESET: Duration = Duration::from_secs(30);

/// One replica's restart delays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RestartBackoff {
    next: Duration,
}

impl Default for RestartBackoff {
    fn default() -> Self {
        RestartBackoff {
            next: BACKOFF_START,
        }
    }
}

impl RestartBackoff {
    /// The replica exited after being ready for `ready_for` (`None`: it never was): how long
    /// to wait before restarting it.
    pub(crate) fn after_exit(&mut self, ready_for: Option<Duration>) -> Duration {
        if ready_for.is_some_and(|ready| ready >= BACKOFF_RESET) {
            self.next = BACKOFF_START;
        }
        self.delay()
    }

    /// The next delay (a start that failed); the one after it doubles.
    pub(crate) fn delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(BACKOFF_CAP);
        delay
    }
}

/// How a replica's processes ended, for people: "it exited with code 1 twice".
#[derive(Debug, Default)]
pub(crate) struct ExitHistory {
    count: u32,
    /// "exited with code 1", "was killed by signal 9"...
    last: Option<String>,
    varied: bool,
}

impl ExitHistory {
    pub(crate) fn record(&mut self, phrase: String) {
        self.count += 1;
        if self.last.as_ref().is_some_and(|last| *last != phrase) {
            self.varied = true;
        }
        self.last = Some(phrase);
    }

    /// "it exited with code 1 twice", "it ended 3 times, last it was killed by signal 9".
    pub(crate) fn describe(&self) -> String {
        match (&self.last, self.count) {
            (None, _) | (_, 0) => "it kept running without answering".into(),
            (Some(last), count) if !self.varied => format!("it {last} {}", times(count)),
            (Some(last), count) => format!("it ended {}, last it {last}", times(count)),
        }
    }
}

fn times(count: u32) -> String {
    match count {
        1 => "once".into(),
        2 => "twice".into(),
        n => format!("{n} times"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_and_start_over_after_a_long_ready_spell() {
        let mut backoff = RestartBackoff::default();
        let delays: Vec<Duration> = (0..8).map(|_| backoff.after_exit(None)).collect();
        assert_eq!(
            delays,
            [250, 500, 1000, 2000, 4000, 8000, 10_000, 10_000].map(Duration::from_millis)
        );
        assert_eq!(
            backoff.after_exit(Some(BACKOFF_RESET - Duration::from_secs(1))),
            BACKOFF_CAP
        );
        assert_eq!(backoff.after_exit(Some(BACKOFF_RESET)), BACKOFF_START);
        assert_eq!(backoff.delay(), BACKOFF_START * 2);
    }

    #[test]
    fn exit_histories_read_as_sentences() {
        let mut history = ExitHistory::default();
        assert_eq!(history.describe(), "it kept running without answering");
        history.record("exited with code 1".to_string());
        assert_eq!(history.describe(), "it exited with code 1 once");
        history.record("exited with code 1".to_string());
        assert_eq!(history.describe(), "it exited with code 1 twice");
        history.record("was killed by signal 9".to_string());
        assert_eq!(
            history.describe(),
            "it ended 3 times, last it was killed by signal 9"
        );
    }
}
