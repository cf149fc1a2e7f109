//! The `pipeline` runtime (workflows, `docs/formats.md`): validates and normalizes a
//! [`WorkflowSpec`] — a DAG of steps — and checks a workflow run's parameters. Its runs are
//! driven by the controller's workflow engine, which creates one run per node: nothing is
//! handed to a framework ([`Runtime::is_workflow`]).
//!
//! Pure like every runtime.

mod validate;

use crate::{Interpretation, Runtime, RuntimeError};
use runplane_domain::workflow::{WorkflowSpec, PIPELINE_ACTION, PIPELINE_KIND};
use runplane_domain::{reason, ExitOutcome, Invalid, Run, RunState, Runnable};
use serde_json::{Map, Value};

const ACTIONS: &[&str] = &[PIPELINE_ACTION];

#[derive(Debug, Default)]
pub struct PipelineRuntime;

impl PipelineRuntime {
    pub fn new() -> Self {
        PipelineRuntime
    }
}

/// The workflow spec of a normalized function spec.
pub fn workflow_spec(normalized: &Value) -> Result<WorkflowSpec, RuntimeError> {
    serde_json::from_value(normalized.clone())
        .map_err(|error| RuntimeError::BadSpec(format!("not a workflow spec: {error}")))
}

impl Runtime for PipelineRuntime {
    fn kind(&self) -> &'static str {
        PIPELINE_KIND
    }

    fn actions(&self) -> &'static [&'static str] {
        ACTIONS
    }

    fn default_action(&self) -> &'static str {
        PIPELINE_ACTION
    }

    fn is_workflow(&self) -> bool {
        true
    }

    fn normalize_function(&self, spec: &Value) -> Result<Value, Invalid> {
        let spec: WorkflowSpec = serde_path_to_error::deserialize(spec).map_err(|error| {
            let path = error.path().to_string();
            Invalid::field(
                if path == "." { String::new() } else { path },
                error.into_inner().to_string(),
            )
        })?;
        let spec = validate::normalize(spec)?;
        serde_json::to_value(&spec).map_err(|error| Invalid::field("", error.to_string()))
    }

    fn validate_run(
        &self,
        function_spec: &Value,
        action: &str,
        parameters: &Map<String, Value>,
    ) -> Result<(), Invalid> {
        if action != PIPELINE_ACTION {
            return Err(Invalid::field(
                "action",
                format!("workflows have one action, {PIPELINE_ACTION:?}"),
            ));
        }
        let spec = workflow_spec(function_spec)
            .map_err(|error| Invalid::field("function", error.to_string()))?;
        let mut problems = runplane_domain::invalid::Problems::new();
        for name in parameters.keys() {
            if !spec.parameters.contains_key(name) {
                problems.add(
                    format!("parameters.{name}"),
                    format!(
                        "the workflow has no parameter {name:?} (it has: {})",
                        spec.parameters
                            .keys()
                            .map(String::as_str)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
            }
        }
        for (name, parameter) in &spec.parameters {
            if parameter.default.is_none() && !parameters.contains_key(name) {
                problems.add(
                    format!("parameters.{name}"),
                    "is required (it has no default)",
                );
            }
        }
        problems.finish()
    }

    fn to_runnable(&self, _run: &Run) -> Result<Runnable, RuntimeError> {
        Err(RuntimeError::BadSpec(
            "workflow runs are driven by the controller, not a framework".to_string(),
        ))
    }

    fn interpret(&self, _run: &Run, _outcome: &ExitOutcome) -> Interpretation {
        Interpretation {
            state: RunState::Error,
            reason: reason::FAILED.to_string(),
            message: Some("workflow runs are driven by the controller, not a framework".into()),
            results: None,
            new_version: None,
        }
    }

    fn spec_schema(&self) -> Value {
        use utoipa::PartialSchema;
        let mut schema = serde_json::to_value(WorkflowSpec::schema()).unwrap_or_default();
        if let Value::Object(object) = &mut schema {
            object.insert(
                "$schema".into(),
                "https://json-schema.org/draft/2020-12/schema".into(),
            );
            object.insert("title".into(), PIPELINE_KIND.into());
        }
        schema
    }
}
