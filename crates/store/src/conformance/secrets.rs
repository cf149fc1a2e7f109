//! Secrets: opaque ciphertexts under `(project, name)`, upserted, listed by metadata only,
//! deleted, each change an event that never carries the value.

use super::now;
use crate::{Store, StoreError};
use std::sync::Arc;

pub async fn secrets_put_get_list_delete(store: Arc<dyn Store>) {
    for project in ["demo", "other"] {
        store
            .ensure_project(project, "alice")
            .await
            .expect("project");
    }
    assert_eq!(store.get_secret("demo", "token").await.expect("get"), None);
    assert_eq!(
        store
            .get_secret_ciphertext("demo", "token")
            .await
            .expect("get"),
        None
    );
    assert!(store.list_secrets("demo").await.expect("list").is_empty());

    let before = now();
    let token = store
        .put_secret("demo", "token", b"\x00cipher\xff", "alice")
        .await
        .expect("put");
    assert_eq!(token.project, "demo");
    assert_eq!(token.name, "token");
    assert_eq!(token.created_by, "alice");
    assert!(token.created >= before, "created is stamped by the store");
    assert_eq!(token.updated, token.created);
    assert_eq!(
        store.get_secret("demo", "token").await.expect("get"),
        Some(token.clone())
    );
    assert_eq!(
        store
            .get_secret_ciphertext("demo", "token")
            .await
            .expect("get"),
        Some(b"\x00cipher\xff".to_vec()),
        "the ciphertext reads back byte for byte"
    );

    let api = store
        .put_secret("demo", "api-key", b"k", "bob")
        .await
        .expect("put");
    let elsewhere = store
        .put_secret("other", "token", b"other", "alice")
        .await
        .expect("the same name in another project");
    assert_eq!(
        store.list_secrets("demo").await.expect("list"),
        [api.clone(), token.clone()],
        "by name"
    );
    assert_eq!(
        store.list_secrets("other").await.expect("list"),
        [elsewhere]
    );

    assert!(store.delete_secret("demo", "token").await.expect("delete"));
    assert!(!store
        .delete_secret("demo", "token")
        .await
        .expect("delete again"));
    assert_eq!(store.get_secret("demo", "token").await.expect("get"), None);
    assert_eq!(
        store
            .get_secret_ciphertext("demo", "token")
            .await
            .expect("get"),
        None
    );
    assert_eq!(store.list_secrets("demo").await.expect("list"), [api]);
    assert_eq!(
        store
            .get_secret_ciphertext("other", "token")
            .await
            .expect("get"),
        Some(b"other".to_vec()),
        "deleting one project's secret leaves the other's"
    );
}

pub async fn secrets_upsert_keeps_created(store: Arc<dyn Store>) {
    store
        .ensure_project("demo", "alice")
        .await
        .expect("project");
    let first = store
        .put_secret("demo", "token", b"one", "alice")
        .await
        .expect("put");
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let second = store
        .put_secret("demo", "token", b"two", "bob")
        .await
        .expect("replace");
    assert_eq!(second.created, first.created);
    assert_eq!(second.created_by, "alice", "the creator stays");
    assert!(second.updated > first.updated);
    assert_eq!(
        store
            .get_secret_ciphertext("demo", "token")
            .await
            .expect("get"),
        Some(b"two".to_vec())
    );
    assert_eq!(store.list_secrets("demo").await.expect("list").len(), 1);
}

pub async fn secrets_need_their_project(store: Arc<dyn Store>) {
    match store.put_secret("nowhere", "token", b"x", "alice").await {
        Err(StoreError::NotFound(what)) => assert!(what.contains("nowhere"), "{what}"),
        other => panic!("expected NotFound, got {other:?}"),
    }
    assert!(!store
        .delete_secret("nowhere", "token")
        .await
        .expect("delete"));
}

pub async fn secrets_events_never_carry_the_value(store: Arc<dyn Store>) {
    store
        .ensure_project("demo", "alice")
        .await
        .expect("project");
    let start = store.latest_event_id().await.expect("latest");
    let value = b"very-secret-ciphertext";
    store
        .put_secret("demo", "token", value, "alice")
        .await
        .expect("put");
    store
        .put_secret("demo", "token", value, "alice")
        .await
        .expect("replace");
    assert!(store.delete_secret("demo", "token").await.expect("delete"));
    assert!(!store.delete_secret("demo", "token").await.expect("again"));

    let events = store
        .events_after(start, None, 100)
        .await
        .expect("events_after");
    assert_eq!(
        events.len(),
        3,
        "a put, a replace and one delete: {events:?}"
    );
    for event in &events {
        assert_eq!(event.kind, "secret");
        assert_eq!(event.project, "demo");
        assert_eq!(event.data["type"], "secret");
        assert_eq!(event.data["name"], "token");
        let text = event.data.to_string();
        assert!(!text.contains("very-secret"), "{text}");
        assert!(event.data.get("value").is_none());
    }
    assert_eq!(events[0].data.get("deleted"), None);
    assert_eq!(events[2].data["deleted"], true);
}
