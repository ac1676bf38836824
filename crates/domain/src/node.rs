//! Fleet mode's values: a node's id, where a container id says which node runs it, and a node as
//! the registry reports it.

use std::fmt;

use crate::{ContainerId, Timestamp, ValidationError};

/// The name of a sandboxd node (`node_id`): 1–63 chars of `[a-z0-9.-]`, starting alphanumeric
/// (a Kubernetes node name fits; safe in a Redis key, a metric label and a container id's
/// prefix, which `/` ends).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(String);

impl NodeId {
    pub const MAX_LEN: usize = 63;

    /// # Errors
    /// [`ValidationError`] when `raw` is empty, too long, starts with a non-alphanumeric or has a
    /// character outside `[a-z0-9.-]`.
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        crate::values::check_name(raw, Self::MAX_LEN, b".-", "[a-z0-9.-]")
            .map(|()| Self(raw.to_owned()))
    }

    /// The name a single node answers ListNodes with when `node_id` is unset.
    #[must_use]
    pub fn single() -> Self {
        Self("local".to_owned())
    }

    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The fleet-wide id of the container `engine_id` of this node's engine: `<node_id>/<engine
    /// id>`, so every operation on it can be routed by its prefix.
    ///
    /// # Errors
    /// When the result is not a valid [`ContainerId`] (an engine id with a bad character).
    pub fn container(&self, engine_id: &str) -> Result<ContainerId, ValidationError> {
        ContainerId::parse(&format!("{}/{engine_id}", self.0))
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl ContainerId {
    /// The node prefix and the engine's own id: `("n1", Some-id)` for `n1/abc`; `None` for an id
    /// made in single-node mode (no prefix), which belongs to the node that made it.
    #[must_use]
    pub fn split_node(&self) -> (Option<&str>, &str) {
        match self.as_str().split_once('/') {
            Some((node, engine_id)) => (Some(node), engine_id),
            None => (None, self.as_str()),
        }
    }
}

/// A node as the registry reports it (ListNodes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub node_id: NodeId,
    /// Where other nodes reach its node API; empty in single-node mode.
    pub address: String,
    /// Its `max_sandboxes`; 0 = unbounded.
    pub capacity: u32,
    /// Sandboxes it runs.
    pub active: u32,
    pub draining: bool,
    /// Its registration was renewed within the heartbeat TTL.
    pub healthy: bool,
    pub last_heartbeat_at: Timestamp,
}

impl NodeInfo {
    /// Whether a new sandbox may be placed on it: healthy, not draining, with room.
    #[must_use]
    pub fn accepts_placements(&self) -> bool {
        self.healthy && !self.draining && (self.capacity == 0 || self.active < self.capacity)
    }

    /// Room left, for placement by free capacity; an unbounded node counts as `u32::MAX` less
    /// what it runs.
    #[must_use]
    pub fn free(&self) -> u32 {
        let capacity = if self.capacity == 0 {
            u32::MAX
        } else {
            self.capacity
        };
        capacity.saturating_sub(self.active)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_are_lowercase_names_and_prefix_container_ids() {
        for refused in ["", "-n1", "N1", "n_1", "n/1", &"n".repeat(64)] {
            assert!(NodeId::parse(refused).is_err(), "{refused:?} accepted");
        }
        assert!(NodeId::parse("ip-10-0-1-23.ec2.internal").is_ok());
        let node = NodeId::parse("node-1").map_err(|e| e.to_string());
        let id = node
            .as_ref()
            .map_err(Clone::clone)
            .and_then(|n| n.container("abc123").map_err(|e| e.to_string()));
        assert_eq!(
            id.as_ref().map(|id| id.split_node()),
            Ok((Some("node-1"), "abc123"))
        );
        let bare = ContainerId::parse("abc123").map_err(|e| e.to_string());
        assert_eq!(
            bare.as_ref().map(|id| id.split_node()),
            Ok((None, "abc123"))
        );
    }

    #[test]
    fn placement_needs_health_no_drain_and_room() {
        let node = |capacity, active, draining, healthy| NodeInfo {
            node_id: NodeId("n1".to_owned()),
            address: String::new(),
            capacity,
            active,
            draining,
            healthy,
            last_heartbeat_at: Timestamp::UNIX_EPOCH,
        };
        assert!(node(2, 1, false, true).accepts_placements());
        assert!(node(0, 500, false, true).accepts_placements());
        assert!(!node(2, 2, false, true).accepts_placements());
        assert!(!node(2, 0, true, true).accepts_placements());
        assert!(!node(2, 0, false, false).accepts_placements());
        assert_eq!(node(5, 2, false, true).free(), 3);
    }
}
