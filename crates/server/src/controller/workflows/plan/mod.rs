//! The workflow engine's decisions, without IO: given a workflow's spec, its parameters and
//! the runs of its nodes so far, what every node's state is, which nodes start now, and
//! whether the workflow has ended.
//!
//! Everything here is a function of its inputs, so an evaluation replayed after a crash makes
//! the same decisions (and renders the same requests, which the idempotency keys of step runs
//! rely on).
//!
//! Rules:
//! - a step starts when every step it depends on (its `depends_on`, and every step its
//!   expressions read) has ended and none of them failed or was stopped — an optional step
//!   that failed and a skipped step count as done (their results are null);
//! - `if` false → SKIPPED; a `for_each` step has one node per item (`step[i]`), at most
//!   `parallelism` running at once; the workflow's `parallelism` caps all its step runs;
//! - an expression that fails to render fails its node;
//! - once a non-optional step failed (or was stopped) no node starts; when nothing runs any
//!   more the workflow ends ERROR naming that step, and nodes never started are SKIPPED;
//! - a stopping workflow starts nothing and ends when none of its nodes runs;
//! - a rerun from failure marks the nodes its spec reuses REUSED, with the results of the
//!   earlier runs, and runs the others.

use runplane_domain::expr;
use runplane_domain::workflow::{NodeState, NodeStatus, Step, WorkflowSpec, WorkflowStatus};
use runplane_domain::{RunRequest, RunState};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};

/// Label of step runs: the workflow run that started them.
pub const WORKFLOW_LABEL: &str = "runplane.io/workflow";
/// Label of step runs: their step's name.
pub const STEP_LABEL: &str = "runplane.io/step";

/// What the engine knows of one node's run.
#[derive(Debug, Clone, PartialEq)]
pub struct Child {
    pub run_id: String,
    pub state: RunState,
    pub results: Option<Value>,
    pub artifacts: BTreeMap<String, String>,
    pub message: Option<String>,
    /// A service run (serve/deploy): its gateway URL. Such a node is done once its run is
    /// RUNNING (every replica ready): a service does not end by itself.
    pub service_url: Option<String>,
}

impl Child {
    fn node_state(&self) -> NodeState {
        if self.state == RunState::Running && self.service_url.is_some() {
            return NodeState::Succeeded;
        }
        node_state(self.state)
    }

    /// What later steps read as its results.
    fn results(&self) -> Value {
        match (&self.results, &self.service_url) {
            (Some(results), _) => results.clone(),
            (None, Some(url)) => json!({ "service": url }),
            (None, None) => Value::Null,
        }
    }
}

/// A workflow spec with what every evaluation of it needs, worked out once: the order its
/// steps are decided in, and what each step depends on. A run's spec never changes, so the
/// engine keeps one per workflow run.
pub struct Plan {
    spec: WorkflowSpec,
    /// Step indexes, dependencies first; Err names a cycle or an unknown step.
    order: Result<Vec<usize>, String>,
    /// Per step (by index): the names of the steps it depends on.
    dependencies: Vec<BTreeSet<String>>,
}

impl Plan {
    pub fn new(spec: WorkflowSpec) -> Self {
        let dependencies: Vec<BTreeSet<String>> = spec.steps.iter().map(dependencies).collect();
        let order = order_of(&spec, &dependencies);
        Plan {
            spec,
            order,
            dependencies,
        }
    }

    pub fn spec(&self) -> &WorkflowSpec {
        &self.spec
    }
}

pub struct Inputs<'a> {
    pub workflow_run_id: &'a str,
    pub plan: &'a Plan,
    /// The run's parameters over the spec's defaults.
    pub params: &'a Map<String, Value>,
    /// Node name → its run.
    pub children: &'a BTreeMap<String, Child>,
    /// Rerun from failure: node name → the earlier run whose results it reuses.
    pub reused: &'a BTreeMap<String, Child>,
    /// Node name → why its run could not be created.
    pub start_errors: &'a BTreeMap<String, String>,
    /// The workflow is being stopped (or deleted): nothing starts.
    pub stopping: bool,
}

/// A node to start now.
#[derive(Debug, Clone, PartialEq)]
pub struct Start {
    pub node: String,
    pub step: String,
    pub index: Option<u32>,
    pub request: RunRequest,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Every step ended well: the workflow's results.
    Completed(Value),
    /// A step failed: why.
    Failed(String),
    /// It was being stopped and nothing runs any more.
    Stopped,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub status: WorkflowStatus,
    pub starts: Vec<Start>,
    /// Runs of nodes that have not ended (what a stop must stop).
    pub active_runs: Vec<String>,
    pub outcome: Option<Outcome>,
}

/// A step as later expressions see it (`steps.<name>`).
struct StepView {
    state: NodeState,
    results: Value,
    artifacts: Value,
    run_id: Value,
    optional: bool,
}

impl StepView {
    fn is_done(&self) -> bool {
        self.state.is_terminal()
    }

    /// Ended without success and not optional: the workflow cannot succeed.
    fn blocks(&self) -> bool {
        matches!(self.state, NodeState::Failed | NodeState::Stopped) && !self.optional
    }
}

/// The `steps.<name>` references of a step's expressions, plus its `depends_on`.
pub fn dependencies(step: &Step) -> BTreeSet<String> {
    let mut names: BTreeSet<String> = step.depends_on.iter().cloned().collect();
    let mut read = |paths: BTreeSet<String>| {
        for path in paths {
            let mut parts = path.split('.');
            if parts.next() == Some("steps") {
                if let Some(name) = parts.next() {
                    names.insert(name.to_string());
                }
            }
        }
    };
    if let Ok(paths) = expr::references(&Value::Object(step.parameters.clone()), "") {
        read(paths);
    }
    let inputs: Map<String, Value> = step
        .inputs
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    if let Ok(paths) = expr::references(&Value::Object(inputs), "") {
        read(paths);
    }
    if let Some(Value::String(text)) = &step.for_each {
        if let Ok(paths) = expr::references(&Value::String(text.clone()), "") {
            read(paths);
        }
    }
    if let Some(condition) = &step.condition {
        if let Ok(paths) = expr::condition_references(condition, "") {
            read(paths);
        }
    }
    names.remove(&step.name);
    names
}

/// Step indexes in an order where each comes after what it depends on (ties: written
/// order), given each step's [`dependencies`]. Err names a step on a cycle or with an unknown
/// dependency.
fn order_of(spec: &WorkflowSpec, dependencies: &[BTreeSet<String>]) -> Result<Vec<usize>, String> {
    let index: BTreeMap<&str, usize> = spec
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();
    let mut deps: Vec<BTreeSet<usize>> = Vec::with_capacity(spec.steps.len());
    for (step, names) in spec.steps.iter().zip(dependencies) {
        let mut set = BTreeSet::new();
        for name in names {
            let i = index.get(name.as_str()).ok_or_else(|| {
                format!("step {} depends on {name}, which does not exist", step.name)
            })?;
            set.insert(*i);
        }
        deps.push(set);
    }
    let mut placed = vec![false; spec.steps.len()];
    let mut out = Vec::with_capacity(spec.steps.len());
    while out.len() < spec.steps.len() {
        let next = (0..spec.steps.len())
            .find(|&i| !placed[i] && deps[i].iter().all(|&d| placed[d]))
            .ok_or_else(|| {
                let stuck = (0..spec.steps.len()).find(|&i| !placed[i]).unwrap_or(0);
                format!("step {} is on a dependency cycle", spec.steps[stuck].name)
            })?;
        placed[next] = true;
        out.push(next);
    }
    Ok(out)
}

fn node_state(state: RunState) -> NodeState {
    match state {
        RunState::Completed => NodeState::Succeeded,
        RunState::Error | RunState::Deleting | RunState::Deleted => NodeState::Failed,
        RunState::Stopped => NodeState::Stopped,
        _ => NodeState::Running,
    }
}

pub(crate) fn node_name(step: &str, index: Option<u32>) -> String {
    match index {
        Some(i) => format!("{step}[{i}]"),
        None => step.to_string(),
    }
}

pub fn decide(inputs: &Inputs<'_>) -> Decision {
    let spec = &inputs.plan.spec;
    let order = match &inputs.plan.order {
        Ok(order) => order,
        Err(message) => {
            return Decision {
                status: WorkflowStatus::default(),
                starts: vec![],
                active_runs: vec![],
                outcome: Some(Outcome::Failed(message.clone())),
            }
        }
    };
    let mut views: BTreeMap<String, StepView> = BTreeMap::new();
    let mut nodes_by_step: BTreeMap<usize, Vec<NodeStatus>> = BTreeMap::new();
    let mut starts = Vec::new();
    let mut active_runs = Vec::new();
    let mut failing: Option<String> = None;
    let mut in_flight = inputs
        .children
        .values()
        .filter(|c| c.node_state() == NodeState::Running)
        .count();
    let workflow_cap = spec.parallelism.map_or(usize::MAX, |p| p as usize);

    for &i in order {
        let step = &spec.steps[i];
        let deps = &inputs.plan.dependencies[i];
        let mut nodes = Vec::new();
        let plain = |state: NodeState, message: Option<String>| NodeStatus {
            name: step.name.clone(),
            step: step.name.clone(),
            index: None,
            state,
            run_id: None,
            reused_from: None,
            message,
        };
        let waiting = deps
            .iter()
            .any(|d| views.get(d).is_none_or(|v| !v.is_done()));
        let blocked_by = deps
            .iter()
            .find(|d| views.get(*d).is_some_and(StepView::blocks));
        let view = if let Some(blocker) = blocked_by {
            nodes.push(plain(
                NodeState::Skipped,
                Some(format!("not run: step {blocker} did not succeed")),
            ));
            StepView::ended(NodeState::Skipped, step.optional)
        } else if waiting {
            nodes.push(plain(NodeState::Waiting, None));
            StepView::ended(NodeState::Waiting, step.optional)
        } else {
            evaluate_step(
                inputs,
                step,
                &views,
                failing.is_some(),
                &mut in_flight,
                workflow_cap,
                &mut nodes,
                &mut starts,
                &mut active_runs,
            )
        };
        if failing.is_none() && view.blocks() {
            let why = nodes
                .iter()
                .find(|n| matches!(n.state, NodeState::Failed | NodeState::Stopped))
                .and_then(|n| n.message.clone())
                .unwrap_or_else(|| "it did not succeed".to_string());
            failing = Some(match view.state {
                NodeState::Stopped => format!("step {} was stopped", step.name),
                _ => format!("step {} failed: {why}", step.name),
            });
        }
        views.insert(step.name.clone(), view);
        nodes_by_step.insert(i, nodes);
    }

    // Nodes in written order, whatever order they were decided in.
    let mut nodes: Vec<NodeStatus> = nodes_by_step.into_values().flatten().collect();
    let anything_runs = nodes.iter().any(|n| n.state == NodeState::Running);
    let all_done = views.values().all(StepView::is_done);
    let outcome = if anything_runs {
        None
    } else if inputs.stopping {
        Some(Outcome::Stopped)
    } else if let Some(why) = &failing {
        Some(Outcome::Failed(why.clone()))
    } else if all_done {
        let results: Map<String, Value> = views
            .iter()
            .map(|(name, view)| (name.clone(), view.results.clone()))
            .collect();
        Some(Outcome::Completed(json!({ "steps": results })))
    } else {
        None
    };
    if outcome.is_some() {
        for node in &mut nodes {
            if node.state == NodeState::Waiting {
                node.state = NodeState::Skipped;
                node.message = Some(if inputs.stopping {
                    "not run: the workflow was stopped".to_string()
                } else {
                    "not run: the workflow failed".to_string()
                });
            }
        }
    }
    Decision {
        status: WorkflowStatus { nodes },
        starts,
        active_runs,
        outcome,
    }
}

impl StepView {
    fn ended(state: NodeState, optional: bool) -> Self {
        StepView {
            state,
            results: Value::Null,
            artifacts: json!({}),
            run_id: Value::Null,
            optional,
        }
    }
}

/// What expressions read: `params`, `steps.<name>.{results,artifacts,state,run_id}`, and in a
/// `for_each` node `item` and `index`.
fn context(
    inputs: &Inputs<'_>,
    views: &BTreeMap<String, StepView>,
    item: Option<(&Value, u32)>,
) -> Value {
    let steps: Map<String, Value> = views
        .iter()
        .filter(|(_, v)| v.is_done())
        .map(|(name, v)| {
            let state = serde_json::to_value(v.state).unwrap_or(Value::Null);
            (
                name.clone(),
                json!({"results": v.results, "artifacts": v.artifacts, "state": state, "run_id": v.run_id}),
            )
        })
        .collect();
    let mut context = json!({ "params": inputs.params, "steps": steps });
    if let (Some((item, index)), Some(object)) = (item, context.as_object_mut()) {
        object.insert("item".into(), item.clone());
        object.insert("index".into(), json!(index));
    }
    context
}

#[allow(clippy::too_many_arguments)]
fn evaluate_step(
    inputs: &Inputs<'_>,
    step: &Step,
    views: &BTreeMap<String, StepView>,
    failing: bool,
    in_flight: &mut usize,
    workflow_cap: usize,
    nodes: &mut Vec<NodeStatus>,
    starts: &mut Vec<Start>,
    active_runs: &mut Vec<String>,
) -> StepView {
    let fail_step = |nodes: &mut Vec<NodeStatus>, message: String| {
        nodes.push(NodeStatus {
            name: step.name.clone(),
            step: step.name.clone(),
            index: None,
            state: NodeState::Failed,
            run_id: None,
            reused_from: None,
            message: Some(message),
        });
        StepView::ended(NodeState::Failed, step.optional)
    };
    // Built only when an expression is evaluated: for most steps of a long workflow (already
    // run, no condition), never — and it holds the results of every step before.
    let context = std::cell::OnceCell::new();
    let context = || context.get_or_init(|| self::context(inputs, views, None));
    if let Some(condition) = &step.condition {
        match expr::evaluate_condition(condition, context(), "if") {
            Ok(true) => {}
            Ok(false) => {
                nodes.push(NodeStatus {
                    name: step.name.clone(),
                    step: step.name.clone(),
                    index: None,
                    state: NodeState::Skipped,
                    run_id: None,
                    reused_from: None,
                    message: Some(format!("its condition is false: {condition}")),
                });
                return StepView::ended(NodeState::Skipped, step.optional);
            }
            Err(error) => return fail_step(nodes, error.to_string()),
        }
    }
    let items: Option<Vec<Value>> = match &step.for_each {
        None => None,
        Some(list) => match expr::render(list, context(), "for_each") {
            Ok(Value::Array(items)) => Some(items),
            Ok(other) => {
                return fail_step(nodes, format!("for_each: must give a list, not {other}"))
            }
            Err(error) => return fail_step(nodes, error.to_string()),
        },
    };
    let step_cap = step.parallelism.map_or(usize::MAX, |p| p as usize);
    let indexes: Vec<Option<u32>> = match &items {
        None => vec![None],
        Some(items) => (0..items.len())
            .map(|i| Some(u32::try_from(i).unwrap_or(u32::MAX)))
            .collect(),
    };
    let mut step_running = indexes
        .iter()
        .filter(|index| {
            inputs
                .children
                .get(&node_name(&step.name, **index))
                .is_some_and(|c| c.node_state() == NodeState::Running)
        })
        .count();
    let mut results = Vec::new();
    let mut artifacts = Vec::new();
    let mut states = Vec::new();
    let mut first_run_id = Value::Null;
    for index in indexes {
        let name = node_name(&step.name, index);
        let mut node = NodeStatus {
            name: name.clone(),
            step: step.name.clone(),
            index,
            state: NodeState::Waiting,
            run_id: None,
            reused_from: None,
            message: None,
        };
        if let Some(earlier) = inputs.reused.get(&name) {
            node.state = NodeState::Reused;
            node.reused_from = Some(earlier.run_id.clone());
            if first_run_id.is_null() {
                first_run_id = Value::String(earlier.run_id.clone());
            }
            results.push(earlier.results());
            artifacts.push(serde_json::to_value(&earlier.artifacts).unwrap_or(Value::Null));
        } else if let Some(child) = inputs.children.get(&name) {
            node.state = child.node_state();
            node.run_id = Some(child.run_id.clone());
            if first_run_id.is_null() {
                first_run_id = Value::String(child.run_id.clone());
            }
            if node.state == NodeState::Running {
                active_runs.push(child.run_id.clone());
            }
            if matches!(node.state, NodeState::Failed | NodeState::Stopped) {
                node.message = Some(
                    child
                        .message
                        .clone()
                        .unwrap_or_else(|| format!("its run ended {}", child.state)),
                );
            }
            results.push(child.results());
            artifacts.push(serde_json::to_value(&child.artifacts).unwrap_or(Value::Null));
        } else if let Some(error) = inputs.start_errors.get(&name) {
            node.state = NodeState::Failed;
            node.message = Some(error.clone());
        } else if !(failing || inputs.stopping)
            && *in_flight < workflow_cap
            && step_running < step_cap
        {
            let item = items
                .as_ref()
                .zip(index)
                .and_then(|(items, i)| items.get(i as usize).map(|item| (item, i)));
            let item_context;
            let context = match item {
                Some(item) => {
                    item_context = self::context(inputs, views, Some(item));
                    &item_context
                }
                None => context(),
            };
            match request(inputs, step, context) {
                Ok(request) => {
                    node.state = NodeState::Running;
                    *in_flight += 1;
                    step_running += 1;
                    starts.push(Start {
                        node: name,
                        step: step.name.clone(),
                        index,
                        request,
                    });
                }
                Err(message) => {
                    node.state = NodeState::Failed;
                    node.message = Some(message);
                }
            }
        }
        states.push(node.state);
        nodes.push(node);
    }
    let state = if states
        .iter()
        .any(|s| matches!(s, NodeState::Waiting | NodeState::Running))
    {
        NodeState::Running
    } else if states.contains(&NodeState::Failed) {
        NodeState::Failed
    } else if states.contains(&NodeState::Stopped) {
        NodeState::Stopped
    } else if !states.is_empty() && states.iter().all(|s| *s == NodeState::Reused) {
        NodeState::Reused
    } else {
        NodeState::Succeeded
    };
    let (results, artifacts) = if items.is_some() {
        (Value::Array(results), Value::Array(artifacts))
    } else {
        (
            results.pop().unwrap_or(Value::Null),
            artifacts.pop().unwrap_or_else(|| json!({})),
        )
    };
    StepView {
        state,
        results,
        artifacts,
        run_id: first_run_id,
        optional: step.optional,
    }
}

/// The run request of one node, its expressions rendered.
fn request(inputs: &Inputs<'_>, step: &Step, context: &Value) -> Result<RunRequest, String> {
    let parameters = match expr::render(
        &Value::Object(step.parameters.clone()),
        context,
        "parameters",
    )
    .map_err(|e| e.to_string())?
    {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    let mut rendered_inputs = BTreeMap::new();
    for (name, value) in &step.inputs {
        let field = format!("inputs.{name}");
        match expr::render(&Value::String(value.clone()), context, &field)
            .map_err(|e| e.to_string())?
        {
            Value::String(key) => {
                rendered_inputs.insert(name.clone(), key);
            }
            other => return Err(format!("{field}: must give an artifact key, not {other}")),
        }
    }
    Ok(RunRequest {
        function: step.function.clone(),
        action: step.action.clone(),
        task: step.task.clone(),
        parameters,
        framework: step.framework.clone(),
        labels: [
            (
                WORKFLOW_LABEL.to_string(),
                inputs.workflow_run_id.to_string(),
            ),
            (STEP_LABEL.to_string(), step.name.clone()),
        ]
        .into(),
        timeout_seconds: step.timeout_seconds,
        retry: step.retry.clone(),
        inputs: rendered_inputs,
        ..RunRequest::default()
    })
}

#[cfg(test)]
mod tests;
