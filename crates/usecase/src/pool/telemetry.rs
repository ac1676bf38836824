//! The warm pool's gauge, refill count and log lines (the claim is counted by the create).

// The shared helpers and every name too: the parent module reaches all its telemetry through
// this one path.
pub(super) use crate::telemetry::*;

#[allow(clippy::cast_precision_loss)] // as above
pub(super) fn set_pool_ready(agent_id: &sandboxd_domain::AgentId, ready: usize) {
    metrics::gauge!(metric::POOL_READY, metric::AGENT => agent_id.to_string()).set(ready as f64);
}

pub(super) fn count_pool_start(agent_id: &sandboxd_domain::AgentId, ok: bool) {
    let result = if ok { "ok" } else { "error" };
    metrics::counter!(metric::POOL_STARTS_TOTAL, metric::AGENT => agent_id.to_string(), metric::RESULT => result)
        .increment(1);
}

/// The refill could not start a pooled sandbox; it backs off for this agent.
pub(super) fn log_pool_start_failed(
    agent_id: &sandboxd_domain::AgentId,
    error_type: &str,
    error: &dyn std::error::Error,
    retry_in: std::time::Duration,
) {
    tracing::warn!(name: event::POOL_START_FAILED, agent_id = %agent_id, error_type = error_type, error = %ErrorChain(error), retry_in_ms = u64::try_from(retry_in.as_millis()).unwrap_or(u64::MAX), message = event::POOL_START_FAILED);
}

pub(super) fn log_pool_recovered(
    report: &crate::ports::PoolRecovery,
    adopted: usize,
    discarded: usize,
) {
    tracing::info!(name: event::POOL_RECOVERED, adopted = adopted, discarded = discarded, released = report.released, unsettled = report.unsettled, message = event::POOL_RECOVERED);
}

pub(super) fn log_pool_recovery_failed(error_type: &str) {
    tracing::warn!(name: event::POOL_RECOVERY_FAILED, error = error_type, message = event::POOL_RECOVERY_FAILED);
}

pub(super) fn log_pool_discard_failed(pooled: &crate::ports::PooledSandbox, error_type: &str) {
    tracing::warn!(name: event::POOL_DISCARD_FAILED, container_id = %pooled.container_id, agent_id = %pooled.agent_id, error = error_type, message = event::POOL_DISCARD_FAILED);
}
