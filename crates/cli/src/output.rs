//! Printing entities: tables for people, `-o json|yaml` for scripts.

use crate::exit::CliError;
use clap::ValueEnum;
use comfy_table::{presets, Table};
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
    Yaml,
}

/// A column: header and JSON pointer into the entity (or a computed cell).
pub struct Column {
    pub header: &'static str,
    pub cell: fn(&Value) -> String,
}

pub fn print(value: &Value, format: Format, columns: &[Column]) -> Result<(), CliError> {
    match format {
        Format::Json => {
            println!(
                "{}",
                serde_json::to_string_pretty(value).unwrap_or_default()
            );
        }
        Format::Yaml => {
            let text = serde_yaml_ng::to_string(value)
                .map_err(|error| CliError::unavailable(format!("cannot render YAML: {error}")))?;
            print!("{text}");
        }
        Format::Table => {
            let rows: Vec<&Value> = match value {
                Value::Array(items) => items.iter().collect(),
                other => vec![other],
            };
            if rows.is_empty() {
                eprintln!("No resources found.");
                return Ok(());
            }
            let mut table = Table::new();
            table.load_preset(presets::NOTHING);
            table.set_header(columns.iter().map(|c| c.header));
            for row in rows {
                table.add_row(columns.iter().map(|c| (c.cell)(row)));
            }
            println!("{table}");
        }
    }
    Ok(())
}

pub fn text(value: &Value, pointer: &str) -> String {
    match value.pointer(pointer) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

/// `2026-11-28T13:38:49.123456Z` → `2026-11-28 13:38:49`.
pub fn time(value: &Value, pointer: &str) -> String {
    let raw = text(value, pointer);
    match chrono::DateTime::parse_from_rfc3339(&raw) {
        Ok(time) => time
            .with_timezone(&chrono::Local)
            .format("%Y-%m-%d %H:%M:%S")
            .to_string(),
        Err(_) => raw,
    }
}

/// Wall time of a run from its first dispatch to its end (or now).
pub fn run_duration(run: &Value) -> String {
    let attempts = run.pointer("/status/attempts").and_then(Value::as_array);
    let Some(first) = attempts.and_then(|a| a.first()) else {
        return String::new();
    };
    let parse =
        |pointer: &str, v: &Value| chrono::DateTime::parse_from_rfc3339(&text(v, pointer)).ok();
    let Some(start) = parse("/dispatched", first) else {
        return String::new();
    };
    let end = attempts
        .and_then(|a| a.last())
        .and_then(|last| parse("/ended", last))
        .map(|t| t.with_timezone(&chrono::Utc))
        .unwrap_or_else(chrono::Utc::now);
    let millis = (end - start.with_timezone(&chrono::Utc))
        .num_milliseconds()
        .max(0);
    if millis < 10_000 {
        format!("{:.2}s", millis as f64 / 1000.0)
    } else {
        format!("{}s", millis / 1000)
    }
}
