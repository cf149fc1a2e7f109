//! Triggers (issue 6): `scheduler` (cron), `lifecycle` (an entity entered a state) and
//! `webhook` documents, their validation at apply time, cron/time-zone arithmetic (with the
//! catch-up policies after downtime), and the rendering of a trigger's run template.
//!
//! Pure: the current time is always passed in by the caller (the server's injectable clock).

use crate::expr;
use crate::invalid::{Invalid, Problems};
use crate::{names::validate_name, Labels, RunRequest, RunState};
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeSet;

pub const SCHEDULER_KIND: &str = "scheduler";
pub const LIFECYCLE_KIND: &str = "lifecycle";
pub const WEBHOOK_KIND: &str = "webhook";
pub const TRIGGER_KINDS: [&str; 3] = [SCHEDULER_KIND, LIFECYCLE_KIND, WEBHOOK_KIND];

/// At most this many runs are created for the missed ticks of one downtime under
/// `catch_up: all`: the oldest beyond it are dropped (a scheduler every second that was down
/// for a day must not flood the queue with 86 400 runs).
pub const MAX_CATCH_UP: usize = 1000;

/// A state an artifact or a function version "enters" when it is created (lifecycle triggers).
pub const CREATED_STATE: &str = "CREATED";

/// What to do with the ticks a scheduler missed while the server was down.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CatchUp {
    /// No run for missed ticks: the next fire is the next future tick.
    #[default]
    Skip,
    /// One run, for the latest missed tick.
    Once,
    /// One run per missed tick (at most [`MAX_CATCH_UP`]).
    All,
}

/// The `spec` of a trigger document; which fields apply depends on the kind.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TriggerSpec {
    /// scheduler: a cron expression (5 fields, or 6 with seconds first) or `@hourly`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// scheduler: an IANA time zone (UTC when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// scheduler: the catch-up policy after downtime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catch_up: Option<CatchUp>,
    /// lifecycle: a glob (`*` any run of characters, `?` one) over the entity's match key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// lifecycle: the states that fire (run states, or `CREATED` for artifacts/functions).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub states: Vec<String>,
    /// A run request whose strings may hold `${{ }}` expressions.
    #[schema(value_type = Object)]
    pub template: Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TriggerMetadata {
    pub name: String,
    pub project: String,
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub labels: Labels,
    pub created: DateTime<Utc>,
    pub updated: DateTime<Utc>,
    pub created_by: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TriggerStatus {
    #[serde(default)]
    pub paused: bool,
    /// scheduler: the tick the scheduler fires next (the compare-and-set value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_fire: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_fire: Option<DateTime<Utc>>,
    /// Fires recorded (successful or not).
    #[serde(default)]
    pub fires: u64,
    /// Fires that met an error (template, missing function, ...).
    #[serde(default)]
    pub failed_fires: u64,
    /// webhook: the token, only in the response that created it (stored hashed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Trigger {
    pub kind: String,
    pub metadata: TriggerMetadata,
    pub spec: TriggerSpec,
    pub status: TriggerStatus,
}

impl Trigger {
    /// The `produced_by` link of the runs it creates: `store://<project>/trigger/<kind>/<name>`.
    pub fn key(&self) -> String {
        format!(
            "store://{}/trigger/{}/{}",
            self.metadata.project, self.kind, self.metadata.name
        )
    }
}

/// One fire of a trigger: the run it created, or the error it met.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Fire {
    pub id: String,
    pub project: String,
    pub trigger: String,
    pub at: DateTime<Utc>,
    /// scheduler: the tick this fire is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_for: Option<DateTime<Utc>>,
    /// Unique per trigger: the tick (scheduler), the event id (lifecycle), the delivery id
    /// (webhook).
    pub dedup_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The cron dialect of `spec.schedule`: 5 fields, or 6 with seconds first; no year field;
/// day of month OR day of week; `5/5` read as `5-59/5` (croner's `sloppy_ranges`), as schedules
/// written for croner 2 were.
fn cron_parser() -> CronParser {
    CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .sloppy_ranges(true)
        .build()
}

/// A parsed schedule: cron pattern + time zone.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: Cron,
    tz: Tz,
}

impl Schedule {
    /// Parses `schedule` (seconds optional) and `timezone` (UTC when None); errors name
    /// `spec.schedule` / `spec.timezone`.
    pub fn parse(schedule: &str, timezone: Option<&str>) -> Result<Schedule, Invalid> {
        let mut problems = Problems::new();
        let cron = match cron_parser().parse(schedule) {
            Ok(cron) => Some(cron),
            Err(e) => {
                problems.add("spec.schedule", format!("invalid cron expression: {e}"));
                None
            }
        };
        let tz = match timezone {
            None => Some(Tz::UTC),
            Some(name) => match name.parse::<Tz>() {
                Ok(tz) => Some(tz),
                Err(_) => {
                    problems.add("spec.timezone", format!("unknown time zone {name:?}"));
                    None
                }
            },
        };
        problems.finish()?;
        match (cron, tz) {
            (Some(cron), Some(tz)) => Ok(Schedule { cron, tz }),
            _ => Err(Invalid::field("spec.schedule", "invalid schedule")),
        }
    }

    /// The first tick strictly after `after`, in UTC (None if the pattern never matches again).
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = after.with_timezone(&self.tz);
        self.cron
            .find_next_occurrence(&local, false)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    /// What to fire when the tick `next_fire` is due at `now` (`next_fire <= now`), under
    /// `policy`: the ticks to fire (oldest first) and the new next fire (the first tick after
    /// `now`). Without downtime this is `[next_fire]` whatever the policy.
    pub fn due(&self, next_fire: DateTime<Utc>, now: DateTime<Utc>, policy: CatchUp) -> Due {
        let mut missed = vec![next_fire];
        let mut cursor = next_fire;
        let mut overflow = false;
        // Walk the ticks up to now; keep a bounded window (the newest MAX_CATCH_UP).
        while let Some(tick) = self.next_after(cursor) {
            if tick > now {
                break;
            }
            missed.push(tick);
            if missed.len() > MAX_CATCH_UP {
                missed.remove(0);
                overflow = true;
            }
            cursor = tick;
        }
        let next = self.next_after(now.max(cursor));
        let downtime = missed.len() > 1 || overflow;
        let ticks = if !downtime {
            missed
        } else {
            match policy {
                CatchUp::Skip => Vec::new(),
                CatchUp::Once => missed.last().copied().into_iter().collect(),
                CatchUp::All => missed,
            }
        };
        Due { ticks, next }
    }
}

/// See [`Schedule::due`].
#[derive(Debug, Clone, PartialEq)]
pub struct Due {
    pub ticks: Vec<DateTime<Utc>>,
    pub next: Option<DateTime<Utc>>,
}

/// The context roots a template of this kind may read.
pub fn allowed_roots(kind: &str) -> &'static [&'static str] {
    match kind {
        SCHEDULER_KIND => &["trigger", "fire"],
        LIFECYCLE_KIND => &["trigger", "fire", "entity"],
        WEBHOOK_KIND => &["trigger", "fire", "webhook"],
        _ => &["trigger", "fire"],
    }
}

/// Validates a trigger document of `kind` named `name`; every problem names its field path.
pub fn validate(kind: &str, name: &str, spec: &TriggerSpec) -> Result<(), Invalid> {
    let mut problems = Problems::new();
    problems.check(validate_name("metadata.name", name));
    if !TRIGGER_KINDS.contains(&kind) {
        problems.add(
            "kind",
            format!("expected one of {}", TRIGGER_KINDS.join(", ")),
        );
    }
    match kind {
        SCHEDULER_KIND => match &spec.schedule {
            None => problems.add("spec.schedule", "required for a scheduler"),
            Some(schedule) => {
                problems.check(Schedule::parse(schedule, spec.timezone.as_deref()).map(|_| ()))
            }
        },
        _ => {
            for (field, set) in [
                ("spec.schedule", spec.schedule.is_some()),
                ("spec.timezone", spec.timezone.is_some()),
                ("spec.catch_up", spec.catch_up.is_some()),
            ] {
                if set {
                    problems.add(field, "only for a scheduler");
                }
            }
        }
    }
    if kind == LIFECYCLE_KIND {
        match &spec.key {
            None => problems.add("spec.key", "required for a lifecycle trigger"),
            Some(key) if !key.starts_with("store://") => {
                problems.add("spec.key", "expected a store:// key glob")
            }
            Some(_) => {}
        }
        if spec.states.is_empty() {
            problems.add("spec.states", "at least one state is required");
        }
        for (index, state) in spec.states.iter().enumerate() {
            if state != CREATED_STATE && state.parse::<RunState>().is_err() {
                problems.add(
                    format!("spec.states[{index}]"),
                    format!("unknown state {state:?} (a run state or {CREATED_STATE})"),
                );
            }
        }
    } else {
        if spec.key.is_some() {
            problems.add("spec.key", "only for a lifecycle trigger");
        }
        if !spec.states.is_empty() {
            problems.add("spec.states", "only for a lifecycle trigger");
        }
    }
    problems.check(validate_template(kind, &spec.template));
    problems.finish()
}

/// The template must have a RunRequest's shape (with strings in place of templated values is
/// fine: only fields that hold no `${{ }}` are type-checked) and read only the allowed roots.
fn validate_template(kind: &str, template: &Value) -> Result<(), Invalid> {
    let mut problems = Problems::new();
    let Value::Object(members) = template else {
        return Err(Invalid::field(
            "spec.template",
            "expected a run request object",
        ));
    };
    match members.get("function") {
        Some(Value::String(_)) => {}
        _ => problems.add(
            "spec.template.function",
            "required (a function or workflow name)",
        ),
    }
    // Shape: replace templated strings by nothing that could fail, then deserialize.
    if !template.to_string().contains("${{") {
        if let Err(e) = serde_json::from_value::<RunRequest>(template.clone()) {
            problems.add("spec.template", e.to_string());
        }
    } else {
        let known = [
            "function",
            "action",
            "task",
            "parameters",
            "framework",
            "labels",
            "timeout_seconds",
            "retry",
            "replicas",
            "secrets",
            "resources",
            "inputs",
        ];
        for key in members.keys() {
            if !known.contains(&key.as_str()) {
                problems.add(format!("spec.template.{key}"), "unknown field");
            }
        }
    }
    match expr::references(template, "spec.template") {
        Err(invalid) => problems.extend(invalid),
        Ok(paths) => {
            let allowed = allowed_roots(kind);
            let bad: BTreeSet<&str> = paths
                .iter()
                .map(|p| p.split('.').next().unwrap_or(p))
                .filter(|root| !allowed.contains(root))
                .collect();
            for root in bad {
                problems.add(
                    "spec.template",
                    format!(
                        "`{root}` is not available to a {kind} trigger (available: {})",
                        allowed.join(", ")
                    ),
                );
            }
        }
    }
    problems.finish()
}

/// Renders the template against the fire's context and reads it as a run request.
pub fn render_request(template: &Value, context: &Value) -> Result<RunRequest, String> {
    let rendered = expr::render(template, context, "template").map_err(|e| e.to_string())?;
    serde_json::from_value(rendered).map_err(|e| format!("rendered template: {e}"))
}

/// Glob match (`*` any run of characters, `?` one character), anchored at both ends.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
    }

    #[test]
    fn seconds_field_and_hourly() {
        let every2 = Schedule::parse("*/2 * * * * *", None).unwrap();
        assert_eq!(
            every2.next_after(utc(2026, 1, 1, 0, 0, 0)),
            Some(utc(2026, 1, 1, 0, 0, 2))
        );
        let hourly = Schedule::parse("@hourly", None).unwrap();
        assert_eq!(
            hourly.next_after(utc(2026, 1, 1, 10, 0, 0)),
            Some(utc(2026, 1, 1, 11, 0, 0))
        );
        let five = Schedule::parse("30 2 * * *", None).unwrap();
        assert_eq!(
            five.next_after(utc(2026, 1, 1, 0, 0, 0)),
            Some(utc(2026, 1, 1, 2, 30, 0))
        );
    }

    #[test]
    fn daily_in_a_time_zone_across_dst() {
        // 09:00 in Rome is 08:00 UTC in winter, 07:00 UTC in summer (DST on 2026-03-29).
        let s = Schedule::parse("0 0 9 * * *", Some("Europe/Rome")).unwrap();
        assert_eq!(
            s.next_after(utc(2026, 3, 28, 9, 0, 0)),
            Some(utc(2026, 3, 29, 7, 0, 0))
        );
        assert_eq!(
            s.next_after(utc(2026, 3, 27, 9, 0, 0)),
            Some(utc(2026, 3, 28, 8, 0, 0))
        );
    }

    #[test]
    fn dialect_is_five_or_six_fields_with_sloppy_steps() {
        // `5/5` is `5-59/5`, as croner 2 read it.
        let s = Schedule::parse("5/5 * * * *", None).unwrap();
        assert_next_ticks(
            &s,
            &[
                (utc(2026, 1, 1, 0, 0, 0), utc(2026, 1, 1, 0, 5, 0)),
                (utc(2026, 1, 1, 0, 55, 0), utc(2026, 1, 1, 1, 5, 0)),
            ],
        );
        // No year field.
        assert!(Schedule::parse("0 30 23 * * FRI 2026", None).is_err());
    }

    #[test]
    fn hourly_fires_through_both_copies_of_a_repeated_hour() {
        // Rome goes from 03:00 CEST back to 02:00 CET on 2026-10-25 (01:00 UTC).
        let s = Schedule::parse("@hourly", Some("Europe/Rome")).unwrap();
        assert_next_ticks(
            &s,
            &[
                (utc(2026, 10, 25, 0, 0, 0), utc(2026, 10, 25, 1, 0, 0)),
                (utc(2026, 10, 25, 1, 0, 0), utc(2026, 10, 25, 2, 0, 0)),
            ],
        );
    }

    /// Each `(after, next)`: the first tick after `after` is `next`.
    fn assert_next_ticks(s: &Schedule, expected: &[(DateTime<Utc>, DateTime<Utc>)]) {
        for &(after, next) in expected {
            assert_eq!(s.next_after(after), Some(next), "after {after}");
        }
    }

    proptest::proptest! {
        /// Around the 2026 DST changes of zones shifting by an hour, half an hour, or at odd
        /// offsets, the next tick is always later than the instant asked about (croner 2 could
        /// answer with an earlier instant inside a repeated hour).
        #[test]
        fn the_next_tick_is_strictly_later_around_dst_changes(
            change in proptest::sample::select(vec![
                utc(2026, 3, 29, 1, 0, 0), utc(2026, 10, 25, 1, 0, 0), // Europe
                utc(2026, 3, 8, 7, 0, 0), utc(2026, 11, 1, 6, 0, 0), // New York
                utc(2026, 4, 4, 15, 0, 0), utc(2026, 10, 3, 15, 30, 0), // Lord Howe
                utc(2026, 4, 4, 14, 0, 0), utc(2026, 9, 26, 14, 0, 0), // Chatham
            ]),
            offset in -3 * 3600i64..3 * 3600,
            pattern in proptest::sample::select(vec![
                "* * * * *", "*/45 * * * * *", "@hourly", "30 2 * * *", "15 2,3 * * *", "5/5 * * * *",
            ]),
            zone in proptest::sample::select(vec![
                "Europe/Rome", "America/New_York", "Australia/Lord_Howe", "Pacific/Chatham",
            ]),
        ) {
            let s = Schedule::parse(pattern, Some(zone)).unwrap();
            let after = change + chrono::Duration::seconds(offset);
            let next = s.next_after(after).expect("a next tick");
            proptest::prop_assert!(next > after, "{pattern} in {zone}: {next} after {after}");
        }
    }

    #[test]
    fn bad_cron_and_zone_name_their_fields() {
        let err = Schedule::parse("61 * * * *", Some("Mars/Olympus")).unwrap_err();
        let fields: Vec<_> = err.0.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["spec.schedule", "spec.timezone"]);
    }

    #[test]
    fn catch_up_policies() {
        let s = Schedule::parse("@hourly", None).unwrap();
        let next = utc(2026, 1, 1, 1, 0, 0);
        let now = utc(2026, 1, 1, 5, 30, 0); // missed 01..05: five ticks
        assert_eq!(
            s.due(next, now, CatchUp::Skip).ticks,
            Vec::<DateTime<Utc>>::new()
        );
        assert_eq!(
            s.due(next, now, CatchUp::Once).ticks,
            vec![utc(2026, 1, 1, 5, 0, 0)]
        );
        assert_eq!(s.due(next, now, CatchUp::All).ticks.len(), 5);
        assert_eq!(
            s.due(next, now, CatchUp::All).next,
            Some(utc(2026, 1, 1, 6, 0, 0))
        );
        // On time: one tick whatever the policy.
        let on_time = s.due(next, utc(2026, 1, 1, 1, 0, 0), CatchUp::Skip);
        assert_eq!(on_time.ticks, vec![next]);
        assert_eq!(on_time.next, Some(utc(2026, 1, 1, 2, 0, 0)));
        // A long downtime is capped.
        let every_second = Schedule::parse("* * * * * *", None).unwrap();
        let all = every_second.due(next, next + chrono::Duration::hours(2), CatchUp::All);
        assert_eq!(all.ticks.len(), MAX_CATCH_UP);
    }

    #[test]
    fn validation_reports_paths() {
        let spec = TriggerSpec {
            schedule: Some("* * *".into()),
            catch_up: Some(CatchUp::Once),
            template: json!({"function": "f", "parameters": {"x": "${{ webhook.body }}"}}),
            ..Default::default()
        };
        let err = validate(SCHEDULER_KIND, "nightly", &spec).unwrap_err();
        let fields: Vec<_> = err.0.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["spec.schedule", "spec.template"], "{err}");
        let lifecycle = TriggerSpec {
            key: Some("store://demo/run/prepare/*".into()),
            states: vec!["COMPLETED".into(), "DONE".into()],
            template: json!({"function": "train", "parameters": {"s": "${{ entity.run_id }}"}}),
            ..Default::default()
        };
        let err = validate(LIFECYCLE_KIND, "after", &lifecycle).unwrap_err();
        assert_eq!(err.0[0].field, "spec.states[1]");
    }

    #[test]
    fn globs() {
        assert!(glob_match(
            "store://demo/run/prepare/*",
            "store://demo/run/prepare/abc"
        ));
        assert!(!glob_match(
            "store://demo/run/prepare/*",
            "store://demo/run/train/abc"
        ));
        assert!(glob_match("a?c", "abc"));
    }

    #[test]
    fn renders_a_request() {
        let template = json!({"function": "f", "parameters": {"t": "${{ fire.scheduled_time }}"}});
        let request = render_request(&template, &json!({"fire": {"scheduled_time": "T"}})).unwrap();
        assert_eq!(request.parameters["t"], json!("T"));
        assert!(render_request(&template, &json!({})).is_err());
    }
}
