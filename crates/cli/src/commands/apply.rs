//! `runplane apply -f FILE|DIR`: YAML/JSON documents, several per file, posted in file order.
//! A `spec.source.path` or `spec.build.context.path` (relative to the file) is packed here and
//! sent as `archive` beside it, so the server never depends on the client's files.

use crate::client::Client;
use crate::exit::CliError;
use crate::pack;
use clap::Args;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Largest packed source folder.
pub const MAX_SOURCE_BYTES: u64 = 16 * 1024 * 1024;

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// A file or a directory of .yaml/.yml/.json files (repeatable).
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<PathBuf>,
}

/// A document read from a file, with where it came from (for messages and relative paths).
pub struct SourceDocument {
    pub origin: String,
    pub dir: PathBuf,
    pub value: Value,
}

pub async fn run(client: &Client, args: ApplyArgs) -> Result<(), CliError> {
    let mut documents = vec![];
    for path in &args.files {
        documents.extend(read_documents(path)?);
    }
    if documents.is_empty() {
        return Err(CliError::invalid("no documents found in the given files"));
    }
    for document in documents {
        let summary = apply_document(client, document).await?;
        println!("{summary}");
    }
    Ok(())
}

/// Applies one document; returns a line saying what happened.
pub async fn apply_document(client: &Client, document: SourceDocument) -> Result<String, CliError> {
    let SourceDocument {
        origin,
        dir,
        mut value,
    } = document;
    let kind = value["kind"].as_str().unwrap_or_default().to_string();
    if kind.is_empty() {
        return Err(CliError::invalid(format!("{origin}: kind: missing")));
    }
    let project = value
        .pointer("/metadata/project")
        .and_then(Value::as_str)
        .unwrap_or(&client.project)
        .to_string();
    for folder in PACKED_FOLDERS {
        pack_path_field(&mut value, folder, &dir, &origin)?;
    }
    let collection = if kind.contains('+') {
        "tasks"
    } else if kind == "pipeline" {
        "workflows"
    } else if ["scheduler", "lifecycle", "webhook"].contains(&kind.as_str()) {
        "triggers"
    } else {
        "functions"
    };
    let url = format!("{}/api/v1/projects/{project}/{collection}", client.base());
    let response = client
        .send(client.request(Method::POST, &url).json(&value))
        .await
        .map_err(|error| CliError {
            message: format!("{origin}: {}", error.message),
            ..error
        })?;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or_default();
    let name = body
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("?");
    Ok(match (collection, status) {
        ("functions", StatusCode::CREATED) => format!(
            "function/{name} created (version {})",
            body.pointer("/metadata/version")
                .and_then(Value::as_str)
                .unwrap_or("?")
        ),
        ("functions", _) => format!(
            "function/{name} unchanged (same content as version {})",
            body.pointer("/metadata/version")
                .and_then(Value::as_str)
                .unwrap_or("?")
        ),
        ("workflows", StatusCode::CREATED) => format!(
            "workflow/{name} created (version {})",
            body.pointer("/metadata/version")
                .and_then(Value::as_str)
                .unwrap_or("?")
        ),
        ("workflows", _) => format!(
            "workflow/{name} unchanged (same content as version {})",
            body.pointer("/metadata/version")
                .and_then(Value::as_str)
                .unwrap_or("?")
        ),
        ("triggers", status) => {
            let mut line = format!(
                "trigger/{name} {}",
                if status == StatusCode::CREATED {
                    "created"
                } else {
                    "applied"
                }
            );
            if let Some(token) = body.pointer("/status/token").and_then(Value::as_str) {
                line.push_str(&format!(
                    "\nwebhook token (shown once): {token}\nPOST {}/api/v1/projects/{project}/triggers/{name}/webhook with Authorization: Bearer <token>",
                    client.base()
                ));
            }
            line
        }
        _ => format!("task/{name} applied"),
    })
}

/// The mappings whose `path` (a file or folder, relative to the document's file) is packed into
/// `archive`: a python function's source and a container function's build context.
const PACKED_FOLDERS: &[&str] = &["/spec/source", "/spec/build/context"];

/// Replaces `<pointer>.path` by `<pointer>.archive`.
fn pack_path_field(
    value: &mut Value,
    pointer: &str,
    dir: &Path,
    origin: &str,
) -> Result<(), CliError> {
    let Some(mapping) = value.pointer_mut(pointer).and_then(Value::as_object_mut) else {
        return Ok(());
    };
    let Some(path) = mapping
        .get("path")
        .and_then(Value::as_str)
        .map(str::to_string)
    else {
        return Ok(());
    };
    let full = dir.join(&path);
    let field = format!("{}.path", pointer.trim_start_matches('/').replace('/', "."));
    let packed = pack::pack_path(&full, MAX_SOURCE_BYTES)
        .map_err(|error| CliError::invalid(format!("{origin}: {field}: {error}")))?;
    mapping.remove("path");
    mapping.insert("archive".to_string(), Value::String(packed.archive));
    Ok(())
}

/// Every document of a file, or of every .yaml/.yml/.json file of a directory (sorted by name).
pub fn read_documents(path: &Path) -> Result<Vec<SourceDocument>, CliError> {
    let metadata = std::fs::metadata(path)
        .map_err(|error| CliError::invalid(format!("{}: {error}", path.display())))?;
    if metadata.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|error| CliError::invalid(format!("{}: {error}", path.display())))?
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .filter(|file| {
                matches!(
                    file.extension().and_then(|e| e.to_str()),
                    Some("yaml" | "yml" | "json")
                )
            })
            .collect();
        files.sort();
        let mut documents = vec![];
        for file in files {
            documents.extend(read_file(&file)?);
        }
        return Ok(documents);
    }
    read_file(path)
}

fn read_file(path: &Path) -> Result<Vec<SourceDocument>, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| CliError::invalid(format!("{}: {error}", path.display())))?;
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    parse_documents(&text, &path.display().to_string())?
        .into_iter()
        .map(|(origin, value)| {
            Ok(SourceDocument {
                origin,
                dir: dir.clone(),
                value,
            })
        })
        .collect()
}

/// Parses a multi-document YAML (JSON is YAML) text; empty documents are skipped.
pub fn parse_documents(text: &str, name: &str) -> Result<Vec<(String, Value)>, CliError> {
    let mut documents = vec![];
    for (index, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let origin = format!("{name} (document {})", index + 1);
        let value =
            serde::Deserialize::deserialize(document).map_err(|error: serde_yaml_ng::Error| {
                CliError::invalid(format!("{origin}: {error}"))
            })?;
        match value {
            Value::Null => continue,
            Value::Object(_) => documents.push((origin, value)),
            _ => {
                return Err(CliError::invalid(format!(
                    "{origin}: expected a mapping with kind, metadata and spec"
                )))
            }
        }
    }
    Ok(documents)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_several_documents_and_skips_empty_ones() {
        let text =
            "kind: python\nmetadata: {name: a}\n---\n---\nkind: python+job\nmetadata: {name: b}\n";
        let documents = parse_documents(text, "f.yaml").unwrap();
        assert_eq!(documents.len(), 2);
        assert_eq!(documents[1].1["kind"], "python+job");
    }

    #[test]
    fn packs_python_sources_and_container_build_contexts() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("ctx")).unwrap();
        std::fs::write(dir.path().join("ctx/index.html"), "hello").unwrap();
        for pointer in PACKED_FOLDERS {
            let mut value = serde_json::json!({"spec": {"build": {"context": {}}, "source": {}}});
            value.pointer_mut(pointer).unwrap()["path"] = "ctx".into();
            pack_path_field(&mut value, pointer, dir.path(), "f.yaml").unwrap();
            let mapping = value.pointer(pointer).unwrap();
            assert!(mapping.get("path").is_none(), "{pointer}");
            let packed = pack::pack_path(&dir.path().join("ctx"), MAX_SOURCE_BYTES).unwrap();
            assert_eq!(mapping["archive"], packed.archive.as_str(), "{pointer}");
        }
        let mut value = serde_json::json!({"spec": {"build": {"context": {"path": "missing"}}}});
        let error =
            pack_path_field(&mut value, "/spec/build/context", dir.path(), "f.yaml").unwrap_err();
        assert!(
            error
                .message
                .starts_with("f.yaml: spec.build.context.path: "),
            "{}",
            error.message
        );
    }

    #[test]
    fn malformed_yaml_names_the_file_and_document() {
        let error = parse_documents("kind: [unclosed\n", "f.yaml").unwrap_err();
        assert!(
            error.message.starts_with("f.yaml (document 1)"),
            "{}",
            error.message
        );
    }
}
