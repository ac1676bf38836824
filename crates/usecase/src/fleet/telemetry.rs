//! Fleet mode's heartbeat count, node gauge and log lines.

// The shared helpers and every name too: the parent module reaches all its telemetry through
// this one path.
pub(super) use crate::telemetry::*;

pub(super) fn count_heartbeat(ok: bool) {
    let result = if ok { "ok" } else { "error" };
    metrics::counter!(metric::NODE_HEARTBEAT_TOTAL, metric::RESULT => result).increment(1);
}

#[allow(clippy::cast_precision_loss)] // a node count
pub(super) fn set_nodes(nodes: &[sandboxd_domain::NodeInfo]) {
    let healthy = nodes.iter().filter(|n| n.healthy).count();
    let draining = nodes.iter().filter(|n| n.draining).count();
    metrics::gauge!(metric::NODES, metric::STATE => "healthy").set(healthy as f64);
    metrics::gauge!(metric::NODES, metric::STATE => "unhealthy")
        .set((nodes.len() - healthy) as f64);
    metrics::gauge!(metric::NODES, metric::STATE => "draining").set(draining as f64);
}

pub(super) fn log_node_lost(node: &sandboxd_domain::NodeId, sessions: u64) {
    metrics::counter!(metric::NODE_LOST_TOTAL).increment(1);
    tracing::warn!(name: event::NODE_LOST, node_id = %node, sessions, message = event::NODE_LOST);
}

pub(super) fn log_node_drained(node: &sandboxd_domain::NodeInfo) {
    tracing::info!(name: event::NODE_DRAINED, node_id = %node.node_id, draining = node.draining, message = event::NODE_DRAINED);
}

pub(super) fn log_node_count_failed(error: &dyn std::error::Error) {
    tracing::warn!(name: event::NODE_COUNT_FAILED, error = %ErrorChain(error), message = event::NODE_COUNT_FAILED);
}
