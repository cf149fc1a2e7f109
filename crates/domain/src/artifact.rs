//! Artifacts: files or folders that runs log (`context.log_artifact`) and later runs consume as
//! inputs. Versioned by content like function versions: the same bytes logged under the same
//! name are the same version, so a re-run that produces identical output adds nothing.

use crate::key::Key;
use crate::Labels;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// `kind` of every artifact document.
pub const ARTIFACT_KIND: &str = "artifact";
/// The entity segment of artifact keys (`store://<p>/artifact/<type>/<name>:<version>`).
pub const ARTIFACT_ENTITY: &str = "artifact";

/// A single file, or a folder of files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ArtifactType {
    File,
    Dir,
}

impl ArtifactType {
    pub fn as_str(self) -> &'static str {
        match self {
            ArtifactType::File => "file",
            ArtifactType::Dir => "dir",
        }
    }

    pub fn parse(text: &str) -> Option<ArtifactType> {
        match text {
            "file" => Some(ArtifactType::File),
            "dir" => Some(ArtifactType::Dir),
            _ => None,
        }
    }
}

impl fmt::Display for ArtifactType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One immutable version of an artifact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Artifact {
    /// Always `artifact`.
    pub kind: String,
    pub metadata: ArtifactMetadata,
    pub spec: ArtifactSpec,
    pub status: ArtifactStatus,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ArtifactMetadata {
    pub name: String,
    pub project: String,
    /// The first 16 hex digits of `spec.hash`.
    pub version: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: Labels,
    pub created: DateTime<Utc>,
    pub created_by: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ArtifactSpec {
    #[serde(rename = "type")]
    pub r#type: ArtifactType,
    /// Total bytes of its files.
    pub size: u64,
    /// How many files (1 for a file artifact).
    pub files: u64,
    /// SHA-256 over the sorted relative paths, modes and bytes of its files.
    pub hash: String,
    /// Where its files sit in the artifact store: `<project>/<name>/<version>`.
    pub path: String,
    /// The relative path of the file of a file artifact (its base name when logged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ArtifactStatus {
    /// `store://<project>/artifact/<type>/<name>:<version>`.
    pub key: String,
    /// The id of the run that logged this version first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub produced_by: Option<String>,
    /// Runs that received this version as an input (filled by the API's detail views).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub consumers: Vec<String>,
}

/// The key of an artifact version.
pub fn artifact_key(project: &str, r#type: ArtifactType, name: &str, version: &str) -> String {
    Key::new(
        project,
        ARTIFACT_ENTITY,
        r#type.as_str(),
        name,
        Some(version),
    )
    .to_string()
}

/// Where a version's files sit in the artifact store.
pub fn artifact_path(project: &str, name: &str, version: &str) -> String {
    format!("{project}/{name}/{version}")
}
