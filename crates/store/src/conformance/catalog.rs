//! Projects, function versions and tasks.

use super::{function_version, now, task};
use crate::{Store, StoreError};
use serde_json::json;
use std::sync::Arc;

pub async fn projects_ensure_is_idempotent(store: Arc<dyn Store>) {
    assert_eq!(store.get_project("demo").await.expect("get"), None);
    let first = store.ensure_project("demo", "alice").await.expect("ensure");
    assert_eq!(first.name, "demo");
    assert_eq!(first.created_by, "alice");
    let again = store
        .ensure_project("demo", "bob")
        .await
        .expect("ensure again");
    assert_eq!(again, first, "ensuring an existing project changes nothing");
    store
        .ensure_project("analytics", "bob")
        .await
        .expect("ensure");

    assert_eq!(store.get_project("demo").await.expect("get"), Some(first));
    let names: Vec<String> = store
        .list_projects()
        .await
        .expect("list")
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(names, ["analytics", "demo"]);
}

pub async fn function_versions_deduplicate_by_hash(store: Arc<dyn Store>) {
    store
        .ensure_project("demo", "alice")
        .await
        .expect("project");
    let v1 = function_version("demo", "hello", json!({ "handler": "main:one" }));
    let put = store
        .put_function_version(v1.clone())
        .await
        .expect("put v1");
    assert!(put.created);
    assert_eq!(put.value, v1);

    let v2 = function_version("demo", "hello", json!({ "handler": "main:two" }));
    assert!(
        store
            .put_function_version(v2.clone())
            .await
            .expect("put v2")
            .created
    );

    // The spec of v1 again, applied later by someone else: no new version, v1 comes back.
    let mut again = function_version("demo", "hello", json!({ "handler": "main:one" }));
    again.metadata.created_by = "bob".to_string();
    again.metadata.created = now();
    let put = store
        .put_function_version(again)
        .await
        .expect("put v1 again");
    assert!(!put.created);
    assert_eq!(put.value, v1, "the original version is returned unchanged");

    let versions = store
        .list_function_versions("demo", "hello")
        .await
        .expect("versions");
    assert_eq!(versions, [v2.clone(), v1], "newest first, no duplicate");
    // Still the latest: re-applying an old spec does not make it newer.
    assert_eq!(
        store
            .get_function("demo", "hello", None)
            .await
            .expect("latest"),
        Some(v2)
    );

    // Concurrent identical puts make one version.
    let v3 = function_version("demo", "hello", json!({ "handler": "main:three" }));
    let puts = (0..8).map(|_| {
        let store = store.clone();
        let v3 = v3.clone();
        tokio::spawn(async move { store.put_function_version(v3).await })
    });
    let mut created = 0;
    for put in puts {
        let put = put.await.expect("join").expect("put v3");
        assert_eq!(put.value, v3);
        created += usize::from(put.created);
    }
    assert_eq!(created, 1, "exactly one concurrent put creates the version");
    assert_eq!(
        store
            .list_function_versions("demo", "hello")
            .await
            .expect("versions")
            .len(),
        3
    );
}

pub async fn function_versions_latest_and_listing(store: Arc<dyn Store>) {
    store
        .ensure_project("demo", "alice")
        .await
        .expect("project");
    store
        .ensure_project("other", "alice")
        .await
        .expect("project");
    let a1 = function_version("demo", "alpha", json!({ "n": 1 }));
    let b1 = function_version("demo", "beta", json!({ "n": 1 }));
    let a2 = function_version("demo", "alpha", json!({ "n": 2 }));
    let elsewhere = function_version("other", "alpha", json!({ "n": 3 }));
    for v in [&a1, &b1, &a2, &elsewhere] {
        assert!(
            store
                .put_function_version(v.clone())
                .await
                .expect("put")
                .created
        );
    }

    let get = |name: &'static str, version: Option<String>| {
        let store = store.clone();
        async move {
            store
                .get_function("demo", name, version.as_deref())
                .await
                .expect("get")
        }
    };
    assert_eq!(get("alpha", None).await, Some(a2.clone()));
    assert_eq!(
        get("alpha", Some(a1.metadata.version.clone())).await,
        Some(a1.clone())
    );
    assert_eq!(
        get("alpha", Some("ffffffffffffffff".to_string())).await,
        None
    );
    assert_eq!(get("gamma", None).await, None);

    let mut latest = store.list_functions("demo").await.expect("list");
    latest.sort_by(|x, y| x.metadata.name.cmp(&y.metadata.name));
    assert_eq!(
        latest,
        [a2.clone(), b1.clone()],
        "latest of each name, this project only"
    );
    assert_eq!(
        store
            .list_function_versions("demo", "alpha")
            .await
            .expect("versions"),
        [a2, a1]
    );

    assert!(store
        .delete_function("demo", "alpha")
        .await
        .expect("delete"));
    assert!(!store
        .delete_function("demo", "alpha")
        .await
        .expect("delete again"));
    assert_eq!(get("alpha", None).await, None);
    assert!(store
        .list_function_versions("demo", "alpha")
        .await
        .expect("versions")
        .is_empty());
    assert_eq!(store.list_functions("demo").await.expect("list"), [b1]);
    assert_eq!(
        store
            .get_function("other", "alpha", None)
            .await
            .expect("get"),
        Some(elsewhere),
        "deleting in one project leaves the others alone"
    );
}

pub async fn function_versions_need_their_project(store: Arc<dyn Store>) {
    let v = function_version("nowhere", "hello", json!({}));
    match store.put_function_version(v).await {
        Err(StoreError::NotFound(_)) => {}
        other => panic!("expected NotFound for a missing project, got {other:?}"),
    }
}

pub async fn tasks_upsert_keeps_created(store: Arc<dyn Store>) {
    store
        .ensure_project("demo", "alice")
        .await
        .expect("project");
    assert_eq!(store.get_task("demo", "nightly").await.expect("get"), None);
    let first = task("demo", "nightly", "hello");
    assert_eq!(store.put_task(first.clone()).await.expect("put"), first);

    let mut changed = task("demo", "nightly", "hello:0123456789abcdef");
    changed.metadata.created = first.metadata.created + chrono::Duration::seconds(60);
    changed.metadata.updated = first.metadata.updated + chrono::Duration::seconds(60);
    changed.spec.max_concurrency = Some(7);
    changed
        .metadata
        .labels
        .insert("tier".to_string(), "gold".to_string());
    let stored = store.put_task(changed.clone()).await.expect("put again");
    assert_eq!(
        stored.metadata.created, first.metadata.created,
        "created is kept"
    );
    assert_eq!(stored.metadata.updated, changed.metadata.updated);
    assert_eq!(stored.spec, changed.spec);
    assert_eq!(stored.metadata.labels, changed.metadata.labels);
    assert_eq!(
        store.get_task("demo", "nightly").await.expect("get"),
        Some(stored.clone())
    );

    let other = task("demo", "adhoc", "hello");
    store.put_task(other.clone()).await.expect("put other");
    assert_eq!(
        store.list_tasks("demo").await.expect("list"),
        [other, stored]
    );
    assert!(store
        .list_tasks("elsewhere")
        .await
        .expect("list")
        .is_empty());

    assert!(store.delete_task("demo", "nightly").await.expect("delete"));
    assert!(!store
        .delete_task("demo", "nightly")
        .await
        .expect("delete again"));
    assert_eq!(store.get_task("demo", "nightly").await.expect("get"), None);
}
