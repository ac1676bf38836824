//! The reconcile pass's span, its error count and the log lines of the repairs it makes
//! itself (the shared repairs log theirs in `repair`).

use sandboxd_domain::SandboxSession;
use tracing::Span;
use tracing::field::Empty;

// The shared helpers and every name too: the parent module reaches all its telemetry through
// this one path.
pub(super) use crate::telemetry::*;

pub(super) fn reconcile_span() -> Span {
    usecase_span!(
        span::RECONCILE,
        sandbox.container_count = Empty,
        sandbox.session_count = Empty,
        sandbox.removed_containers = Empty,
        sandbox.removed_sessions = Empty,
        sandbox.adopted_sessions = Empty,
        sandbox.repaired_sessions = Empty,
        sandbox.error_count = Empty,
    )
}

pub(super) fn count_reconcile_error(error_type: &'static str) {
    metrics::counter!(metric::RECONCILE_ERROR_TOTAL, metric::ERROR_TYPE => error_type).increment(1);
}

pub(super) fn log_orphan_session_removed(session: &SandboxSession) {
    session_event!(warn, event::SANDBOX_ORPHAN_SESSION_REMOVED, session);
}

/// The engine's state differed from the session's; `repair` says what was done.
pub(super) fn log_drift_repaired(session: &SandboxSession, engine: &str, repair: &str) {
    session_event!(
        warn,
        event::SANDBOX_DRIFT_REPAIRED,
        session,
        state = session.state.as_str(),
        engine_state = engine,
        repair = repair
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::tests::{ERROR_FIELDS, assert_declares};

    #[test]
    fn the_reconcile_span_declares_the_fields_its_constants_name() {
        assert_declares(
            reconcile_span,
            span::RECONCILE,
            &[
                ERROR_FIELDS,
                &[
                    span::CONTAINER_COUNT,
                    span::SESSION_COUNT,
                    span::REMOVED_CONTAINERS,
                    span::REMOVED_SESSIONS,
                    span::ADOPTED_SESSIONS,
                    span::REPAIRED_SESSIONS,
                    span::ERROR_COUNT,
                ],
            ],
        );
    }
}
