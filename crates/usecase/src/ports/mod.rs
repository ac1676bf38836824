//! The ports the use cases drive: session store, per-chat lease locker, container runtime, clock,
//! lifecycle event log, and (fleet mode) the node registry.
//!
//! Adapters implement these traits; the use cases only ever see `Arc<dyn Trait>`.

use sandboxd_domain::Timestamp;

/// A boxed cause, kept for logs and never sent to clients.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Number of sessions in the store right after a write: what the `sandbox_active_count` gauge shows.
/// Writes return it so the gauge costs no extra round trip.
pub type ActiveCount = u64;

mod events;
mod locker;
mod nodes;
mod pool;
mod repository;
mod runtime;

pub use events::EventLog;
pub use locker::{Lease, LeaseLossFlag, LifecycleLocker, LockError};
pub use nodes::{NodeBeat, NodeRegistry};
pub use pool::{ClaimError, PoolRecovery, PoolRuntime, PooledSandbox};
pub use repository::{
    Change, Limits, ListQuery, QuotaLimit, RepositoryError, Reservation, SessionPage,
    SessionRepository, StateCounts, TouchMatch,
};
pub use runtime::{
    ContainerState, ManagedContainer, NewSandbox, RuntimeError, SandboxLabels, SandboxRuntime,
    StartedSandbox, VolumeRefusal,
};

/// Time as the use cases see it; a port so tests can decide expiry.
pub trait Clock: Send + Sync {
    fn now(&self) -> Timestamp;
}
