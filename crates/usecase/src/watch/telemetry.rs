//! WatchSandboxes' span, the watcher gauge, the delivered-events count, and the log lines of
//! the shared reader and of a lagging watcher.

use tracing::Span;

// The shared helpers and every name too: the parent module reaches all its telemetry through
// this one path.
pub(super) use crate::telemetry::*;

pub(super) fn watch_span(after: Option<&str>) -> Span {
    usecase_span!(span::WATCH, sandbox.watch.after = after,)
}

#[allow(clippy::cast_precision_loss)] // as above
pub(super) fn set_watchers(count: usize) {
    metrics::gauge!(metric::WATCHERS).set(count as f64);
}

pub(super) fn count_events_delivered(count: usize) {
    metrics::counter!(metric::EVENTS_DELIVERED_TOTAL).increment(count as u64);
}

/// A watcher fell behind the shared reader and catches up from the store on its own.
pub(super) fn log_watch_lagged(missed: u64) {
    tracing::debug!(name: event::SANDBOX_WATCH_LAGGED, missed = missed, message = event::SANDBOX_WATCH_LAGGED);
}

/// The process's event reader could not read the log; it retries (logged once per outage).
pub(super) fn log_event_reader_failed(error_type: &str) {
    tracing::warn!(name: event::EVENT_READER_FAILED, error = error_type, message = event::EVENT_READER_FAILED);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::tests::{ERROR_FIELDS, assert_declares};

    #[test]
    fn the_watch_span_declares_the_fields_its_constants_name() {
        assert_declares(
            || watch_span(Some("0-1")),
            span::WATCH,
            &[ERROR_FIELDS, &[span::AFTER]],
        );
    }
}
