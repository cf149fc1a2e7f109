//! Workflows (`kind: pipeline`, `docs/formats.md`): the normalized spec of a DAG of steps, the
//! links of a step's run to its workflow run, and the node status a workflow run shows.
//!
//! The `pipeline` runtime validates and normalizes [`WorkflowSpec`]; the controller's
//! workflow engine executes it by creating one child run per node. Pure data: no IO.

use crate::entity::RetryPolicy;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// The function kind (runtime) of workflows.
pub const PIPELINE_KIND: &str = "pipeline";
/// The one action of workflows.
pub const PIPELINE_ACTION: &str = "pipeline";
/// `spec.framework` of workflow runs: the controller drives them; no framework executes them.
pub const WORKFLOW_FRAMEWORK: &str = "workflow";

/// The normalized spec of a workflow version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkflowSpec {
    /// The workflow's parameters and their defaults; a run's parameters go over them.
    /// Expressions read them as `params.<name>`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schema(inline)]
    pub parameters: BTreeMap<String, WorkflowParameter>,
    /// The steps, in the order written. Names are unique DNS-1123 labels.
    #[schema(inline)]
    pub steps: Vec<Step>,
    /// At most this many step runs of one workflow run are active at once (none: no limit
    /// beyond the server's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallelism: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkflowParameter {
    /// Used when a run does not give the parameter; without one the parameter is required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub default: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// One node of the DAG: a function (or workflow) + action + parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Step {
    pub name: String,
    /// `name` (its latest version when the workflow run starts the step) or `name:version`.
    pub function: String,
    /// The runtime action (the function's default action when absent: `job`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// A task of the function whose settings the step run takes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    /// Parameters; strings may hold `${{ }}` expressions (see `expr`) reading `params`,
    /// `steps.<name>.results` / `.artifacts` / `.state`, and `item` inside a `for_each`.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    #[schema(value_type = Object)]
    pub parameters: Map<String, Value>,
    /// Input artifacts: parameter name → artifact key (`store://...`), or an expression giving
    /// one (`${{ steps.prepare.artifacts.dataset }}`). The step's run gets a local path.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub inputs: BTreeMap<String, String>,
    /// Steps that must end before this one starts. After normalization it also holds every
    /// step the step's expressions read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    /// A condition (an expression, with or without `${{ }}`): false → the step is skipped.
    #[serde(default, rename = "if", skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
    /// Fan-out: a list, or an expression giving one; one run per item, which expressions
    /// read as `item` (and `index`). The step's results are the list of the items' results.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub for_each: Option<Value>,
    /// At most this many runs of a `for_each` step at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallelism: Option<u32>,
    /// The step run's retry policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(inline)]
    pub retry: Option<RetryPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
    /// A failed optional step does not fail the workflow; the steps after it still run.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub optional: bool,
    /// Where the step runs (the task's or the server's default when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub framework: Option<String>,
}

/// `status.step_of` of a run that a workflow run started for one of its nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StepOf {
    /// The workflow run.
    pub run_id: String,
    /// The step's name.
    pub step: String,
    /// The item of a `for_each` step (0-based).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u32>,
}

/// `status.workflow` of a workflow run: every node and its state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WorkflowStatus {
    pub nodes: Vec<NodeStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodeStatus {
    /// `train`, or `train[2]` for an item of a `for_each` step.
    pub name: String,
    pub step: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u32>,
    pub state: NodeState,
    /// The step's run, once created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// Rerun from failure: the run of an earlier workflow run whose results this node reuses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reused_from: Option<String>,
    /// Why it is skipped or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum NodeState {
    /// Waiting for the steps it depends on (or for a parallelism slot).
    Waiting,
    /// Its run exists and has not ended.
    Running,
    Succeeded,
    Failed,
    /// Its condition was false, or a step it depends on failed or was skipped... see the
    /// engine's rules in `server/src/controller/workflows/plan`.
    Skipped,
    Stopped,
    /// Rerun from failure: the node's results come from an earlier workflow run.
    Reused,
}

impl NodeState {
    pub fn is_terminal(self) -> bool {
        !matches!(self, NodeState::Waiting | NodeState::Running)
    }
}
