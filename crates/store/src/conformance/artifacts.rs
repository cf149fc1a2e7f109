//! Artifacts: versions deduplicated by content hash, newest first, listed by producing run,
//! deleted with their versions; `run_inputs` lineage gives each version's consumers.

use super::now;
use crate::{Store, StoreError};
use runplane_domain::artifact::{artifact_key, artifact_path, ARTIFACT_KIND};
use runplane_domain::{
    hash::version_id, Artifact, ArtifactMetadata, ArtifactSpec, ArtifactStatus, ArtifactType,
};
use std::collections::BTreeMap;
use std::sync::Arc;

/// A file artifact version whose hash is `hash` (padded to 64 hex digits).
pub fn artifact(project: &str, name: &str, hash: &str, produced_by: &str) -> Artifact {
    let hash = format!("{hash:0<64}");
    let version = version_id(&hash);
    Artifact {
        kind: ARTIFACT_KIND.to_string(),
        metadata: ArtifactMetadata {
            name: name.to_string(),
            project: project.to_string(),
            version: version.clone(),
            labels: BTreeMap::from([("stage".to_string(), "raw".to_string())]),
            created: now(),
            created_by: "conformance".to_string(),
        },
        spec: ArtifactSpec {
            r#type: ArtifactType::File,
            size: 3,
            files: 1,
            hash,
            path: artifact_path(project, name, &version),
            file: Some("data.csv".to_string()),
        },
        status: ArtifactStatus {
            key: artifact_key(project, ArtifactType::File, name, &version),
            produced_by: Some(produced_by.to_string()),
            consumers: Vec::new(),
        },
    }
}

pub async fn artifacts_put_dedupes_by_hash(store: Arc<dyn Store>) {
    store
        .ensure_project("demo", "alice")
        .await
        .expect("project");
    let first = artifact("demo", "data", "aa", "run-1");
    let put = store.put_artifact(first.clone()).await.expect("put");
    assert!(put.created);
    assert_eq!(put.value, first);
    let events = store
        .events_after(0, Some("demo"), 0)
        .await
        .expect("events");
    let logged: Vec<_> = events
        .iter()
        .filter(|e| e.data["type"] == "artifact")
        .collect();
    assert_eq!(logged.len(), 1, "one event per new version: {events:?}");
    assert_eq!(logged[0].data["key"], first.status.key.as_str());
    assert_eq!(logged[0].data["produced_by"], "run-1");

    // Same content logged again by another run: the first version stays, nothing is appended.
    let again = store
        .put_artifact(artifact("demo", "data", "aa", "run-2"))
        .await
        .expect("put again");
    assert!(!again.created);
    assert_eq!(again.value, first);
    let after = store
        .events_after(0, Some("demo"), 0)
        .await
        .expect("events");
    assert_eq!(after.len(), events.len());
    assert_eq!(
        store
            .artifact_versions("demo", "data")
            .await
            .expect("versions")
            .len(),
        1
    );
    // Same hash under another name is another artifact.
    assert!(
        store
            .put_artifact(artifact("demo", "copy", "aa", "run-2"))
            .await
            .expect("put")
            .created
    );
    match store
        .put_artifact(artifact("nowhere", "data", "aa", "r"))
        .await
    {
        Err(StoreError::NotFound(_)) => {}
        other => panic!("an artifact needs its project: {other:?}"),
    }
}

pub async fn artifacts_versions_newest_first(store: Arc<dyn Store>) {
    store
        .ensure_project("demo", "alice")
        .await
        .expect("project");
    let v1 = store
        .put_artifact(artifact("demo", "data", "a1", "run-1"))
        .await
        .expect("v1")
        .value;
    let v2 = store
        .put_artifact(artifact("demo", "data", "b2", "run-2"))
        .await
        .expect("v2")
        .value;
    let model = store
        .put_artifact(artifact("demo", "model", "c3", "run-2"))
        .await
        .expect("model")
        .value;
    let versions = store
        .artifact_versions("demo", "data")
        .await
        .expect("versions");
    assert_eq!(versions, vec![v2.clone(), v1.clone()]);
    assert_eq!(
        store
            .get_artifact("demo", "data", None)
            .await
            .expect("latest"),
        Some(v2.clone())
    );
    assert_eq!(
        store
            .get_artifact("demo", "data", Some(&v1.metadata.version))
            .await
            .expect("pinned"),
        Some(v1.clone())
    );
    assert_eq!(
        store
            .get_artifact("demo", "data", Some("ffff"))
            .await
            .expect("get"),
        None
    );
    assert_eq!(
        store.list_artifacts("demo", None).await.expect("list"),
        vec![v2.clone(), model.clone()],
        "the newest version of each name, by name"
    );
    assert_eq!(
        store
            .list_artifacts("demo", Some("run-1"))
            .await
            .expect("by run"),
        vec![v1.clone()]
    );
    assert_eq!(
        store
            .list_artifacts("demo", Some("run-2"))
            .await
            .expect("by run"),
        vec![v2.clone(), model.clone()]
    );

    let deleted = store.delete_artifact("demo", "data").await.expect("delete");
    assert_eq!(deleted, vec![v2, v1]);
    assert!(store
        .artifact_versions("demo", "data")
        .await
        .expect("versions")
        .is_empty());
    assert!(store
        .delete_artifact("demo", "data")
        .await
        .expect("again")
        .is_empty());
    assert_eq!(
        store.list_artifacts("demo", None).await.expect("list"),
        vec![model]
    );
}

pub async fn artifacts_consumers_from_run_inputs(store: Arc<dyn Store>) {
    store
        .ensure_project("demo", "alice")
        .await
        .expect("project");
    let data = store
        .put_artifact(artifact("demo", "data", "d1", "run-0"))
        .await
        .expect("put")
        .value;
    let key = data.status.key.clone();
    assert!(store
        .artifact_consumers(&key)
        .await
        .expect("none")
        .is_empty());
    let inputs = BTreeMap::from([("data".to_string(), key.clone())]);
    store
        .put_run_inputs("demo", "run-b", &inputs)
        .await
        .expect("inputs");
    store
        .put_run_inputs("demo", "run-a", &inputs)
        .await
        .expect("inputs");
    // Recording the same run again is idempotent.
    store
        .put_run_inputs("demo", "run-a", &inputs)
        .await
        .expect("inputs again");
    assert_eq!(
        store.artifact_consumers(&key).await.expect("consumers"),
        vec!["run-a".to_string(), "run-b".to_string()]
    );
    // The stored document never carries consumers.
    assert!(store
        .get_artifact("demo", "data", None)
        .await
        .expect("get")
        .expect("there")
        .status
        .consumers
        .is_empty());
}
