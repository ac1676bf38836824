//! DeleteSandbox's span and log lines.

use sandboxd_domain::{ChatId, SandboxSession};
use tracing::Span;

// The shared helpers and every name too: the parent module reaches all its telemetry through
// this one path.
pub(super) use crate::telemetry::*;

pub(super) fn delete_span(chat_id: &ChatId) -> Span {
    session_span!(span::DELETE, chat.id = %chat_id,)
}

pub(super) fn log_deleted(session: &SandboxSession) {
    session_event!(info, event::SANDBOX_DELETED, session);
}

pub(super) fn log_delete_not_found(chat_id: &ChatId) {
    tracing::info!(name: event::SANDBOX_DELETE_NOT_FOUND, chat_id = %chat_id, message = event::SANDBOX_DELETE_NOT_FOUND);
}

/// The fields of a failed delete: chat and error, plus the session when it had been read.
pub(super) fn log_delete_failed(
    chat_id: &ChatId,
    session: Option<&SandboxSession>,
    error_type: &str,
) {
    match session {
        Some(session) => {
            session_event!(
                error,
                event::SANDBOX_DELETE_FAILED,
                session,
                error = error_type
            )
        }
        None => tracing::error!(
            name: event::SANDBOX_DELETE_FAILED,
            chat_id = %chat_id,
            error = error_type,
            message = event::SANDBOX_DELETE_FAILED,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::tests::{ERROR_FIELDS, SESSION_FIELDS, assert_declares, chat_id};

    #[test]
    fn the_delete_span_declares_the_fields_its_constants_name() {
        assert_declares(
            || delete_span(&chat_id()),
            span::DELETE,
            &[ERROR_FIELDS, SESSION_FIELDS, &[span::CHAT_ID]],
        );
    }
}
