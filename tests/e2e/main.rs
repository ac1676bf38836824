//! The end-to-end suite: a real `sandboxd` process per test (`sandboxd_testkit::spawn_app`), real
//! Redis, real Docker, and real clients (the generated tonic client, grpcurl, Python grpcio).
//!
//! One test binary (zero-to-production's `tests/api/main.rs` layout): modules share the test kit
//! (`crates/testkit`) and link once. Needs `target/debug/sandboxd` (`cargo build -p
//! sandboxd-server`; scripts/test builds it), `redis-server` and a Docker engine with the
//! `sandboxd/busybox:local` image and gVisor's `runsc` registered (scripts/test does both).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod admission;
mod api;
mod fleet;
mod grpcurl;
mod harness;
mod isolation;
mod lifecycle;
mod observability;
mod pool;
mod python;
mod reliability;
mod shutdown;
mod validation;
