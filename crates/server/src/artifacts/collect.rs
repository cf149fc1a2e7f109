//! Collection at the end of an attempt: what the run logged in its outputs folder
//! (`artifacts.jsonl` + `artifacts/<name>/`, written by the Python runner's
//! `context.log_artifact` or by any container job that writes the same layout) becomes
//! artifact versions, uploaded and stored before the run's terminal transition names them.
//!
//! Replaying the same exit event finds the same content hashes, so nothing is stored twice.

use super::content;
use crate::controller::Controller;
use runplane_domain::artifact::{artifact_key, artifact_path, ARTIFACT_KIND};
use runplane_domain::hash::version_id;
use runplane_domain::{
    names::validate_name, reason, Artifact, ArtifactMetadata, ArtifactSpec, ArtifactStatus,
    ArtifactType, ExitOutcome, Labels, Run, RunState,
};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

/// The index of logged artifacts in the outputs folder, one JSON object per line.
pub const INDEX_FILE: &str = "artifacts.jsonl";
/// The folder of logged artifacts in the outputs folder, one sub-folder per name.
pub const ARTIFACTS_DIR: &str = "artifacts";

#[derive(Debug, Deserialize)]
struct Logged {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    labels: Labels,
}

/// Stores the artifacts of a run whose attempt ends in `to` (COMPLETED or ERROR: failures
/// keep their lineage too) and returns name → key for the terminal transition. A broken
/// artifact turns a COMPLETED run into ERROR `invalid_output`, and is named in the message
/// of a run that failed anyway.
pub(crate) async fn at_exit(
    controller: &Controller,
    run: &Run,
    outcome: &ExitOutcome,
    (to, to_reason, message): (&mut RunState, &mut String, &mut Option<String>),
) -> Option<BTreeMap<String, String>> {
    if !matches!(*to, RunState::Completed | RunState::Error) {
        return None;
    }
    let outputs = outcome.outputs_dir.as_deref()?;
    match collect(controller, run, outputs).await {
        Ok(artifacts) if artifacts.is_empty() => None,
        Ok(artifacts) => Some(artifacts),
        Err(problem) => {
            tracing::warn!(run = %run.metadata.id, %problem, "a logged artifact cannot be stored");
            if *to == RunState::Completed {
                *to = RunState::Error;
                *to_reason = reason::INVALID_OUTPUT.to_string();
                *message = Some(problem);
            } else {
                *message = Some(match message.take() {
                    Some(first) => format!("{first}; also {problem}"),
                    None => problem,
                });
            }
            None
        }
    }
}

/// Reads the index, then scans, uploads and stores each artifact (the last logging of a
/// name wins). Errors are messages naming the artifact.
async fn collect(
    controller: &Controller,
    run: &Run,
    outputs: &Path,
) -> Result<BTreeMap<String, String>, String> {
    let index = match tokio::fs::read_to_string(outputs.join(INDEX_FILE)).await {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(format!("{INDEX_FILE} cannot be read: {e}")),
    };
    let mut logged: BTreeMap<String, Logged> = BTreeMap::new();
    for (number, line) in index.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let entry: Logged = serde_json::from_str(line)
            .map_err(|e| format!("{INDEX_FILE} line {}: {e}", number + 1))?;
        logged.insert(entry.name.clone(), entry);
    }
    let mut keys = BTreeMap::new();
    for (name, entry) in logged {
        let artifact = store_one(controller, run, outputs, &entry)
            .await
            .map_err(|problem| format!("artifact {name:?}: {problem}"))?;
        keys.insert(name, artifact.status.key);
    }
    Ok(keys)
}

async fn store_one(
    controller: &Controller,
    run: &Run,
    outputs: &Path,
    entry: &Logged,
) -> Result<Artifact, String> {
    validate_name("name", &entry.name).map_err(|e| e.to_string())?;
    for (key, value) in &entry.labels {
        runplane_domain::names::validate_label("labels", key, value).map_err(|e| e.to_string())?;
    }
    let kind = ArtifactType::parse(&entry.kind)
        .ok_or_else(|| format!("type {:?} is neither \"file\" nor \"dir\"", entry.kind))?;
    let folder = outputs.join(ARTIFACTS_DIR).join(&entry.name);
    let scanned = {
        let folder = folder.clone();
        tokio::task::spawn_blocking(move || {
            if !folder.is_dir() {
                return Err(format!(
                    "{ARTIFACTS_DIR}/{}/ is missing from the outputs folder",
                    folder
                        .file_name()
                        .and_then(|n| n.to_str())
                        .unwrap_or_default()
                ));
            }
            content::scan(&folder)
        })
        .await
        .map_err(|e| format!("scanning failed: {e}"))??
    };
    let file = match kind {
        ArtifactType::File => match scanned.files.as_slice() {
            [only] if !only.relative.contains('/') => Some(only.relative.clone()),
            files => {
                return Err(format!(
                    "a file artifact's folder must hold exactly one file, not {}",
                    files.len()
                ))
            }
        },
        ArtifactType::Dir => None,
    };
    let project = &run.metadata.project;
    let version = version_id(&scanned.hash);
    if let Some(existing) = controller
        .store()
        .get_artifact(project, &entry.name, Some(&version))
        .await
        .map_err(|e| e.to_string())?
    {
        if existing.spec.hash == scanned.hash {
            return Ok(existing);
        }
    }
    let path = artifact_path(project, &entry.name, &version);
    let objects = controller.artifacts();
    for file in &scanned.files {
        objects
            .upload_file(&path, &file.relative, &file.path)
            .await
            .map_err(|e| e.to_string())?;
    }
    let artifact = Artifact {
        kind: ARTIFACT_KIND.to_string(),
        metadata: ArtifactMetadata {
            name: entry.name.clone(),
            project: project.clone(),
            version: version.clone(),
            labels: entry.labels.clone(),
            created: chrono::Utc::now(),
            created_by: run.metadata.created_by.clone(),
        },
        spec: ArtifactSpec {
            r#type: kind,
            size: scanned.size,
            files: scanned.files.len() as u64,
            hash: scanned.hash,
            path,
            file,
        },
        status: ArtifactStatus {
            key: artifact_key(project, kind, &entry.name, &version),
            produced_by: Some(run.metadata.id.clone()),
            consumers: Vec::new(),
        },
    };
    let put = controller
        .store()
        .put_artifact(artifact)
        .await
        .map_err(|e| format!("cannot be stored: {e}"))?;
    Ok(put.value)
}
