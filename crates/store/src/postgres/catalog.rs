//! Projects, function versions and tasks: the entities runs are made from.

use super::codec::{
    from_json, is_foreign_key_violation, is_unique_violation, now, text, to_json, PgResult,
};
use super::{events, Write};
use crate::{Put, StoreError};
use chrono::{DateTime, Utc};
use runplane_domain::{FunctionStatus, FunctionVersion, Metadata, Project, Task, TaskMetadata};
use sqlx::AssertSqlSafe;
use sqlx::PgConnection;

#[derive(sqlx::FromRow)]
struct ProjectRow {
    name: String,
    created: DateTime<Utc>,
    created_by: String,
}

impl From<ProjectRow> for Project {
    fn from(row: ProjectRow) -> Self {
        Project {
            name: row.name,
            created: row.created,
            created_by: row.created_by,
        }
    }
}

pub(super) async fn ensure_project(
    w: &mut Write,
    name: &str,
    created_by: &str,
) -> PgResult<Project> {
    // ON CONFLICT waits for a concurrent insert of the same name to commit, then does nothing:
    // the SELECT that follows (a new snapshot) sees whichever row won.
    sqlx::query(
        "INSERT INTO projects (name, created, created_by) VALUES ($1, $2, $3)
         ON CONFLICT (name) DO NOTHING",
    )
    .bind(name)
    .bind(now())
    .bind(created_by)
    .execute(w.conn())
    .await?;
    Ok(get_project(w.conn(), name)
        .await?
        .ok_or_else(|| StoreError::Database(format!("project {name} vanished after insert")))?)
}

pub(super) async fn get_project(conn: &mut PgConnection, name: &str) -> PgResult<Option<Project>> {
    let row = sqlx::query_as::<_, ProjectRow>(
        "SELECT name, created, created_by FROM projects WHERE name = $1",
    )
    .bind(name)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(Project::from))
}

pub(super) async fn list_projects(conn: &mut PgConnection) -> PgResult<Vec<Project>> {
    let rows = sqlx::query_as::<_, ProjectRow>(
        "SELECT name, created, created_by FROM projects ORDER BY name",
    )
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(Project::from).collect())
}

const FUNCTION_COLUMNS: &str =
    "project, name, version, kind, hash, key, spec, labels, description, created, created_by";

#[derive(sqlx::FromRow)]
struct FunctionRow {
    project: String,
    name: String,
    version: String,
    kind: String,
    hash: String,
    key: String,
    spec: String,
    labels: String,
    description: Option<String>,
    created: DateTime<Utc>,
    created_by: String,
}

impl FunctionRow {
    fn into_function(self) -> PgResult<FunctionVersion> {
        Ok(FunctionVersion {
            kind: self.kind,
            metadata: Metadata {
                name: self.name,
                project: self.project,
                version: self.version,
                labels: from_json("function_versions.labels", &self.labels)?,
                description: self.description,
                created: self.created,
                created_by: self.created_by,
            },
            spec: from_json("function_versions.spec", &self.spec)?,
            status: FunctionStatus {
                hash: self.hash,
                key: self.key,
            },
        })
    }
}

/// Function versions matching `condition` (`$1`, `$2`, ... are `binds` in order).
async fn function_where(
    conn: &mut PgConnection,
    condition: &str,
    binds: &[&str],
) -> PgResult<Vec<FunctionVersion>> {
    let sql = format!("SELECT {FUNCTION_COLUMNS} FROM function_versions f WHERE {condition}");
    let mut query = sqlx::query_as::<_, FunctionRow>(AssertSqlSafe(&*sql));
    for value in binds {
        query = query.bind(*value);
    }
    let rows = query.fetch_all(conn).await?;
    rows.into_iter().map(FunctionRow::into_function).collect()
}

pub(super) async fn put_function_version(
    w: &mut Write,
    version: &FunctionVersion,
) -> PgResult<Put<FunctionVersion>> {
    let meta = &version.metadata;
    // The unique (project, name, hash) decides which of concurrent identical puts creates the
    // version: the others wait for its commit, insert nothing and return its row.
    let inserted = sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO function_versions ({FUNCTION_COLUMNS})
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
         ON CONFLICT (project, name, hash) DO NOTHING"
    )))
    .bind(&meta.project)
    .bind(&meta.name)
    .bind(&meta.version)
    .bind(&version.kind)
    .bind(&version.status.hash)
    .bind(&version.status.key)
    .bind(to_json("spec", &version.spec)?)
    .bind(to_json("labels", &meta.labels)?)
    .bind(text(meta.description.as_deref()))
    .bind(meta.created)
    .bind(&meta.created_by)
    .execute(w.conn())
    .await;
    match inserted {
        Ok(done) if done.rows_affected() == 1 => {
            events::function_created(w, version);
            Ok(Put {
                value: version.clone(),
                created: true,
            })
        }
        Ok(_) => {
            let existing = function_where(
                w.conn(),
                "project = $1 AND name = $2 AND hash = $3",
                &[&meta.project, &meta.name, &version.status.hash],
            )
            .await?;
            let existing = existing.into_iter().next().ok_or_else(|| {
                StoreError::Database(format!(
                    "function {}/{}: the version with hash {} vanished",
                    meta.project, meta.name, version.status.hash
                ))
            })?;
            Ok(Put {
                value: existing,
                created: false,
            })
        }
        Err(e) if is_foreign_key_violation(&e) => {
            Err(StoreError::NotFound(format!("project {}", meta.project)).into())
        }
        // Same version id, different hash: two specs whose hashes share their first 16 hex
        // digits. Refused rather than silently aliased.
        Err(e) if is_unique_violation(&e) => Err(StoreError::Database(format!(
            "function {}/{} already has a version {} with another hash",
            meta.project, meta.name, meta.version
        ))
        .into()),
        Err(e) => Err(e.into()),
    }
}

pub(super) async fn get_function(
    conn: &mut PgConnection,
    project: &str,
    name: &str,
    version: Option<&str>,
) -> PgResult<Option<FunctionVersion>> {
    let found = match version {
        Some(version) => {
            function_where(
                conn,
                "project = $1 AND name = $2 AND version = $3",
                &[project, name, version],
            )
            .await?
        }
        None => {
            function_where(
                conn,
                "project = $1 AND name = $2 ORDER BY seq DESC LIMIT 1",
                &[project, name],
            )
            .await?
        }
    };
    Ok(found.into_iter().next())
}

pub(super) async fn list_functions(
    conn: &mut PgConnection,
    project: &str,
) -> PgResult<Vec<FunctionVersion>> {
    function_where(
        conn,
        "project = $1 AND seq = (SELECT MAX(seq) FROM function_versions l
                                 WHERE l.project = f.project AND l.name = f.name)
         ORDER BY name",
        &[project],
    )
    .await
}

pub(super) async fn list_function_versions(
    conn: &mut PgConnection,
    project: &str,
    name: &str,
) -> PgResult<Vec<FunctionVersion>> {
    function_where(
        conn,
        "project = $1 AND name = $2 ORDER BY seq DESC",
        &[project, name],
    )
    .await
}

pub(super) async fn delete_function(w: &mut Write, project: &str, name: &str) -> PgResult<bool> {
    let done = sqlx::query("DELETE FROM function_versions WHERE project = $1 AND name = $2")
        .bind(project)
        .bind(name)
        .execute(w.conn())
        .await?;
    Ok(done.rows_affected() > 0)
}

#[derive(sqlx::FromRow)]
struct TaskRow {
    project: String,
    name: String,
    kind: String,
    spec: String,
    labels: String,
    created: DateTime<Utc>,
    updated: DateTime<Utc>,
    created_by: String,
}

impl TaskRow {
    fn into_task(self) -> PgResult<Task> {
        Ok(Task {
            kind: self.kind,
            metadata: TaskMetadata {
                name: self.name,
                project: self.project,
                labels: from_json("tasks.labels", &self.labels)?,
                created: self.created,
                updated: self.updated,
                created_by: self.created_by,
            },
            spec: from_json("tasks.spec", &self.spec)?,
        })
    }
}

const TASK_COLUMNS: &str = "project, name, kind, spec, labels, created, updated, created_by";

pub(super) async fn put_task(w: &mut Write, task: &Task) -> PgResult<Task> {
    let meta = &task.metadata;
    // On replace, `created` and `created_by` stay those of the first put: they describe the
    // task's creation, not its latest change.
    let upserted = sqlx::query_as::<_, TaskRow>(AssertSqlSafe(format!(
        "INSERT INTO tasks ({TASK_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (project, name) DO UPDATE SET
             kind = EXCLUDED.kind, spec = EXCLUDED.spec, labels = EXCLUDED.labels,
             updated = EXCLUDED.updated
         RETURNING {TASK_COLUMNS}"
    )))
    .bind(&meta.project)
    .bind(&meta.name)
    .bind(&task.kind)
    .bind(to_json("spec", &task.spec)?)
    .bind(to_json("labels", &meta.labels)?)
    .bind(meta.created)
    .bind(meta.updated)
    .bind(&meta.created_by)
    .fetch_one(w.conn())
    .await;
    let task = match upserted {
        Ok(row) => row.into_task()?,
        Err(e) if is_foreign_key_violation(&e) => {
            return Err(StoreError::NotFound(format!("project {}", meta.project)).into())
        }
        Err(e) => return Err(e.into()),
    };
    events::task_put(w, &task);
    Ok(task)
}

pub(super) async fn get_task(
    conn: &mut PgConnection,
    project: &str,
    name: &str,
) -> PgResult<Option<Task>> {
    let row = sqlx::query_as::<_, TaskRow>(AssertSqlSafe(format!(
        "SELECT {TASK_COLUMNS} FROM tasks WHERE project = $1 AND name = $2"
    )))
    .bind(project)
    .bind(name)
    .fetch_optional(conn)
    .await?;
    row.map(TaskRow::into_task).transpose()
}

pub(super) async fn list_tasks(conn: &mut PgConnection, project: &str) -> PgResult<Vec<Task>> {
    let rows = sqlx::query_as::<_, TaskRow>(AssertSqlSafe(format!(
        "SELECT {TASK_COLUMNS} FROM tasks WHERE project = $1 ORDER BY name"
    )))
    .bind(project)
    .fetch_all(conn)
    .await?;
    rows.into_iter().map(TaskRow::into_task).collect()
}

pub(super) async fn delete_task(w: &mut Write, project: &str, name: &str) -> PgResult<bool> {
    let done = sqlx::query("DELETE FROM tasks WHERE project = $1 AND name = $2")
        .bind(project)
        .bind(name)
        .execute(w.conn())
        .await?;
    Ok(done.rows_affected() > 0)
}
