//! CreateSandbox's span, log lines and counts: the conflict, the admission refusal and the
//! pool claim of a create.

use sandboxd_domain::{ChatId, SandboxSession};
use tracing::Span;
use tracing::field::Empty;

// The shared helpers and every name too: the parent module reaches all its telemetry through
// this one path.
pub(super) use crate::telemetry::*;

pub(super) fn create_span(chat_id: &ChatId, agent_id: &str, volume: &str) -> Span {
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

/// The attributes of the expired session a create replaces.
pub(super) fn record_previous_session(span: &Span, session: &SandboxSession) {
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
pub(super) fn record_new_session(span: &Span, session: &SandboxSession) {
    span.record(span::NEW_CONTAINER_ID, session.container_id.as_str());
    span.record(span::NEW_AGENT_ID, session.agent_id.as_str());
    span.record(
        span::NEW_VOLUME_HOST_PATH,
        session.volume_host_path.as_str(),
    );
}

pub(super) fn count_conflict(reason: &'static str) {
    metrics::counter!(metric::CREATE_TOTAL, metric::RESULT => "conflict", metric::REASON => reason)
        .increment(1);
}

pub(super) fn count_pool_claim(agent_id: &sandboxd_domain::AgentId, result: &'static str) {
    metrics::counter!(metric::POOL_CLAIMS_TOTAL, metric::AGENT => agent_id.to_string(), metric::RESULT => result)
        .increment(1);
}

pub(super) fn log_created(session: &SandboxSession) {
    session_event!(info, event::SANDBOX_CREATED, session);
}

pub(super) fn log_reused(session: &SandboxSession) {
    session_event!(info, event::SANDBOX_REUSED, session);
}

pub(super) fn log_replaced(old: &SandboxSession) {
    session_event!(info, event::SANDBOX_REPLACED, old);
}

pub(super) struct ConflictLog<'a> {
    pub chat_id: &'a ChatId,
    pub session: &'a SandboxSession,
    pub requested_agent_id: &'a str,
    pub requested_volume_host_path: &'a str,
    pub reason: &'a str,
}

pub(super) fn log_conflict(c: &ConflictLog<'_>) {
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

/// A create that admission refused: a full quota or no engine slot in time.
pub(super) fn log_refused(chat_id: &ChatId, refusal: &crate::admission::Refusal) {
    tracing::warn!(
        name: event::SANDBOX_CREATE_REFUSED,
        chat_id = %chat_id,
        limit = refusal.setting(),
        reason = %refusal,
        message = event::SANDBOX_CREATE_REFUSED,
    );
}

/// A pooled sandbox could not be claimed and the create fell back to a cold start.
pub(super) fn log_pool_claim_lost(
    chat_id: &ChatId,
    pooled: &crate::ports::PooledSandbox,
    error: &dyn std::error::Error,
) {
    tracing::warn!(name: event::POOL_CLAIM_LOST, chat_id = %chat_id, container_id = %pooled.container_id, agent_id = %pooled.agent_id, error = %ErrorChain(error), message = event::POOL_CLAIM_LOST);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::tests::{ERROR_FIELDS, SESSION_FIELDS, assert_declares, chat_id};

    #[test]
    fn the_create_span_declares_the_fields_its_constants_name() {
        assert_declares(
            || create_span(&chat_id(), "default", "/srv/a"),
            span::CREATE,
            &[
                ERROR_FIELDS,
                SESSION_FIELDS,
                &[
                    span::CHAT_ID,
                    span::AGENT_ID,
                    span::VOLUME_HOST_PATH,
                    span::CONFLICT_REASON,
                    span::PREVIOUS_SESSION_ID,
                    span::PREVIOUS_CONTAINER_ID,
                    span::PREVIOUS_AGENT_ID,
                    span::PREVIOUS_VOLUME_HOST_PATH,
                    span::NEW_SESSION_ID,
                    span::NEW_CONTAINER_ID,
                    span::NEW_AGENT_ID,
                    span::NEW_VOLUME_HOST_PATH,
                ],
            ],
        );
    }
}
