//! The shared conformance suite against a fresh SQLite file per test.

use runplane_store::sqlite::SqliteStore;

async fn fresh_store() -> SqliteStore {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(&dir.path().join("state").join("runplane.db"))
        .await
        .expect("open");
    // The store outlives this function; the directory must too. Leaking a few small temp
    // directories per test run is the price of not wrapping the store.
    std::mem::forget(dir);
    store
}

runplane_store::store_conformance_tests!(fresh_store());
