//! The node API's messages (`sandbox.node.v1`) to and from the runtime port's types: one codec
//! for both halves, so the serving node (`sandboxd-server`'s `node_api`) and
//! [`super::RemoteRuntime`] cannot disagree on a field.
//!
//! Decoding refuses what the port's types refuse and names the field; the serving node turns
//! that into INVALID_ARGUMENT, the client into [`RuntimeError::Other`] (a peer speaking wrongly).

use std::collections::BTreeSet;
use std::sync::Arc;

use sandboxd_api::node::v1 as wire;
use sandboxd_domain::{
    AgentId, AgentProfile, ChatId, ContainerId, Endpoint, NodeId, SessionId, Timestamp, VolumePath,
};
use sandboxd_usecase::Profiles;
use sandboxd_usecase::ports::{ContainerState, ManagedContainer, NewSandbox, SandboxLabels};

/// Why a message does not decode into the port's types.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// A field is missing or does not parse; `field` is its path in the message.
    #[error("{field} {problem}")]
    Field {
        field: &'static str,
        problem: String,
    },
    /// The agent is not in this node's configuration (every node should have the same agents).
    #[error("agent {0} is not configured on this node")]
    UnknownAgent(AgentId),
}

impl WireError {
    fn invalid(field: &'static str, problem: impl std::fmt::Display) -> Self {
        Self::Field {
            field,
            problem: format!("is invalid: {problem}"),
        }
    }

    fn missing(field: &'static str) -> Self {
        Self::Field {
            field,
            problem: "is missing".to_owned(),
        }
    }
}

// ---- the serving node decodes ----------------------------------------------------------------

/// The spec of a Create, with the profile of its agent taken from `profiles` (this node's own).
///
/// # Errors
/// [`WireError::Field`] for a missing or malformed field; [`WireError::UnknownAgent`].
pub fn decode_new_sandbox(
    sandbox: Option<wire::NewSandbox>,
    profiles: &Profiles,
) -> Result<NewSandbox, WireError> {
    let sandbox = sandbox.ok_or(WireError::missing("sandbox"))?;
    let agent_id = agent_id("sandbox.agent_id", &sandbox.agent_id)?;
    let profile = profiles
        .get(&agent_id)
        .cloned()
        .ok_or_else(|| WireError::UnknownAgent(agent_id.clone()))?;
    Ok(NewSandbox {
        session_id: SessionId::parse(&sandbox.session_id)
            .map_err(|e| WireError::invalid("sandbox.session_id", e))?,
        chat_id: chat_id("sandbox.chat_id", &sandbox.chat_id)?,
        agent_id,
        profile,
        volume_host_path: VolumePath::parse(&sandbox.volume_host_path)
            .map_err(|e| WireError::invalid("sandbox.volume_host_path", e))?,
        created_at: timestamp("sandbox.created_at", sandbox.created_at)?,
        expires_at: timestamp("sandbox.expires_at", sandbox.expires_at)?,
        node_id: match sandbox.node_id.as_str() {
            "" => None,
            raw => Some(NodeId::parse(raw).map_err(|e| WireError::invalid("sandbox.node_id", e))?),
        },
    })
}

/// A container id of a request: the serving node's engine id.
///
/// # Errors
/// [`WireError::Field`] naming `container_id`.
pub fn decode_container_id(raw: &str) -> Result<ContainerId, WireError> {
    ContainerId::parse(raw).map_err(|e| WireError::invalid("container_id", e))
}

/// The chat of a ListChat.
///
/// # Errors
/// [`WireError::Field`] naming `chat_id`.
pub fn decode_chat_id(raw: &str) -> Result<ChatId, WireError> {
    chat_id("chat_id", raw)
}

/// This node's profile of the agent of a Start.
///
/// # Errors
/// [`WireError::Field`] naming `agent_id`; [`WireError::UnknownAgent`].
pub fn decode_agent_profile(
    raw: &str,
    profiles: &Profiles,
) -> Result<Arc<AgentProfile>, WireError> {
    let agent_id = agent_id("agent_id", raw)?;
    profiles
        .get(&agent_id)
        .cloned()
        .ok_or(WireError::UnknownAgent(agent_id))
}

// ---- the serving node encodes ----------------------------------------------------------------

#[must_use]
pub fn encode_state(state: ContainerState) -> wire::ContainerState {
    match state {
        ContainerState::Running => wire::ContainerState::Running,
        ContainerState::Paused => wire::ContainerState::Paused,
        ContainerState::Stopped => wire::ContainerState::Stopped,
        ContainerState::Gone => wire::ContainerState::Gone,
    }
}

#[must_use]
pub fn encode_endpoint(endpoint: Endpoint) -> wire::Endpoint {
    wire::Endpoint {
        ip: endpoint.ip.to_string(),
        port: u32::from(endpoint.port.get()),
    }
}

#[must_use]
pub fn encode_managed(container: &ManagedContainer) -> wire::ManagedContainer {
    let labels = &container.labels;
    wire::ManagedContainer {
        container_id: container.container_id.to_string(),
        state: encode_state(container.state).into(),
        labels: Some(wire::SandboxLabels {
            session_id: labels.session_id.map(|id| id.to_string()),
            chat_id: labels.chat_id.map(|id| id.to_string()),
            agent_id: labels.agent_id.as_ref().map(ToString::to_string),
            volume_host_path: labels.volume_host_path.as_ref().map(ToString::to_string),
            created_at: labels.created_at.map(encode_timestamp),
            expires_at: labels.expires_at.map(encode_timestamp),
            node_id: labels.node_id.as_ref().map(ToString::to_string),
        }),
        endpoint: container.endpoint.map(encode_endpoint),
    }
}

#[must_use]
pub fn encode_runtimes(runtimes: BTreeSet<String>) -> wire::RuntimesResponse {
    wire::RuntimesResponse {
        runtimes: runtimes.into_iter().collect(),
    }
}

// ---- the client encodes ----------------------------------------------------------------------

/// A Create's spec without its profile: the serving node uses its own profile of the agent.
#[must_use]
pub fn encode_new_sandbox(spec: &NewSandbox) -> wire::NewSandbox {
    wire::NewSandbox {
        session_id: spec.session_id.to_string(),
        chat_id: spec.chat_id.to_string(),
        agent_id: spec.agent_id.to_string(),
        volume_host_path: spec.volume_host_path.to_string(),
        created_at: Some(encode_timestamp(spec.created_at)),
        expires_at: Some(encode_timestamp(spec.expires_at)),
        node_id: spec
            .node_id
            .as_ref()
            .map_or_else(String::new, ToString::to_string),
    }
}

// ---- the client decodes ----------------------------------------------------------------------

/// # Errors
/// [`WireError::Field`] naming `state` for UNSPECIFIED or an unknown number.
pub fn decode_state(raw: i32) -> Result<ContainerState, WireError> {
    match wire::ContainerState::try_from(raw) {
        Ok(wire::ContainerState::Running) => Ok(ContainerState::Running),
        Ok(wire::ContainerState::Paused) => Ok(ContainerState::Paused),
        Ok(wire::ContainerState::Stopped) => Ok(ContainerState::Stopped),
        Ok(wire::ContainerState::Gone) => Ok(ContainerState::Gone),
        Ok(wire::ContainerState::Unspecified) | Err(_) => Err(WireError::invalid(
            "state",
            format!("{raw} is not a container state"),
        )),
    }
}

/// # Errors
/// [`WireError::Field`] naming `endpoint` for a bad IP or port.
pub fn decode_endpoint(endpoint: Option<wire::Endpoint>) -> Result<Option<Endpoint>, WireError> {
    let Some(endpoint) = endpoint else {
        return Ok(None);
    };
    let port = u16::try_from(endpoint.port).map_err(|e| WireError::invalid("endpoint.port", e))?;
    Endpoint::parse(&endpoint.ip, port)
        .map(Some)
        .map_err(|e| WireError::invalid("endpoint", e))
}

/// A listed container. Its id, state and endpoint must decode; a label that does not is `None`,
/// as an engine reports a malformed label (the serving node only sends labels it decoded).
///
/// # Errors
/// [`WireError::Field`] for a bad container id, state or endpoint.
pub fn decode_managed(container: wire::ManagedContainer) -> Result<ManagedContainer, WireError> {
    let labels = container.labels.unwrap_or_default();
    let node_id = labels.node_id.and_then(|raw| NodeId::parse(&raw).ok());
    Ok(ManagedContainer {
        node_id: node_id.clone(),
        container_id: ContainerId::parse(&container.container_id)
            .map_err(|e| WireError::invalid("containers.container_id", e))?,
        state: decode_state(container.state)?,
        labels: SandboxLabels {
            session_id: labels
                .session_id
                .and_then(|raw| SessionId::parse(&raw).ok()),
            chat_id: labels.chat_id.and_then(|raw| ChatId::parse(&raw).ok()),
            agent_id: labels.agent_id.and_then(|raw| AgentId::parse(&raw).ok()),
            volume_host_path: labels
                .volume_host_path
                .and_then(|raw| VolumePath::parse(&raw).ok()),
            created_at: labels.created_at.and_then(|at| decode_timestamp(at).ok()),
            expires_at: labels.expires_at.and_then(|at| decode_timestamp(at).ok()),
            node_id,
        },
        endpoint: decode_endpoint(container.endpoint)?,
    })
}

/// # Errors
/// [`WireError::Field`] for a bad container in the list.
pub fn decode_managed_list(
    containers: Vec<wire::ManagedContainer>,
) -> Result<Vec<ManagedContainer>, WireError> {
    containers.into_iter().map(decode_managed).collect()
}

// ---- shared ----------------------------------------------------------------------------------

/// Exact to the nanosecond, as the domain keeps it: a label the serving node writes from a
/// decoded spec equals [`SandboxLabels::of`] the caller's spec.
#[must_use]
pub fn encode_timestamp(at: Timestamp) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.unix_timestamp(),
        // Always below 10^9, so it fits.
        nanos: i32::try_from(at.nanosecond()).unwrap_or(0),
    }
}

fn decode_timestamp(at: prost_types::Timestamp) -> Result<Timestamp, String> {
    if !(0..1_000_000_000).contains(&at.nanos) {
        return Err("is not a normalised timestamp".to_owned());
    }
    let nanos = i128::from(at.seconds) * 1_000_000_000 + i128::from(at.nanos);
    Timestamp::from_unix_timestamp_nanos(nanos).map_err(|e| e.to_string())
}

fn timestamp(
    field: &'static str,
    at: Option<prost_types::Timestamp>,
) -> Result<Timestamp, WireError> {
    let at = at.ok_or(WireError::missing(field))?;
    decode_timestamp(at).map_err(|problem| WireError::invalid(field, problem))
}

fn agent_id(field: &'static str, raw: &str) -> Result<AgentId, WireError> {
    AgentId::parse(raw).map_err(|e| WireError::invalid(field, e))
}

fn chat_id(field: &'static str, raw: &str) -> Result<ChatId, WireError> {
    ChatId::parse(raw).map_err(|e| WireError::invalid(field, e))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::net::{IpAddr, Ipv4Addr};
    use std::time::Duration;

    use super::*;

    fn profiles() -> Profiles {
        Profiles::new([(
            AgentId::parse("web").unwrap(),
            AgentProfile::new("img:local"),
        )])
    }

    fn spec() -> NewSandbox {
        let created_at = Timestamp::from_unix_timestamp_nanos(1_764_000_000_123_456_789).unwrap();
        NewSandbox {
            session_id: SessionId::new_random(),
            chat_id: ChatId::parse("0b0e4a8e-54f1-4f7e-9c1e-3b7b5f2f6a10").unwrap(),
            agent_id: AgentId::parse("web").unwrap(),
            profile: Arc::new(AgentProfile::new("img:local")),
            volume_host_path: VolumePath::parse("/srv/chats/a").unwrap(),
            created_at,
            expires_at: created_at + Duration::from_secs(1800),
            node_id: Some(NodeId::parse("n2").unwrap()),
        }
    }

    #[test]
    fn a_spec_round_trips_exactly_with_the_serving_nodes_profile() {
        let spec = spec();
        let decoded = decode_new_sandbox(Some(encode_new_sandbox(&spec)), &profiles()).unwrap();
        assert_eq!(decoded, spec);
        assert_eq!(SandboxLabels::of(&decoded), SandboxLabels::of(&spec));
    }

    #[test]
    fn a_bad_spec_names_its_field_and_an_unknown_agent_is_told_apart() {
        let mut bad = encode_new_sandbox(&spec());
        bad.chat_id = "nope".to_owned();
        let error = decode_new_sandbox(Some(bad), &profiles()).unwrap_err();
        assert!(
            matches!(
                error,
                WireError::Field {
                    field: "sandbox.chat_id",
                    ..
                }
            ),
            "{error:?}"
        );
        let mut late = encode_new_sandbox(&spec());
        late.expires_at = None;
        let error = decode_new_sandbox(Some(late), &profiles()).unwrap_err();
        assert!(
            matches!(
                error,
                WireError::Field {
                    field: "sandbox.expires_at",
                    ..
                }
            ),
            "{error:?}"
        );
        let mut denormal = encode_new_sandbox(&spec());
        denormal.created_at = Some(prost_types::Timestamp {
            seconds: 1,
            nanos: -1,
        });
        assert!(decode_new_sandbox(Some(denormal), &profiles()).is_err());
        let mut other = encode_new_sandbox(&spec());
        other.agent_id = "other".to_owned();
        let error = decode_new_sandbox(Some(other), &profiles()).unwrap_err();
        assert!(matches!(error, WireError::UnknownAgent(_)), "{error:?}");
        assert!(decode_new_sandbox(None, &profiles()).is_err());
        assert!(matches!(
            decode_agent_profile("other", &profiles()),
            Err(WireError::UnknownAgent(_))
        ));
    }

    #[test]
    fn a_managed_container_round_trips_and_keeps_missing_labels_missing() {
        let full = ManagedContainer {
            node_id: Some(NodeId::parse("n2").unwrap()),
            container_id: ContainerId::parse("abc123").unwrap(),
            state: ContainerState::Paused,
            labels: SandboxLabels::of(&spec()),
            endpoint: Some(Endpoint::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 40_001).unwrap()),
        };
        let partial = ManagedContainer {
            node_id: None,
            container_id: ContainerId::parse("def456").unwrap(),
            state: ContainerState::Stopped,
            labels: SandboxLabels {
                agent_id: Some(AgentId::parse("web").unwrap()),
                ..SandboxLabels::default()
            },
            endpoint: None,
        };
        for container in [full, partial] {
            assert_eq!(
                decode_managed(encode_managed(&container)).unwrap(),
                container
            );
        }
        for state in [
            ContainerState::Running,
            ContainerState::Paused,
            ContainerState::Stopped,
            ContainerState::Gone,
        ] {
            assert_eq!(decode_state(encode_state(state).into()).unwrap(), state);
        }
        assert!(decode_state(0).is_err());
        assert!(decode_state(99).is_err());
        assert!(
            decode_endpoint(Some(wire::Endpoint {
                ip: "127.0.0.1".to_owned(),
                port: 70_000,
            }))
            .is_err()
        );
    }
}
