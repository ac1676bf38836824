//! The cleanup pass's spans (the pass, and one child per session), its error count and its
//! log lines.

use sandboxd_domain::SandboxSession;
use tracing::Span;
use tracing::field::Empty;

// The shared helpers and every name too: the parent module reaches all its telemetry through
// this one path.
pub(super) use crate::telemetry::*;

pub(super) fn cleanup_pass_span() -> Span {
    usecase_span!(
        span::CLEANUP_PASS,
        sandbox.expired_count = Empty,
        sandbox.cleaned_count = Empty,
        sandbox.suspended_count = Empty,
        sandbox.error_count = Empty,
        sandbox.skipped_count = Empty,
    )
}

pub(super) fn cleanup_one_span(parent: &Span, session: &SandboxSession) -> Span {
    usecase_span!(
        parent: parent,
        span::CLEANUP_ONE,
        chat.id = %session.chat_id,
        session.id = %session.session_id,
        container.id = %session.container_id,
    )
}

pub(super) fn count_cleanup_error(error_type: &'static str, reason: Option<&'static str>) {
    match reason {
        Some(reason) => metrics::counter!(
            metric::CLEANUP_ERROR_TOTAL,
            metric::ERROR_TYPE => error_type,
            metric::REASON => reason
        )
        .increment(1),
        None => metrics::counter!(metric::CLEANUP_ERROR_TOTAL, metric::ERROR_TYPE => error_type)
            .increment(1),
    }
}

pub(super) fn log_cleaned(session: &SandboxSession) {
    session_event!(info, event::SANDBOX_CLEANED, session);
}

/// An unreachable Redis or engine fails every session of every pass alike: that is logged once
/// per outage by the caller's loop, so here it is only a debug line (other failures stay errors).
pub(super) fn log_clean_failed(session: &SandboxSession, error_type: &str, unavailable: bool) {
    if unavailable {
        session_event!(
            debug,
            event::SANDBOX_CLEAN_FAILED,
            session,
            error = error_type
        );
    } else {
        session_event!(
            error,
            event::SANDBOX_CLEAN_FAILED,
            session,
            error = error_type
        );
    }
}

pub(super) fn log_stale_index_removed(listed: &SandboxSession) {
    session_event!(info, event::SANDBOX_STALE_INDEX_REMOVED, listed);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::tests::{ERROR_FIELDS, assert_declares};

    #[test]
    fn the_pass_span_declares_the_fields_its_constants_name() {
        assert_declares(
            cleanup_pass_span,
            span::CLEANUP_PASS,
            &[
                ERROR_FIELDS,
                &[
                    span::EXPIRED_COUNT,
                    span::CLEANED_COUNT,
                    span::SUSPENDED_COUNT,
                    span::ERROR_COUNT,
                    span::SKIPPED_COUNT,
                ],
            ],
        );
    }
}
