//! In-memory fakes of every port, for use-case tests and for the adapters' contract suite.
//!
//! They record their calls into one shared [`CallLog`] so tests can assert the order of calls
//! across ports (stop before delete, save only after create, ...).

mod clock;
mod locker;
mod repository;
mod runtime;

use std::sync::{Arc, Mutex, MutexGuard};

pub use clock::ManualClock;
pub use locker::InMemoryLocker;
pub use repository::{InMemorySessionRepository, RepoOp};
pub use runtime::{FakeRuntime, RuntimeOp};

/// Calls made to the fakes, in order, as `"port.method(arg)"` strings.
#[derive(Debug, Clone, Default)]
pub struct CallLog(Arc<Mutex<Vec<String>>>);

impl CallLog {
    pub fn record(&self, call: impl Into<String>) {
        lock(&self.0).push(call.into());
    }

    /// Everything recorded so far.
    #[must_use]
    pub fn calls(&self) -> Vec<String> {
        lock(&self.0).clone()
    }

    /// Recorded calls whose text starts with `prefix` (e.g. `"runtime."`).
    #[must_use]
    pub fn calls_of(&self, prefix: &str) -> Vec<String> {
        lock(&self.0)
            .iter()
            .filter(|c| c.starts_with(prefix))
            .cloned()
            .collect()
    }

    pub fn clear(&self) {
        lock(&self.0).clear();
    }
}

/// Fakes never panic while holding their locks, so a poisoned mutex can only come from a
/// panicking test: keep going with its data.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
