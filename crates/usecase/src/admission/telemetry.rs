//! Admission's log line: a reservation not given back.

// The shared helpers and every name too: the parent module reaches all its telemetry through
// this one path.
pub(super) use crate::telemetry::*;

/// A reservation not given back holds its slot until it expires.
pub(super) fn log_reservation_release_failed(
    session_id: &sandboxd_domain::SessionId,
    error_type: &str,
) {
    tracing::warn!(
        name: event::RESERVATION_RELEASE_FAILED,
        session_id = %session_id,
        error = error_type,
        message = event::RESERVATION_RELEASE_FAILED,
    );
}
