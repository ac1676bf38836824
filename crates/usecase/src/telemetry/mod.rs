//! The use cases' shared telemetry: every name they emit (`names`, re-exported as [`metric`],
//! [`span`] and [`event`]), the span skeletons and session fields every use case shares, the
//! outcome recording (`finish`), and the gauges and log lines more than one use case writes.
//!
//! Each use case builds its own span and writes its own log lines in its `telemetry`
//! submodule (`create/telemetry.rs`, ...), which re-exports everything here, so a use case
//! reaches all its telemetry through one path and this module depends on no use case.

use sandboxd_domain::{SandboxSession, SandboxState};

use crate::error::UseCaseError;
use tracing::Span;

mod names;

pub use names::{event, metric, span};

// ---- spans -------------------------------------------------------------------------------

/// A use-case span: its own fields, then the error fields every span may record
/// (`record_error`) and `sandbox.result`.
macro_rules! usecase_span {
    ($($fields:tt)*) => {
        tracing::info_span!(
            $($fields)*
            sandbox.result = tracing::field::Empty,
            error.type = tracing::field::Empty,
            exception.message = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        )
    };
}
pub(crate) use usecase_span;

/// A span that may describe one session (see [`record_session`]).
macro_rules! session_span {
    ($($fields:tt)*) => {
        $crate::telemetry::usecase_span!(
            $($fields)*
            session.id = tracing::field::Empty,
            container.id = tracing::field::Empty,
            sandbox.session_agent.id = tracing::field::Empty,
            sandbox.session_volume.host_path = tracing::field::Empty,
            sandbox.endpoint.ip = tracing::field::Empty,
            sandbox.endpoint.port = tracing::field::Empty,
        )
    };
}
pub(crate) use session_span;

/// The attributes of the session a span is about.
pub(crate) fn record_session(span: &Span, session: &SandboxSession) {
    span.record(
        span::SESSION_ID,
        tracing::field::display(&session.session_id),
    );
    span.record(span::CONTAINER_ID, session.container_id.as_str());
    span.record(span::SESSION_AGENT_ID, session.agent_id.as_str());
    span.record(
        span::SESSION_VOLUME_HOST_PATH,
        session.volume_host_path.as_str(),
    );
    if let Some(endpoint) = session.endpoint {
        span.record(span::ENDPOINT_IP, tracing::field::display(endpoint.ip));
        span.record(span::ENDPOINT_PORT, endpoint.port.get());
    }
}

pub(crate) fn record_result(span: &Span, result: &str) {
    span.record(span::RESULT, result);
}

/// Ends a use case: its `result` on the span and the counter, and for a failure (result
/// `error`) the error's type, chain and status on the span. `outcome` is the success's result
/// label or the error. Log lines stay with each use case: it knows which fields they name.
pub(crate) fn finish<E: UseCaseError>(
    span: &Span,
    counter: &'static str,
    outcome: Result<&'static str, &E>,
) {
    let result = match outcome {
        Ok(result) => result,
        Err(error) => error.result_label(),
    };
    record_result(span, result);
    count_result(counter, result);
    if let Err(error) = outcome
        && result == "error"
    {
        record_error(span, error.metric_label(), error);
    }
}

/// A failure on the span: type, message and an error status for OpenTelemetry.
pub(crate) fn record_error(span: &Span, error_type: &str, error: &dyn std::error::Error) {
    span.record(span::ERROR_TYPE, error_type);
    span.record(
        span::EXCEPTION_MESSAGE,
        tracing::field::display(ErrorChain(error)),
    );
    span.record(span::OTEL_STATUS_CODE, "ERROR");
}

/// Displays an error with its sources, `outer: inner: root`, for logs and spans (never clients).
#[derive(Debug)]
pub struct ErrorChain<'a>(pub &'a dyn std::error::Error);

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

// ---- metrics -----------------------------------------------------------------------------

pub(crate) fn count_result(name: &'static str, result: &'static str) {
    metrics::counter!(name, metric::RESULT => result).increment(1);
}

#[allow(clippy::cast_precision_loss)] // a gauge is f64; session counts stay far below 2^52
pub fn set_active_count(count: u64) {
    metrics::gauge!(metric::ACTIVE_COUNT).set(count as f64);
}

#[allow(clippy::cast_precision_loss)] // as above
pub(crate) fn set_state_counts(counts: &crate::ports::StateCounts) {
    for state in SandboxState::ALL {
        metrics::gauge!(metric::SESSIONS, metric::STATE => state.as_str())
            .set(counts.of(state) as f64);
    }
}

pub(crate) fn count_pool_released(released: u64) {
    if released > 0 {
        metrics::counter!(metric::POOL_RELEASED_TOTAL).increment(released);
    }
}

/// Fleet mode's counters at zero from the start, so an alert on their increase sees the first
/// loss (a counter that appears at 1 has no increase to show).
pub fn init_fleet_metrics() {
    metrics::counter!(metric::NODE_LOST_TOTAL).increment(0);
}

// ---- log events --------------------------------------------------------------------------

/// The fields of every session log event: `{chat_id, session_id, container_id}`.
macro_rules! session_event {
    ($level:ident, $name:expr, $session:expr $(, $key:ident = $value:expr)*) => {{
        let session: &sandboxd_domain::SandboxSession = $session;
        tracing::$level!(
            name: $name,
            chat_id = %session.chat_id,
            session_id = %session.session_id,
            container_id = %session.container_id,
            $($key = $value,)*
            message = $name,
        );
    }};
}
pub(crate) use session_event;

/// A compensation stop that failed leaves a container with no session: the reconciler's job.
pub(crate) fn log_compensation_failed(session: &SandboxSession, error_type: &str) {
    session_event!(
        error,
        event::SANDBOX_COMPENSATION_FAILED,
        session,
        error = error_type
    );
}

pub(crate) fn log_reconcile_failed(error_type: &str) {
    tracing::error!(name: event::SANDBOX_RECONCILE_FAILED, error = error_type, message = event::SANDBOX_RECONCILE_FAILED);
}

#[cfg(test)]
mod event_calls;
#[cfg(test)]
pub(crate) mod tests;
