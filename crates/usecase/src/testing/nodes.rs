//! An in-memory node registry with the Redis registry's semantics (the contract suite in
//! `crates/adapters/tests/registry_contract.rs` runs on both).

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use sandboxd_domain::{NodeId, NodeInfo, Timestamp};

use super::lock;
use crate::ports::{NodeBeat, NodeRegistry, RepositoryError};

/// What a registration holds.
#[derive(Debug, Clone)]
struct Registration {
    address: String,
    capacity: u32,
    active: u32,
    draining: bool,
    beat_at: Timestamp,
    ttl: Duration,
}

/// Nodes registered in memory; health judged at read time, as in Redis.
#[derive(Debug, Default)]
pub struct InMemoryNodeRegistry {
    nodes: Mutex<BTreeMap<NodeId, Registration>>,
    /// (node, beat millis) whose lapse was claimed.
    claimed: Mutex<HashSet<(NodeId, i128)>>,
}

impl InMemoryNodeRegistry {
    fn info(id: &NodeId, registration: &Registration, now: Timestamp) -> NodeInfo {
        NodeInfo {
            node_id: id.clone(),
            address: registration.address.clone(),
            capacity: registration.capacity,
            active: registration.active,
            draining: registration.draining,
            healthy: now < registration.beat_at + registration.ttl,
            last_heartbeat_at: registration.beat_at,
        }
    }

    fn all(&self, now: Timestamp) -> Vec<NodeInfo> {
        lock(&self.nodes)
            .iter()
            .map(|(id, registration)| Self::info(id, registration, now))
            .collect()
    }
}

#[async_trait]
impl NodeRegistry for InMemoryNodeRegistry {
    async fn beat(
        &self,
        beat: &NodeBeat,
        ttl: Duration,
        now: Timestamp,
    ) -> Result<Vec<NodeInfo>, RepositoryError> {
        {
            let mut nodes = lock(&self.nodes);
            let draining = nodes.get(&beat.node_id).is_some_and(|r| r.draining);
            nodes.insert(
                beat.node_id.clone(),
                Registration {
                    address: beat.address.clone(),
                    capacity: beat.capacity,
                    active: beat.active,
                    draining,
                    beat_at: now,
                    ttl,
                },
            );
        }
        Ok(self.all(now))
    }

    async fn nodes(&self, now: Timestamp) -> Result<Vec<NodeInfo>, RepositoryError> {
        Ok(self.all(now))
    }

    async fn set_draining(
        &self,
        node_id: &NodeId,
        draining: bool,
        now: Timestamp,
    ) -> Result<Option<NodeInfo>, RepositoryError> {
        let mut nodes = lock(&self.nodes);
        Ok(nodes.get_mut(node_id).map(|registration| {
            registration.draining = draining;
            Self::info(node_id, registration, now)
        }))
    }

    async fn claim_loss(&self, node: &NodeInfo) -> Result<bool, RepositoryError> {
        let beat = node.last_heartbeat_at.unix_timestamp_nanos() / 1_000_000;
        Ok(lock(&self.claimed).insert((node.node_id.clone(), beat)))
    }
}
