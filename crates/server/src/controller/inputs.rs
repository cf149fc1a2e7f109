//! Artifacts as run inputs.
//!
//! At submit, each requested input (`name`, `name:version` or a `store://` key) is pinned to
//! one artifact version, whose key goes into the run's self-contained spec: a rerun reads the
//! same bytes even after newer versions were logged. At dispatch, each pinned version is made
//! a local path (the store's own folder on the local backend, a cached download otherwise),
//! handed to the handler as the parameter of the same name, mounted read-only for container
//! frameworks, and recorded as consumed by the run (the artifact's lineage).

use super::{Controller, ControllerError};
use runplane_domain::artifact::{ArtifactType, ARTIFACT_ENTITY};
use runplane_domain::key::{split_name_version, Key};
use runplane_domain::{invalid::Problems, Artifact, Invalid, Run, Runnable, Volume};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Where container frameworks mount input `<param>`: `/runplane/inputs/<param>`.
pub const CONTAINER_INPUTS_DIR: &str = "/runplane/inputs";

impl Controller {
    /// Pins every requested input to one stored artifact version: parameter → version key.
    /// Each problem is reported at `inputs.<param>`.
    pub(super) async fn resolve_inputs(
        &self,
        project: &str,
        requested: &BTreeMap<String, String>,
        parameters: &Map<String, Value>,
    ) -> Result<BTreeMap<String, String>, ControllerError> {
        let mut problems = Problems::new();
        let mut pinned = BTreeMap::new();
        for (param, reference) in requested {
            let field = format!("inputs.{param}");
            if parameters.contains_key(param) {
                problems.add(
                    &field,
                    "also given as a parameter: a parameter gets one value",
                );
                continue;
            }
            match self.find_input(project, reference).await? {
                Ok(artifact) => {
                    pinned.insert(param.clone(), artifact.status.key);
                }
                Err(problem) => problems.add(&field, problem),
            }
        }
        problems.finish()?;
        Ok(pinned)
    }

    /// The artifact version a reference names, or why there is none.
    async fn find_input(
        &self,
        project: &str,
        reference: &str,
    ) -> Result<Result<Artifact, String>, ControllerError> {
        let (name, version) = if reference.starts_with("store://") {
            let key = match Key::parse(reference) {
                Ok(key) => key,
                Err(invalid) => return Ok(Err(invalid.to_string())),
            };
            if key.entity != ARTIFACT_ENTITY || ArtifactType::parse(&key.kind).is_none() {
                return Ok(Err(format!("{reference:?} is not an artifact key")));
            }
            if key.project != project {
                return Ok(Err(format!(
                    "{reference:?} belongs to project {:?}: a run reads artifacts of its own \
                     project",
                    key.project
                )));
            }
            (key.name, key.version)
        } else {
            let (name, version) = split_name_version(reference);
            (name.to_string(), version.map(str::to_string))
        };
        let found = self
            .store()
            .get_artifact(project, &name, version.as_deref())
            .await?;
        Ok(found.ok_or_else(|| match version {
            Some(version) => format!("no artifact {name} with version {version}"),
            None => format!("no artifact {name}"),
        }))
    }

    /// Makes the run's pinned inputs local paths and hands them to `runnable`'s parameters
    /// (through `parameters`, which the caller passes to the runtime), mounting them
    /// read-only when the framework runs containers; records the run as their consumer.
    pub(super) async fn materialize_inputs(
        &self,
        run: &Run,
        runs_containers: bool,
    ) -> Result<(Map<String, Value>, Vec<Volume>), String> {
        let mut parameters = run.spec.parameters.clone();
        let mut volumes = Vec::new();
        for (param, key) in &run.spec.inputs {
            let artifact = self
                .pinned_artifact(&run.metadata.project, key)
                .await
                .map_err(|problem| format!("input {param}: {problem}"))?;
            let folder = self
                .artifacts()
                .materialize(&artifact)
                .await
                .map_err(|error| format!("input {param} ({key}): {error}"))?;
            let (host, container) = if runs_containers {
                let mount = format!("{CONTAINER_INPUTS_DIR}/{param}");
                volumes.push(Volume {
                    host_path: folder.display().to_string(),
                    container_path: mount.clone(),
                    read_only: true,
                });
                (folder.clone(), std::path::PathBuf::from(mount))
            } else {
                (folder.clone(), folder.clone())
            };
            let path = match &artifact.spec.file {
                Some(file) if artifact.spec.r#type == ArtifactType::File => container.join(file),
                _ => container,
            };
            tracing::debug!(run = %run.metadata.id, %param, %key, host = %host.display(),
                "input materialized");
            parameters.insert(param.clone(), Value::String(path.display().to_string()));
        }
        if !run.spec.inputs.is_empty() {
            self.store()
                .put_run_inputs(&run.metadata.project, &run.metadata.id, &run.spec.inputs)
                .await
                .map_err(|error| format!("cannot record the run's inputs: {error}"))?;
        }
        Ok((parameters, volumes))
    }

    async fn pinned_artifact(&self, project: &str, key: &str) -> Result<Artifact, String> {
        let key = Key::parse(key).map_err(|invalid: Invalid| invalid.to_string())?;
        self.store()
            .get_artifact(project, &key.name, key.version.as_deref())
            .await
            .map_err(|error| error.to_string())?
            .ok_or_else(|| format!("artifact {key} no longer exists"))
    }
}

/// Adds the input mounts to the job (or every replica) of a runnable.
pub(super) fn mount_inputs(runnable: &mut Runnable, volumes: Vec<Volume>) {
    let job = match runnable {
        Runnable::Job(job) => job,
        Runnable::Service(service) => &mut service.replica,
        Runnable::Build(_) => return,
    };
    job.volumes.extend(volumes);
}
