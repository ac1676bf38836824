//! Use-case tests on the in-memory fakes: one test per branch of each use case, asserting the result,
//! the port calls in order, and the exact metrics, span fields and log events.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::too_many_lines
)]

mod admission;
mod cleanup;
mod create;
mod create_failures;
mod delete;
mod fleet;
mod harness;
mod lifecycle;
mod pool;
mod reads;
mod reconcile;
mod routing;
mod watch;
