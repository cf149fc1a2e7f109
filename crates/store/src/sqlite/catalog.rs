//! Projects, function versions and tasks: the entities runs are made from.

use super::codec::{
    db, from_json, is_foreign_key_violation, is_unique_violation, now, parse_ts, to_json, ts,
};
use super::events;
use crate::{Put, StoreError, StoreResult};
use runplane_domain::{FunctionStatus, FunctionVersion, Metadata, Project, Task, TaskMetadata};
use sqlx::AssertSqlSafe;
use sqlx::SqliteConnection;

#[derive(sqlx::FromRow)]
struct ProjectRow {
    name: String,
    created: String,
    created_by: String,
}

impl ProjectRow {
    fn into_project(self) -> StoreResult<Project> {
        Ok(Project {
            created: parse_ts("projects.created", &self.created)?,
            name: self.name,
            created_by: self.created_by,
        })
    }
}

pub(super) async fn ensure_project(
    conn: &mut SqliteConnection,
    name: &str,
    created_by: &str,
) -> StoreResult<Project> {
    let created = now();
    sqlx::query(
        "INSERT INTO projects (name, created, created_by) VALUES (?, ?, ?)
         ON CONFLICT (name) DO NOTHING",
    )
    .bind(name)
    .bind(ts(&created))
    .bind(created_by)
    .execute(&mut *conn)
    .await
    .map_err(db)?;
    get_project(conn, name)
        .await?
        .ok_or_else(|| StoreError::Database(format!("project {name} vanished after insert")))
}

pub(super) async fn get_project(
    conn: &mut SqliteConnection,
    name: &str,
) -> StoreResult<Option<Project>> {
    sqlx::query_as::<_, ProjectRow>("SELECT name, created, created_by FROM projects WHERE name = ?")
        .bind(name)
        .fetch_optional(conn)
        .await
        .map_err(db)?
        .map(ProjectRow::into_project)
        .transpose()
}

pub(super) async fn list_projects(conn: &mut SqliteConnection) -> StoreResult<Vec<Project>> {
    sqlx::query_as::<_, ProjectRow>("SELECT name, created, created_by FROM projects ORDER BY name")
        .fetch_all(conn)
        .await
        .map_err(db)?
        .into_iter()
        .map(ProjectRow::into_project)
        .collect()
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
    created: String,
    created_by: String,
}

impl FunctionRow {
    fn into_function(self) -> StoreResult<FunctionVersion> {
        Ok(FunctionVersion {
            kind: self.kind,
            metadata: Metadata {
                name: self.name,
                project: self.project,
                version: self.version,
                labels: from_json("function_versions.labels", &self.labels)?,
                description: self.description,
                created: parse_ts("function_versions.created", &self.created)?,
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

async fn function_where(
    conn: &mut SqliteConnection,
    condition: &str,
    binds: &[&str],
) -> StoreResult<Vec<FunctionVersion>> {
    let sql = format!("SELECT {FUNCTION_COLUMNS} FROM function_versions f WHERE {condition}");
    let mut query = sqlx::query_as::<_, FunctionRow>(AssertSqlSafe(&*sql));
    for value in binds {
        query = query.bind(*value);
    }
    query
        .fetch_all(conn)
        .await
        .map_err(db)?
        .into_iter()
        .map(FunctionRow::into_function)
        .collect()
}

pub(super) async fn put_function_version(
    conn: &mut SqliteConnection,
    version: FunctionVersion,
) -> StoreResult<Put<FunctionVersion>> {
    let meta = &version.metadata;
    // The caller holds the write lock (BEGIN IMMEDIATE), so nothing can insert the same hash
    // between this look-up and the insert below.
    let existing = function_where(
        conn,
        "project = ? AND name = ? AND hash = ?",
        &[&meta.project, &meta.name, &version.status.hash],
    )
    .await?;
    if let Some(existing) = existing.into_iter().next() {
        return Ok(Put {
            value: existing,
            created: false,
        });
    }
    let inserted = sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO function_versions ({FUNCTION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    )))
    .bind(&meta.project)
    .bind(&meta.name)
    .bind(&meta.version)
    .bind(&version.kind)
    .bind(&version.status.hash)
    .bind(&version.status.key)
    .bind(to_json("spec", &version.spec)?)
    .bind(to_json("labels", &meta.labels)?)
    .bind(&meta.description)
    .bind(ts(&meta.created))
    .bind(&meta.created_by)
    .execute(&mut *conn)
    .await;
    match inserted {
        Ok(_) => {
            events::function_created(conn, &version).await?;
            Ok(Put {
                value: version,
                created: true,
            })
        }
        Err(e) if is_foreign_key_violation(&e) => {
            Err(StoreError::NotFound(format!("project {}", meta.project)))
        }
        // Same version id, different hash: two specs whose hashes share their first 16 hex
        // digits. Refused rather than silently aliased.
        Err(e) if is_unique_violation(&e) => Err(StoreError::Database(format!(
            "function {}/{} already has a version {} with another hash",
            meta.project, meta.name, meta.version
        ))),
        Err(e) => Err(db(e)),
    }
}

pub(super) async fn get_function(
    conn: &mut SqliteConnection,
    project: &str,
    name: &str,
    version: Option<&str>,
) -> StoreResult<Option<FunctionVersion>> {
    let found = match version {
        Some(version) => {
            function_where(
                conn,
                "project = ? AND name = ? AND version = ?",
                &[project, name, version],
            )
            .await?
        }
        None => {
            function_where(
                conn,
                "project = ? AND name = ? ORDER BY seq DESC LIMIT 1",
                &[project, name],
            )
            .await?
        }
    };
    Ok(found.into_iter().next())
}

pub(super) async fn list_functions(
    conn: &mut SqliteConnection,
    project: &str,
) -> StoreResult<Vec<FunctionVersion>> {
    function_where(
        conn,
        "project = ? AND seq = (SELECT MAX(seq) FROM function_versions l
                                WHERE l.project = f.project AND l.name = f.name)
         ORDER BY name",
        &[project],
    )
    .await
}

pub(super) async fn list_function_versions(
    conn: &mut SqliteConnection,
    project: &str,
    name: &str,
) -> StoreResult<Vec<FunctionVersion>> {
    function_where(
        conn,
        "project = ? AND name = ? ORDER BY seq DESC",
        &[project, name],
    )
    .await
}

pub(super) async fn delete_function(
    conn: &mut SqliteConnection,
    project: &str,
    name: &str,
) -> StoreResult<bool> {
    let done = sqlx::query("DELETE FROM function_versions WHERE project = ? AND name = ?")
        .bind(project)
        .bind(name)
        .execute(conn)
        .await
        .map_err(db)?;
    Ok(done.rows_affected() > 0)
}

#[derive(sqlx::FromRow)]
struct TaskRow {
    project: String,
    name: String,
    kind: String,
    spec: String,
    labels: String,
    created: String,
    updated: String,
    created_by: String,
}

impl TaskRow {
    fn into_task(self) -> StoreResult<Task> {
        Ok(Task {
            kind: self.kind,
            metadata: TaskMetadata {
                name: self.name,
                project: self.project,
                labels: from_json("tasks.labels", &self.labels)?,
                created: parse_ts("tasks.created", &self.created)?,
                updated: parse_ts("tasks.updated", &self.updated)?,
                created_by: self.created_by,
            },
            spec: from_json("tasks.spec", &self.spec)?,
        })
    }
}

const TASK_COLUMNS: &str = "project, name, kind, spec, labels, created, updated, created_by";

pub(super) async fn put_task(conn: &mut SqliteConnection, task: Task) -> StoreResult<Task> {
    let meta = &task.metadata;
    // On replace, `created` and `created_by` stay those of the first put: they describe the
    // task's creation, not its latest change.
    let upserted = sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO tasks ({TASK_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
         ON CONFLICT (project, name) DO UPDATE SET
             kind = excluded.kind, spec = excluded.spec, labels = excluded.labels,
             updated = excluded.updated"
    )))
    .bind(&meta.project)
    .bind(&meta.name)
    .bind(&task.kind)
    .bind(to_json("spec", &task.spec)?)
    .bind(to_json("labels", &meta.labels)?)
    .bind(ts(&meta.created))
    .bind(ts(&meta.updated))
    .bind(&meta.created_by)
    .execute(&mut *conn)
    .await;
    match upserted {
        Ok(_) => {}
        Err(e) if is_foreign_key_violation(&e) => {
            return Err(StoreError::NotFound(format!("project {}", meta.project)))
        }
        Err(e) => return Err(db(e)),
    }
    let task = get_task(conn, &meta.project, &meta.name)
        .await?
        .ok_or_else(|| StoreError::Database(format!("task {} vanished after upsert", meta.name)))?;
    events::task_put(conn, &task).await?;
    Ok(task)
}

pub(super) async fn get_task(
    conn: &mut SqliteConnection,
    project: &str,
    name: &str,
) -> StoreResult<Option<Task>> {
    sqlx::query_as::<_, TaskRow>(AssertSqlSafe(format!(
        "SELECT {TASK_COLUMNS} FROM tasks WHERE project = ? AND name = ?"
    )))
    .bind(project)
    .bind(name)
    .fetch_optional(conn)
    .await
    .map_err(db)?
    .map(TaskRow::into_task)
    .transpose()
}

pub(super) async fn list_tasks(
    conn: &mut SqliteConnection,
    project: &str,
) -> StoreResult<Vec<Task>> {
    sqlx::query_as::<_, TaskRow>(AssertSqlSafe(format!(
        "SELECT {TASK_COLUMNS} FROM tasks WHERE project = ? ORDER BY name"
    )))
    .bind(project)
    .fetch_all(conn)
    .await
    .map_err(db)?
    .into_iter()
    .map(TaskRow::into_task)
    .collect()
}

pub(super) async fn delete_task(
    conn: &mut SqliteConnection,
    project: &str,
    name: &str,
) -> StoreResult<bool> {
    let done = sqlx::query("DELETE FROM tasks WHERE project = ? AND name = ?")
        .bind(project)
        .bind(name)
        .execute(conn)
        .await
        .map_err(db)?;
    Ok(done.rows_affected() > 0)
}
