//! `runplane create secret NAME (--value V | --from-file F | --from-env VAR)`.

use crate::client::Client;
use crate::exit::CliError;
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{json, Value};
use std::path::PathBuf;

#[derive(Debug, Subcommand)]
pub enum CreateCommand {
    /// Create a secret, or replace its value. The value is never shown again.
    Secret(SecretArgs),
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["value", "from_file", "from_env"])))]
pub struct SecretArgs {
    /// A DNS-1123 name.
    pub name: String,
    /// The value itself (it stays in your shell history: prefer --from-file or --from-env).
    #[arg(long)]
    pub value: Option<String>,
    /// Read the value from a file, byte for byte (a trailing newline is kept).
    #[arg(long)]
    pub from_file: Option<PathBuf>,
    /// Take the value from an environment variable of this shell.
    #[arg(long)]
    pub from_env: Option<String>,
}

pub async fn run(client: &Client, command: CreateCommand) -> Result<(), CliError> {
    match command {
        CreateCommand::Secret(args) => secret(client, args).await,
    }
}

async fn secret(client: &Client, args: SecretArgs) -> Result<(), CliError> {
    let value = match (&args.value, &args.from_file, &args.from_env) {
        (Some(value), _, _) => value.clone(),
        (_, Some(path), _) => {
            let bytes = std::fs::read(path).map_err(|error| {
                CliError::invalid(format!("cannot read {}: {error}", path.display()))
            })?;
            String::from_utf8(bytes)
                .map_err(|_| CliError::invalid(format!("{} is not UTF-8 text", path.display())))?
        }
        (_, _, Some(var)) => std::env::var(var).map_err(|_| {
            CliError::invalid(format!(
                "the environment variable {var} is not set (or not UTF-8)"
            ))
        })?,
        // clap's required group makes one of them present.
        (None, None, None) => {
            return Err(CliError::invalid("give --value, --from-file or --from-env"))
        }
    };
    let request = client
        .request(Method::POST, &client.project_url("/secrets"))
        .json(&json!({ "name": args.name, "value": value }));
    let meta: Value = client.send_json(request).await?;
    let name = meta["name"].as_str().unwrap_or(&args.name);
    println!("secret {name} stored");
    Ok(())
}
