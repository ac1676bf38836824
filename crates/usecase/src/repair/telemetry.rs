//! The log lines of the shared repairs: a stray container removed, a session adopted, a dead
//! container removed.

use sandboxd_domain::{ChatId, SandboxSession};

// The shared helpers and every name too: the parent module reaches all its telemetry through
// this one path.
pub(super) use crate::telemetry::*;

pub(super) fn log_orphan_container_removed(container: &crate::ports::ManagedContainer) {
    tracing::warn!(
        name: event::SANDBOX_ORPHAN_CONTAINER_REMOVED,
        container_id = %container.container_id,
        state = container.state.as_str(),
        chat_id = container.labels.chat_id.map(tracing::field::display),
        session_id = container.labels.session_id.map(tracing::field::display),
        message = event::SANDBOX_ORPHAN_CONTAINER_REMOVED,
    );
}

/// A session rebuilt from its live container's labels (its store lost it).
pub(super) fn log_adopted(session: &SandboxSession) {
    session_event!(
        warn,
        event::SANDBOX_ADOPTED,
        session,
        expires_at = tracing::field::display(session.expires_at)
    );
}

/// A container of `chat_id` other than its session's, removed under the chat's lease.
pub(super) fn log_stray_removed(chat_id: &ChatId, container: &crate::ports::ManagedContainer) {
    tracing::warn!(
        name: event::SANDBOX_STRAY_CONTAINER_REMOVED,
        chat_id = %chat_id,
        container_id = %container.container_id,
        state = container.state.as_str(),
        session_id = container.labels.session_id.map(tracing::field::display),
        message = event::SANDBOX_STRAY_CONTAINER_REMOVED,
    );
}
