//! In-memory fakes of every port, for use-case tests and for the adapters' contract suite.
//!
//! They record their calls into one shared [`CallLog`] so tests can assert the order of calls
//! across ports (stop before delete, save only after create, ...).

mod clock;
mod locker;
mod nodes;
mod repository;
mod runtime;

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use sandboxd_domain::{NodeId, NodeInfo, Timestamp};

pub use clock::ManualClock;
pub use locker::InMemoryLocker;
pub use nodes::InMemoryNodeRegistry;
pub use repository::{InMemorySessionRepository, RepoOp};
pub use runtime::{FakeRuntime, RuntimeOp};

use crate::ports::SandboxRuntime;
use crate::{Engines, NodeDirectory, Ports};

/// Every fake, sharing one [`CallLog`]: the world a use-case or server test runs in.
#[derive(Debug, Clone)]
pub struct Fakes {
    pub calls: CallLog,
    pub locker: Arc<InMemoryLocker>,
    pub repository: Arc<InMemorySessionRepository>,
    pub runtime: Arc<FakeRuntime>,
    pub clock: Arc<ManualClock>,
    /// Single-node by default; [`Self::in_fleet`] makes the fakes one node of a fleet.
    pub directory: NodeDirectory,
}

/// The heartbeat TTL of [`Fakes::in_fleet`]'s directory.
const FLEET_TTL: Duration = Duration::from_secs(30);

impl Default for Fakes {
    fn default() -> Self {
        Self::with_lock_wait(Duration::from_secs(5))
    }
}

impl Fakes {
    /// The fakes, with a locker that waits `wait` for a busy chat before giving up.
    #[must_use]
    pub fn with_lock_wait(wait: Duration) -> Self {
        let calls = CallLog::default();
        let locker = Arc::new(InMemoryLocker::with_wait(calls.clone(), wait));
        let repository = Arc::new(InMemorySessionRepository::new(
            locker.clone(),
            calls.clone(),
        ));
        Self {
            runtime: Arc::new(FakeRuntime::new(calls.clone())),
            clock: Arc::new(ManualClock::at_epoch()),
            calls,
            locker,
            repository,
            directory: NodeDirectory::single(NodeId::single()),
        }
    }

    /// The fakes as node `local` of a fleet, freshly renewed and alone in it until
    /// [`Self::set_nodes`]; every other node's engine is the same fake (one table of containers).
    #[must_use]
    pub fn in_fleet(local: &str) -> Self {
        let fakes = Self {
            directory: NodeDirectory::fleet(node_id(local), FLEET_TTL),
            ..Self::default()
        };
        fakes.set_nodes(&[(local, true)]);
        fakes
    }

    /// The fleet as this node's last beat read it: each `(node, healthy)`, this node renewed now.
    pub fn set_nodes(&self, nodes: &[(&str, bool)]) {
        let nodes = nodes
            .iter()
            .map(|(node, healthy)| NodeInfo {
                node_id: node_id(node),
                address: format!("{node}:50052"),
                capacity: 0,
                active: 0,
                draining: false,
                healthy: *healthy,
                last_heartbeat_at: Timestamp::UNIX_EPOCH,
            })
            .collect();
        self.directory.renewed(nodes, Instant::now());
    }

    /// The ports over these fakes, as the use cases take them.
    #[must_use]
    pub fn ports(&self) -> Ports {
        let local: Arc<dyn SandboxRuntime> = self.runtime.clone();
        let engines = if self.directory.is_fleet() {
            let remote = Arc::clone(&local);
            Engines::fleet(
                local,
                self.directory.clone(),
                Arc::new(move |_| Ok(Arc::clone(&remote))),
                None,
            )
        } else {
            Engines::single(local, self.directory.clone())
        };
        Ports {
            repository: self.repository.clone(),
            locker: self.locker.clone(),
            engines,
            pool: Some(self.runtime.clone()),
            clock: self.clock.clone(),
            events: self.repository.clone(),
        }
    }
}

/// A node id the fakes use; panics on a malformed one (a test's typo).
#[must_use]
#[allow(clippy::expect_used)]
pub fn node_id(raw: &str) -> NodeId {
    NodeId::parse(raw).expect("a test's node id")
}

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

/// Errors queued per operation: the next call of an operation takes the first one queued.
#[derive(Debug)]
struct InjectedFailures<Op, E>(Mutex<HashMap<Op, VecDeque<E>>>);

impl<Op: Eq + Hash, E> Default for InjectedFailures<Op, E> {
    fn default() -> Self {
        Self(Mutex::new(HashMap::new()))
    }
}

impl<Op: Eq + Hash, E> InjectedFailures<Op, E> {
    fn push(&self, op: Op, error: E) {
        lock(&self.0).entry(op).or_default().push_back(error);
    }

    /// Records `call` in `calls`, then fails with the error queued for `op`, if any.
    fn enter(&self, calls: &CallLog, op: Op, call: String) -> Result<(), E> {
        calls.record(call);
        match lock(&self.0).get_mut(&op).and_then(VecDeque::pop_front) {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

/// Fakes never panic while holding their locks, so a poisoned mutex can only come from a
/// panicking test: keep going with its data.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
