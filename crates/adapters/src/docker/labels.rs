//! The container labels that let the engine alone tell which sandboxes exist and whose they are:
//! `{prefix}.managed-by`, `.chat_id`, `.session_id`, `.agent_id`, `.volume_host_path`,
//! `.created_at`, `.expires_at`, and in fleet mode `.node_id`. Timestamps are RFC 3339 in UTC
//! (exact to the nanosecond).

use std::collections::HashMap;

use sandboxd_domain::{AgentId, ChatId, NodeId, SessionId, Timestamp, VolumePath};
use sandboxd_usecase::ports::{NewSandbox, SandboxLabels};
use time::format_description::well_known::Rfc3339;

use super::names::MANAGED_BY_VALUE;

/// Label keys under one deployment's namespace.
#[derive(Debug, Clone)]
pub struct LabelKeys {
    prefix: String,
}

impl LabelKeys {
    #[must_use]
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    fn key(&self, name: &str) -> String {
        format!("{}.{name}", self.prefix)
    }

    #[must_use]
    pub fn managed_by(&self) -> String {
        self.key("managed-by")
    }

    /// The engine-side filter (`label=key=value`) selecting this deployment's containers.
    #[must_use]
    pub fn managed_filter(&self) -> String {
        format!("{}={MANAGED_BY_VALUE}", self.managed_by())
    }

    /// The engine-side filter selecting one chat's containers (with [`Self::managed_filter`]).
    #[must_use]
    pub(crate) fn chat_filter(&self, chat_id: &ChatId) -> String {
        format!("{}={chat_id}", self.key("chat_id"))
    }

    /// Every label of a new sandbox.
    #[must_use]
    pub fn for_sandbox(&self, spec: &NewSandbox) -> HashMap<String, String> {
        let mut labels = HashMap::from([
            (self.managed_by(), MANAGED_BY_VALUE.to_owned()),
            (self.key("chat_id"), spec.chat_id.to_string()),
            (self.key("session_id"), spec.session_id.to_string()),
            (self.key("agent_id"), spec.agent_id.to_string()),
            (
                self.key("volume_host_path"),
                spec.volume_host_path.to_string(),
            ),
            (self.key("created_at"), format_timestamp(spec.created_at)),
            (self.key("expires_at"), format_timestamp(spec.expires_at)),
        ]);
        if let Some(node) = &spec.node_id {
            labels.insert(self.key("node_id"), node.to_string());
        }
        labels
    }

    /// Every label of a pooled sandbox while it waits: managed (so sweeps and cleanup tools find
    /// it by one filter), its agent, and its slot. No chat, session or expiry: those are not known
    /// until the claim, and labels cannot change after the create.
    #[must_use]
    pub fn for_pooled(&self, agent_id: &AgentId, slot: &str) -> HashMap<String, String> {
        HashMap::from([
            (self.managed_by(), MANAGED_BY_VALUE.to_owned()),
            (self.key("agent_id"), agent_id.to_string()),
            (self.key("pool_slot"), slot.to_owned()),
        ])
    }

    /// The filter of containers carrying a pool slot (pooled sandboxes, waiting or claimed).
    #[must_use]
    pub fn pool_slot_key(&self) -> String {
        self.key("pool_slot")
    }

    /// The labels of one of the deployment's bridge networks: managed like its containers (so
    /// cleanup tools find both by one filter), and its egress class.
    #[must_use]
    pub fn for_network(&self, egress: sandboxd_domain::Egress) -> HashMap<String, String> {
        HashMap::from([
            (self.managed_by(), MANAGED_BY_VALUE.to_owned()),
            (self.key("egress"), egress.to_string()),
        ])
    }

    /// The labels of a listed container, decoded; each field `None` when missing or malformed.
    #[must_use]
    pub fn decode(&self, labels: &HashMap<String, String>) -> SandboxLabels {
        let get = |name: &str| labels.get(&self.key(name)).map(String::as_str);
        let timestamp = |name: &str| get(name).and_then(|raw| Timestamp::parse(raw, &Rfc3339).ok());
        SandboxLabels {
            session_id: get("session_id").and_then(|raw| SessionId::parse(raw).ok()),
            chat_id: get("chat_id").and_then(|raw| ChatId::parse(raw).ok()),
            agent_id: get("agent_id").and_then(|raw| AgentId::parse(raw).ok()),
            volume_host_path: get("volume_host_path").and_then(|raw| VolumePath::parse(raw).ok()),
            created_at: timestamp("created_at"),
            expires_at: timestamp("expires_at"),
            node_id: get("node_id").and_then(|raw| NodeId::parse(raw).ok()),
        }
    }
}

/// RFC 3339; a timestamp outside its range (years beyond 9999) falls back to unix nanoseconds so
/// labelling never fails a create.
fn format_timestamp(at: Timestamp) -> String {
    at.format(&Rfc3339)
        .unwrap_or_else(|_| at.unix_timestamp_nanos().to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use time::macros::datetime;

    #[test]
    fn labels_round_trip_the_session_fields() {
        let keys = LabelKeys::new("sbx");
        let spec = NewSandbox {
            session_id: SessionId::parse("11111111-1111-4111-8111-111111111111").unwrap(),
            chat_id: ChatId::parse("22222222-2222-4222-8222-222222222222").unwrap(),
            agent_id: AgentId::parse("default").unwrap(),
            profile: std::sync::Arc::new(sandboxd_domain::AgentProfile::new("img")),
            volume_host_path: VolumePath::parse("/srv/a").unwrap(),
            created_at: datetime!(2026-01-01 00:00:00.123456789 UTC),
            expires_at: datetime!(2026-01-01 00:30 UTC),
            node_id: Some(NodeId::parse("n2").unwrap()),
        };
        let labels = keys.for_sandbox(&spec);
        assert_eq!(labels["sbx.node_id"], "n2");
        assert_eq!(labels["sbx.managed-by"], "sandboxd");
        assert_eq!(labels["sbx.created_at"], "2026-01-01T00:00:00.123456789Z");
        assert_eq!(labels["sbx.expires_at"], "2026-01-01T00:30:00Z");
        assert_eq!(labels["sbx.volume_host_path"], "/srv/a");
        assert_eq!(keys.decode(&labels), SandboxLabels::of(&spec));
        assert_eq!(keys.managed_filter(), "sbx.managed-by=sandboxd");
    }

    #[test]
    fn missing_or_malformed_labels_decode_to_none_each() {
        let keys = LabelKeys::new("sbx");
        let labels = HashMap::from([
            ("sbx.chat_id".to_owned(), "not-a-uuid".to_owned()),
            ("sbx.agent_id".to_owned(), "web".to_owned()),
            ("sbx.created_at".to_owned(), "yesterday".to_owned()),
            (
                "other.session_id".to_owned(),
                "11111111-1111-4111-8111-111111111111".to_owned(),
            ),
        ]);
        let decoded = keys.decode(&labels);
        assert_eq!(decoded.agent_id, Some(AgentId::parse("web").unwrap()));
        assert_eq!(decoded.chat_id, None);
        assert_eq!(decoded.session_id, None, "another deployment's label");
        assert_eq!(decoded.created_at, None);
        assert_eq!(decoded.volume_host_path, None);
    }
}
