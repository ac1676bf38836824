//! Translation between the wire and the domain: every request field is parsed into a domain
//! value before any use case runs, and sessions become `sandbox.v1.Sandbox` messages.

use std::time::Duration;

use sandboxd_api::v1;
use sandboxd_domain::{
    AgentId, ChatId, EventCursor, EventType, NodeId, NodeInfo, SandboxEvent, SandboxSession,
    SandboxState, Timestamp, VolumePath,
};
use sandboxd_usecase::NodeDirectory;
use tonic::Status;

use super::status::invalid_field;

/// Page size when the request leaves it at 0.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// Largest accepted page size.
pub const MAX_PAGE_SIZE: usize = 1000;

pub fn chat_id(raw: &str) -> Result<ChatId, Status> {
    ChatId::parse(raw).map_err(|e| invalid_field("chat_id", e))
}

/// A well-formed agent id; whether a profile exists is CreateSandbox's to decide.
pub fn agent_id(raw: &str) -> Result<AgentId, Status> {
    AgentId::parse(raw).map_err(|e| invalid_field("agent_id", e))
}

/// The optional agent filter of ListSandboxes: empty means all agents. Any well-formed id is
/// accepted: sessions of a profile removed from the configuration can still exist.
pub fn agent_filter(raw: &str) -> Result<Option<AgentId>, Status> {
    if raw.is_empty() {
        return Ok(None);
    }
    AgentId::parse(raw)
        .map(Some)
        .map_err(|e| invalid_field("agent_id", e))
}

pub fn volume_host_path(raw: &str) -> Result<VolumePath, Status> {
    VolumePath::parse(raw).map_err(|e| invalid_field("volume_host_path", e))
}

/// 0 means the default; negative or over [`MAX_PAGE_SIZE`] is refused.
pub fn page_size(raw: i32) -> Result<usize, Status> {
    match usize::try_from(raw) {
        Ok(0) => Ok(DEFAULT_PAGE_SIZE),
        Ok(size) if size <= MAX_PAGE_SIZE => Ok(size),
        _ => Err(invalid_field(
            "page_size",
            format!("must be between 0 and {MAX_PAGE_SIZE}"),
        )),
    }
}

/// The state filter of ListSandboxes: a stored state, or LOST (computed at read time from the
/// node directory, not stored).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateFilter {
    All,
    Stored(SandboxState),
    Lost,
}

impl StateFilter {
    /// What the store filters by.
    pub const fn stored(self) -> Option<SandboxState> {
        match self {
            Self::Stored(state) => Some(state),
            Self::All | Self::Lost => None,
        }
    }

    /// Whether a listed session whose node is (or is not) lost is answered. A session on a lost
    /// node is reported LOST, so a stored-state filter leaves it out.
    pub const fn keeps(self, lost: bool) -> bool {
        match self {
            Self::All => true,
            Self::Stored(_) => !lost,
            Self::Lost => lost,
        }
    }
}

/// The optional state filter of ListSandboxes: UNSPECIFIED means all; an unknown number is
/// refused.
pub fn state_filter(raw: i32) -> Result<StateFilter, Status> {
    match v1::SandboxState::try_from(raw) {
        Ok(v1::SandboxState::Unspecified) => Ok(StateFilter::All),
        Ok(v1::SandboxState::Running) => Ok(StateFilter::Stored(SandboxState::Running)),
        Ok(v1::SandboxState::Paused) => Ok(StateFilter::Stored(SandboxState::Paused)),
        Ok(v1::SandboxState::Hibernated) => Ok(StateFilter::Stored(SandboxState::Hibernated)),
        Ok(v1::SandboxState::Lost) => Ok(StateFilter::Lost),
        Err(_) => Err(invalid_field("state", "is not a SandboxState")),
    }
}

pub fn node_id(raw: &str) -> Result<NodeId, Status> {
    NodeId::parse(raw).map_err(|e| invalid_field("node_id", e))
}

/// The optional chat filter of WatchSandboxes: empty means all chats.
pub fn chat_filter(raw: &str) -> Result<Option<ChatId>, Status> {
    if raw.is_empty() {
        return Ok(None);
    }
    chat_id(raw).map(Some)
}

/// WatchSandboxes' `after`: empty means "only new events".
pub fn cursor(raw: &str) -> Result<Option<EventCursor>, Status> {
    if raw.is_empty() {
        return Ok(None);
    }
    EventCursor::parse(raw)
        .map(Some)
        .map_err(|e| invalid_field("after", e))
}

pub fn page_token(raw: String) -> Option<String> {
    (!raw.is_empty()).then_some(raw)
}

/// A set `ttl` must be a valid, positive duration; its upper bound is the use case's to check.
pub fn ttl(raw: Option<prost_types::Duration>) -> Result<Option<Duration>, Status> {
    let Some(raw) = raw else { return Ok(None) };
    if raw.nanos.unsigned_abs() >= 1_000_000_000 || (raw.seconds > 0 && raw.nanos < 0) {
        return Err(invalid_field("ttl", "is not a normalised duration"));
    }
    match Duration::try_from(raw) {
        Ok(ttl) if !ttl.is_zero() => Ok(Some(ttl)),
        _ => Err(invalid_field("ttl", "must be positive")),
    }
}

pub fn timestamp(at: Timestamp) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.unix_timestamp(),
        // Always below 10^9, so it fits.
        nanos: i32::try_from(at.nanosecond()).unwrap_or(0),
    }
}

/// `session` as clients see it now: its node, and LOST when that node's registration lapsed.
pub fn sandbox(session: &SandboxSession, nodes: &NodeDirectory) -> v1::Sandbox {
    sandbox_as(
        session,
        nodes.node_of(session.node_id.as_ref()).as_str(),
        nodes.is_lost(session.node_id.as_ref()),
    )
}

fn sandbox_as(session: &SandboxSession, node_id: &str, lost: bool) -> v1::Sandbox {
    let state = if lost {
        v1::SandboxState::Lost
    } else {
        state(session.state)
    };
    v1::Sandbox {
        session_id: session.session_id.to_string(),
        chat_id: session.chat_id.to_string(),
        agent_id: session.agent_id.to_string(),
        volume_host_path: session.volume_host_path.to_string(),
        container_id: session.container_id.to_string(),
        endpoint: session.endpoint.map(|endpoint| v1::Endpoint {
            ip: endpoint.ip.to_string(),
            port: u32::from(endpoint.port.get()),
        }),
        created_at: Some(timestamp(session.created_at)),
        expires_at: Some(timestamp(session.expires_at)),
        state: state.into(),
        last_active_at: Some(timestamp(session.last_active_at)),
        max_expires_at: session.max_expires_at.map(timestamp),
        node_id: node_id.to_owned(),
    }
}

pub fn node(node: &NodeInfo) -> v1::Node {
    v1::Node {
        node_id: node.node_id.to_string(),
        address: node.address.clone(),
        capacity: node.capacity,
        active: node.active,
        draining: node.draining,
        healthy: node.healthy,
        last_heartbeat_at: Some(timestamp(node.last_heartbeat_at)),
    }
}

pub const fn state(state: SandboxState) -> v1::SandboxState {
    match state {
        SandboxState::Running => v1::SandboxState::Running,
        SandboxState::Paused => v1::SandboxState::Paused,
        SandboxState::Hibernated => v1::SandboxState::Hibernated,
    }
}

const fn event_type(kind: EventType) -> v1::SandboxEventType {
    match kind {
        EventType::Created => v1::SandboxEventType::Created,
        EventType::Replaced => v1::SandboxEventType::Replaced,
        EventType::Resumed => v1::SandboxEventType::Resumed,
        EventType::Paused => v1::SandboxEventType::Paused,
        EventType::Hibernated => v1::SandboxEventType::Hibernated,
        EventType::Extended => v1::SandboxEventType::Extended,
        EventType::Deleted => v1::SandboxEventType::Deleted,
        EventType::Expired => v1::SandboxEventType::Expired,
        EventType::Reconciled => v1::SandboxEventType::Reconciled,
        EventType::Lost => v1::SandboxEventType::Lost,
    }
}

/// An event's sandbox is as it was at the event (LOST for a LOST event), not as it is now.
pub fn event(event: &SandboxEvent, nodes: &NodeDirectory) -> v1::SandboxEvent {
    let session = &event.session;
    v1::SandboxEvent {
        cursor: event.cursor.to_string(),
        r#type: event_type(event.kind).into(),
        sandbox: Some(sandbox_as(
            session,
            nodes.node_of(session.node_id.as_ref()).as_str(),
            event.kind == EventType::Lost,
        )),
        occurred_at: Some(timestamp(event.occurred_at)),
        reason: event.reason.as_str().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use tonic::Code;
    use tonic_types::StatusExt;

    fn violation_field(status: &Status) -> String {
        status.get_details_bad_request().unwrap().field_violations[0]
            .field
            .clone()
    }

    #[test]
    fn page_size_defaults_and_bounds() {
        assert_eq!(page_size(0).unwrap(), 100);
        assert_eq!(page_size(7).unwrap(), 7);
        assert_eq!(page_size(1000).unwrap(), 1000);
        for bad in [-1, 1001, i32::MAX, i32::MIN] {
            let status = page_size(bad).unwrap_err();
            assert_eq!(status.code(), Code::InvalidArgument);
            assert_eq!(violation_field(&status), "page_size");
        }
    }

    #[test]
    fn ttl_must_be_positive_and_normalised() {
        assert_eq!(ttl(None).unwrap(), None);
        let ok = prost_types::Duration {
            seconds: 90,
            nanos: 5,
        };
        assert_eq!(ttl(Some(ok)).unwrap(), Some(Duration::new(90, 5)));
        for bad in [(0, 0), (-1, 0), (0, -5), (1, 1_000_000_000), (1, -1)] {
            let status = ttl(Some(prost_types::Duration {
                seconds: bad.0,
                nanos: bad.1,
            }))
            .unwrap_err();
            assert_eq!(violation_field(&status), "ttl", "{bad:?}");
        }
    }

    #[test]
    fn fields_are_named_in_violations() {
        assert_eq!(violation_field(&chat_id("nope").unwrap_err()), "chat_id");
        assert_eq!(
            violation_field(&volume_host_path("rel/x").unwrap_err()),
            "volume_host_path"
        );
        assert!(agent_id("default").is_ok());
        assert_eq!(violation_field(&agent_id("Bad!").unwrap_err()), "agent_id");
        assert_eq!(agent_filter("").unwrap(), None);
        assert!(agent_filter("other").unwrap().is_some());
        assert_eq!(chat_filter("").unwrap(), None);
        assert_eq!(
            violation_field(&chat_filter("nope").unwrap_err()),
            "chat_id"
        );
    }

    #[test]
    fn state_filters_and_cursors_are_checked() {
        assert_eq!(state_filter(0).unwrap(), StateFilter::All);
        assert_eq!(
            state_filter(2).unwrap(),
            StateFilter::Stored(SandboxState::Paused)
        );
        // LOST is computed at read time: the store lists everything, the page keeps the lost.
        let lost = state_filter(4).unwrap();
        assert_eq!((lost, lost.stored()), (StateFilter::Lost, None));
        assert!(lost.keeps(true) && !lost.keeps(false));
        assert!(!StateFilter::Stored(SandboxState::Running).keeps(true));
        for bad in [-1, 5, 99] {
            assert_eq!(violation_field(&state_filter(bad).unwrap_err()), "state");
        }
        assert_eq!(cursor("").unwrap(), None);
        assert_eq!(
            cursor("17-3").unwrap().map(|c| c.to_string()).as_deref(),
            Some("17-3")
        );
        for bad in ["x", "17", "17-", "-3", "17-3-1", " 17-3"] {
            assert_eq!(
                violation_field(&cursor(bad).unwrap_err()),
                "after",
                "{bad:?}"
            );
        }
    }
}
