//! Fleet mode's use cases: the node directory every node keeps (which nodes are healthy, which
//! take placements, whether this node may still create), the heartbeat that renews this node's
//! registration and reports lost nodes' sessions once, and ListNodes / DrainNode.
//!
//! In single-node mode the directory holds the one local node: it is never lost, and draining it
//! refuses new sandboxes.

mod telemetry;

use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use sandboxd_domain::{EventNote, EventReason, EventType, NodeId, NodeInfo, SandboxSession};

use crate::error::{ErrorKind, PortError, UseCaseError};
use crate::lease::Ports;
use crate::ports::{ListQuery, NodeBeat, NodeRegistry, RepositoryError};

/// Sessions read per page when a lost node's sessions are reported.
const LOST_WALK_PAGE: usize = 1000;

/// Which nodes exist and how they are, as this process last learnt it. Cheap to clone; every
/// clone sees the same state.
#[derive(Clone)]
pub struct NodeDirectory {
    inner: Arc<Inner>,
}

struct Inner {
    local: NodeId,
    /// `None` in single-node mode; the heartbeat TTL in fleet mode.
    ttl: Option<Duration>,
    known: RwLock<Known>,
}

#[derive(Default)]
struct Known {
    nodes: Vec<NodeInfo>,
    /// When this node's registration was last renewed.
    renewed: Option<Instant>,
    /// Single-node mode's draining flag (fleet mode keeps it in the registry).
    draining_local: bool,
}

impl std::fmt::Debug for NodeDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeDirectory")
            .field("local", &self.inner.local)
            .field("fleet", &self.inner.ttl.is_some())
            .finish_non_exhaustive()
    }
}

impl NodeDirectory {
    /// Single-node mode: `local` is the only node, always healthy.
    #[must_use]
    pub fn single(local: NodeId) -> Self {
        Self::with(local, None)
    }

    /// Fleet mode: nodes register with a heartbeat lease of `ttl`.
    #[must_use]
    pub fn fleet(local: NodeId, ttl: Duration) -> Self {
        Self::with(local, Some(ttl))
    }

    fn with(local: NodeId, ttl: Option<Duration>) -> Self {
        Self {
            inner: Arc::new(Inner {
                local,
                ttl,
                known: RwLock::new(Known::default()),
            }),
        }
    }

    #[must_use]
    pub fn local(&self) -> &NodeId {
        &self.inner.local
    }

    #[must_use]
    pub fn is_fleet(&self) -> bool {
        self.inner.ttl.is_some()
    }

    /// The node that runs a sandbox of `node`: that node, or this one for `None` (a sandbox made
    /// in single-node mode, by the node that still runs it).
    #[must_use]
    pub fn node_of<'a>(&'a self, node: Option<&'a NodeId>) -> &'a NodeId {
        node.unwrap_or(&self.inner.local)
    }

    /// Whether a sandbox of `node` runs on this node's engine, the only one reconcile lists and
    /// judges (another node's sandboxes are that node's to judge).
    #[must_use]
    pub fn is_local(&self, node: Option<&NodeId>) -> bool {
        self.node_of(node) == &self.inner.local
    }

    /// Whether a sandbox of `node` runs on another node whose registration lapsed: nobody can
    /// reach it, and its chat may be replaced elsewhere. A node this process has not seen yet (it
    /// registered after the last beat read the registry) is not lost: registrations are never
    /// deleted, so a dead node stays listed, unhealthy.
    #[must_use]
    pub fn is_lost(&self, node: Option<&NodeId>) -> bool {
        let Some(node) = node else {
            return false;
        };
        self.is_fleet()
            && *node != self.inner.local
            && self
                .read()
                .nodes
                .iter()
                .any(|known| known.node_id == *node && !known.healthy)
    }

    /// `node` as last seen; `None` when this process has not read it yet.
    #[must_use]
    pub fn find(&self, node: &NodeId) -> Option<NodeInfo> {
        self.read()
            .nodes
            .iter()
            .find(|known| known.node_id == *node)
            .cloned()
    }

    /// Every node last seen, this one included.
    #[must_use]
    pub fn nodes(&self) -> Vec<NodeInfo> {
        self.read().nodes.clone()
    }

    /// Nodes a new sandbox may be placed on: healthy, not draining, with room. This node only
    /// while its own registration is fresh.
    #[must_use]
    pub fn candidates(&self) -> Vec<NodeInfo> {
        let fresh = self.is_fresh();
        self.read()
            .nodes
            .iter()
            .filter(|node| node.accepts_placements())
            .filter(|node| fresh || node.node_id != self.inner.local)
            .cloned()
            .collect()
    }

    /// Counts a sandbox just placed on `node`, so placements before the next beat see it.
    pub fn note_placed(&self, node: &str) {
        let mut known = self.write();
        if let Some(info) = known.nodes.iter_mut().find(|n| n.node_id.as_str() == node) {
            info.active = info.active.saturating_add(1);
        }
    }

    /// Why this node takes no CreateSandbox at all now (fleet mode, its registration not fresh):
    /// it cannot know whether the fleet declared it lost and replaced its sandboxes elsewhere, so
    /// it neither reuses nor creates until a renewal succeeds.
    #[must_use]
    pub fn fenced(&self) -> Option<&'static str> {
        (self.is_fleet() && !self.is_fresh()).then_some("this node cannot renew its registration")
    }

    /// Why this node takes no new sandbox now, if it does not (single-node mode, drained; in
    /// fleet mode draining is the registry's, and placement skips a draining node).
    #[must_use]
    pub fn refuses_new(&self) -> Option<&'static str> {
        (!self.is_fleet() && self.read().draining_local)
            .then_some("this node is draining: it takes no new sandboxes")
    }

    /// Whether this node takes a new sandbox itself (a claim from its own warm pool is one):
    /// single-node mode unless drained; fleet mode while it is a placement candidate (fresh,
    /// healthy, not draining, with room).
    #[must_use]
    pub fn takes_new_locally(&self) -> bool {
        if !self.is_fleet() {
            return !self.read().draining_local;
        }
        self.candidates()
            .iter()
            .any(|node| node.node_id == self.inner.local)
    }

    /// Renewed within half the TTL: beats come every third of it, so a fresh node has missed at
    /// most one, and it stops creating well before the others may declare it lost (a full TTL).
    fn is_fresh(&self) -> bool {
        let Some(ttl) = self.inner.ttl else {
            return true;
        };
        self.read()
            .renewed
            .is_some_and(|renewed| renewed.elapsed() < ttl / 2)
    }

    /// Takes `nodes` as the fleet now, read outside a beat (a lookup of a node registered since):
    /// this node's own renewal is not implied.
    pub fn learned(&self, nodes: Vec<NodeInfo>) {
        if !nodes.is_empty() {
            self.write().nodes = nodes;
        }
    }

    /// Records a renewal that answered `nodes`.
    pub(crate) fn renewed(&self, nodes: Vec<NodeInfo>, at: Instant) {
        let mut known = self.write();
        known.nodes = nodes;
        known.renewed = Some(at);
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Known> {
        self.inner
            .known
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Known> {
        self.inner
            .known
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Failures of ListNodes and DrainNode.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("no node {0} is registered")]
    NotFound(NodeId),
    /// A port failed; its kind, label and message are the port error's.
    #[error(transparent)]
    Port(#[from] PortError),
}

// A port call's own error becomes `Port` through `?`.
impl From<RepositoryError> for NodeError {
    fn from(error: RepositoryError) -> Self {
        Self::Port(error.into())
    }
}

impl UseCaseError for NodeError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::NotFound(_) => ErrorKind::NotFound,
            Self::Port(error) => error.kind(),
        }
    }

    fn metric_label(&self) -> &'static str {
        match self {
            Self::NotFound(_) => "not_found",
            Self::Port(error) => error.metric_label(),
        }
    }

    fn client_message(&self) -> String {
        match self {
            Self::NotFound(_) => "no node with this node_id is registered".to_owned(),
            Self::Port(error) => error.client_message(),
        }
    }

    fn result_label(&self) -> &'static str {
        match self {
            Self::NotFound(_) => "not_found",
            Self::Port(_) => "error",
        }
    }
}

/// ListNodes and DrainNode over the registry (fleet mode) or the one local node.
#[derive(Clone)]
pub struct Nodes {
    ports: Ports,
    directory: NodeDirectory,
    /// `None` in single-node mode.
    registry: Option<Arc<dyn NodeRegistry>>,
    /// This node's `max_sandboxes` (0 = unbounded), for the single-node answer.
    capacity: u32,
}

impl std::fmt::Debug for Nodes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nodes")
            .field("directory", &self.directory)
            .finish_non_exhaustive()
    }
}

impl Nodes {
    #[must_use]
    pub fn new(
        ports: Ports,
        directory: NodeDirectory,
        registry: Option<Arc<dyn NodeRegistry>>,
        capacity: u32,
    ) -> Self {
        Self {
            ports,
            directory,
            registry,
            capacity,
        }
    }

    /// Every node, by id.
    ///
    /// # Errors
    /// The store's.
    pub async fn list(&self) -> Result<Vec<NodeInfo>, NodeError> {
        let now = self.ports.clock.now();
        let mut nodes = match &self.registry {
            Some(registry) => registry.nodes(now).await?,
            None => vec![self.local_node().await?],
        };
        nodes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        Ok(nodes)
    }

    /// Sets or clears `node_id`'s draining flag and answers the node after the change.
    ///
    /// # Errors
    /// `NotFound` for a node that is not registered (single-node mode: any but this one); the
    /// store's.
    pub async fn drain(&self, node_id: &NodeId, draining: bool) -> Result<NodeInfo, NodeError> {
        let now = self.ports.clock.now();
        let node = match &self.registry {
            Some(registry) => registry.set_draining(node_id, draining, now).await?,
            None if node_id == self.directory.local() => {
                self.directory.write().draining_local = draining;
                Some(self.local_node().await?)
            }
            None => None,
        };
        let node = node.ok_or_else(|| NodeError::NotFound(node_id.clone()))?;
        telemetry::log_node_drained(&node);
        Ok(node)
    }

    async fn local_node(&self) -> Result<NodeInfo, RepositoryError> {
        let active = self.ports.repository.count_active().await?;
        Ok(NodeInfo {
            node_id: self.directory.local().clone(),
            address: String::new(),
            capacity: self.capacity,
            active: u32::try_from(active).unwrap_or(u32::MAX),
            draining: self.directory.read().draining_local,
            healthy: true,
            last_heartbeat_at: self.ports.clock.now(),
        })
    }
}

/// What one beat did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BeatReport {
    /// Nodes registered, this one included.
    pub nodes: usize,
    /// Nodes whose loss this beat reported (one LOST event per session of each).
    pub lost_nodes: Vec<NodeId>,
    /// LOST events appended.
    pub lost_sessions: u64,
}

/// Renews this node's registration and reports lost nodes' sessions (fleet mode).
#[derive(Clone)]
pub struct Heartbeat {
    ports: Ports,
    registry: Arc<dyn NodeRegistry>,
    directory: NodeDirectory,
    /// Where other nodes reach this node's API.
    address: String,
    capacity: u32,
    ttl: Duration,
}

impl std::fmt::Debug for Heartbeat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Heartbeat")
            .field("directory", &self.directory)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl Heartbeat {
    #[must_use]
    pub fn new(
        ports: Ports,
        registry: Arc<dyn NodeRegistry>,
        directory: NodeDirectory,
        address: String,
        capacity: u32,
        ttl: Duration,
    ) -> Self {
        Self {
            ports,
            registry,
            directory,
            address,
            capacity,
            ttl,
        }
    }

    /// How often to beat: three beats per TTL, so one lost beat does not lapse the registration.
    #[must_use]
    pub fn interval(&self) -> Duration {
        self.ttl / 3
    }

    /// One beat: count this node's sandboxes, renew, learn the fleet, report lost nodes.
    ///
    /// # Errors
    /// The store's; this node's directory then ages towards refusing creates.
    pub async fn beat(&self) -> Result<BeatReport, RepositoryError> {
        let started = Instant::now();
        let local = self.directory.local().clone();
        // A slow engine must not delay the renewal (the others would declare this node lost):
        // the count gets a third of the interval, else the last one stands.
        let counted = tokio::time::timeout(self.interval() / 3, self.ports.engines.list_local());
        let active = match counted.await {
            Ok(Ok(containers)) => containers.iter().filter(|c| c.state.is_alive()).count(),
            outcome => {
                if let Ok(Err(error)) = outcome {
                    telemetry::log_node_count_failed(&error);
                }
                self.directory
                    .nodes()
                    .iter()
                    .find(|node| node.node_id == local)
                    .map_or(0, |node| node.active as usize)
            }
        };
        let beat = NodeBeat {
            node_id: local.clone(),
            address: self.address.clone(),
            capacity: self.capacity,
            active: u32::try_from(active).unwrap_or(u32::MAX),
        };
        let now = self.ports.clock.now();
        let nodes = match self.registry.beat(&beat, self.ttl, now).await {
            Ok(nodes) => nodes,
            Err(error) => {
                telemetry::count_heartbeat(false);
                return Err(error);
            }
        };
        telemetry::count_heartbeat(true);
        self.directory.renewed(nodes.clone(), started);
        telemetry::set_nodes(&nodes);
        let mut report = BeatReport {
            nodes: nodes.len(),
            ..BeatReport::default()
        };
        for node in nodes.iter().filter(|n| !n.healthy && n.node_id != local) {
            if self.registry.claim_loss(node).await? {
                report.lost_sessions += self.report_lost(&node.node_id).await?;
                report.lost_nodes.push(node.node_id.clone());
            }
        }
        Ok(report)
    }

    /// One LOST event per session of `node`; returns how many.
    async fn report_lost(&self, node: &NodeId) -> Result<u64, RepositoryError> {
        let mut reported = 0;
        let mut page_token = None;
        loop {
            let page = self
                .ports
                .repository
                .list(&ListQuery {
                    agent_id: None,
                    state: None,
                    page_size: LOST_WALK_PAGE,
                    page_token,
                })
                .await?;
            let on_node = page
                .sessions
                .iter()
                .filter(|s| s.node_id.as_ref() == Some(node));
            for session in on_node {
                self.append_lost(session).await?;
                reported += 1;
            }
            match page.next_page_token {
                Some(token) => page_token = Some(token),
                None => break,
            }
        }
        telemetry::log_node_lost(node, reported);
        Ok(reported)
    }

    async fn append_lost(&self, session: &SandboxSession) -> Result<(), RepositoryError> {
        let note = EventNote::new(
            EventType::Lost,
            EventReason::NodeLost,
            self.ports.clock.now(),
        );
        self.ports.repository.append_event(session, &note).await
    }
}
