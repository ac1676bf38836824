//! sandboxd use cases and the ports they drive.
//!
//! Depends on the domain only. Telemetry goes through the `tracing` and `metrics` facades, with
//! every name in [`telemetry`].

pub mod ports;
pub mod telemetry;

#[cfg(any(test, feature = "testing"))]
pub mod testing;
