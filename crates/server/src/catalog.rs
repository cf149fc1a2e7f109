//! Applying and reading the versioned and named entities (projects, functions, tasks):
//! validation through the runtimes, content-hash versioning, and the store. Runs are the
//! controller's.
//!
//! A new function version's requirements are resolved into its lock here, once
//! (`resolver.rs`): re-applying the same spec neither makes a version nor resolves again.

use crate::controller::bus::EventBus;
use crate::resolver::{ResolveError, Resolver};
use chrono::{DateTime, SubsecRound, Utc};
use runplane_domain::hash::{content_hash, version_id};
use runplane_domain::invalid::Problems;
use runplane_domain::key::Key;
use runplane_domain::names::{validate_label, validate_name};
use runplane_domain::{
    entity::{split_task_kind, validate_replicas, validate_timeout_seconds},
    Document, FunctionStatus, FunctionVersion, Invalid, Labels, Metadata, Task, TaskMetadata,
    TaskSpec,
};
use runplane_runtimes::Runtimes;
use runplane_store::{Put, Store, StoreError};
use serde_json::json;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error("{0} not found")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Dependencies could not be resolved for a reason of the server's (no resolver).
    #[error("{0}")]
    Unavailable(String),
}

/// Timestamps are kept at microsecond precision everywhere, so that what is read back from
/// any store equals what was written.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// Whether a function version's dependencies are resolved when it is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resolve {
    NewVersions,
    Never,
}

#[derive(Clone)]
pub struct Catalog {
    store: Arc<dyn Store>,
    runtimes: Runtimes,
    /// Told after each committed change, so that `/events` readers look again.
    bus: EventBus,
    resolver: Resolver,
}

impl Catalog {
    pub fn new(
        store: Arc<dyn Store>,
        runtimes: Runtimes,
        bus: EventBus,
        resolver: Resolver,
    ) -> Self {
        Catalog {
            store,
            runtimes,
            bus,
            resolver,
        }
    }

    pub fn runtimes(&self) -> &Runtimes {
        &self.runtimes
    }

    /// Validates a document's metadata against the project of the URL it was posted to.
    fn check_metadata(document: &Document, project: &str) -> Result<(), Invalid> {
        let mut problems = Problems::new();
        problems.check(validate_name("metadata.name", &document.metadata.name));
        if let Some(doc_project) = &document.metadata.project {
            if doc_project != project {
                problems.add(
                    "metadata.project",
                    format!(
                        "{doc_project:?} does not match the project of the request ({project:?})"
                    ),
                );
            }
        }
        problems.check(validate_labels(
            "metadata.labels",
            &document.metadata.labels,
        ));
        problems.finish()
    }

    /// A function and a workflow may not share a name in a project (`docs/concepts.md`): `run NAME`
    /// must mean one thing.
    async fn check_name_class(
        &self,
        project: &str,
        name: &str,
        workflow: bool,
    ) -> Result<(), CatalogError> {
        let Some(existing) = self.store.get_function(project, name, None).await? else {
            return Ok(());
        };
        let existing_is_workflow = self
            .runtimes
            .get(&existing.kind)
            .is_some_and(|runtime| runtime.is_workflow());
        if existing_is_workflow == workflow {
            return Ok(());
        }
        let (is, not) = if existing_is_workflow {
            ("workflow", "function")
        } else {
            ("function", "workflow")
        };
        Err(Invalid::field(
            "metadata.name",
            format!(
                "{name} is a {is} in project {project}; a {not} cannot take its name (delete the \
                 {is} first or choose another name)"
            ),
        )
        .into())
    }

    /// Applies a function document: a new immutable version unless a version with the same
    /// content hash exists (then that one is returned with `created: false`).
    pub async fn apply_function(
        &self,
        project: &str,
        document: Document,
        caller: &str,
    ) -> Result<Put<FunctionVersion>, CatalogError> {
        self.put_function(project, document, caller, Resolve::NewVersions)
            .await
    }

    /// Stores the version a build made: its spec keeps the lock it was built with.
    pub async fn apply_built_function(
        &self,
        project: &str,
        document: Document,
        caller: &str,
    ) -> Result<Put<FunctionVersion>, CatalogError> {
        self.put_function(project, document, caller, Resolve::Never)
            .await
    }

    async fn put_function(
        &self,
        project: &str,
        mut document: Document,
        caller: &str,
        resolve: Resolve,
    ) -> Result<Put<FunctionVersion>, CatalogError> {
        validate_name("project", project)?;
        let mut problems = Problems::new();
        problems.check(Self::check_metadata(&document, project));
        let runtime = self.runtimes.get(&document.kind).ok_or_else(|| {
            Invalid::field(
                "kind",
                format!(
                    "unknown function kind {:?} (known: {})",
                    document.kind,
                    self.runtimes.kinds().join(", ")
                ),
            )
        });
        let runtime = problems.merge(runtime)?.clone();
        // Parsing a large source tree takes seconds: keep it off the async workers.
        let submitted = std::mem::take(&mut document.spec);
        let normalizing = runtime.clone();
        let spec = tokio::task::spawn_blocking(move || normalizing.normalize_function(&submitted))
            .await
            .map_err(|error| Invalid::field("spec", format!("could not be checked: {error}")))?
            .map_err(|invalid| invalid.within("spec"))?;
        let hash = content_hash(&json!({
            "kind": document.kind,
            "spec": runtime.hash_input(&spec),
        }));
        let version = version_id(&hash);
        self.check_name_class(project, &document.metadata.name, runtime.is_workflow())
            .await?;
        self.store.ensure_project(project, caller).await?;
        let key = Key::new(
            project,
            "function",
            &document.kind,
            &document.metadata.name,
            Some(&version),
        );
        let spec = match runtime.dependencies(&spec) {
            // Resolved once, when the version is new: an existing version keeps its lock.
            Some(dependencies)
                if resolve == Resolve::NewVersions
                    && self
                        .store
                        .get_function(project, &document.metadata.name, Some(&version))
                        .await?
                        .is_none() =>
            {
                let lock =
                    self.resolver
                        .lock(&dependencies)
                        .await
                        .map_err(|error| match error {
                            ResolveError::Unsatisfiable(message) => {
                                CatalogError::Invalid(Invalid::field(
                                    "spec.requirements",
                                    format!("cannot be resolved: {message}"),
                                ))
                            }
                            ResolveError::Unavailable(_) => {
                                CatalogError::Unavailable(error.to_string())
                            }
                        })?;
                runtime.with_lock(spec, &lock)
            }
            _ => spec,
        };
        let function = FunctionVersion {
            kind: document.kind,
            metadata: Metadata {
                name: document.metadata.name,
                project: project.to_string(),
                version,
                labels: document.metadata.labels,
                description: document.metadata.description,
                created: now(),
                created_by: caller.to_string(),
            },
            spec,
            status: FunctionStatus {
                hash,
                key: key.to_string(),
            },
        };
        let put = self.store.put_function_version(function).await?;
        if put.created {
            self.bus.events_appended();
        }
        Ok(put)
    }

    /// Applies a task document (`kind: <runtime>+<action>`), replacing the task of that name.
    pub async fn apply_task(
        &self,
        project: &str,
        document: Document,
        caller: &str,
    ) -> Result<Task, CatalogError> {
        validate_name("project", project)?;
        let mut problems = Problems::new();
        problems.check(Self::check_metadata(&document, project));
        match split_task_kind(&document.kind) {
            None => problems.add(
                "kind",
                format!(
                    "{:?} is not a task kind: expected <runtime>+<action>, e.g. python+job",
                    document.kind
                ),
            ),
            Some((runtime_kind, action)) => match self.runtimes.get(runtime_kind) {
                None => problems.add(
                    "kind",
                    format!(
                        "unknown runtime {runtime_kind:?} (known: {})",
                        self.runtimes.kinds().join(", ")
                    ),
                ),
                Some(runtime) if !runtime.actions().contains(&action) => problems.add(
                    "kind",
                    format!(
                        "runtime {runtime_kind:?} has no action {action:?} (it has: {})",
                        runtime.actions().join(", ")
                    ),
                ),
                Some(_) => {}
            },
        }
        let spec: Result<TaskSpec, Invalid> =
            crate::api::json::from_value_with_path(document.spec.clone())
                .map_err(|invalid| invalid.within("spec"));
        if let Ok(spec) = &spec {
            let (name, _) = runplane_domain::key::split_name_version(&spec.function);
            problems.check(validate_name("spec.function", name));
            for key in spec.env.keys() {
                if key.is_empty() || key.contains('=') || key.contains('\0') {
                    problems.add(
                        format!("spec.env.{key}"),
                        "not a valid environment variable name",
                    );
                }
            }
            problems.check(crate::controller::secrets::validate_secret_refs(
                "spec.secrets",
                &spec.secrets,
            ));
            if spec.max_concurrency == Some(0) {
                problems.add("spec.max_concurrency", "must be at least 1");
            }
            problems.check(validate_timeout_seconds(
                "spec.timeout_seconds",
                spec.timeout_seconds,
            ));
            problems.check(validate_replicas("spec.replicas", spec.replicas));
            if let Some(resources) = &spec.resources {
                problems.check(resources.validate("spec.resources"));
            }
            if spec.ready_timeout_seconds == Some(0) {
                problems.add("spec.ready_timeout_seconds", "must be at least 1");
            }
            if let Some(retry) = &spec.retry {
                problems.check(
                    retry
                        .validate()
                        .map_err(|invalid| invalid.within("spec.retry")),
                );
            }
        }
        let spec = problems.merge(spec)?;
        self.store.ensure_project(project, caller).await?;
        let at = now();
        let task = Task {
            kind: document.kind,
            metadata: TaskMetadata {
                name: document.metadata.name,
                project: project.to_string(),
                labels: document.metadata.labels,
                created: at,
                updated: at,
                created_by: caller.to_string(),
            },
            spec,
        };
        let task = self.store.put_task(task).await?;
        self.bus.events_appended();
        Ok(task)
    }

    /// The function version a reference (`name` or `name:version`) means.
    pub async fn resolve_function(
        &self,
        project: &str,
        name: &str,
        version: Option<&str>,
    ) -> Result<FunctionVersion, CatalogError> {
        self.store
            .get_function(project, name, version)
            .await?
            .ok_or_else(|| function_not_found(project, name, version))
    }
}

/// The error for a function (or one version of it) that does not exist.
pub fn function_not_found(project: &str, name: &str, version: Option<&str>) -> CatalogError {
    CatalogError::NotFound(match version {
        Some(version) => format!("function {name}:{version} in project {project}"),
        None => format!("function {name} in project {project}"),
    })
}

pub fn validate_labels(field: &str, labels: &Labels) -> Result<(), Invalid> {
    let mut problems = Problems::new();
    for (key, value) in labels {
        problems.check(validate_label(field, key, value));
    }
    problems.finish()
}
