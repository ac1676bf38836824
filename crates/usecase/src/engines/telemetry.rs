//! Placement's counter and log line.

// The shared helpers and every name too: the parent module reaches all its telemetry through
// this one path.
pub(super) use crate::telemetry::*;

/// A placement on `node` (fleet mode): `ok`, `failed` (another node is tried) or `none`.
pub(super) fn count_placement(node: &str, result: &'static str) {
    metrics::counter!(metric::PLACEMENT_TOTAL, "node" => node.to_owned(), metric::RESULT => result)
        .increment(1);
}

/// A node (or the hop to it) failed a placement; another node is tried.
pub(super) fn log_placement_failed(
    node: &sandboxd_domain::NodeId,
    cause: &(dyn std::error::Error + 'static),
) {
    tracing::warn!(
        name: event::PLACEMENT_FAILED,
        message = event::PLACEMENT_FAILED,
        node_id = %node,
        error = %ErrorChain(cause),
    );
}
