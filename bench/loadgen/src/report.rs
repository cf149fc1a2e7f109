//! The results of one URL, as text or JSON.

use crate::run::Outcome;
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Serialize)]
pub struct Report {
    pub url: String,
    pub connections: usize,
    /// The measured window, in seconds.
    pub duration_s: f64,
    /// Successful (2xx/3xx) requests in the window.
    pub requests: u64,
    pub rps: f64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    pub errors: u64,
    /// Responses by status code (errors without a response are not in here).
    pub statuses: BTreeMap<u16, u64>,
}

impl Report {
    pub fn new(url: &str, connections: usize, outcome: &Outcome) -> Report {
        let latencies = &outcome.latencies;
        let requests = latencies.len();
        let seconds = outcome.elapsed.as_secs_f64();
        Report {
            url: url.to_string(),
            connections,
            duration_s: seconds,
            requests,
            rps: if seconds > 0.0 {
                requests as f64 / seconds
            } else {
                0.0
            },
            mean_us: latencies.mean(),
            p50_us: latencies.value_at_quantile(0.50),
            p90_us: latencies.value_at_quantile(0.90),
            p99_us: latencies.value_at_quantile(0.99),
            max_us: latencies.max(),
            errors: outcome.errors,
            statuses: outcome.statuses.clone(),
        }
    }

    /// One line of `key=value` pairs, easy to read and to pick apart with a shell.
    pub fn text(&self) -> String {
        format!(
            "{} requests={} rps={:.1} p50_us={} p90_us={} p99_us={} max_us={} errors={}",
            self.url,
            self.requests,
            self.rps,
            self.p50_us,
            self.p90_us,
            self.p99_us,
            self.max_us,
            self.errors
        )
    }
}
