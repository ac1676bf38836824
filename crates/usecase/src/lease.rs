//! Running a step under a chat's lease, sweeping a chat's stray containers under it, and the
//! ports bundle every use case is built from.

use std::sync::Arc;

use sandboxd_domain::{ChatId, ContainerId};

use crate::error::UseCaseError;
use crate::ports::{
    Clock, Lease, LifecycleLocker, LockError, ManagedContainer, RuntimeError, SandboxRuntime,
    SessionRepository,
};
use crate::telemetry::{self, metric};

/// The ports a use case drives, shared by all of them.
#[derive(Clone)]
pub struct Ports {
    pub repository: Arc<dyn SessionRepository>,
    pub locker: Arc<dyn LifecycleLocker>,
    pub runtime: Arc<dyn SandboxRuntime>,
    pub clock: Arc<dyn Clock>,
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

/// Removes every one of `containers` (the chat's, as `list_chat` gave them) except `keep`: the
/// orphan of a crashed create, a container another replica lost track of. The caller holds the
/// chat's lease, so no create of this chat is in flight and nothing it removes can be a sandbox
/// about to be saved. Each removal is counted and logged as a repair. Returns how many were
/// removed.
///
/// # Errors
/// The runtime's, at the first removal that fails; what was removed stays removed.
pub(crate) async fn remove_strays(
    runtime: &dyn SandboxRuntime,
    chat_id: &ChatId,
    containers: Vec<ManagedContainer>,
    keep: Option<&ContainerId>,
) -> Result<usize, RuntimeError> {
    let mut removed = 0;
    for container in containers {
        if keep == Some(&container.container_id) {
            continue;
        }
        runtime.force_remove(&container.container_id).await?;
        removed += 1;
        telemetry::count_result(metric::RECONCILE_TOTAL, metric::REPAIR_STRAY_REMOVED);
        telemetry::log_stray_removed(chat_id, &container);
    }
    Ok(removed)
}
