//! Named failpoints: places between the steps that matter (claim → start → record, creating a
//! run, recovery) where a test can make the server die abruptly, as a `kill -9` would. The
//! crash test (`crates/cli/tests/crash.rs`, `scripts/crash-test`) drives them.
//!
//! Configured once, from the environment, when the process starts:
//!
//! - `RUNPLANE_FAILPOINTS` — comma-separated `name=action`, where action is
//!   - `nth:N`: die at the N-th hit of that point in this process (1-based);
//!   - `P/Q` (e.g. `1/5`): die with probability P/Q at each hit;
//!   - `off`: never (the same as leaving the name out).
//! - `RUNPLANE_FAILPOINTS_LOG` — a file to which the name of the failpoint is appended (one
//!   line) just before the process dies there, so that a test can count crashes per point.
//!
//! The points: `after_create_run` (submit: the run is stored, the response not sent),
//! `after_claim` (dispatcher: READY → PENDING committed, the framework not asked to start),
//! `after_start` (dispatcher: the framework's start returned), `before_record_exit`
//! (reconciler: an exit read, its transition not recorded), `after_record_exit` (recorded, the
//! attempt not cleaned up) and `after_recover` (start-up: the frameworks took over the
//! previous server's runs, the controller not started).
//!
//! Dying is `SIGKILL` sent to the process itself: no destructor, flush or shutdown code runs.
//! When `RUNPLANE_FAILPOINTS` is unset, [`hit`] reads an initialised `OnceLock` and returns.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// Every failpoint the server has, in the order a run meets them.
pub const NAMES: [&str; 6] = [
    "after_create_run",
    "after_claim",
    "after_start",
    "before_record_exit",
    "after_record_exit",
    "after_recover",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    /// Die at the n-th hit.
    Nth(u64),
    /// Die with probability numerator/denominator.
    Probability(u64, u64),
}

#[derive(Debug)]
struct Point {
    action: Action,
    hits: AtomicU64,
}

#[derive(Debug)]
struct Config {
    points: BTreeMap<String, Point>,
    log: Option<std::path::PathBuf>,
    /// xorshift state for the probabilities.
    random: AtomicU64,
}

static CONFIG: OnceLock<Option<Config>> = OnceLock::new();

/// Reads the configuration from the environment (once; later calls do nothing) and logs it.
/// Called at start-up so that a bad `RUNPLANE_FAILPOINTS` is reported before anything runs.
pub fn init() {
    if let Some(config) = config() {
        tracing::warn!(failpoints = ?config.points.iter().map(|(name, point)| (name, point.action)).collect::<Vec<_>>(), "FAILPOINTS ARE ENABLED: this server will kill itself");
    }
}

/// A failpoint: returns at once unless the configuration says to die here now.
#[inline]
pub fn hit(name: &str) {
    let Some(config) = config() else {
        return;
    };
    let Some(point) = config.points.get(name) else {
        return;
    };
    let count = point.hits.fetch_add(1, Ordering::Relaxed) + 1;
    let die = match point.action {
        Action::Nth(n) => count == n,
        Action::Probability(numerator, denominator) => {
            config.next_random() % denominator < numerator
        }
    };
    if die {
        crash(config, name);
    }
}

fn config() -> Option<&'static Config> {
    CONFIG
        .get_or_init(|| {
            let spec = std::env::var("RUNPLANE_FAILPOINTS").ok()?;
            let log = std::env::var_os("RUNPLANE_FAILPOINTS_LOG").map(Into::into);
            match parse(&spec) {
                Ok(points) if points.is_empty() => None,
                Ok(points) => Some(Config {
                    points,
                    log,
                    random: AtomicU64::new(seed()),
                }),
                Err(error) => {
                    // Refusing to start is clearer than a crash test that silently never
                    // crashes.
                    eprintln!("RUNPLANE_FAILPOINTS: {error}");
                    std::process::exit(2);
                }
            }
        })
        .as_ref()
}

fn parse(spec: &str) -> Result<BTreeMap<String, Point>, String> {
    let mut points = BTreeMap::new();
    for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (name, action) = entry
            .split_once('=')
            .ok_or_else(|| format!("{entry:?} is not name=action"))?;
        let name = name.trim();
        if !NAMES.contains(&name) {
            return Err(format!(
                "no failpoint {name:?} (there are: {})",
                NAMES.join(", ")
            ));
        }
        let action = action.trim();
        let bad = || format!("{name}: {action:?} is not nth:N, P/Q or off");
        let action = if action == "off" {
            continue;
        } else if let Some(n) = action.strip_prefix("nth:") {
            match n.parse::<u64>() {
                Ok(n) if n > 0 => Action::Nth(n),
                _ => return Err(bad()),
            }
        } else if let Some((p, q)) = action.split_once('/') {
            match (p.parse::<u64>(), q.parse::<u64>()) {
                (Ok(p), Ok(q)) if q > 0 && p <= q => Action::Probability(p, q),
                _ => return Err(bad()),
            }
        } else {
            return Err(bad());
        };
        points.insert(
            name.to_string(),
            Point {
                action,
                hits: AtomicU64::new(0),
            },
        );
    }
    Ok(points)
}

impl Config {
    fn next_random(&self) -> u64 {
        // xorshift64; races between threads only make it more random.
        let mut x = self.random.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.random.store(x, Ordering::Relaxed);
        x
    }
}

fn seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    (nanos ^ (u64::from(std::process::id()) << 32)) | 1
}

fn crash(config: &Config, name: &str) -> ! {
    if let Some(path) = &config.log {
        // One write of a whole line to a file opened for appending: lines of concurrent or
        // successive processes never interleave.
        if let Ok(mut file) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = file.write_all(format!("{name}\n").as_bytes());
        }
    }
    let _ = nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGKILL);
    std::process::abort()
}

#[cfg(test)]
mod tests {
    use super::{parse, Action};

    #[test]
    fn parses_nth_probabilities_and_off() {
        let points = parse("after_claim=nth:3, after_start=1/5,after_recover=off").unwrap();
        assert_eq!(points["after_claim"].action, Action::Nth(3));
        assert_eq!(points["after_start"].action, Action::Probability(1, 5));
        assert!(!points.contains_key("after_recover"));
        assert!(parse("").unwrap().is_empty());
    }

    #[test]
    fn rejects_unknown_names_and_bad_actions() {
        assert!(parse("nowhere=nth:1").unwrap_err().contains("no failpoint"));
        for bad in [
            "after_claim",
            "after_claim=nth:0",
            "after_claim=2/1",
            "after_claim=x",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
