//! sandboxd use cases and the ports they drive.
//!
//! Depends on the domain only. Telemetry goes through the `tracing` and `metrics` facades, with
//! every name in [`telemetry`] and each use case's spans and log lines in its own `telemetry`
//! submodule. Each use case is a struct built from [`Ports`] whose `execute` states its flow and
//! ends in one `telemetry::finish`; `docs/design.md` describes each.

mod admission;
mod cleanup;
mod create;
mod delete;
mod engines;
pub mod error;
mod extend;
mod fleet;
mod get;
mod lease;
mod lifecycle;
mod list;
mod pool;
pub mod ports;
mod profiles;
mod reconcile;
mod repair;
mod routing;
pub mod telemetry;
mod watch;

#[cfg(test)]
mod tests;

#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use admission::{AdmissionPolicy, Refusal};
pub use cleanup::{CleanupExpiredSandboxes, CleanupOptions, CleanupReport};
pub use create::{
    CreateResult, CreateSandbox, CreateSandboxCommand, CreateSandboxError, CreateSandboxOutput,
};
pub use delete::{DeleteResult, DeleteSandbox, DeleteSandboxCommand, DeleteSandboxOutput};
pub use error::{ErrorKind, PortError, UseCaseError};
pub use extend::{ExtendSandbox, ExtendSandboxCommand, ExtendSandboxError};
pub use fleet::{BeatReport, Heartbeat, NodeDirectory, NodeError, Nodes};
pub use get::{GetSandbox, GetSandboxError};
pub use lease::Ports;
pub use lifecycle::{LifecycleError, PauseSandbox, ResumeSandbox, TouchSandbox};
pub use list::ListSandboxes;
pub use pool::{RefillError, RefillPool, RefillReport, WarmPool};
pub use profiles::{Profiles, UnregisteredRuntime};
pub use reconcile::{ReconcileOptions, ReconcileReport, ReconcileSandboxes};
pub use routing::{Connect, Engines, RouteError, Routed};
pub use watch::{EventHub, WatchError, WatchRequest};
