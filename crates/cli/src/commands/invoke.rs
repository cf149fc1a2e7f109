//! `runplane invoke SERVICE [--data JSON]`: one request to a service through the server's
//! gateway, its response body on stdout (streamed as it arrives).

use crate::client::Client;
use crate::exit::CliError;
use clap::Args;
use futures::StreamExt;
use reqwest::Method;
use std::io::Write;

#[derive(Debug, Args)]
pub struct InvokeArgs {
    /// The service's name.
    pub service: String,
    /// The request body: JSON (sent as `application/json`), or `@FILE` to send a file's bytes.
    #[arg(short = 'd', long)]
    pub data: Option<String>,
    /// The path under the service (default `/`).
    #[arg(long, default_value = "/")]
    pub path: String,
    /// The HTTP method (default: POST with `--data`, else GET).
    #[arg(short = 'X', long)]
    pub method: Option<String>,
    /// A request header, `Name: value`. Repeatable.
    #[arg(short = 'H', long = "header")]
    pub headers: Vec<String>,
}

pub async fn run(client: &Client, args: InvokeArgs) -> Result<(), CliError> {
    let method = match &args.method {
        Some(method) => Method::from_bytes(method.to_ascii_uppercase().as_bytes())
            .map_err(|_| CliError::invalid(format!("--method {method:?} is not an HTTP method")))?,
        None if args.data.is_some() => Method::POST,
        None => Method::GET,
    };
    let path = args.path.trim_start_matches('/');
    let url = client.url(&format!(
        "/services/{}/{}/{path}",
        client.project, args.service
    ));
    let mut request = client.request(method, &url);
    for header in &args.headers {
        let (name, value) = header.split_once(':').ok_or_else(|| {
            CliError::invalid(format!("--header {header:?}: expected Name: value"))
        })?;
        request = request.header(name.trim(), value.trim());
    }
    match args.data.as_deref() {
        Some(file) if file.starts_with('@') => {
            let bytes = std::fs::read(&file[1..])
                .map_err(|error| CliError::invalid(format!("--data {file}: {error}")))?;
            request = request.body(bytes);
        }
        Some(json) => {
            let value: serde_json::Value = serde_json::from_str(json)
                .map_err(|error| CliError::invalid(format!("--data is not JSON: {error}")))?;
            request = request.json(&value);
        }
        None => {}
    }
    let response = request
        .send()
        .await
        .map_err(|error| client.transport_error(error))?;
    let status = response.status();
    let mut body = response.bytes_stream();
    let mut out = std::io::stdout().lock();
    let mut last = None;
    while let Some(chunk) = body.next().await {
        let chunk = chunk
            .map_err(|error| CliError::run_failed(format!("the response broke off: {error}")))?;
        last = chunk.last().copied();
        // A closed stdout (`| head`) ends the command quietly.
        if out.write_all(&chunk).and_then(|()| out.flush()).is_err() {
            return Ok(());
        }
    }
    if last.is_some_and(|byte| byte != b'\n') {
        let _ = writeln!(out);
    }
    if status.is_success() {
        Ok(())
    } else {
        Err(CliError::run_failed(format!(
            "service {} answered {status}",
            args.service
        )))
    }
}
