//! `loadgen`: the HTTP load generator of the gateway benchmark.
//!
//! For each `--url` in turn, `--connections` keep-alive HTTP/1.1 connections send requests back
//! to back for `--warmup` (not measured) then `--duration`; every request's latency (send to
//! last body byte) is recorded. Prints one line per URL, or a JSON array with `--json`.
//! Exits 2 on bad arguments, 1 when some URL had no successful request, else 0.

mod args;
mod report;
mod run;
mod target;

use args::Args;
use clap::Parser;
use report::Report;
use std::process::ExitCode;
use std::sync::Arc;
use target::Target;

fn main() -> ExitCode {
    let args = Args::parse();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = args.threads {
        builder.worker_threads(threads.max(1));
    }
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("loadgen: cannot start: {error}");
            return ExitCode::from(3);
        }
    };
    runtime.block_on(run(args))
}

async fn run(args: Args) -> ExitCode {
    // Check every URL before loading any, so that a typo in the last one fails at once.
    let mut targets = Vec::with_capacity(args.urls.len());
    for url in &args.urls {
        match Target::new(url, &args.method, &args.headers, args.body.as_deref()).await {
            Ok(target) => targets.push(Arc::new(target)),
            Err(error) => {
                eprintln!("loadgen: {error}");
                return ExitCode::from(2);
            }
        }
    }
    let plan = run::Plan {
        connections: args.connections.max(1),
        warmup: args.warmup,
        duration: args.duration,
        timeout: args.timeout,
    };
    let mut reports = Vec::with_capacity(targets.len());
    for target in targets {
        let outcome = run::load(target.clone(), &plan).await;
        let report = Report::new(&target.url, plan.connections, &outcome);
        if !args.json {
            println!("{}", report.text());
        }
        reports.push(report);
    }
    if args.json {
        match serde_json::to_string_pretty(&reports) {
            Ok(json) => println!("{json}"),
            Err(error) => {
                eprintln!("loadgen: {error}");
                return ExitCode::from(3);
            }
        }
    }
    if reports.iter().any(|report| report.requests == 0) {
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}
