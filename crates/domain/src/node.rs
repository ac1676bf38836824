//! Fleet mode's values: a node's id and a node as the registry reports it.

use std::fmt;

use crate::{Timestamp, ValidationError};

/// The name of a sandboxd node (`node_id`): 1–63 chars of `[a-z0-9.-]`, starting alphanumeric
/// (a Kubernetes node name fits; safe in a Redis key, a metric label and a container label).
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
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
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
    fn node_ids_are_lowercase_names() {
        for refused in ["", "-n1", "N1", "n_1", "n/1", &"n".repeat(64)] {
            assert!(NodeId::parse(refused).is_err(), "{refused:?} accepted");
        }
        assert!(NodeId::parse("ip-10-0-1-23.ec2.internal").is_ok());
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
