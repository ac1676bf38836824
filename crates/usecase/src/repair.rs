//! The repairs a use case makes under a chat's lease when the engine and the store disagree:
//! removing a chat's stray containers, adopting a sandbox whose session the store lost, removing
//! a dead container. Each is counted in `sandbox_reconcile_total` and logged with its reason,
//! whoever makes it (create, delete or reconcile).

mod telemetry;

use std::time::Duration;

use sandboxd_domain::{ChatId, EventNote, EventReason, EventType, SandboxSession};

use crate::lease::Ports;
use crate::ports::{Lease, ManagedContainer, RepositoryError, RuntimeError, SandboxRuntime};
use telemetry::metric;

/// Removes every one of `containers` (the chat's, as `list_chat` gave them): the orphan of a
/// crashed create, a container another replica lost track of, a stale lease holder's unsaved
/// one. The caller holds the chat's lease, so no live create of this chat is in flight. Each
/// removal is counted and logged as a repair.
///
/// # Errors
/// The runtime's, at the first removal that fails; what was removed stays removed.
pub(crate) async fn remove_strays(
    ports: &Ports,
    chat_id: &ChatId,
    containers: Vec<ManagedContainer>,
) -> Result<(), RuntimeError> {
    for container in containers {
        if let Some(engine) = ports.engines.removing(container.node_id.as_ref()).await? {
            engine.force_remove(&container.container_id).await?;
        }
        telemetry::count_result(metric::RECONCILE_TOTAL, metric::REPAIR_STRAY_REMOVED);
        telemetry::log_stray_removed(chat_id, &container);
        // Watchers hear of it when the labels describe a whole session. Best effort: the
        // removal is done and no stored session changed, so a lost event loses no state.
        if let Some(labelled) = container.session() {
            let note = EventNote::new(EventType::Reconciled, EventReason::Stray, ports.clock.now());
            if let Err(error) = ports.repository.append_event(&labelled, &note).await {
                telemetry::log_reconcile_failed(crate::error::UseCaseError::metric_label(&error));
            }
        }
    }
    Ok(())
}

/// Saves the session a live container's labels describe (`labelled`) as its chat's current
/// session, under `lease`. Its expiry is the later of the labelled one and now + `floor`: a
/// sandbox extended before the store lost it is not cut short, and none expires under a client
/// that could not reach the store.
///
/// # Errors
/// The repository's; nothing was saved.
pub(crate) async fn adopt(
    ports: &Ports,
    lease: &Lease,
    labelled: SandboxSession,
    floor: Duration,
) -> Result<SandboxSession, RepositoryError> {
    let now = ports.clock.now();
    let session = SandboxSession {
        expires_at: labelled.expires_at.max(now + floor),
        ..labelled
    };
    let note = EventNote::new(EventType::Reconciled, EventReason::Adopted, now);
    let active = ports.repository.save(lease, &session, &note).await?;
    telemetry::set_active_count(active);
    telemetry::count_result(metric::RECONCILE_TOTAL, metric::REPAIR_ADOPTED);
    telemetry::log_adopted(&session);
    Ok(session)
}

/// Removes a container no session can own (dead, unlabelled, or incompletely labelled).
///
/// # Errors
/// The runtime's; the container may still be there.
pub(crate) async fn remove_dead(
    runtime: &dyn SandboxRuntime,
    container: &ManagedContainer,
) -> Result<(), RuntimeError> {
    runtime.force_remove(&container.container_id).await?;
    telemetry::count_result(metric::RECONCILE_TOTAL, metric::REPAIR_CONTAINER_REMOVED);
    telemetry::log_orphan_container_removed(container);
    Ok(())
}
