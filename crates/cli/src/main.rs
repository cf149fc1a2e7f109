//! `runplane`: the one binary. Client commands talk to a server over REST (`$RUNPLANE_URL`);
//! `runplane server` is the server; `runplane supervise` is the small process that owns one
//! local run (started by the server, never by people).
//!
//! `anyhow` lives here only; every library returns its own error types.

mod client;
mod commands;
mod exit;
mod output;
mod pack;
mod params;

use clap::{Parser, Subcommand};
use exit::{CliError, Exit};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "runplane",
    version,
    about = "Run Python functions as tracked jobs: a control plane for data and ML work."
)]
struct Cli {
    /// The server's URL.
    #[arg(long, global = true, env = "RUNPLANE_URL", default_value = client::DEFAULT_URL)]
    url: String,
    /// The project (created on first use).
    #[arg(
        short = 'P',
        long,
        global = true,
        env = "RUNPLANE_PROJECT",
        default_value = "default"
    )]
    project: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server (API, controller, local runs).
    Server(Box<commands::server::ServerArgs>),
    /// Run the example job on embedded defaults and print its logs and results.
    Quickstart(commands::quickstart::QuickstartArgs),
    /// Create or update functions and tasks from YAML/JSON files.
    Apply(commands::apply::ApplyArgs),
    /// Create an entity that is not a document (secrets).
    #[command(subcommand)]
    Create(commands::create::CreateCommand),
    /// List or show entities.
    Get(commands::get::GetArgs),
    /// Show one entity in full.
    Describe(commands::get::DescribeArgs),
    /// Run a function.
    Run(commands::run::RunArgs),
    /// Start a new run with the same spec as an earlier one.
    Rerun(commands::run::RerunArgs),
    /// Print a run's logs.
    Logs(commands::logs::LogsArgs),
    /// Stop a run (its whole process tree).
    Stop(commands::simple::RunRef),
    /// Resume a stopped run as a new attempt, or a paused trigger (`resume trigger NAME`).
    Resume(commands::simple::ResumeArgs),
    /// Pause a trigger (`pause trigger NAME`): it fires no more until resumed.
    Pause(commands::simple::PauseArgs),
    /// Download an artifact (`NAME` or `NAME:VERSION`): a file, or a folder unpacked.
    Download(commands::download::DownloadArgs),
    /// Send a request to a service through the server's gateway.
    Invoke(commands::invoke::InvokeArgs),
    /// Delete an entity (runs leave a tombstone).
    Delete(commands::simple::DeleteArgs),
    /// Supervise one local run (started by the server).
    #[command(hide = true)]
    Supervise { attempt_dir: PathBuf },
}

fn main() {
    // The supervisor starts once per run: keep it free of the argument parser (building the
    // whole command tree), the async runtime and the logging setup.
    if let Some(attempt_dir) = supervise_fast_path() {
        std::process::exit(runplane_frameworks::local::supervise_main(&attempt_dir));
    }
    let cli = Cli::parse();
    if let Command::Supervise { attempt_dir } = &cli.command {
        std::process::exit(runplane_frameworks::local::supervise_main(attempt_dir));
    }
    init_tracing(matches!(cli.command, Command::Server(_)));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            std::process::exit(Exit::Unavailable as i32);
        }
    };
    let code = match runtime.block_on(commands::dispatch(cli)) {
        Ok(()) => 0,
        Err(error) => {
            let (code, message) = match error.downcast_ref::<CliError>() {
                Some(cli_error) => (cli_error.exit as i32, cli_error.message.clone()),
                None => (Exit::Unavailable as i32, format!("{error:#}")),
            };
            if !message.is_empty() {
                eprintln!("error: {message}");
            }
            code
        }
    };
    // Do not wait for lingering connections or streams.
    runtime.shutdown_background();
    std::process::exit(code);
}

fn init_tracing(server: bool) {
    let default = if server { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUNPLANE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// `runplane supervise <attempt_dir>` (or `-`, a standby) exactly as the local framework
/// spawns it; any other shape (help, extra arguments) goes through the parser.
fn supervise_fast_path() -> Option<PathBuf> {
    let mut args = std::env::args_os().skip(1);
    let (Some(verb), Some(dir), None) = (args.next(), args.next(), args.next()) else {
        return None;
    };
    let standby = dir == runplane_frameworks::local::STANDBY_ARG;
    (verb == "supervise" && (standby || !dir.to_string_lossy().starts_with('-')))
        .then(|| PathBuf::from(dir))
}
