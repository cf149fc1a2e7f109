//! `runplane quickstart`: runs the example job on the embedded defaults (SQLite and local
//! processes under `$RUNPLANE_HOME`) with an in-process server, prints its logs and results.
//! If a server already owns the home, it uses that server instead.

use super::apply::{apply_document, parse_documents, SourceDocument};
use super::run::{report, wait_until_ended};
use super::server::HomeArgs;
use crate::client::Client;
use crate::exit::CliError;
use crate::output::Format;
use crate::params;
use clap::Args;
use reqwest::Method;
use runplane_server::{Server, ServerError};
use serde_json::{json, Value};

const EXAMPLE: &str = include_str!("../../../../examples/hello.yaml");

#[derive(Debug, Args)]
pub struct QuickstartArgs {
    #[command(flatten)]
    pub home: HomeArgs,
    /// A parameter of the example, `key=value` (e.g. `-p name=Ann`).
    #[arg(short = 'p', long = "param")]
    pub params: Vec<String>,
}

pub async fn run(args: QuickstartArgs, url: &str, project: &str) -> anyhow::Result<()> {
    let options = args.home.options("127.0.0.1:0".parse()?, false)?;
    let home = options.home.clone();
    let (client, shutdown) = match Server::bind(options).await {
        Ok(server) => {
            let addr = server
                .local_addr()
                .ok_or_else(|| anyhow::anyhow!("the in-process server has no address"))?;
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let serving = tokio::spawn(server.serve(async move {
                let _ = stopped.await;
            }));
            eprintln!(
                "quickstart: in-process server on http://{addr}, home {}",
                home.display()
            );
            (
                Client::new(&format!("http://{addr}"), project)?,
                Some((stop, serving)),
            )
        }
        Err(ServerError::HomeInUse(_)) => {
            eprintln!(
                "quickstart: a server already uses {}; talking to it at {url}",
                home.display()
            );
            (Client::new(url, project)?, None)
        }
        Err(error) => return Err(error.into()),
    };
    let result = quickstart(&client, &args.params).await;
    if let Some((stop, serving)) = shutdown {
        let _ = stop.send(());
        let _ = serving.await;
    }
    Ok(result?)
}

async fn quickstart(client: &Client, pairs: &[String]) -> Result<(), CliError> {
    for (origin, value) in parse_documents(EXAMPLE, "examples/hello.yaml")? {
        let summary = apply_document(
            client,
            SourceDocument {
                origin,
                dir: std::path::PathBuf::from("."),
                value,
            },
        )
        .await?;
        eprintln!("quickstart: {summary}");
    }
    let parameters = params::collect(pairs, None)?;
    let request = client
        .request(Method::POST, &client.project_url("/runs"))
        .json(&json!({ "function": "hello", "parameters": parameters }));
    let run: Value = client.send_json(request).await?;
    let id = run
        .pointer("/metadata/id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    eprintln!("quickstart: run {id} started; its logs:");
    super::logs::follow(client, &id, None).await?;
    let run = wait_until_ended(client, &id).await?;
    eprintln!(
        "quickstart: run {id} {}; its results:",
        run.pointer("/status/state")
            .and_then(Value::as_str)
            .unwrap_or_default()
    );
    report(&run, Format::Yaml)?;
    eprintln!("quickstart: see it again with `runplane get runs` and `runplane describe run {id}` (with `runplane server` running)");
    Ok(())
}
