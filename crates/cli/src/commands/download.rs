//! `runplane download NAME[:VERSION]`: an artifact's file, or a folder artifact unpacked.

use super::get::artifact_path;
use crate::client::Client;
use crate::exit::CliError;
use clap::Args;
use reqwest::Method;
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, Args)]
pub struct DownloadArgs {
    /// The artifact: `NAME` (its newest version) or `NAME:VERSION`.
    pub artifact: String,
    /// Where to write: a file artifact's file (`-` for stdout), or the folder a folder
    /// artifact is unpacked into. Default: the file's name, or the artifact's name, here.
    #[arg(short = 'o', long)]
    pub output: Option<PathBuf>,
    /// One file of a folder artifact, by its relative path.
    #[arg(long)]
    pub path: Option<String>,
    /// Replace what is already at the output path.
    #[arg(long)]
    pub force: bool,
}

pub async fn run(client: &Client, args: DownloadArgs) -> Result<(), CliError> {
    let artifact: Value = client
        .get_json(&client.project_url(&artifact_path(&args.artifact)))
        .await?;
    let field = |pointer: &str| {
        artifact
            .pointer(pointer)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let (name, version) = (field("/metadata/name"), field("/metadata/version"));
    let single = args
        .path
        .clone()
        .or_else(|| (field("/spec/type") == "file").then(|| field("/spec/file")));
    let mut request = client.request(
        Method::GET,
        &client.project_url(&format!("/artifacts/{name}/versions/{version}/download")),
    );
    if let Some(path) = &args.path {
        request = request.query(&[("path", path)]);
    }
    let bytes = client
        .send(request)
        .await?
        .bytes()
        .await
        .map_err(|error| client.transport_error(error))?;
    match single {
        Some(file) => {
            let base = Path::new(&file)
                .file_name()
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(&name));
            let target = match args.output {
                Some(path) if path == Path::new("-") => {
                    return std::io::stdout()
                        .write_all(&bytes)
                        .map_err(|e| CliError::invalid(format!("cannot write to stdout: {e}")));
                }
                Some(path) if path.is_dir() => path.join(base),
                Some(path) => path,
                None => base,
            };
            refuse_overwrite(&target, args.force)?;
            std::fs::write(&target, &bytes).map_err(|e| {
                CliError::invalid(format!("cannot write {}: {e}", target.display()))
            })?;
            eprintln!(
                "artifact {name}:{version} → {} ({} bytes)",
                target.display(),
                bytes.len()
            );
        }
        None => {
            let target = args.output.unwrap_or_else(|| PathBuf::from(&name));
            refuse_overwrite(&target, args.force)?;
            std::fs::create_dir_all(&target).map_err(|e| {
                CliError::invalid(format!("cannot create {}: {e}", target.display()))
            })?;
            let mut archive = tar::Archive::new(bytes.as_ref());
            archive.unpack(&target).map_err(|e| {
                CliError::invalid(format!("cannot unpack into {}: {e}", target.display()))
            })?;
            eprintln!(
                "artifact {name}:{version} → {}/ ({} files)",
                target.display(),
                artifact
                    .pointer("/spec/files")
                    .and_then(Value::as_u64)
                    .unwrap_or(0)
            );
        }
    }
    Ok(())
}

/// A download never silently replaces files: an existing file, or a non-empty folder, needs
/// `--force`.
fn refuse_overwrite(target: &Path, force: bool) -> Result<(), CliError> {
    let occupied = match std::fs::read_dir(target) {
        Ok(mut entries) => entries.next().is_some(),
        Err(_) => target.exists(),
    };
    if occupied && !force {
        return Err(CliError::invalid(format!(
            "{} already exists (--force replaces it, --output writes elsewhere)",
            target.display()
        )));
    }
    Ok(())
}
