//! Validation of a workflow spec at apply time: names, references between steps, every
//! `${{ }}` expression and what it reads, and cycles — each problem at its exact field path
//! (relative to the spec: `steps[2].parameters.x`).
//!
//! Normalization makes every step's `depends_on` hold the steps its expressions read as well
//! (sorted, without duplicates): what the engine waits for is visible in the stored spec.

use runplane_domain::entity::validate_timeout_seconds;
use runplane_domain::expr;
use runplane_domain::invalid::Problems;
use runplane_domain::key::split_name_version;
use runplane_domain::names::validate_name;
use runplane_domain::workflow::{Step, WorkflowSpec};
use runplane_domain::Invalid;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// What `steps.<name>.` may be followed by.
const STEP_FIELDS: &[&str] = &["results", "artifacts", "state", "run_id"];
/// The variables expressions may read.
const ROOTS: &[&str] = &["params", "steps", "item", "index"];

/// Checks `spec` and returns it normalized.
pub fn normalize(mut spec: WorkflowSpec) -> Result<WorkflowSpec, Invalid> {
    let mut problems = Problems::new();
    if spec.steps.is_empty() {
        problems.add("steps", "a workflow needs at least one step");
    }
    for name in spec.parameters.keys() {
        if !is_identifier(name) {
            problems.add(
                format!("parameters.{name}"),
                "must be an identifier (letters, digits and _, not starting with a digit)",
            );
        }
    }
    if spec.parallelism == Some(0) {
        problems.add("parallelism", "must be at least 1");
    }
    let mut seen = BTreeSet::new();
    for (i, step) in spec.steps.iter().enumerate() {
        let field = format!("steps[{i}].name");
        problems.check(validate_name(&field, &step.name));
        if !seen.insert(step.name.as_str()) {
            problems.add(field, format!("{:?} names two steps", step.name));
        }
    }
    let names: BTreeSet<String> = spec.steps.iter().map(|s| s.name.clone()).collect();
    let params: BTreeSet<String> = spec.parameters.keys().cloned().collect();
    let mut edges: Vec<BTreeSet<String>> = Vec::new();
    for (i, step) in spec.steps.iter().enumerate() {
        let at = format!("steps[{i}]");
        let mut deps = BTreeSet::new();
        check_step(step, &at, &names, &params, &mut deps, &mut problems);
        edges.push(deps);
    }
    problems.finish()?;
    if let Some((index, cycle)) = find_cycle(&spec, &edges) {
        return Err(Invalid::field(
            format!("steps[{index}].depends_on"),
            format!("cycle: {}", cycle.join(" → ")),
        ));
    }
    for (step, deps) in spec.steps.iter_mut().zip(edges) {
        step.depends_on = deps.into_iter().collect();
    }
    Ok(spec)
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn check_step(
    step: &Step,
    at: &str,
    names: &BTreeSet<String>,
    params: &BTreeSet<String>,
    deps: &mut BTreeSet<String>,
    problems: &mut Problems,
) {
    let (function, version) = split_name_version(&step.function);
    problems.check(validate_name(&format!("{at}.function"), function));
    if step.function.contains(':') && version.is_none() {
        problems.add(format!("{at}.function"), "names no version after `:`");
    }
    if step.action.as_deref().is_some_and(str::is_empty) {
        problems.add(format!("{at}.action"), "must not be empty");
    }
    for (j, dep) in step.depends_on.iter().enumerate() {
        let field = format!("{at}.depends_on[{j}]");
        if dep == &step.name {
            problems.add(field, "a step cannot depend on itself");
        } else if !names.contains(dep) {
            problems.add(field, format!("there is no step {dep:?}"));
        } else {
            deps.insert(dep.clone());
        }
    }
    if step.parallelism == Some(0) {
        problems.add(format!("{at}.parallelism"), "must be at least 1");
    }
    if step.parallelism.is_some() && step.for_each.is_none() {
        problems.add(
            format!("{at}.parallelism"),
            "only a step with for_each runs several runs at once",
        );
    }
    problems.check(validate_timeout_seconds(
        &format!("{at}.timeout_seconds"),
        step.timeout_seconds,
    ));
    if let Some(retry) = &step.retry {
        problems.check(
            retry
                .validate()
                .map_err(|invalid| invalid.within(&format!("{at}.retry"))),
        );
    }
    let fan_out = step.for_each.is_some();
    let mut reads = |field: String,
                     paths: BTreeSet<String>,
                     item_allowed: bool,
                     problems: &mut Problems| {
        for path in paths {
            if let Err(message) = check_reference(&path, step, names, params, item_allowed, deps) {
                problems.add(field.clone(), message);
            }
        }
    };
    for (name, value) in &step.parameters {
        let field = format!("{at}.parameters.{name}");
        match expr::references(value, &field) {
            Ok(paths) => reads(field, paths, fan_out, problems),
            Err(invalid) => problems.extend(invalid),
        }
    }
    for (name, value) in &step.inputs {
        let field = format!("{at}.inputs.{name}");
        if expr::is_template(value) {
            match expr::references(&Value::String(value.clone()), &field) {
                Ok(paths) => reads(field, paths, fan_out, problems),
                Err(invalid) => problems.extend(invalid),
            }
        } else if value.trim().is_empty() {
            problems.add(
                field,
                "must name an artifact (name, name:version or a store:// key)",
            );
        }
    }
    if let Some(condition) = &step.condition {
        let field = format!("{at}.if");
        match expr::condition_references(condition, &field) {
            Ok(paths) => reads(field, paths, fan_out, problems),
            Err(invalid) => problems.extend(invalid),
        }
    }
    match &step.for_each {
        None | Some(Value::Array(_)) => {}
        Some(Value::String(text)) if expr::is_template(text) => {
            let field = format!("{at}.for_each");
            match expr::references(&Value::String(text.clone()), &field) {
                Ok(paths) => reads(field, paths, false, problems),
                Err(invalid) => problems.extend(invalid),
            }
        }
        Some(other) => problems.add(
            format!("{at}.for_each"),
            format!("must be a list or a `${{{{ }}}}` expression giving one, not {other}"),
        ),
    }
}

/// Checks one dotted path an expression reads; a step it reads becomes a dependency.
fn check_reference(
    path: &str,
    step: &Step,
    names: &BTreeSet<String>,
    params: &BTreeSet<String>,
    item_allowed: bool,
    deps: &mut BTreeSet<String>,
) -> Result<(), String> {
    let mut parts = path.split('.');
    let root = parts.next().unwrap_or_default();
    match root {
        "params" => match parts.next() {
            Some(name) if !params.contains(name) => Err(format!(
                "reads params.{name}, but the workflow has no parameter {name:?} (it has: {})",
                list(params)
            )),
            _ => Ok(()),
        },
        "steps" => {
            let Some(name) = parts.next() else {
                return Err("reads `steps` as a whole: name a step (steps.<name>.results)".into());
            };
            if name == step.name {
                return Err(format!("reads its own step ({path})"));
            }
            if !names.contains(name) {
                return Err(format!("reads {path}, but there is no step {name:?}"));
            }
            if let Some(field) = parts.next() {
                if !STEP_FIELDS.contains(&field) {
                    return Err(format!(
                        "reads {path}: a step has no field {field:?} (use {})",
                        STEP_FIELDS.join(", ")
                    ));
                }
            }
            deps.insert(name.to_string());
            Ok(())
        }
        "item" | "index" if item_allowed => Ok(()),
        "item" | "index" => Err(format!(
            "reads {root}, which only exists in a step with for_each (and not in for_each itself)"
        )),
        other => Err(format!(
            "reads {other:?}, which does not exist (expressions read {})",
            ROOTS.join(", ")
        )),
    }
}

fn list(names: &BTreeSet<String>) -> String {
    if names.is_empty() {
        "none".to_string()
    } else {
        names.iter().cloned().collect::<Vec<_>>().join(", ")
    }
}

/// A cycle among the steps, as (the index of a step on it, its names in order, closed).
fn find_cycle(spec: &WorkflowSpec, edges: &[BTreeSet<String>]) -> Option<(usize, Vec<String>)> {
    let index: BTreeMap<&str, usize> = spec
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();
    // 0 unvisited, 1 on the current path, 2 done.
    let mut mark = vec![0u8; spec.steps.len()];
    let mut path: Vec<usize> = Vec::new();
    fn visit(
        node: usize,
        edges: &[BTreeSet<String>],
        index: &BTreeMap<&str, usize>,
        mark: &mut [u8],
        path: &mut Vec<usize>,
    ) -> Option<Vec<usize>> {
        mark[node] = 1;
        path.push(node);
        for dep in &edges[node] {
            let Some(&next) = index.get(dep.as_str()) else {
                continue;
            };
            if mark[next] == 1 {
                let start = path.iter().position(|&n| n == next).unwrap_or(0);
                let mut cycle = path[start..].to_vec();
                cycle.push(next);
                return Some(cycle);
            }
            if mark[next] == 0 {
                if let Some(cycle) = visit(next, edges, index, mark, path) {
                    return Some(cycle);
                }
            }
        }
        path.pop();
        mark[node] = 2;
        None
    }
    for start in 0..spec.steps.len() {
        if mark[start] == 0 {
            if let Some(cycle) = visit(start, edges, &index, &mut mark, &mut path) {
                // Edges point at dependencies: read the cycle as "a needs b needs ... a".
                let names = cycle.iter().map(|&i| spec.steps[i].name.clone()).collect();
                return Some((cycle[0], names));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests;
