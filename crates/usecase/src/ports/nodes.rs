//! The node registry port (fleet mode): each node's registration, renewed by its heartbeat, and
//! what every node reads to place sandboxes and to tell lost nodes.

use std::time::Duration;

use async_trait::async_trait;
use sandboxd_domain::{NodeId, NodeInfo, Timestamp};

use super::RepositoryError;

/// What a node publishes on every beat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeBeat {
    pub node_id: NodeId,
    /// Where other nodes reach its node API.
    pub address: String,
    /// Its `max_sandboxes`; 0 = unbounded.
    pub capacity: u32,
    /// Sandboxes its engine runs now.
    pub active: u32,
}

/// The registry of the fleet's nodes, shared by all of them (the session store's Redis).
/// Failures are the store's: [`RepositoryError::Unavailable`] / [`RepositoryError::Other`].
#[async_trait]
pub trait NodeRegistry: Send + Sync {
    /// Registers or renews `beat`, healthy until `now + ttl` (its draining flag kept), and
    /// answers every registered node, this one included, as of `now`.
    ///
    /// # Errors
    /// `Unavailable`/`Other`.
    async fn beat(
        &self,
        beat: &NodeBeat,
        ttl: Duration,
        now: Timestamp,
    ) -> Result<Vec<NodeInfo>, RepositoryError>;

    /// Every registered node as of `now` (healthy or not).
    ///
    /// # Errors
    /// `Unavailable`/`Other`.
    async fn nodes(&self, now: Timestamp) -> Result<Vec<NodeInfo>, RepositoryError>;

    /// Sets or clears a node's draining flag; `None` when no such node is registered.
    ///
    /// # Errors
    /// `Unavailable`/`Other`.
    async fn set_draining(
        &self,
        node_id: &NodeId,
        draining: bool,
        now: Timestamp,
    ) -> Result<Option<NodeInfo>, RepositoryError>;

    /// Claims the report of `node`'s loss (its registration lapsed after the beat at
    /// `node.last_heartbeat_at`): `true` for exactly one caller in the fleet, so its sessions'
    /// LOST events are appended once.
    ///
    /// # Errors
    /// `Unavailable`/`Other`.
    async fn claim_loss(&self, node: &NodeInfo) -> Result<bool, RepositoryError>;
}
