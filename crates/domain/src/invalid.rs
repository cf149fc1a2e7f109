//! Validation failures that name the offending field, so that every layer can report
//! "which field, what problem" (the API maps them to problem+json, the CLI prints them).

use serde::{Deserialize, Serialize};

/// One invalid field: `field` is a dotted path into the submitted document
/// (`spec.source.code`, `metadata.name`, `parameters.n`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FieldError {
    pub field: String,
    pub problem: String,
}

/// A non-empty list of invalid fields.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", describe(.0))]
pub struct Invalid(pub Vec<FieldError>);

fn describe(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(|e| format!("{}: {}", e.field, e.problem))
        .collect::<Vec<_>>()
        .join("; ")
}

impl Invalid {
    pub fn field(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Invalid(vec![FieldError {
            field: field.into(),
            problem: problem.into(),
        }])
    }

    /// Prefix every field path, e.g. `spec` + `handler` → `spec.handler`.
    pub fn within(mut self, prefix: &str) -> Self {
        for error in &mut self.0 {
            error.field = if error.field.is_empty() {
                prefix.to_string()
            } else {
                format!("{prefix}.{}", error.field)
            };
        }
        self
    }
}

/// Collects field errors while validating a document, then yields `Ok` or all problems at once.
#[derive(Debug, Default)]
pub struct Problems(Vec<FieldError>);

impl Problems {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add(&mut self, field: impl Into<String>, problem: impl Into<String>) {
        self.0.push(FieldError {
            field: field.into(),
            problem: problem.into(),
        });
    }

    pub fn extend(&mut self, invalid: Invalid) {
        self.0.extend(invalid.0);
    }

    pub fn check(&mut self, result: Result<(), Invalid>) {
        if let Err(invalid) = result {
            self.extend(invalid);
        }
    }

    /// All problems so far plus `result`'s: `Ok` only when there are none.
    pub fn merge<T>(mut self, result: Result<T, Invalid>) -> Result<T, Invalid> {
        match result {
            Ok(value) => self.finish().map(|()| value),
            Err(invalid) => {
                self.extend(invalid);
                Err(Invalid(self.0))
            }
        }
    }

    pub fn finish(self) -> Result<(), Invalid> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(Invalid(self.0))
        }
    }
}
