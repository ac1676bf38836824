//! Routing by node: the port of the node a sandbox runs on, this node's in process and another
//! node's through its node API. One mechanism for every per-sandbox port (the engine today), so
//! the use cases, not the adapters, decide where an operation goes.
//!
//! A session names its node (`SandboxSession::node_id`); `None` is a sandbox made in single-node
//! mode, which belongs to the node that reads it. In single-node mode every route is local.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use sandboxd_domain::{NodeId, NodeInfo};

use crate::fleet::NodeDirectory;
use crate::ports::{BoxError, Clock, NodeRegistry, RuntimeError, SandboxRuntime};

/// Builds the client of a port on another node from that node's registration.
pub type Connect<T> = Arc<dyn Fn(&NodeInfo) -> Result<Arc<T>, BoxError> + Send + Sync>;

/// Why a node's port cannot be had.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// The node stopped renewing its registration: nobody can reach its sandboxes.
    #[error("the sandbox's node is lost")]
    Lost,
    /// The node is not registered, or no client of it could be built.
    #[error("node {0} cannot be reached")]
    Unreachable(NodeId, #[source] BoxError),
}

impl From<RouteError> for RuntimeError {
    fn from(error: RouteError) -> Self {
        Self::Unavailable(Box::new(error))
    }
}

/// A per-sandbox port on every node, routed by node id. Cheap to clone; clones share their
/// clients of other nodes.
pub struct Routed<T: ?Sized> {
    inner: Arc<Inner<T>>,
}

/// The engines of every node: what the use cases call for a sandbox's lifecycle.
pub type Engines = Routed<dyn SandboxRuntime>;

struct Inner<T: ?Sized> {
    local: Arc<T>,
    directory: NodeDirectory,
    /// `None` in single-node mode.
    remote: Option<Remote<T>>,
}

/// How other nodes' ports are reached (fleet mode).
struct Remote<T: ?Sized> {
    connect: Connect<T>,
    /// Clients by node, with the address each was made for (a node that moved gets a new one).
    clients: Mutex<HashMap<NodeId, (String, Arc<T>)>>,
    /// Where to look up a node this process has not read yet; `None`: the directory only.
    lookup: Option<(Arc<dyn NodeRegistry>, Arc<dyn Clock>)>,
}

impl<T: ?Sized> Clone for Routed<T> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<T: ?Sized> std::fmt::Debug for Routed<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Routed")
            .field("directory", &self.inner.directory)
            .finish_non_exhaustive()
    }
}

impl<T: ?Sized + Send + Sync> Routed<T> {
    /// Single-node mode: `local` serves every sandbox.
    #[must_use]
    pub fn single(local: Arc<T>, directory: NodeDirectory) -> Self {
        Self {
            inner: Arc::new(Inner {
                local,
                directory,
                remote: None,
            }),
        }
    }

    /// Fleet mode: `local` serves this node's sandboxes, `connect` builds a client of another
    /// node's; `lookup` is where a node this process has not read yet is looked up, instead of
    /// answering `Unreachable` until the next beat brings it.
    #[must_use]
    pub fn fleet(
        local: Arc<T>,
        directory: NodeDirectory,
        connect: Connect<T>,
        lookup: Option<(Arc<dyn NodeRegistry>, Arc<dyn Clock>)>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                local,
                directory,
                remote: Some(Remote {
                    connect,
                    clients: Mutex::new(HashMap::new()),
                    lookup,
                }),
            }),
        }
    }

    /// This node's own port.
    #[must_use]
    pub fn local(&self) -> &Arc<T> {
        &self.inner.local
    }

    #[must_use]
    pub fn directory(&self) -> &NodeDirectory {
        &self.inner.directory
    }

    /// The node id a sandbox placed on this node records: this node's in fleet mode, `None` in
    /// single-node mode.
    #[must_use]
    pub fn local_node_id(&self) -> Option<NodeId> {
        self.inner
            .remote
            .as_ref()
            .map(|_| self.inner.directory.local().clone())
    }

    /// The port of the node that runs a sandbox of `node`.
    ///
    /// # Errors
    /// `Lost` for a node whose registration lapsed; `Unreachable` for a node that is not
    /// registered or whose client cannot be built.
    pub async fn to(&self, node: Option<&NodeId>) -> Result<Arc<T>, RouteError> {
        if self.inner.directory.is_lost(node) {
            return Err(RouteError::Lost);
        }
        match node {
            Some(node) => self.to_node(node).await,
            None => Ok(Arc::clone(&self.inner.local)),
        }
    }

    /// As [`Self::to`], but `None` for a lost node: what a removal needs, since a lost node's
    /// reconcile removes what it holds when it returns, seeing its chat moved on.
    ///
    /// # Errors
    /// `Unreachable`.
    pub async fn unless_lost(&self, node: Option<&NodeId>) -> Result<Option<Arc<T>>, RouteError> {
        match self.to(node).await {
            Ok(port) => Ok(Some(port)),
            Err(RouteError::Lost) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// The port of `node`, lost or not (listing asks healthy nodes only; placement picks them).
    ///
    /// # Errors
    /// `Unreachable`.
    pub async fn to_node(&self, node: &NodeId) -> Result<Arc<T>, RouteError> {
        let Some(remote) = &self.inner.remote else {
            return Ok(Arc::clone(&self.inner.local));
        };
        if node == self.inner.directory.local() {
            return Ok(Arc::clone(&self.inner.local));
        }
        let info = match self.inner.directory.find(node) {
            Some(info) => info,
            None => self.look_up(remote, node).await?,
        };
        let mut clients = remote
            .clients
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some((address, client)) = clients.get(node)
            && *address == info.address
        {
            return Ok(Arc::clone(client));
        }
        let client = (remote.connect)(&info)
            .map_err(|error| RouteError::Unreachable(node.clone(), error))?;
        clients.insert(node.clone(), (info.address.clone(), Arc::clone(&client)));
        Ok(client)
    }

    /// A node this process has not read yet (it registered after the last beat), looked up in
    /// the registry once; what was read is kept in the directory.
    async fn look_up(&self, remote: &Remote<T>, node: &NodeId) -> Result<NodeInfo, RouteError> {
        let unreachable = |cause: BoxError| RouteError::Unreachable(node.clone(), cause);
        let Some((registry, clock)) = &remote.lookup else {
            return Err(unreachable("not registered".into()));
        };
        let nodes = registry
            .nodes(clock.now())
            .await
            .map_err(|error| unreachable(Box::new(error)))?;
        self.inner.directory.learned(nodes);
        self.inner
            .directory
            .find(node)
            .ok_or_else(|| unreachable("not registered".into()))
    }
}
