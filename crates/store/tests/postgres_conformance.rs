//! The shared conformance suite against PostgreSQL: each test gets a fresh database on the
//! server named by `RUNPLANE_TEST_PG_URL` (default: the cluster `scripts/setup-postgres`
//! starts). Without a reachable server the tests fail, saying so; they are never skipped.

#![cfg(feature = "postgres")]

use runplane_store::postgres::testing::fresh_store;

runplane_store::store_conformance_tests!(fresh_store());
