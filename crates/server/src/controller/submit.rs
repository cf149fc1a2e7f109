//! Accepting runs: resolve the function version and task, let the runtime check the
//! parameters, freeze everything into the run's self-contained spec, and store it READY.

use super::{Controller, ControllerError};
use crate::catalog::{now, validate_labels};
use runplane_domain::entity::{
    run_kind, split_task_kind, validate_replicas, validate_timeout_seconds,
    DEFAULT_STOP_GRACE_SECONDS,
};
use runplane_domain::hash::content_hash;
use runplane_domain::invalid::Problems;
use runplane_domain::key::split_name_version;
use runplane_domain::names::validate_name;
use runplane_domain::workflow::{NodeState, WorkflowSpec, WORKFLOW_FRAMEWORK};
use runplane_domain::{
    reason, FunctionVersion, Invalid, Run, RunMetadata, RunRequest, RunSettings, RunSpec, RunState,
    RunStatus, Task, Transition,
};
use runplane_store::{IdempotencyKey, Put};

/// Where a run comes from besides its request, recorded in its status.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunLinks {
    /// The workflow run (and node) that started it.
    pub step_of: Option<runplane_domain::workflow::StepOf>,
    /// The key of the trigger that created it.
    pub produced_by: Option<String>,
}

/// The action a run takes when the request names none.
pub const DEFAULT_ACTION: &str = "job";

impl Controller {
    /// Accepts a run request. With an idempotency key, a retried request returns the run the
    /// first one created (`created: false`).
    pub async fn submit_run(
        &self,
        project: &str,
        request: RunRequest,
        caller: &str,
        idempotency_key: Option<String>,
    ) -> Result<Put<Run>, ControllerError> {
        self.submit_run_linked(
            project,
            request,
            caller,
            idempotency_key,
            RunLinks::default(),
        )
        .await
    }

    /// [`submit_run`](Self::submit_run) for a run that a workflow or a trigger starts,
    /// recording where it comes from.
    pub async fn submit_run_linked(
        &self,
        project: &str,
        request: RunRequest,
        caller: &str,
        idempotency_key: Option<String>,
        links: RunLinks,
    ) -> Result<Put<Run>, ControllerError> {
        let idempotency = request_idempotency(idempotency_key, &request);
        let run = self.prepare_run(project, request, caller, links).await?;
        self.store_new_run(run, idempotency).await
    }

    /// [`submit_run_linked`](Self::submit_run_linked) for a workflow's step: the run is
    /// created already claimed, and started here, when the dispatcher would claim it at once.
    pub(crate) async fn submit_step(
        &self,
        project: &str,
        request: RunRequest,
        caller: &str,
        idempotency_key: String,
        links: RunLinks,
    ) -> Result<Put<Run>, ControllerError> {
        let idempotency = request_idempotency(Some(idempotency_key), &request);
        let mut run = self.prepare_run(project, request, caller, links).await?;
        let claimed = self.claimable_at_creation(&run).await?;
        if claimed {
            self.mark_claimed(&mut run);
        }
        let put = self.store_new_run(run, idempotency).await?;
        if claimed && put.created {
            // Its own task, as in the dispatcher: a slow start (a container's) does not hold
            // up the engine's other evaluations.
            let controller = self.clone();
            let run = put.value.clone();
            tokio::spawn(async move { controller.start_claimed(run).await });
            // Let it begin now rather than after the rest of the caller's evaluation.
            tokio::task::yield_now().await;
        }
        Ok(put)
    }

    /// The READY run a request makes, validated and merged into its self-contained spec, but
    /// not stored: for callers that store it in a transaction of their own (a trigger's fire).
    pub async fn prepare_run(
        &self,
        project: &str,
        request: RunRequest,
        caller: &str,
        links: RunLinks,
    ) -> Result<Run, ControllerError> {
        validate_name("project", project)?;
        let mut problems = Problems::new();
        problems.check(validate_labels("labels", &request.labels));
        problems.check(super::secrets::validate_secret_refs(
            "secrets",
            &request.secrets,
        ));
        let (function_name, pinned_version) = split_name_version(&request.function);
        problems.check(validate_name("function", function_name));
        problems.finish()?;

        // Without an action, the function's runtime says which: the version read for it is
        // kept, and reused below unless a task pins another one.
        let mut read_for_action: Option<Option<FunctionVersion>> = None;
        let action = match request.action.clone() {
            Some(action) => action,
            None => {
                let function = self
                    .store()
                    .get_function(project, function_name, pinned_version)
                    .await?;
                let action = self.default_action(function.as_ref());
                read_for_action = Some(function);
                action
            }
        };
        let task = self
            .find_task(project, function_name, request.task.as_deref(), &action)
            .await?;
        // A task may pin a version; the request's own pin wins.
        let task_version = task.as_ref().and_then(|task| {
            split_name_version(&task.spec.function)
                .1
                .map(str::to_string)
        });
        let version = pinned_version.map(str::to_string).or(task_version);
        let function = match read_for_action {
            Some(function) if version.as_deref() == pinned_version => function.ok_or_else(|| {
                crate::catalog::function_not_found(project, function_name, pinned_version)
            }),
            _ => {
                self.catalog()
                    .resolve_function(project, function_name, version.as_deref())
                    .await
            }
        }
        .map_err(|error| match error {
            crate::catalog::CatalogError::NotFound(what) => {
                ControllerError::Invalid(Invalid::field("function", format!("no {what}")))
            }
            other => other.into(),
        })?;
        let mut spec = self.build_spec(&function, task.as_ref(), &action, &request)?;
        if spec.framework == WORKFLOW_FRAMEWORK {
            if !request.inputs.is_empty() {
                return Err(Invalid::field(
                    "inputs",
                    "a workflow takes artifacts through its steps' inputs, not its own",
                )
                .into());
            }
            self.check_workflow_steps(project, &spec).await?;
        }
        spec.inputs = self
            .resolve_inputs(project, &request.inputs, &spec.parameters)
            .await?;
        // Checked at submit so that a typo is a 422 now rather than an ERROR later; a secret
        // deleted in between is caught again at dispatch (`secret_missing`).
        self.check_secrets_exist(project, &spec.settings.secrets)
            .await?;
        let mut run = new_run(project, caller, spec, request.labels, None);
        run.status.step_of = links.step_of;
        run.status.produced_by = links.produced_by;
        Ok(run)
    }

    /// Starts a new run with the same self-contained spec as `id` (linked by `rerun_of`).
    pub async fn rerun(
        &self,
        project: &str,
        id: &str,
        caller: &str,
        idempotency_key: Option<String>,
    ) -> Result<Put<Run>, ControllerError> {
        let original = self.get_run(project, id).await?;
        let idempotency = idempotency_key.map(|key| IdempotencyKey {
            key,
            request_hash: content_hash(&serde_json::json!({ "rerun_of": id })),
        });
        let run = new_run(
            project,
            caller,
            original.spec,
            original.metadata.labels,
            Some(original.metadata.id),
        );
        self.store_new_run(run, idempotency).await
    }

    /// Reruns a workflow run that ended ERROR or STOPPED, reusing the results of every node
    /// that succeeded (or was itself reused): only the others run.
    pub async fn rerun_from_failure(
        &self,
        project: &str,
        id: &str,
        caller: &str,
        idempotency_key: Option<String>,
    ) -> Result<Put<Run>, ControllerError> {
        let original = self.get_run(project, id).await?;
        if original.spec.framework != WORKFLOW_FRAMEWORK {
            return Err(ControllerError::Conflict(format!(
                "run {id} is not a workflow run: rerun it without from_failure"
            )));
        }
        if !matches!(original.status.state, RunState::Error | RunState::Stopped) {
            return Err(ControllerError::Conflict(format!(
                "run {id} is {}: only a workflow run that ended ERROR or STOPPED is rerun from \
                 its failure",
                original.status.state
            )));
        }
        let reuse: std::collections::BTreeMap<String, String> = original
            .status
            .workflow
            .iter()
            .flat_map(|status| &status.nodes)
            .filter_map(|node| match node.state {
                NodeState::Succeeded => node.run_id.clone().map(|run| (node.name.clone(), run)),
                NodeState::Reused => node.reused_from.clone().map(|run| (node.name.clone(), run)),
                _ => None,
            })
            .collect();
        let idempotency = idempotency_key.map(|key| IdempotencyKey {
            key,
            request_hash: content_hash(
                &serde_json::json!({ "rerun_of": id, "from_failure": true }),
            ),
        });
        let mut spec = original.spec;
        spec.reuse = reuse;
        let run = new_run(
            project,
            caller,
            spec,
            original.metadata.labels,
            Some(original.metadata.id),
        );
        self.store_new_run(run, idempotency).await
    }

    pub(crate) async fn store_new_run(
        &self,
        run: Run,
        idempotency: Option<IdempotencyKey>,
    ) -> Result<Put<Run>, ControllerError> {
        let project = run.metadata.project.clone();
        // A step's project holds its workflow run: it exists.
        if run.status.step_of.is_none() {
            self.store()
                .ensure_project(&project, &run.metadata.created_by)
                .await?;
        }
        let put = self.store().create_run(run, idempotency).await?;
        crate::failpoints::hit("after_create_run");
        if put.created {
            tracing::debug!(run = %put.value.metadata.id, "run accepted");
            self.published(&put.value);
        }
        Ok(put)
    }

    /// The action of a request that names none: the runtime's default (`job`, `pipeline` for
    /// workflows). An unknown function gets the plain default; resolving it fails later with
    /// the right error.
    fn default_action(&self, function: Option<&FunctionVersion>) -> String {
        function
            .and_then(|function| self.inner.runtimes.get(&function.kind))
            .map_or(DEFAULT_ACTION, |runtime| runtime.default_action())
            .to_string()
    }

    /// Every step of a workflow names a function that exists now: a typo fails the submit,
    /// not a step halfway through.
    async fn check_workflow_steps(
        &self,
        project: &str,
        spec: &RunSpec,
    ) -> Result<(), ControllerError> {
        let workflow: WorkflowSpec = serde_json::from_value(spec.function_spec.clone())
            .map_err(|error| Invalid::field("function", format!("not a workflow: {error}")))?;
        let mut problems = Problems::new();
        for step in &workflow.steps {
            let (name, version) = split_name_version(&step.function);
            if self
                .store()
                .get_function(project, name, version)
                .await?
                .is_none()
            {
                problems.add(
                    "function",
                    format!(
                        "step {}: no function {} in project {project}",
                        step.name, step.function
                    ),
                );
            }
        }
        Ok(problems.finish()?)
    }

    /// The task whose settings a run takes: the named one, else the only task of this function
    /// and action, else none.
    async fn find_task(
        &self,
        project: &str,
        function_name: &str,
        task_name: Option<&str>,
        action: &str,
    ) -> Result<Option<Task>, ControllerError> {
        if let Some(task_name) = task_name {
            let task = self
                .store()
                .get_task(project, task_name)
                .await?
                .ok_or_else(|| {
                    Invalid::field("task", format!("no task {task_name} in project {project}"))
                })?;
            let (task_function, _) = split_name_version(&task.spec.function);
            if task_function != function_name {
                return Err(Invalid::field(
                    "task",
                    format!(
                        "task {task_name} is for function {task_function}, not {function_name}"
                    ),
                )
                .into());
            }
            if split_task_kind(&task.kind).map(|(_, a)| a) != Some(action) {
                return Err(Invalid::field(
                    "task",
                    format!(
                        "task {task_name} is a {} task, not for action {action}",
                        task.kind
                    ),
                )
                .into());
            }
            return Ok(Some(task));
        }
        let mut matching: Vec<Task> = self
            .store()
            .list_tasks(project)
            .await?
            .into_iter()
            .filter(|task| {
                split_name_version(&task.spec.function).0 == function_name
                    && split_task_kind(&task.kind).map(|(_, a)| a) == Some(action)
            })
            .collect();
        match matching.len() {
            0 | 1 => Ok(matching.pop()),
            _ => Err(Invalid::field(
                "task",
                format!(
                    "function {function_name} has several {action} tasks ({}): name one",
                    matching
                        .iter()
                        .map(|t| t.metadata.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
            .into()),
        }
    }

    fn build_spec(
        &self,
        function: &FunctionVersion,
        task: Option<&Task>,
        action: &str,
        request: &RunRequest,
    ) -> Result<RunSpec, ControllerError> {
        let runtime = self.inner.runtimes.get(&function.kind).ok_or_else(|| {
            Invalid::field(
                "function",
                format!(
                    "function {} has kind {:?}, which this server has no runtime for",
                    function.metadata.name, function.kind
                ),
            )
        })?;
        if !runtime.actions().contains(&action) {
            return Err(Invalid::field(
                "action",
                format!(
                    "runtime {} has no action {action:?} (it has: {})",
                    function.kind,
                    runtime.actions().join(", ")
                ),
            )
            .into());
        }
        let mut problems = Problems::new();
        // Inputs become parameters (their local paths) at dispatch: the handler must accept
        // them, and a required one is given by an input.
        let mut parameters = request.parameters.clone();
        for param in request.inputs.keys() {
            parameters
                .entry(param.clone())
                .or_insert_with(|| serde_json::Value::String(String::new()));
        }
        problems.check(runtime.validate_run(&function.spec, action, &parameters));
        let framework = if runtime.is_workflow() {
            if request.framework.is_some() {
                problems.add(
                    "framework",
                    "a workflow run is driven by the server itself; choose frameworks on its \
                     steps (`framework` of a step)",
                );
            }
            WORKFLOW_FRAMEWORK.to_string()
        } else {
            request
                .framework
                .clone()
                .or_else(|| task.and_then(|task| task.spec.framework.clone()))
                .unwrap_or_else(|| self.inner.options.default_framework.clone())
        };
        match self.inner.frameworks.get(&framework) {
            _ if runtime.is_workflow() => {}
            None => problems.add(
                "framework",
                format!(
                    "framework {framework:?} is not enabled on this server (enabled: {})",
                    self.framework_names().join(", ")
                ),
            ),
            Some(chosen) if runtime.requires_containers() && !chosen.runs_containers() => {
                let containers: Vec<&str> = self
                    .framework_names()
                    .into_iter()
                    .filter(|name| {
                        self.inner
                            .frameworks
                            .get(name)
                            .is_some_and(|f| f.runs_containers())
                    })
                    .collect();
                problems.add(
                    "framework",
                    format!(
                        "{} functions run in their image, which framework {framework:?} does not \
                         use; choose one that runs containers ({})",
                        function.kind,
                        if containers.is_empty() {
                            "none is enabled on this server: start it with --engine-socket"
                                .to_string()
                        } else {
                            containers.join(", ")
                        }
                    ),
                );
            }
            Some(_) => {}
        }
        problems.check(validate_timeout_seconds(
            "timeout_seconds",
            request.timeout_seconds,
        ));
        if let Some(retry) = &request.retry {
            problems.check(retry.validate().map_err(|invalid| invalid.within("retry")));
        }
        problems.check(validate_replicas("replicas", request.replicas));
        if let Some(resources) = &request.resources {
            problems.check(resources.validate("resources"));
        }
        problems.finish()?;
        let settings = RunSettings {
            max_concurrency: task.and_then(|task| task.spec.max_concurrency),
            env: task.map(|task| task.spec.env.clone()).unwrap_or_default(),
            // Names only: values are decrypted at dispatch and never enter the snapshot.
            secrets: {
                let mut secrets = task
                    .map(|task| task.spec.secrets.clone())
                    .unwrap_or_default();
                secrets.extend(request.secrets.clone());
                secrets
            },
            stop_grace_seconds: task
                .and_then(|task| task.spec.stop_grace_seconds)
                .unwrap_or(DEFAULT_STOP_GRACE_SECONDS),
            // The request's own settings win over the task's.
            timeout_seconds: request
                .timeout_seconds
                .or_else(|| task.and_then(|task| task.spec.timeout_seconds)),
            retry: request
                .retry
                .clone()
                .or_else(|| task.and_then(|task| task.spec.retry.clone())),
            log_limit_bytes: task.and_then(|task| task.spec.log_limit_bytes),
            replicas: request
                .replicas
                .or_else(|| task.and_then(|task| task.spec.replicas)),
            ready_timeout_seconds: task.and_then(|task| task.spec.ready_timeout_seconds),
            resources: request
                .resources
                .clone()
                .or_else(|| task.and_then(|task| task.spec.resources.clone())),
        };
        Ok(RunSpec {
            function: function.status.key.clone(),
            function_name: function.metadata.name.clone(),
            function_version: function.metadata.version.clone(),
            runtime: function.kind.clone(),
            action: action.to_string(),
            task: task.map(|task| task.metadata.name.clone()),
            framework,
            parameters: request.parameters.clone(),
            settings,
            function_spec: function.spec.clone(),
            inputs: Default::default(),
            reuse: Default::default(),
        })
    }
}

/// The idempotency key of a request, with the hash that tells a retry from another request.
fn request_idempotency(key: Option<String>, request: &RunRequest) -> Option<IdempotencyKey> {
    key.map(|key| IdempotencyKey {
        key,
        request_hash: content_hash(&serde_json::to_value(request).unwrap_or_default()),
    })
}

/// A run record that is CREATED, BUILT (its spec is merged and validated) and READY, with the
/// three transitions stored in the same transaction.
fn new_run(
    project: &str,
    caller: &str,
    spec: RunSpec,
    labels: runplane_domain::Labels,
    rerun_of: Option<String>,
) -> Run {
    let at = now();
    let step = |from: Option<RunState>, to: RunState, why: &str| Transition {
        from,
        to,
        at,
        attempt: 1,
        reason: Some(why.to_string()),
        message: None,
    };
    Run {
        kind: run_kind(&spec.runtime, &spec.action),
        metadata: RunMetadata {
            id: uuid::Uuid::now_v7().to_string(),
            project: project.to_string(),
            labels,
            created: at,
            updated: at,
            created_by: caller.to_string(),
        },
        spec,
        status: RunStatus {
            state: RunState::Ready,
            attempt: 1,
            reason: Some(reason::SUBMITTED.to_string()),
            message: None,
            results: None,
            rerun_of,
            service: None,
            step_of: None,
            produced_by: None,
            workflow: None,
            owner: None,
            artifacts: Default::default(),
            transitions: vec![
                step(None, RunState::Created, reason::SUBMITTED),
                step(Some(RunState::Created), RunState::Built, reason::SUBMITTED),
                step(Some(RunState::Built), RunState::Ready, reason::SUBMITTED),
            ],
            attempts: vec![],
        },
    }
}
