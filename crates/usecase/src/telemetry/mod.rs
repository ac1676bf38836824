//! The use cases' telemetry: every name they emit (`names`, re-exported as [`metric`], [`span`]
//! and [`event`]), their span builders and their log helpers.
//!
//! Span fields must be declared when a span is created, so each use case's span is built here
//! with every attribute it may later record.

use sandboxd_domain::{ChatId, SandboxSession, SandboxState};

use crate::error::UseCaseError;
use tracing::Span;
use tracing::field::Empty;

mod names;

pub use names::{event, metric, span};

// ---- spans -------------------------------------------------------------------------------

/// A use-case span: its own fields, then the error fields every span may record
/// (`record_error`) and `sandbox.result`.
macro_rules! usecase_span {
    ($($fields:tt)*) => {
        tracing::info_span!(
            $($fields)*
            sandbox.result = Empty,
            error.type = Empty,
            exception.message = Empty,
            otel.status_code = Empty,
        )
    };
}

/// A span that may describe one session (see [`record_session`]).
macro_rules! session_span {
    ($($fields:tt)*) => {
        usecase_span!(
            $($fields)*
            session.id = Empty,
            container.id = Empty,
            sandbox.session_agent.id = Empty,
            sandbox.session_volume.host_path = Empty,
            sandbox.endpoint.ip = Empty,
            sandbox.endpoint.port = Empty,
        )
    };
}

pub(crate) fn create_span(chat_id: &ChatId, agent_id: &str, volume: &str) -> Span {
    session_span!(
        span::CREATE,
        chat.id = %chat_id,
        agent.id = agent_id,
        volume.host_path = volume,
        sandbox.conflict.reason = Empty,
        sandbox.previous_session.id = Empty,
        sandbox.previous_container.id = Empty,
        sandbox.previous_agent.id = Empty,
        sandbox.previous_volume.host_path = Empty,
        sandbox.new_session.id = Empty,
        sandbox.new_container.id = Empty,
        sandbox.new_agent.id = Empty,
        sandbox.new_volume.host_path = Empty,
    )
}

pub(crate) fn delete_span(chat_id: &ChatId) -> Span {
    session_span!(span::DELETE, chat.id = %chat_id,)
}

pub(crate) fn get_span(chat_id: &ChatId) -> Span {
    session_span!(span::GET, chat.id = %chat_id,)
}

pub(crate) fn extend_span(chat_id: &ChatId, ttl_ms: u128) -> Span {
    session_span!(
        span::EXTEND,
        chat.id = %chat_id,
        sandbox.ttl_ms = u64::try_from(ttl_ms).unwrap_or(u64::MAX),
        sandbox.expires_at = Empty,
    )
}

/// PauseSandbox, ResumeSandbox, TouchSandbox: `name` is one of their span names.
pub(crate) fn lifecycle_span(name: &'static str, chat_id: &ChatId) -> Span {
    // `info_span!` wants a literal name: one arm per operation.
    match name {
        span::PAUSE => session_span!(span::PAUSE, chat.id = %chat_id, sandbox.state = Empty,),
        span::RESUME => session_span!(span::RESUME, chat.id = %chat_id, sandbox.state = Empty,),
        _ => session_span!(span::TOUCH, chat.id = %chat_id, sandbox.state = Empty,),
    }
}

pub(crate) fn watch_span(after: Option<&str>) -> Span {
    usecase_span!(span::WATCH, sandbox.watch.after = after,)
}

pub(crate) fn cleanup_pass_span() -> Span {
    usecase_span!(
        span::CLEANUP_PASS,
        sandbox.expired_count = Empty,
        sandbox.cleaned_count = Empty,
        sandbox.suspended_count = Empty,
        sandbox.error_count = Empty,
        sandbox.skipped_count = Empty,
    )
}

pub(crate) fn cleanup_one_span(parent: &Span, session: &SandboxSession) -> Span {
    usecase_span!(
        parent: parent,
        span::CLEANUP_ONE,
        chat.id = %session.chat_id,
        session.id = %session.session_id,
        container.id = %session.container_id,
    )
}

pub(crate) fn list_span(agent_id: Option<&str>, page_size: usize) -> Span {
    usecase_span!(
        span::LIST,
        agent.id = agent_id,
        sandbox.page_size = page_size,
        sandbox.returned_count = Empty,
    )
}

pub(crate) fn reconcile_span() -> Span {
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

/// The attributes of the expired session a create replaces.
pub(crate) fn record_previous_session(span: &Span, session: &SandboxSession) {
    span.record(
        span::PREVIOUS_SESSION_ID,
        tracing::field::display(&session.session_id),
    );
    span.record(span::PREVIOUS_CONTAINER_ID, session.container_id.as_str());
    span.record(span::PREVIOUS_AGENT_ID, session.agent_id.as_str());
    span.record(
        span::PREVIOUS_VOLUME_HOST_PATH,
        session.volume_host_path.as_str(),
    );
}

/// The attributes of the session that replaces it.
pub(crate) fn record_new_session(span: &Span, session: &SandboxSession) {
    span.record(span::NEW_CONTAINER_ID, session.container_id.as_str());
    span.record(span::NEW_AGENT_ID, session.agent_id.as_str());
    span.record(
        span::NEW_VOLUME_HOST_PATH,
        session.volume_host_path.as_str(),
    );
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

pub(crate) fn count_conflict(reason: &'static str) {
    metrics::counter!(metric::CREATE_TOTAL, metric::RESULT => "conflict", metric::REASON => reason)
        .increment(1);
}

pub(crate) fn count_cleanup_error(error_type: &'static str, reason: Option<&'static str>) {
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

pub(crate) fn count_reconcile_error(error_type: &'static str) {
    metrics::counter!(metric::RECONCILE_ERROR_TOTAL, metric::ERROR_TYPE => error_type).increment(1);
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

#[allow(clippy::cast_precision_loss)] // as above
pub(crate) fn set_watchers(count: usize) {
    metrics::gauge!(metric::WATCHERS).set(count as f64);
}

pub(crate) fn count_events_delivered(count: usize) {
    metrics::counter!(metric::EVENTS_DELIVERED_TOTAL).increment(count as u64);
}

pub(crate) fn count_pool_claim(agent_id: &sandboxd_domain::AgentId, result: &'static str) {
    metrics::counter!(metric::POOL_CLAIMS_TOTAL, metric::AGENT => agent_id.to_string(), metric::RESULT => result)
        .increment(1);
}

#[allow(clippy::cast_precision_loss)] // as above
pub(crate) fn set_pool_ready(agent_id: &sandboxd_domain::AgentId, ready: usize) {
    metrics::gauge!(metric::POOL_READY, metric::AGENT => agent_id.to_string()).set(ready as f64);
}

pub(crate) fn count_pool_start(agent_id: &sandboxd_domain::AgentId, ok: bool) {
    let result = if ok { "ok" } else { "error" };
    metrics::counter!(metric::POOL_STARTS_TOTAL, metric::AGENT => agent_id.to_string(), metric::RESULT => result)
        .increment(1);
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

pub(crate) fn count_heartbeat(ok: bool) {
    let result = if ok { "ok" } else { "error" };
    metrics::counter!(metric::NODE_HEARTBEAT_TOTAL, metric::RESULT => result).increment(1);
}

#[allow(clippy::cast_precision_loss)] // a node count
pub(crate) fn set_nodes(nodes: &[sandboxd_domain::NodeInfo]) {
    let healthy = nodes.iter().filter(|n| n.healthy).count();
    let draining = nodes.iter().filter(|n| n.draining).count();
    metrics::gauge!(metric::NODES, metric::STATE => "healthy").set(healthy as f64);
    metrics::gauge!(metric::NODES, metric::STATE => "unhealthy")
        .set((nodes.len() - healthy) as f64);
    metrics::gauge!(metric::NODES, metric::STATE => "draining").set(draining as f64);
}

/// A placement on `node` (fleet mode): `ok`, `failed` (another node is tried) or `none`.
pub fn count_placement(node: &str, result: &'static str) {
    metrics::counter!(metric::PLACEMENT_TOTAL, "node" => node.to_owned(), metric::RESULT => result)
        .increment(1);
}

// ---- log events --------------------------------------------------------------------------

/// The fields of every session log event: `{chat_id, session_id, container_id}`.
macro_rules! session_event {
    ($level:ident, $name:expr, $session:expr $(, $key:ident = $value:expr)*) => {{
        let session: &SandboxSession = $session;
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

pub(crate) fn log_created(session: &SandboxSession) {
    session_event!(info, event::SANDBOX_CREATED, session);
}

pub(crate) fn log_reused(session: &SandboxSession) {
    session_event!(info, event::SANDBOX_REUSED, session);
}

pub(crate) fn log_replaced(old: &SandboxSession) {
    session_event!(info, event::SANDBOX_REPLACED, old);
}

pub(crate) fn log_deleted(session: &SandboxSession) {
    session_event!(info, event::SANDBOX_DELETED, session);
}

pub(crate) fn log_cleaned(session: &SandboxSession) {
    session_event!(info, event::SANDBOX_CLEANED, session);
}

/// An unreachable Redis or engine fails every session of every pass alike: that is logged once
/// per outage by the caller's loop, so here it is only a debug line (other failures stay errors).
pub(crate) fn log_clean_failed(session: &SandboxSession, error_type: &str, unavailable: bool) {
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

pub(crate) fn log_stale_index_removed(listed: &SandboxSession) {
    session_event!(info, event::SANDBOX_STALE_INDEX_REMOVED, listed);
}

pub(crate) fn log_extended(session: &SandboxSession) {
    session_event!(
        info,
        event::SANDBOX_EXTENDED,
        session,
        expires_at = tracing::field::display(session.expires_at)
    );
}

pub(crate) struct ConflictLog<'a> {
    pub chat_id: &'a ChatId,
    pub session: &'a SandboxSession,
    pub requested_agent_id: &'a str,
    pub requested_volume_host_path: &'a str,
    pub reason: &'a str,
}

pub(crate) fn log_conflict(c: &ConflictLog<'_>) {
    tracing::warn!(
        name: event::SANDBOX_CONFLICT,
        chat_id = %c.chat_id,
        session_id = %c.session.session_id,
        container_id = %c.session.container_id,
        requested_agent_id = c.requested_agent_id,
        session_agent_id = c.session.agent_id.as_str(),
        requested_volume_host_path = c.requested_volume_host_path,
        session_volume_host_path = c.session.volume_host_path.as_str(),
        reason = c.reason,
        message = event::SANDBOX_CONFLICT,
    );
}

pub(crate) fn log_delete_not_found(chat_id: &ChatId) {
    tracing::info!(name: event::SANDBOX_DELETE_NOT_FOUND, chat_id = %chat_id, message = event::SANDBOX_DELETE_NOT_FOUND);
}

/// The fields of a failed delete: chat and error, plus the session when it had been read.
pub(crate) fn log_delete_failed(
    chat_id: &ChatId,
    session: Option<&SandboxSession>,
    error_type: &str,
) {
    match session {
        Some(session) => {
            session_event!(
                error,
                event::SANDBOX_DELETE_FAILED,
                session,
                error = error_type
            )
        }
        None => tracing::error!(
            name: event::SANDBOX_DELETE_FAILED,
            chat_id = %chat_id,
            error = error_type,
            message = event::SANDBOX_DELETE_FAILED,
        ),
    }
}

/// A refused extend (not found, expired, bad ttl): the client's mistake, worth a warning with
/// the chat. Port failures are logged where they are handled, by the server.
pub(crate) fn log_extend_refused(chat_id: &ChatId, error_type: &str) {
    tracing::warn!(name: event::SANDBOX_EXTEND_FAILED, chat_id = %chat_id, error = error_type, message = event::SANDBOX_EXTEND_FAILED);
}

/// A compensation stop that failed leaves a container with no session: the reconciler's job.
pub(crate) fn log_compensation_failed(session: &SandboxSession, error_type: &str) {
    session_event!(
        error,
        event::SANDBOX_COMPENSATION_FAILED,
        session,
        error = error_type
    );
}

pub(crate) fn log_release_failed(chat_id: &ChatId, error_type: &str) {
    tracing::warn!(name: event::LEASE_RELEASE_FAILED, chat_id = %chat_id, error = error_type, message = event::LEASE_RELEASE_FAILED);
}

pub(crate) fn log_orphan_session_removed(session: &SandboxSession) {
    session_event!(warn, event::SANDBOX_ORPHAN_SESSION_REMOVED, session);
}

pub(crate) fn log_orphan_container_removed(container: &crate::ports::ManagedContainer) {
    tracing::warn!(
        name: event::SANDBOX_ORPHAN_CONTAINER_REMOVED,
        container_id = %container.container_id,
        state = container.state.as_str(),
        chat_id = container.labels.chat_id.map(tracing::field::display),
        session_id = container.labels.session_id.map(tracing::field::display),
        message = event::SANDBOX_ORPHAN_CONTAINER_REMOVED,
    );
}

/// A session rebuilt from its live container's labels (its store lost it).
pub(crate) fn log_adopted(session: &SandboxSession) {
    session_event!(
        warn,
        event::SANDBOX_ADOPTED,
        session,
        expires_at = tracing::field::display(session.expires_at)
    );
}

/// A container of `chat_id` other than its session's, removed under the chat's lease.
pub(crate) fn log_stray_removed(chat_id: &ChatId, container: &crate::ports::ManagedContainer) {
    tracing::warn!(
        name: event::SANDBOX_STRAY_CONTAINER_REMOVED,
        chat_id = %chat_id,
        container_id = %container.container_id,
        state = container.state.as_str(),
        session_id = container.labels.session_id.map(tracing::field::display),
        message = event::SANDBOX_STRAY_CONTAINER_REMOVED,
    );
}

/// A pause (requested or idle) or hibernation that took effect.
pub(crate) fn log_suspended(session: &SandboxSession, reason: &str) {
    if session.state == SandboxState::Hibernated {
        session_event!(info, event::SANDBOX_HIBERNATED, session, reason = reason);
    } else {
        session_event!(info, event::SANDBOX_PAUSED, session, reason = reason);
    }
}

pub(crate) fn log_resumed(session: &SandboxSession) {
    session_event!(
        info,
        event::SANDBOX_RESUMED,
        session,
        endpoint = session.endpoint.map(tracing::field::display)
    );
}

/// Touches are the hot path of an agent's heartbeat: debug only.
pub(crate) fn log_touched(session: &SandboxSession) {
    session_event!(debug, event::SANDBOX_TOUCHED, session);
}

/// A pause, resume or touch refused for the chat's state (not found, expired, wrong state).
pub(crate) fn log_lifecycle_refused(operation: &'static str, chat_id: &ChatId, result: &str) {
    tracing::warn!(
        name: event::SANDBOX_LIFECYCLE_REFUSED,
        chat_id = %chat_id,
        operation = operation,
        result = result,
        message = event::SANDBOX_LIFECYCLE_REFUSED,
    );
}

/// The engine's state differed from the session's; `repair` says what was done.
pub(crate) fn log_drift_repaired(session: &SandboxSession, engine: &str, repair: &str) {
    session_event!(
        warn,
        event::SANDBOX_DRIFT_REPAIRED,
        session,
        state = session.state.as_str(),
        engine_state = engine,
        repair = repair
    );
}

/// A create that admission refused: a full quota or no engine slot in time.
pub(crate) fn log_refused(chat_id: &ChatId, refusal: &crate::admission::Refusal) {
    tracing::warn!(
        name: event::SANDBOX_CREATE_REFUSED,
        chat_id = %chat_id,
        limit = refusal.setting(),
        reason = %refusal,
        message = event::SANDBOX_CREATE_REFUSED,
    );
}

/// A reservation not given back holds its slot until it expires.
pub(crate) fn log_reservation_release_failed(
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

/// A watcher fell behind the shared reader and catches up from the store on its own.
pub(crate) fn log_watch_lagged(missed: u64) {
    tracing::debug!(name: event::SANDBOX_WATCH_LAGGED, missed = missed, message = event::SANDBOX_WATCH_LAGGED);
}

/// The process's event reader could not read the log; it retries (logged once per outage).
pub(crate) fn log_event_reader_failed(error_type: &str) {
    tracing::warn!(name: event::EVENT_READER_FAILED, error = error_type, message = event::EVENT_READER_FAILED);
}

/// A pooled sandbox could not be claimed and the create fell back to a cold start.
pub(crate) fn log_pool_claim_lost(
    chat_id: &ChatId,
    pooled: &crate::ports::PooledSandbox,
    error: &dyn std::error::Error,
) {
    tracing::warn!(name: event::POOL_CLAIM_LOST, chat_id = %chat_id, container_id = %pooled.container_id, agent_id = %pooled.agent_id, error = %ErrorChain(error), message = event::POOL_CLAIM_LOST);
}

/// The refill could not start a pooled sandbox; it backs off for this agent.
pub(crate) fn log_pool_start_failed(
    agent_id: &sandboxd_domain::AgentId,
    error_type: &str,
    error: &dyn std::error::Error,
    retry_in: std::time::Duration,
) {
    tracing::warn!(name: event::POOL_START_FAILED, agent_id = %agent_id, error_type = error_type, error = %ErrorChain(error), retry_in_ms = u64::try_from(retry_in.as_millis()).unwrap_or(u64::MAX), message = event::POOL_START_FAILED);
}

pub(crate) fn log_pool_recovered(
    report: &crate::ports::PoolRecovery,
    adopted: usize,
    discarded: usize,
) {
    tracing::info!(name: event::POOL_RECOVERED, adopted = adopted, discarded = discarded, released = report.released, unsettled = report.unsettled, message = event::POOL_RECOVERED);
}

pub(crate) fn log_pool_recovery_failed(error_type: &str) {
    tracing::warn!(name: event::POOL_RECOVERY_FAILED, error = error_type, message = event::POOL_RECOVERY_FAILED);
}

pub(crate) fn log_pool_discard_failed(pooled: &crate::ports::PooledSandbox, error_type: &str) {
    tracing::warn!(name: event::POOL_DISCARD_FAILED, container_id = %pooled.container_id, agent_id = %pooled.agent_id, error = error_type, message = event::POOL_DISCARD_FAILED);
}

pub(crate) fn log_reconcile_failed(error_type: &str) {
    tracing::error!(name: event::SANDBOX_RECONCILE_FAILED, error = error_type, message = event::SANDBOX_RECONCILE_FAILED);
}

#[cfg(test)]
mod tests;

pub(crate) fn log_node_lost(node: &sandboxd_domain::NodeId, sessions: u64) {
    metrics::counter!(metric::NODE_LOST_TOTAL).increment(1);
    tracing::warn!(name: event::NODE_LOST, node_id = %node, sessions, message = event::NODE_LOST);
}

pub(crate) fn log_node_drained(node: &sandboxd_domain::NodeInfo) {
    tracing::info!(name: event::NODE_DRAINED, node_id = %node.node_id, draining = node.draining, message = event::NODE_DRAINED);
}

pub(crate) fn log_node_count_failed(error: &dyn std::error::Error) {
    tracing::warn!(name: event::NODE_COUNT_FAILED, error = %ErrorChain(error), message = event::NODE_COUNT_FAILED);
}
