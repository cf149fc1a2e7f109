//! Prerequisite builds (`Runtime::prerequisite`): a READY run whose prerequisite is missing
//! (the environment of its lock, say) waits with reason `waiting_for_build` while one build
//! run per prerequisite key makes it; many runs asking at once share that one build. When the
//! build fails, the runs that were waiting for it end in ERROR `build_failed`; a run submitted
//! after the failure starts a new build (the failure may have been transient).
//!
//! Which build serves which key is kept in memory: after a restart, the first waiting run
//! starts a new build, which finds the work done or redoes it (builds are idempotent: the
//! environment build takes a lock file and renames its result into place atomically).

use super::{Controller, ControllerError};
use runplane_domain::{reason, Run, RunRequest, RunState};
use runplane_runtimes::Prerequisite;
use std::collections::HashMap;
use std::path::Path;

/// The label a build run started for a prerequisite carries (its key's kind, not the key:
/// label values are short).
pub const BUILD_FOR_LABEL: &str = "runplane.io/build-for";
/// Who build runs are created by.
const BUILD_CALLER: &str = "runplane";

#[derive(Default)]
pub(super) struct Builds {
    /// Prerequisite key → the run building it.
    by_key: std::sync::Mutex<HashMap<String, String>>,
}

/// What the dispatcher does with a READY run, as far as its prerequisite goes.
pub(super) enum Gate {
    /// Nothing is missing: dispatch it.
    Open,
    /// Keep it READY: `build_run` is making what it needs.
    Wait { build_run: String, key: String },
    /// The build it waited for failed: end it.
    Failed { build_run: String, message: String },
}

impl Controller {
    /// Whether what `run` needs before it starts is there (or it needs nothing). No side
    /// effect: [`prerequisite_gate`](Self::prerequisite_gate) is what starts a missing build.
    pub(super) fn prerequisite_ready(&self, run: &Run) -> bool {
        self.prerequisite_of(run)
            .is_none_or(|prerequisite| Path::new(&prerequisite.ready_path).exists())
    }

    fn prerequisite_of(&self, run: &Run) -> Option<Prerequisite> {
        self.inner
            .runtimes
            .get(&run.spec.runtime)
            .and_then(|runtime| runtime.prerequisite(run))
    }

    /// Whether `run` may be dispatched now; starts the build it needs when none runs.
    pub(super) async fn prerequisite_gate(&self, run: &Run) -> Result<Gate, ControllerError> {
        let Some(prerequisite) = self.prerequisite_of(run) else {
            return Ok(Gate::Open);
        };
        if Path::new(&prerequisite.ready_path).exists() {
            return Ok(Gate::Open);
        }
        let known = self
            .inner
            .builds
            .by_key
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&prerequisite.key)
            .cloned();
        if let Some(build_id) = known {
            if let Some(build) = self.store().get_run_by_id(&build_id).await? {
                match build.status.state {
                    RunState::Completed | RunState::Deleting | RunState::Deleted => {}
                    RunState::Error | RunState::Stopped => {
                        let ended = build.status.transitions.last().map(|t| t.at);
                        if ended.is_some_and(|ended| run.metadata.created <= ended) {
                            return Ok(Gate::Failed {
                                build_run: build_id,
                                message: build.status.message.clone().unwrap_or_else(|| {
                                    build.status.reason.clone().unwrap_or_default()
                                }),
                            });
                        }
                    }
                    _ => {
                        return Ok(Gate::Wait {
                            build_run: build_id,
                            key: prerequisite.key,
                        })
                    }
                }
            }
        }
        let build_run = self.start_build(run, &prerequisite).await?;
        self.inner
            .builds
            .by_key
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(prerequisite.key.clone(), build_run.clone());
        Ok(Gate::Wait {
            build_run,
            key: prerequisite.key,
        })
    }

    async fn start_build(
        &self,
        run: &Run,
        prerequisite: &Prerequisite,
    ) -> Result<String, ControllerError> {
        let kind = prerequisite
            .key
            .split(':')
            .next()
            .unwrap_or("build")
            .to_string();
        let request = RunRequest {
            function: format!("{}:{}", run.spec.function_name, run.spec.function_version),
            action: Some(prerequisite.action.clone()),
            parameters: prerequisite.parameters.clone(),
            framework: Some(prerequisite.framework.clone()),
            labels: [(BUILD_FOR_LABEL.to_string(), kind)].into(),
            ..RunRequest::default()
        };
        let build = self
            .submit_run(&run.metadata.project, request, BUILD_CALLER, None)
            .await?;
        tracing::info!(
            run = %run.metadata.id,
            build = %build.value.metadata.id,
            key = %prerequisite.key,
            "started a build the run waits for"
        );
        Ok(build.value.metadata.id)
    }

    /// Stores the function version a build run made (`Interpretation::new_version`): same
    /// kind, name, labels and description as the version it was built from.
    pub(super) async fn store_built_version(
        &self,
        run: &Run,
        spec: serde_json::Value,
    ) -> Result<runplane_domain::FunctionVersion, ControllerError> {
        let source = self
            .catalog()
            .resolve_function(
                &run.metadata.project,
                &run.spec.function_name,
                Some(&run.spec.function_version),
            )
            .await?;
        let document = runplane_domain::Document {
            kind: source.kind,
            metadata: runplane_domain::DocumentMetadata {
                name: source.metadata.name,
                project: Some(source.metadata.project),
                labels: source.metadata.labels,
                description: source.metadata.description,
            },
            spec,
        };
        let put = self
            .catalog()
            .apply_built_function(&run.metadata.project, document, BUILD_CALLER)
            .await?;
        Ok(put.value)
    }

    /// Ends a READY run whose build failed.
    pub(super) async fn fail_for_build(
        &self,
        run: &Run,
        build_run: &str,
        message: &str,
    ) -> Result<(), ControllerError> {
        let request = runplane_store::TransitionRequest {
            reason: Some(reason::BUILD_FAILED.to_string()),
            message: Some(format!("build run {build_run} failed: {message}")),
            ..runplane_store::TransitionRequest::new(
                &run.metadata.id,
                RunState::Ready,
                run.status.attempt,
                RunState::Error,
            )
        };
        match self.transition(request).await {
            Ok(_) | Err(runplane_store::StoreError::Conflict { .. }) => Ok(()),
            Err(error) => Err(error.into()),
        }
    }
}
