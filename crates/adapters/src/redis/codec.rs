//! The stored form of a session (hash fields, unix-millisecond timestamps) and of page tokens.

use std::collections::HashMap;

use std::time::Duration;

use sandboxd_domain::{
    AgentId, ChatId, ContainerId, Endpoint, EventCursor, EventReason, EventType, NodeId,
    SandboxEvent, SandboxSession, SandboxState, SessionId, Timestamp, VolumePath,
};
use sandboxd_usecase::ports::RepositoryError;

/// Hash field names of `{prefix}:session:{id}`.
pub(crate) mod field {
    pub(crate) const SESSION_ID: &str = "session_id";
    pub(crate) const CHAT_ID: &str = "chat_id";
    pub(crate) const AGENT_ID: &str = "agent_id";
    pub(crate) const VOLUME_HOST_PATH: &str = "volume_host_path";
    /// The engine's own id; before the node became a field, a fleet node's sessions stored
    /// `<node_id>/<engine id>` here (and no [`NODE_ID`]).
    pub(crate) const CONTAINER_ID: &str = "container_id";
    /// The node whose engine runs the container; empty in single-node mode. Always written, so
    /// its absence marks a session stored before it existed.
    pub(crate) const NODE_ID: &str = "node_id";
    pub(crate) const ENDPOINT_IP: &str = "endpoint_ip";
    pub(crate) const ENDPOINT_PORT: &str = "endpoint_port";
    pub(crate) const CREATED_AT: &str = "created_at";
    pub(crate) const EXPIRES_AT: &str = "expires_at";
    /// Absent in sessions written before the lifecycle: read as `running`.
    pub(crate) const STATE: &str = "state";
    /// Absent in sessions written before the lifecycle: read as `created_at`.
    pub(crate) const LAST_ACTIVE_AT: &str = "last_active_at";
    /// Absent without a hard cap.
    pub(crate) const MAX_EXPIRES_AT: &str = "max_expires_at";
    /// Absent without an idle timeout.
    pub(crate) const IDLE_TIMEOUT_MS: &str = "idle_timeout_ms";
}

/// Field names of an event log entry besides the session's own fields.
pub(crate) mod event_field {
    pub(crate) const TYPE: &str = "event_type";
    pub(crate) const REASON: &str = "event_reason";
    pub(crate) const AT: &str = "event_at";
}

/// Unix milliseconds, the one timestamp format in Redis (hash fields and expiry scores);
/// sub-millisecond precision is dropped (floored).
pub(crate) fn to_millis(at: Timestamp) -> i64 {
    let nanos = at.unix_timestamp_nanos().div_euclid(1_000_000);
    i64::try_from(nanos).unwrap_or(if nanos < 0 { i64::MIN } else { i64::MAX })
}

pub(crate) fn from_millis(millis: i64) -> Option<Timestamp> {
    Timestamp::from_unix_timestamp_nanos(i128::from(millis) * 1_000_000).ok()
}

/// The hash fields of `session`, in `HSET` argument order. The endpoint fields are absent when
/// the session has no endpoint.
pub(crate) fn session_fields(session: &SandboxSession) -> Vec<(&'static str, String)> {
    let mut fields = vec![
        (field::SESSION_ID, session.session_id.to_string()),
        (field::CHAT_ID, session.chat_id.to_string()),
        (field::AGENT_ID, session.agent_id.to_string()),
        (
            field::VOLUME_HOST_PATH,
            session.volume_host_path.to_string(),
        ),
        (field::CONTAINER_ID, session.container_id.to_string()),
        (
            field::NODE_ID,
            session
                .node_id
                .as_ref()
                .map_or_else(String::new, ToString::to_string),
        ),
        (field::CREATED_AT, to_millis(session.created_at).to_string()),
        (field::EXPIRES_AT, to_millis(session.expires_at).to_string()),
        (field::STATE, session.state.as_str().to_owned()),
        (
            field::LAST_ACTIVE_AT,
            to_millis(session.last_active_at).to_string(),
        ),
    ];
    if let Some(endpoint) = session.endpoint {
        fields.push((field::ENDPOINT_IP, endpoint.ip.to_string()));
        fields.push((field::ENDPOINT_PORT, endpoint.port.to_string()));
    }
    if let Some(cap) = session.max_expires_at {
        fields.push((field::MAX_EXPIRES_AT, to_millis(cap).to_string()));
    }
    if let Some(idle) = session.idle_timeout {
        fields.push((field::IDLE_TIMEOUT_MS, duration_millis(idle).to_string()));
    }
    fields
}

/// Whole milliseconds, saturating (durations are validated far below the limit).
pub(crate) fn duration_millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The lifecycle fields an update writes, in `HSET` order; an empty value means "remove the
/// field" (the endpoint of a sandbox that publishes nothing).
pub(crate) fn lifecycle_fields(session: &SandboxSession) -> Vec<(&'static str, String)> {
    let (ip, port) = session
        .endpoint
        .map_or((String::new(), String::new()), |e| {
            (e.ip.to_string(), e.port.to_string())
        });
    vec![
        (field::STATE, session.state.as_str().to_owned()),
        (field::EXPIRES_AT, to_millis(session.expires_at).to_string()),
        (
            field::LAST_ACTIVE_AT,
            to_millis(session.last_active_at).to_string(),
        ),
        (field::ENDPOINT_IP, ip),
        (field::ENDPOINT_PORT, port),
    ]
}

/// Rebuilds a session from its hash; `reason` says which field is missing or malformed.
pub(crate) fn session_from_fields(
    fields: &HashMap<String, String>,
) -> Result<SandboxSession, String> {
    fn get<'a>(fields: &'a HashMap<String, String>, name: &str) -> Result<&'a str, String> {
        fields
            .get(name)
            .map(String::as_str)
            .ok_or_else(|| format!("field {name} missing"))
    }
    fn bad(name: &str) -> impl Fn(sandboxd_domain::ValidationError) -> String + '_ {
        move |error| format!("field {name}: {error}")
    }
    fn millis(fields: &HashMap<String, String>, name: &str) -> Result<Timestamp, String> {
        get(fields, name)?
            .parse::<i64>()
            .ok()
            .and_then(from_millis)
            .ok_or_else(|| format!("field {name} is not unix milliseconds"))
    }
    let endpoint = match (
        fields.get(field::ENDPOINT_IP),
        fields.get(field::ENDPOINT_PORT),
    ) {
        (None, None) => None,
        (Some(ip), Some(port)) => {
            let port: u16 = port
                .parse()
                .map_err(|_| format!("field {} is not a port", field::ENDPOINT_PORT))?;
            Some(Endpoint::parse(ip, port).map_err(bad(field::ENDPOINT_IP))?)
        }
        _ => return Err("endpoint fields must be both present or both absent".to_owned()),
    };
    let created_at = millis(fields, field::CREATED_AT)?;
    let optional_millis = |name: &str| match fields.get(name) {
        None => Ok(None),
        Some(_) => millis(fields, name).map(Some),
    };
    let state = match fields.get(field::STATE) {
        None => SandboxState::Running,
        Some(text) => SandboxState::parse(text)
            .ok_or_else(|| format!("field {} is not a state", field::STATE))?,
    };
    let idle_timeout = match fields.get(field::IDLE_TIMEOUT_MS) {
        None => None,
        Some(text) => Some(Duration::from_millis(text.parse().map_err(|_| {
            format!("field {} is not milliseconds", field::IDLE_TIMEOUT_MS)
        })?)),
    };
    let (node_id, container_id) = node_and_container(fields)?;
    Ok(SandboxSession {
        session_id: SessionId::parse(get(fields, field::SESSION_ID)?)
            .map_err(bad(field::SESSION_ID))?,
        chat_id: ChatId::parse(get(fields, field::CHAT_ID)?).map_err(bad(field::CHAT_ID))?,
        agent_id: AgentId::parse(get(fields, field::AGENT_ID)?).map_err(bad(field::AGENT_ID))?,
        volume_host_path: VolumePath::parse(get(fields, field::VOLUME_HOST_PATH)?)
            .map_err(bad(field::VOLUME_HOST_PATH))?,
        node_id,
        container_id,
        endpoint,
        created_at,
        expires_at: millis(fields, field::EXPIRES_AT)?,
        state,
        last_active_at: optional_millis(field::LAST_ACTIVE_AT)?.unwrap_or(created_at),
        max_expires_at: optional_millis(field::MAX_EXPIRES_AT)?,
        idle_timeout,
    })
}

/// The node and the engine's container id of a stored session. A session stored before the
/// node was a field has no `node_id`: a fleet node wrote `<node_id>/<engine id>` as its
/// container id, a single node the engine id alone.
fn node_and_container(
    fields: &HashMap<String, String>,
) -> Result<(Option<NodeId>, ContainerId), String> {
    let raw = fields
        .get(field::CONTAINER_ID)
        .ok_or_else(|| format!("field {} missing", field::CONTAINER_ID))?;
    let container = |raw: &str| {
        ContainerId::parse(raw).map_err(|error| format!("field {}: {error}", field::CONTAINER_ID))
    };
    match fields.get(field::NODE_ID).map(String::as_str) {
        Some("") => Ok((None, container(raw)?)),
        Some(node) => {
            let node = NodeId::parse(node)
                .map_err(|error| format!("field {}: {error}", field::NODE_ID))?;
            Ok((Some(node), container(raw)?))
        }
        None => match raw.split_once('/') {
            Some((node, engine_id)) => {
                let node = NodeId::parse(node)
                    .map_err(|error| format!("field {} prefix: {error}", field::CONTAINER_ID))?;
                Ok((Some(node), container(engine_id)?))
            }
            None => Ok((None, container(raw)?)),
        },
    }
}

/// Rebuilds an event from its log entry id and fields.
pub(crate) fn event_from_entry(
    id: &str,
    fields: &HashMap<String, String>,
) -> Result<SandboxEvent, String> {
    let text = |name: &str| {
        fields
            .get(name)
            .map(String::as_str)
            .ok_or_else(|| format!("event field {name} missing"))
    };
    Ok(SandboxEvent {
        cursor: EventCursor::parse(id).map_err(|e| format!("entry id: {e}"))?,
        kind: EventType::parse(text(event_field::TYPE)?)
            .ok_or_else(|| format!("event field {} is not a type", event_field::TYPE))?,
        reason: EventReason::parse(text(event_field::REASON)?)
            .ok_or_else(|| format!("event field {} is not a reason", event_field::REASON))?,
        occurred_at: text(event_field::AT)?
            .parse::<i64>()
            .ok()
            .and_then(from_millis)
            .ok_or_else(|| format!("event field {} is not unix milliseconds", event_field::AT))?,
        session: session_from_fields(fields)?,
    })
}

/// What a listing is filtered by, bound into its page tokens.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ListFilter<'a> {
    pub(crate) agent: Option<&'a AgentId>,
    pub(crate) state: Option<SandboxState>,
}

impl ListFilter<'_> {
    /// The agent id, then `@state` when filtered by state (`@` is never in an agent id); without
    /// a state the spelling of tokens issued before state filters existed.
    fn spelled(&self) -> String {
        let agent = self.agent.map_or("", AgentId::as_str);
        match self.state {
            None => agent.to_owned(),
            Some(state) => format!("{agent}@{state}"),
        }
    }
}

/// Version tag inside every page token; a new layout gets a new tag and old tokens are refused.
const TOKEN_VERSION: &str = "sbx-list-v1";

/// Opaque page token: hex of `version \n agent filter \n last session id returned`. The filter is
/// bound in so a token is refused by a query with another filter.
pub(crate) fn encode_page_token(filter: &ListFilter<'_>, last: &SessionId) -> String {
    let plain = format!("{TOKEN_VERSION}\n{}\n{last}", filter.spelled());
    plain.bytes().map(|b| format!("{b:02x}")).collect()
}

/// The last session id of the previous page, if `token` was issued for this agent filter.
pub(crate) fn decode_page_token(
    filter: &ListFilter<'_>,
    token: &str,
) -> Result<SessionId, RepositoryError> {
    let invalid = || RepositoryError::InvalidPageToken;
    if !token.len().is_multiple_of(2) || token.len() > 512 {
        return Err(invalid());
    }
    // Only the encoder's spelling (lowercase hex digits) is accepted: `from_str_radix` alone
    // would also take `+f` and `AB`, so one page would have many tokens.
    let nibble = |digit: u8| match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        _ => None,
    };
    let bytes = token
        .as_bytes()
        .chunks_exact(2)
        .map(|pair| Some(nibble(pair[0])? << 4 | nibble(pair[1])?))
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(invalid)?;
    let plain = String::from_utf8(bytes).map_err(|_| invalid())?;
    let mut parts = plain.split('\n');
    let (Some(version), Some(filter_text), Some(last), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid());
    };
    if version != TOKEN_VERSION || filter_text != filter.spelled() {
        return Err(invalid());
    }
    SessionId::parse(last).map_err(|_| invalid())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::net::{IpAddr, Ipv4Addr};

    use time::macros::datetime;

    use super::*;

    fn by_agent(agent: Option<&AgentId>) -> ListFilter<'_> {
        ListFilter { agent, state: None }
    }

    fn session(endpoint: Option<Endpoint>) -> SandboxSession {
        SandboxSession {
            session_id: SessionId::new_random(),
            chat_id: ChatId::from_uuid(uuid::Uuid::new_v4()),
            agent_id: AgentId::parse("default").unwrap(),
            volume_host_path: VolumePath::parse("/srv/chats/a").unwrap(),
            node_id: None,
            container_id: ContainerId::parse("abc123").unwrap(),
            endpoint,
            created_at: datetime!(2026-01-01 00:00:00.123 UTC),
            expires_at: datetime!(2026-01-01 00:30:00.456 UTC),
            state: SandboxState::Paused,
            last_active_at: datetime!(2026-01-01 00:10:00.789 UTC),
            max_expires_at: Some(datetime!(2026-01-02 00:00:00 UTC)),
            idle_timeout: Some(Duration::from_secs(900)),
        }
    }

    /// A session hash exactly as main wrote it before the node was a field: a fleet node's
    /// container id carried its node as a prefix, and there was no `node_id` field.
    fn stored_before_the_node_field(container_id: &str) -> HashMap<String, String> {
        [
            ("session_id", "0b0e4a8e-54f1-4f7e-9c1e-3b7b5f2f6a10"),
            ("chat_id", "1c1f5b9f-65a2-4a8f-8d2f-4c8c6a3a7b21"),
            ("agent_id", "default"),
            ("volume_host_path", "/srv/chats/a"),
            ("container_id", container_id),
            ("created_at", "1767225600000"),
            ("expires_at", "1767227400000"),
            ("state", "running"),
            ("last_active_at", "1767225600000"),
            ("endpoint_ip", "127.0.0.1"),
            ("endpoint_port", "40001"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    #[test]
    fn a_fleet_session_stored_with_a_node_prefix_reads_as_node_and_engine_id() {
        let engine_id = "3f4e5d6c7b8a".repeat(4);
        let fleet = session_from_fields(&stored_before_the_node_field(&format!(
            "node-2/{engine_id}"
        )))
        .unwrap();
        assert_eq!(fleet.node_id, Some(NodeId::parse("node-2").unwrap()));
        assert_eq!(fleet.container_id.as_str(), engine_id);
        let single = session_from_fields(&stored_before_the_node_field("abc123")).unwrap();
        assert_eq!(single.node_id, None);
        assert_eq!(single.container_id.as_str(), "abc123");
        // Written again, it is stored in today's form and reads back the same.
        let rewritten: HashMap<String, String> = session_fields(&fleet)
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        assert_eq!(rewritten["container_id"], engine_id);
        assert_eq!(rewritten["node_id"], "node-2");
        assert_eq!(session_from_fields(&rewritten).unwrap(), fleet);
    }

    #[test]
    fn the_node_field_is_always_written_so_a_namespaced_engine_id_is_not_read_as_a_node() {
        let pod = SandboxSession {
            container_id: ContainerId::parse("sandboxes/sandbox-abc").unwrap(),
            ..session(None)
        };
        let fields: HashMap<String, String> = session_fields(&pod)
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        assert_eq!(fields["node_id"], "");
        assert_eq!(session_from_fields(&fields).unwrap(), pod);
        let placed = SandboxSession {
            node_id: Some(NodeId::parse("n1").unwrap()),
            ..pod
        };
        let fields: HashMap<String, String> = session_fields(&placed)
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        assert_eq!(session_from_fields(&fields).unwrap(), placed);
        let mut bad = fields;
        bad.insert("node_id".to_owned(), "N/1".to_owned());
        assert!(session_from_fields(&bad).unwrap_err().contains("node_id"));
    }

    #[test]
    fn a_session_written_before_the_lifecycle_reads_as_running_and_active_at_creation() {
        let full = session(None);
        let mut fields: HashMap<String, String> = session_fields(&full)
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        for name in [
            field::STATE,
            field::LAST_ACTIVE_AT,
            field::MAX_EXPIRES_AT,
            field::IDLE_TIMEOUT_MS,
        ] {
            fields.remove(name);
        }
        let old = session_from_fields(&fields).unwrap();
        assert_eq!(old.state, SandboxState::Running);
        assert_eq!(old.last_active_at, full.created_at);
        assert_eq!((old.max_expires_at, old.idle_timeout), (None, None));
    }

    #[test]
    fn page_tokens_are_bound_to_the_state_filter_too() {
        let last = SessionId::new_random();
        let paused = ListFilter {
            agent: None,
            state: Some(SandboxState::Paused),
        };
        let token = encode_page_token(&paused, &last);
        assert_eq!(decode_page_token(&paused, &token).ok(), Some(last));
        assert!(decode_page_token(&by_agent(None), &token).is_err());
        let running = ListFilter {
            agent: None,
            state: Some(SandboxState::Running),
        };
        assert!(decode_page_token(&running, &token).is_err());
    }

    fn round_trip(session: &SandboxSession) -> Result<SandboxSession, String> {
        let fields = session_fields(session)
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        session_from_fields(&fields)
    }

    #[test]
    fn sessions_round_trip_with_and_without_endpoint() {
        let with = session(Some(
            Endpoint::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 40_001).unwrap(),
        ));
        assert_eq!(round_trip(&with), Ok(with.clone()));
        let without = session(None);
        assert_eq!(round_trip(&without), Ok(without.clone()));
    }

    #[test]
    fn timestamps_are_stored_as_floored_unix_millis() {
        let at = datetime!(2026-01-01 00:00:00.123_999 UTC);
        assert_eq!(to_millis(at), 1_767_225_600_123);
        assert_eq!(
            from_millis(1_767_225_600_123),
            Some(datetime!(2026-01-01 00:00:00.123 UTC))
        );
    }

    #[test]
    fn a_hash_with_a_missing_or_bad_field_is_refused() {
        let mut fields: HashMap<String, String> = session_fields(&session(None))
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        fields.insert(field::EXPIRES_AT.to_owned(), "soon".to_owned());
        assert!(session_from_fields(&fields).is_err());
        fields.remove(field::EXPIRES_AT);
        assert!(
            session_from_fields(&fields)
                .unwrap_err()
                .contains("expires_at")
        );
    }

    #[test]
    fn page_tokens_are_bound_to_their_filter() {
        let agent = AgentId::parse("py").unwrap();
        let other = AgentId::parse("js").unwrap();
        let last = SessionId::new_random();
        let token = encode_page_token(&by_agent(Some(&agent)), &last);
        assert_eq!(
            decode_page_token(&by_agent(Some(&agent)), &token).ok(),
            Some(last)
        );
        assert!(decode_page_token(&by_agent(Some(&other)), &token).is_err());
        assert!(decode_page_token(&by_agent(None), &token).is_err());
        assert!(decode_page_token(&by_agent(Some(&agent)), &token[..token.len() - 2]).is_err());
        assert!(decode_page_token(&by_agent(Some(&agent)), "zz").is_err());
        assert!(decode_page_token(&by_agent(None), "").is_err());
    }
}

#[cfg(test)]
mod fuzz {
    //! The page-token decoder at scale: no input panics it, and every token it accepts is exactly
    //! the one the encoder produces for what it decoded (one canonical spelling per page).
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use proptest::prelude::*;

    use super::*;

    fn by_agent(agent: Option<&AgentId>) -> ListFilter<'_> {
        ListFilter { agent, state: None }
    }

    fn agent() -> impl Strategy<Value = Option<AgentId>> {
        proptest::option::of("[a-z0-9][a-z0-9._-]{0,20}".prop_map(|s| AgentId::parse(&s).unwrap()))
    }

    /// Tokens near the valid ones: real tokens with one byte changed, case flipped, a `+` sign
    /// (which `from_str_radix` accepts), truncated or extended.
    fn mutated_token() -> impl Strategy<Value = String> {
        (
            agent(),
            any::<u128>(),
            any::<prop::sample::Index>(),
            prop::sample::select(vec!['+', '-', 'A', 'F', '0', 'g', ' ', 'é', '\n']),
            0..4u8,
        )
            .prop_map(|(agent, id, at, ch, how)| {
                let token = encode_page_token(
                    &by_agent(agent.as_ref()),
                    &SessionId::from_uuid(uuid::Uuid::from_u128(id)),
                );
                let i = at.index(token.len());
                match how {
                    0 => {
                        let mut t: Vec<char> = token.chars().collect();
                        t[i] = ch;
                        t.into_iter().collect()
                    }
                    1 => token.to_uppercase(),
                    2 => token[..i].to_owned(),
                    _ => format!("{token}{ch}{ch}"),
                }
            })
    }

    fn check(agent: Option<&AgentId>, token: &str) {
        if let Ok(last) = decode_page_token(&by_agent(agent), token) {
            assert_eq!(
                encode_page_token(&by_agent(agent), &last),
                token,
                "accepted a non-canonical token"
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(10_000))]

        #[test]
        fn arbitrary_strings_never_panic_and_accepted_ones_round_trip(agent in agent(), token in ".{0,600}") {
            check(agent.as_ref(), &token);
        }

        #[test]
        fn hex_strings_never_panic_and_accepted_ones_round_trip(agent in agent(), token in "[0-9a-fA-F+]{0,200}") {
            check(agent.as_ref(), &token);
        }

        #[test]
        fn mutated_tokens_are_refused_or_canonical(agent in agent(), token in mutated_token()) {
            check(agent.as_ref(), &token);
        }

        #[test]
        fn every_issued_token_decodes_to_its_session(agent in agent(), id in any::<u128>()) {
            let last = SessionId::from_uuid(uuid::Uuid::from_u128(id));
            let token = encode_page_token(&by_agent(agent.as_ref()), &last);
            prop_assert_eq!(decode_page_token(&by_agent(agent.as_ref()), &token).ok(), Some(last));
        }
    }
}
