//! Running a step under a chat's lease, and the ports bundle every use case is built from.

mod telemetry;

use std::sync::Arc;

use sandboxd_domain::{ChatId, SandboxSession};

use crate::error::UseCaseError;
use crate::ports::{
    Change, Clock, EventLog, Lease, LifecycleLocker, LockError, PoolRuntime, RepositoryError,
    SessionRepository,
};
use crate::routing::Engines;

/// The ports a use case drives, shared by all of them.
#[derive(Clone)]
pub struct Ports {
    pub repository: Arc<dyn SessionRepository>,
    pub locker: Arc<dyn LifecycleLocker>,
    /// Every node's engine, routed by a sandbox's node (this node's alone in single-node mode).
    pub engines: Engines,
    /// This node's warm pool; `None` when its runtime cannot pool.
    pub pool: Option<Arc<dyn PoolRuntime>>,
    pub clock: Arc<dyn Clock>,
    /// Read by WatchSandboxes; the repository's writes append to it.
    pub events: Arc<dyn EventLog>,
}

impl Ports {
    /// Deletes `session` under `lease` with `change`'s event and sets the active-sessions gauge
    /// to the count the store answered, as every use case that deletes does.
    pub(crate) async fn delete_session(
        &self,
        lease: &Lease,
        session: &SandboxSession,
        change: &Change,
    ) -> Result<(), RepositoryError> {
        let active = self.repository.delete(lease, session, change).await?;
        telemetry::set_active_count(active);
        Ok(())
    }
}

impl std::fmt::Debug for Ports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ports").finish_non_exhaustive()
    }
}

/// Takes the chat's lease, runs `step` with it and releases it whatever `step` returned: the
/// reference flow's `with locker.lock(chat_id):`. A failed release is logged, not raised: the step's
/// outcome is already decided and committed, and the lease expires on its own.
pub(crate) async fn with_lease<T, E>(
    locker: &dyn LifecycleLocker,
    chat_id: &ChatId,
    step: impl AsyncFnOnce(&Lease) -> Result<T, E>,
) -> Result<T, E>
where
    E: From<LockError>,
{
    let lease = locker.lock(chat_id).await?;
    let outcome = step(&lease).await;
    if let Err(error) = locker.release(lease).await {
        telemetry::log_release_failed(chat_id, error.metric_label());
    }
    outcome
}
