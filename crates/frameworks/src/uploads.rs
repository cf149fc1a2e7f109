//! Outputs uploaded over HTTP: a framework whose jobs run out of reach of the server's disk
//! (`kubernetes`) has them upload their outputs folder to `PUT /api/v1/outputs/{run}/{attempt}`
//! and accepts those uploads through [`OutputsUploads`], so that the server's API needs to
//! know no framework by its type.

use crate::ExecutionId;

/// Accepts the outputs a job uploads, authenticated by the run-scoped token it was given.
pub trait OutputsUploads: Send + Sync {
    /// Stores an execution's uploaded outputs (the uploader's JSON document), where its
    /// `Exited` event collects them.
    fn accept_outputs(
        &self,
        execution: &ExecutionId,
        token: &str,
        body: &[u8],
    ) -> Result<(), OutputsError>;
}

#[derive(Debug, thiserror::Error)]
pub enum OutputsError {
    #[error("the token does not belong to this run attempt")]
    Forbidden,
    #[error("invalid outputs upload: {0}")]
    Invalid(String),
    #[error("cannot store the outputs: {0}")]
    Io(#[from] std::io::Error),
}
