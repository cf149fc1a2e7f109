//! runplane's vocabulary: the entities of `docs/concepts.md` (projects, functions, tasks, runs,
//! attempts), their names and `store://` keys, the run lifecycle table, content hashing, and the
//! `Runnable` that runtimes hand to frameworks.
//!
//! This crate does no IO (no files, no network, no clock reads outside `now()` helpers passed
//! in by callers) and depends on no other runplane crate. Everything else depends on it.

pub mod artifact;
pub mod entity;
pub mod expr;
pub mod hash;
pub mod invalid;
pub mod key;
pub mod lifecycle;
pub mod names;
pub mod reason;
pub mod runnable;
pub mod trigger;
pub mod workflow;

pub use artifact::{Artifact, ArtifactMetadata, ArtifactSpec, ArtifactStatus, ArtifactType};
pub use entity::*;
pub use invalid::{FieldError, Invalid};
pub use lifecycle::RunState;
pub use runnable::{
    Build, BuiltImage, ContextDir, ExitOutcome, Failure, FileEntry, Job, Limits, OutputFile,
    ReplicaStatus, Runnable, Service, Volume, BUILD_OUTPUT, REDACTED,
};
