//! ExtendSandbox's span and log lines.

use sandboxd_domain::{ChatId, SandboxSession};
use tracing::Span;
use tracing::field::Empty;

// The shared helpers and every name too: the parent module reaches all its telemetry through
// this one path.
pub(super) use crate::telemetry::*;

pub(super) fn extend_span(chat_id: &ChatId, ttl_ms: u128) -> Span {
    session_span!(
        span::EXTEND,
        chat.id = %chat_id,
        sandbox.ttl_ms = u64::try_from(ttl_ms).unwrap_or(u64::MAX),
        sandbox.expires_at = Empty,
    )
}

pub(super) fn log_extended(session: &SandboxSession) {
    session_event!(
        info,
        event::SANDBOX_EXTENDED,
        session,
        expires_at = tracing::field::display(session.expires_at)
    );
}

/// A refused extend (not found, expired, bad ttl): the client's mistake, worth a warning with
/// the chat. Port failures are logged where they are handled, by the server.
pub(super) fn log_extend_refused(chat_id: &ChatId, error_type: &str) {
    tracing::warn!(name: event::SANDBOX_EXTEND_FAILED, chat_id = %chat_id, error = error_type, message = event::SANDBOX_EXTEND_FAILED);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::tests::{ERROR_FIELDS, SESSION_FIELDS, assert_declares, chat_id};

    #[test]
    fn the_extend_span_declares_the_fields_its_constants_name() {
        assert_declares(
            || extend_span(&chat_id(), 1000),
            span::EXTEND,
            &[
                ERROR_FIELDS,
                SESSION_FIELDS,
                &[span::CHAT_ID, span::TTL_MS, span::EXPIRES_AT],
            ],
        );
    }
}
