//! Command-line arguments.

use clap::Parser;
use std::time::Duration;

/// Drives HTTP load at one URL after the other: N keep-alive connections each sending requests
/// back to back, then prints requests/s and latency percentiles per URL.
#[derive(Debug, Parser)]
#[command(name = "loadgen")]
pub struct Args {
    /// A URL to load (http only); repeat to run several, one after the other.
    #[arg(long = "url", required = true)]
    pub urls: Vec<String>,
    /// Keep-alive connections per URL, each with one request at a time.
    #[arg(long, default_value_t = 8)]
    pub connections: usize,
    /// How long to measure, per URL (`5s`, `500ms`, `1m`).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub duration: Duration,
    /// How long to send load before measuring, per URL.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// The request method.
    #[arg(long, default_value = "GET")]
    pub method: String,
    /// The request body (sent with `Content-Type: application/json` unless a header says
    /// otherwise).
    #[arg(long)]
    pub body: Option<String>,
    /// An extra request header, `Name: value`; repeatable.
    #[arg(long = "header", short = 'H')]
    pub headers: Vec<String>,
    /// A request taking longer counts as an error (and its connection is replaced).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Worker threads of the load generator (default: one per CPU).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Print the results as a JSON array (one object per URL) instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `5s`, `250ms`, `2m`, `1.5s`, `750us`; a bare number is seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 5s or 500ms"))?;
    let seconds = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1e3,
        "us" | "µs" => value / 1e6,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?} (use us, ms, s, m, h)"
            ))
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|error| format!("{text:?}: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("750us"), Ok(Duration::from_micros(750)));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
    }
}
