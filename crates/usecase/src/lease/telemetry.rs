//! The lease's log line: a release that failed.

use sandboxd_domain::ChatId;

// The shared helpers and every name too: the parent module reaches all its telemetry through
// this one path.
pub(super) use crate::telemetry::*;

pub(super) fn log_release_failed(chat_id: &ChatId, error_type: &str) {
    tracing::warn!(name: event::LEASE_RELEASE_FAILED, chat_id = %chat_id, error = error_type, message = event::LEASE_RELEASE_FAILED);
}
