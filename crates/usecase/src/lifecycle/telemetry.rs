//! The spans of PauseSandbox, ResumeSandbox and TouchSandbox, and the log lines of every
//! state change (requested, idle, or a resuming create).

use sandboxd_domain::{ChatId, SandboxSession, SandboxState};
use tracing::Span;
use tracing::field::Empty;

// The shared helpers and every name too: the parent module reaches all its telemetry through
// this one path.
pub(super) use crate::telemetry::*;

/// PauseSandbox, ResumeSandbox, TouchSandbox: `name` is one of their span names.
pub(super) fn lifecycle_span(name: &'static str, chat_id: &ChatId) -> Span {
    // `info_span!` wants a literal name: one arm per operation.
    match name {
        span::PAUSE => session_span!(span::PAUSE, chat.id = %chat_id, sandbox.state = Empty,),
        span::RESUME => session_span!(span::RESUME, chat.id = %chat_id, sandbox.state = Empty,),
        _ => session_span!(span::TOUCH, chat.id = %chat_id, sandbox.state = Empty,),
    }
}

/// A pause (requested or idle) or hibernation that took effect.
pub(super) fn log_suspended(session: &SandboxSession, reason: &str) {
    if session.state == SandboxState::Hibernated {
        session_event!(info, event::SANDBOX_HIBERNATED, session, reason = reason);
    } else {
        session_event!(info, event::SANDBOX_PAUSED, session, reason = reason);
    }
}

pub(super) fn log_resumed(session: &SandboxSession) {
    session_event!(
        info,
        event::SANDBOX_RESUMED,
        session,
        endpoint = session.endpoint.map(tracing::field::display)
    );
}

/// Touches are the hot path of an agent's heartbeat: debug only.
pub(super) fn log_touched(session: &SandboxSession) {
    session_event!(debug, event::SANDBOX_TOUCHED, session);
}

/// A pause, resume or touch refused for the chat's state (not found, expired, wrong state).
pub(super) fn log_lifecycle_refused(operation: &'static str, chat_id: &ChatId, result: &str) {
    tracing::warn!(
        name: event::SANDBOX_LIFECYCLE_REFUSED,
        chat_id = %chat_id,
        operation = operation,
        result = result,
        message = event::SANDBOX_LIFECYCLE_REFUSED,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::tests::{ERROR_FIELDS, SESSION_FIELDS, assert_declares, chat_id};

    #[test]
    fn each_lifecycle_span_declares_the_fields_its_constants_name() {
        for name in [span::PAUSE, span::RESUME, span::TOUCH] {
            assert_declares(
                || lifecycle_span(name, &chat_id()),
                name,
                &[ERROR_FIELDS, SESSION_FIELDS, &[span::CHAT_ID, span::STATE]],
            );
        }
    }
}
