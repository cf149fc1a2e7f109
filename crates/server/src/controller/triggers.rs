//! Triggers: applying them, and the three ways they fire.
//!
//! - `scheduler`: one task sleeps until the earliest `next_fire` of the unpaused schedulers
//!   (or until a trigger changes) and fires what is due. Each fire is one store transaction:
//!   a compare-and-set of `next_fire` from the tick to the next one, the fire records and the
//!   runs (`Store::fire_trigger`): a tick fires once across restarts and racing replicas.
//!   After downtime the trigger's `catch_up` policy decides how many missed ticks fire.
//! - `lifecycle`: one task reads the durable event log from a cursor kept in the store
//!   (`lifecycle`), woken by the bus; an event whose entity key matches a trigger's glob and
//!   whose state is listed fires it, with the event id as the dedup key (re-reading after a
//!   crash fires nothing twice).
//! - `webhook`: `POST .../triggers/{name}/webhook` with the trigger's bearer token.
//!
//! A fire renders the trigger's run template against its context (`trigger`, `fire`, and
//! `entity` or `webhook`) and creates the run with `produced_by` = the trigger's key. A
//! template that fails to render, or a run that cannot be made, is recorded as a failed fire;
//! the trigger keeps working.

use super::submit::RunLinks;
use super::{Controller, ControllerError};
use crate::catalog::{now, validate_labels};
use chrono::{DateTime, Utc};
use runplane_domain::invalid::Problems;
use runplane_domain::names::validate_name;
use runplane_domain::trigger::{
    self, CatchUp, Fire, Schedule, Trigger, TriggerMetadata, TriggerSpec, TriggerStatus,
    LIFECYCLE_KIND, SCHEDULER_KIND, TRIGGER_KINDS, WEBHOOK_KIND,
};
use runplane_domain::{Document, Invalid, Run};
use runplane_store::{FireBatch, StoredEvent};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use std::time::Duration;
use tokio::sync::Notify;

/// The lifecycle reader's cursor in the store.
const LIFECYCLE_CURSOR: &str = "lifecycle";
/// Without lifecycle triggers, the reader's position is stored every this many events.
const CURSOR_STRIDE: u64 = 10_000;
/// Without lifecycle triggers, how often the reader looks at the log for trigger changes.
const IDLE_READ_INTERVAL: Duration = Duration::from_millis(200);
/// How many events the lifecycle reader takes at a time; a full page means more are waiting.
const EVENTS_PAGE: u32 = 1000;
/// The longest the scheduler sleeps without looking at the store again: triggers applied
/// through another replica do not wake this one.
const SCHEDULER_RECHECK: Duration = Duration::from_secs(30);

/// What the trigger tasks share with the controller.
#[derive(Default)]
pub(crate) struct Triggers {
    /// A scheduler was applied, paused, resumed or deleted.
    changed: Notify,
}

/// Where "now" comes from: the scheduler's arithmetic takes it as an argument so that tests
/// can drive it (see `fire_due`).
pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Equal without telling, by its timing, how much of it matched.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn new_token() -> Result<String, ControllerError> {
    let mut bytes = [0u8; 24];
    getrandom::getrandom(&mut bytes)
        .map_err(|e| ControllerError::Unavailable(format!("no randomness for a token: {e}")))?;
    Ok(hex::encode(bytes))
}

impl Controller {
    /// Applies a trigger document (`kind: scheduler | lifecycle | webhook`). A new webhook
    /// trigger's token is in `status.token` of what is returned, and never again.
    pub async fn apply_trigger(
        &self,
        project: &str,
        document: Document,
        caller: &str,
    ) -> Result<(Trigger, bool), ControllerError> {
        validate_name("project", project)?;
        let mut problems = Problems::new();
        if !TRIGGER_KINDS.contains(&document.kind.as_str()) {
            problems.add(
                "kind",
                format!(
                    "{:?} is not a trigger kind (one of: {})",
                    document.kind,
                    TRIGGER_KINDS.join(", ")
                ),
            );
        }
        if let Some(doc_project) = &document.metadata.project {
            if doc_project != project {
                problems.add(
                    "metadata.project",
                    format!("{doc_project:?} does not match the project of the request"),
                );
            }
        }
        problems.check(validate_labels(
            "metadata.labels",
            &document.metadata.labels,
        ));
        let spec: Result<TriggerSpec, Invalid> = serde_path_to_error::deserialize(&document.spec)
            .map_err(|error| {
                let path = error.path().to_string();
                Invalid::field(
                    if path == "." {
                        "spec".to_string()
                    } else {
                        format!("spec.{path}")
                    },
                    error.into_inner().to_string(),
                )
            });
        let spec = problems.merge(spec)?;
        trigger::validate(&document.kind, &document.metadata.name, &spec)?;
        let name = document.metadata.name.clone();
        let existing = self.store().get_trigger(project, &name).await?;
        let at = now();
        let next_fire = match (&document.kind[..], &existing) {
            // The same schedule keeps its next tick: re-applying never skips or adds one.
            (SCHEDULER_KIND, Some(old))
                if old.kind == SCHEDULER_KIND
                    && old.spec.schedule == spec.schedule
                    && old.spec.timezone == spec.timezone =>
            {
                old.status.next_fire
            }
            (SCHEDULER_KIND, _) => schedule_of(&spec)?.next_after(at),
            _ => None,
        };
        let token = if document.kind == WEBHOOK_KIND
            && self
                .store()
                .trigger_token_hash(project, &name)
                .await?
                .is_none()
        {
            Some(new_token()?)
        } else {
            None
        };
        let trigger = Trigger {
            kind: document.kind,
            metadata: TriggerMetadata {
                name,
                project: project.to_string(),
                labels: document.metadata.labels,
                created: at,
                updated: at,
                created_by: caller.to_string(),
            },
            spec,
            status: TriggerStatus {
                next_fire,
                ..TriggerStatus::default()
            },
        };
        self.store().ensure_project(project, caller).await?;
        let mut stored = self
            .store()
            .put_trigger(&trigger, token.as_deref().map(hash_token).as_deref())
            .await?;
        self.bus().events_appended();
        self.inner.triggers.changed.notify_one();
        stored.status.token = token;
        Ok((stored, existing.is_none()))
    }

    /// Pauses (`paused`) or resumes a trigger. A resumed scheduler fires from the next tick
    /// on: ticks missed while paused are not caught up.
    pub async fn pause_trigger(
        &self,
        project: &str,
        name: &str,
        paused: bool,
    ) -> Result<Trigger, ControllerError> {
        let trigger = self
            .store()
            .get_trigger(project, name)
            .await?
            .ok_or_else(|| ControllerError::NotFound(format!("trigger {name}")))?;
        let next_fire = match (&trigger.kind[..], paused) {
            (SCHEDULER_KIND, false) => schedule_of(&trigger.spec)?.next_after(Utc::now()),
            _ => trigger.status.next_fire,
        };
        let updated = self
            .store()
            .set_trigger_paused(project, name, paused, next_fire)
            .await?
            .ok_or_else(|| ControllerError::NotFound(format!("trigger {name}")))?;
        self.bus().events_appended();
        self.inner.triggers.changed.notify_one();
        Ok(updated)
    }

    pub async fn delete_trigger(&self, project: &str, name: &str) -> Result<(), ControllerError> {
        if !self.store().delete_trigger(project, name).await? {
            return Err(ControllerError::NotFound(format!("trigger {name}")));
        }
        self.bus().events_appended();
        self.inner.triggers.changed.notify_one();
        Ok(())
    }

    /// A webhook delivery: checks the token, fires the trigger with the body. `delivery` (an
    /// `Idempotency-Key`) makes a redelivery fire nothing more.
    pub async fn fire_webhook(
        &self,
        project: &str,
        name: &str,
        token: Option<&str>,
        body: Value,
        headers: Map<String, Value>,
        delivery: Option<String>,
    ) -> Result<Fire, ControllerError> {
        let trigger = self
            .store()
            .get_trigger(project, name)
            .await?
            .filter(|t| t.kind == WEBHOOK_KIND)
            .ok_or_else(|| ControllerError::NotFound(format!("webhook trigger {name}")))?;
        let expected = self.store().trigger_token_hash(project, name).await?;
        let given = token.map(hash_token);
        match (expected, given) {
            (Some(expected), Some(given)) if same(&expected, &given) => {}
            _ => {
                return Err(ControllerError::Unauthorized(
                    "a webhook needs `Authorization: Bearer <its token>`".to_string(),
                ))
            }
        }
        if trigger.status.paused {
            return Err(ControllerError::Conflict(format!(
                "trigger {name} is paused"
            )));
        }
        let dedup = delivery.unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        let context = json!({ "webhook": { "body": body, "headers": headers } });
        let fire = self
            .fire(&trigger, dedup.clone(), None, context, None)
            .await?;
        match fire {
            Some(fire) => Ok(fire),
            // A redelivery: the fire of the first delivery.
            None => self
                .store()
                .list_fires(project, name, 1000)
                .await?
                .into_iter()
                .find(|f| f.dedup_key == dedup)
                .ok_or_else(|| ControllerError::Conflict("the delivery fired already".into())),
        }
    }

    /// One fire: renders, prepares the run (or records why not), stores it all at once. None
    /// when another fire did it (the compare-and-set lost, or the dedup key was taken).
    async fn fire(
        &self,
        trigger: &Trigger,
        dedup_key: String,
        scheduled_for: Option<DateTime<Utc>>,
        context: Value,
        next_fire: Option<runplane_store::NextFireSwap>,
    ) -> Result<Option<Fire>, ControllerError> {
        let (fire, run) = self
            .prepare_fire(trigger, dedup_key, scheduled_for, context)
            .await;
        let stored = self
            .store()
            .fire_trigger(FireBatch {
                project: trigger.metadata.project.clone(),
                trigger: trigger.metadata.name.clone(),
                next_fire,
                fires: vec![(fire.clone(), run.clone())],
            })
            .await?;
        if !stored {
            return Ok(None);
        }
        self.after_fire(run.as_ref());
        Ok(Some(fire))
    }

    fn after_fire(&self, run: Option<&Run>) {
        match run {
            Some(run) => self.published(run),
            None => self.bus().events_appended(),
        }
    }

    /// The fire record and its run, or the record of why there is none.
    async fn prepare_fire(
        &self,
        trigger: &Trigger,
        dedup_key: String,
        scheduled_for: Option<DateTime<Utc>>,
        mut context: Value,
    ) -> (Fire, Option<Run>) {
        let at = now();
        if let Some(object) = context.as_object_mut() {
            object.insert(
                "trigger".into(),
                json!({"name": trigger.metadata.name, "kind": trigger.kind, "project": trigger.metadata.project}),
            );
            object.insert(
                "fire".into(),
                json!({
                    "time": at.to_rfc3339(),
                    "scheduled_time": scheduled_for.map(|t| t.to_rfc3339()),
                }),
            );
        }
        let run = match trigger::render_request(&trigger.spec.template, &context) {
            Err(message) => Err(message),
            Ok(request) => self
                .prepare_run(
                    &trigger.metadata.project,
                    request,
                    &trigger.metadata.created_by,
                    RunLinks {
                        produced_by: Some(trigger.key()),
                        ..RunLinks::default()
                    },
                )
                .await
                .map_err(|error| error.to_string()),
        };
        let (run, error) = match run {
            Ok(run) => (Some(run), None),
            Err(error) => {
                tracing::warn!(trigger = %trigger.key(), %error, "a trigger fire failed");
                (None, Some(error))
            }
        };
        let fire = Fire {
            id: uuid::Uuid::now_v7().to_string(),
            project: trigger.metadata.project.clone(),
            trigger: trigger.metadata.name.clone(),
            at,
            scheduled_for,
            dedup_key,
            run_id: run.as_ref().map(|r| r.metadata.id.clone()),
            error,
        };
        (fire, run)
    }

    /// Fires every scheduler due at `now`; the earliest `next_fire` left (what to sleep
    /// until).
    pub async fn fire_due(
        &self,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, ControllerError> {
        let mut earliest: Option<DateTime<Utc>> = None;
        for trigger in self.store().list_triggers(None).await? {
            if trigger.kind != SCHEDULER_KIND || trigger.status.paused {
                continue;
            }
            let Some(next) = trigger.status.next_fire else {
                continue;
            };
            if next > now {
                earliest = Some(earliest.map_or(next, |e| e.min(next)));
                continue;
            }
            let schedule = schedule_of(&trigger.spec)?;
            let policy = trigger.spec.catch_up.unwrap_or(CatchUp::Skip);
            let due = schedule.due(next, now, policy);
            let mut fires = Vec::with_capacity(due.ticks.len());
            for tick in &due.ticks {
                fires.push(
                    self.prepare_fire(&trigger, tick.to_rfc3339(), Some(*tick), json!({}))
                        .await,
                );
            }
            let runs: Vec<Run> = fires.iter().filter_map(|(_, run)| run.clone()).collect();
            let stored = self
                .store()
                .fire_trigger(FireBatch {
                    project: trigger.metadata.project.clone(),
                    trigger: trigger.metadata.name.clone(),
                    next_fire: Some((Some(next), due.next)),
                    fires,
                })
                .await?;
            if stored {
                for run in &runs {
                    self.after_fire(Some(run));
                }
                if runs.is_empty() {
                    self.after_fire(None);
                }
            }
            if let Some(next) = due.next {
                earliest = Some(earliest.map_or(next, |e| e.min(next)));
            }
        }
        Ok(earliest)
    }

    /// Fires the lifecycle triggers an event matches.
    async fn on_event(
        &self,
        event: &StoredEvent,
        triggers: &[Trigger],
    ) -> Result<(), ControllerError> {
        let Some((key, state)) = match_key(event) else {
            return Ok(());
        };
        for trigger in triggers
            .iter()
            .filter(|t| t.metadata.project == event.project)
        {
            let matches = trigger
                .spec
                .key
                .as_deref()
                .is_some_and(|pattern| trigger::glob_match(pattern, &key))
                && trigger.spec.states.iter().any(|s| s == &state);
            if !matches {
                continue;
            }
            let mut entity = event.data.clone();
            if let Some(object) = entity.as_object_mut() {
                object.insert("key".into(), Value::String(key.clone()));
                if event.kind == "run" {
                    if let Some(id) = event.data["id"].as_str() {
                        object.insert("run_id".into(), Value::String(id.to_string()));
                        if let Some(run) = self.store().get_run(&event.project, id).await? {
                            object.insert(
                                "results".into(),
                                run.status.results.unwrap_or(Value::Null),
                            );
                            object.insert(
                                "artifacts".into(),
                                serde_json::to_value(&run.status.artifacts).unwrap_or_default(),
                            );
                        }
                    }
                }
            }
            self.fire(
                trigger,
                format!("event-{}", event.id),
                None,
                json!({ "entity": entity }),
                None,
            )
            .await?;
        }
        Ok(())
    }
}

fn schedule_of(spec: &TriggerSpec) -> Result<Schedule, ControllerError> {
    let schedule = spec
        .schedule
        .as_deref()
        .ok_or_else(|| Invalid::field("spec.schedule", "required for a scheduler"))?;
    Ok(Schedule::parse(schedule, spec.timezone.as_deref())?)
}

/// The key a lifecycle trigger's glob is matched against, and the state the entity entered:
/// runs `store://<project>/run/<function>/<run id>` (their state), functions
/// `store://<project>/function/<name>:<version>` and artifacts
/// `store://<project>/artifact/<name>:<version>` (`CREATED`).
fn match_key(event: &StoredEvent) -> Option<(String, String)> {
    let data = &event.data;
    let project = &event.project;
    match event.kind.as_str() {
        // Transitions only: replica and node reports repeat the state they are in.
        "run" if data.get("change").is_none() => Some((
            format!(
                "store://{project}/run/{}/{}",
                data["function"].as_str()?,
                data["id"].as_str()?
            ),
            data["state"].as_str()?.to_string(),
        )),
        "function" | "artifact" => Some((
            format!(
                "store://{project}/{}/{}:{}",
                event.kind,
                data["name"].as_str()?,
                data["version"].as_str()?
            ),
            trigger::CREATED_STATE.to_string(),
        )),
        _ => None,
    }
}

/// The scheduler's task.
pub(super) async fn run_scheduler(controller: Controller) {
    let clock = SystemClock;
    loop {
        let next = match controller.fire_due(clock.now()).await {
            Ok(next) => next,
            Err(error) => {
                tracing::error!(%error, "scheduler round failed");
                Some(clock.now() + chrono::Duration::seconds(1))
            }
        };
        let sleep = next
            .and_then(|next| (next - clock.now()).to_std().ok())
            .unwrap_or(Duration::ZERO)
            .min(SCHEDULER_RECHECK);
        let sleep = if next.is_none() {
            SCHEDULER_RECHECK
        } else {
            sleep
        };
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            _ = controller.inner.triggers.changed.notified() => {}
            _ = controller.bus().closing() => return,
        }
    }
}

/// The lifecycle triggers' reader of the event log.
///
/// While lifecycle triggers exist it reads after every append. Without any, nothing can
/// fire: it reads at most every [`IDLE_READ_INTERVAL`], in batches, watching only for
/// trigger changes (a read per append would tax every run transition for nothing).
pub(super) async fn run_lifecycle(controller: Controller) {
    let mut appended = controller.bus().watch_appended();
    let store = controller.store().clone();
    let mut cursor = match store.get_cursor(LIFECYCLE_CURSOR).await {
        Ok(Some(position)) => position,
        // First start: from now on (history does not fire).
        _ => store.latest_event_id().await.unwrap_or(0),
    };
    let mut persisted = cursor;
    let mut triggers: Option<Vec<Trigger>> = None;
    loop {
        appended.borrow_and_update();
        let events = match store.events_after(cursor, None, EVENTS_PAGE).await {
            Ok(events) => events,
            Err(error) => {
                tracing::error!(%error, "lifecycle triggers cannot read events");
                Vec::new()
            }
        };
        if events.is_empty() {
            tokio::select! {
                changed = appended.changed() => if changed.is_err() { return },
                _ = controller.bus().closing() => return,
            }
            continue;
        }
        let mut trigger_changed = false;
        for event in &events {
            // The triggers are read again only when the log tells of a trigger change (on
            // any replica): run transitions, the bulk of the log, cost no trigger query. A
            // trigger matches the events after its own change, never those before it.
            if triggers.is_none() {
                match lifecycle_triggers(&store).await {
                    Ok(active) => triggers = Some(active),
                    Err(error) => {
                        tracing::error!(%error, "lifecycle triggers cannot be listed; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        break;
                    }
                }
            }
            let active = triggers.as_deref().unwrap_or_default();
            if !active.is_empty() {
                if let Err(error) = controller.on_event(event, active).await {
                    tracing::error!(event = event.id, %error, "lifecycle trigger failed");
                }
            }
            if event.kind == "trigger" {
                trigger_changed = true;
                triggers = None;
            }
            cursor = event.id;
        }
        let idle = triggers.as_ref().is_some_and(Vec::is_empty);
        // The position is written after each batch while lifecycle triggers exist, and when
        // triggers change. Without any, a write per batch would tax every run transition for
        // nothing: it is written every CURSOR_STRIDE events, which bounds what a restart
        // reads again.
        if !idle || trigger_changed || cursor >= persisted + CURSOR_STRIDE {
            match store.set_cursor(LIFECYCLE_CURSOR, cursor).await {
                Ok(()) => persisted = cursor,
                Err(error) => tracing::error!(%error, "cannot store the lifecycle cursor"),
            }
        }
        if idle && events.len() < EVENTS_PAGE as usize {
            tokio::select! {
                _ = tokio::time::sleep(IDLE_READ_INTERVAL) => {}
                _ = controller.bus().closing() => return,
            }
        }
    }
}

/// The lifecycle triggers that are not paused.
async fn lifecycle_triggers(
    store: &std::sync::Arc<dyn runplane_store::Store>,
) -> Result<Vec<Trigger>, runplane_store::StoreError> {
    Ok(store
        .list_triggers(None)
        .await?
        .into_iter()
        .filter(|t| t.kind == LIFECYCLE_KIND && !t.status.paused)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(same(&hash_token("abc"), &hash_token("abc")));
        assert!(!same(&hash_token("abc"), &hash_token("abd")));
        assert!(!same("ab", "abc"));
    }

    #[test]
    fn events_map_to_keys() {
        let event = |kind: &str, data: Value| StoredEvent {
            id: 1,
            at: Utc::now(),
            project: "p".into(),
            kind: kind.into(),
            data,
        };
        assert_eq!(
            match_key(&event(
                "run",
                json!({"function": "prep", "id": "r1", "state": "COMPLETED"})
            )),
            Some(("store://p/run/prep/r1".into(), "COMPLETED".into()))
        );
        assert_eq!(
            match_key(&event(
                "run",
                json!({"function": "prep", "id": "r1", "state": "RUNNING", "change": "service"})
            )),
            None
        );
        assert_eq!(
            match_key(&event("artifact", json!({"name": "data", "version": "v1"}))),
            Some(("store://p/artifact/data:v1".into(), "CREATED".into()))
        );
        assert_eq!(match_key(&event("secret", json!({"name": "s"}))), None);
    }
}
