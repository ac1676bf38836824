//! The runtime of a fleet node: this node's engine in process, every other node's through its
//! node API, chosen by the container id's node prefix (`<node_id>/<engine id>`); new sandboxes
//! placed by load (the best of K sampled nodes by free capacity).
//!
//! A container on a lost node (its registration lapsed) is not called: a removal is success
//! (that node's reconcile removes it when it returns, seeing its chat moved on), anything else
//! is `Unavailable`.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use rand::seq::IndexedRandom;
use sandboxd_domain::{
    AgentId, AgentProfile, ChatId, ContainerId, Endpoint, NodeId, NodeInfo, VolumePath,
};
use sandboxd_usecase::NodeDirectory;
use sandboxd_usecase::ports::{
    ClaimError, Clock, ContainerState, ManagedContainer, NewSandbox, NodeRegistry, PoolRecovery,
    PooledSandbox, RuntimeError, SandboxRuntime, StartedSandbox,
};
use sandboxd_usecase::telemetry::{count_placement, event};

/// Builds the runtime that reaches a node's API at its registered address.
pub type Connect =
    Arc<dyn Fn(&NodeInfo) -> Result<Arc<dyn SandboxRuntime>, RuntimeError> + Send + Sync>;

/// A client of another node, and the address it was made for.
type Remote = (String, Arc<dyn SandboxRuntime>);

/// The fleet as one [`SandboxRuntime`].
pub struct FleetRuntime {
    local: Arc<dyn SandboxRuntime>,
    directory: NodeDirectory,
    connect: Connect,
    /// Clients of other nodes by id, with the address each was made for (a node that moved gets
    /// a new one).
    remotes: Mutex<HashMap<NodeId, Remote>>,
    /// Nodes sampled per placement (the best of K).
    sample: usize,
    /// Where to look up a node this process has not read yet; `None`: only the directory.
    lookup: Option<Lookup>,
}

/// The registry and the clock to read it at.
struct Lookup {
    registry: Arc<dyn NodeRegistry>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for FleetRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetRuntime")
            .field("directory", &self.directory)
            .field("sample", &self.sample)
            .finish_non_exhaustive()
    }
}

/// Where an operation on a container runs.
enum Route {
    Local(ContainerId),
    Remote(Arc<dyn SandboxRuntime>, ContainerId),
    /// On a lost node: not called.
    Lost,
}

impl FleetRuntime {
    /// `local` is this node's engine; `connect` builds a client of another node's API.
    #[must_use]
    pub fn new(
        local: Arc<dyn SandboxRuntime>,
        directory: NodeDirectory,
        connect: Connect,
        sample: usize,
    ) -> Self {
        Self {
            local,
            directory,
            connect,
            remotes: Mutex::new(HashMap::new()),
            sample: sample.max(1),
            lookup: None,
        }
    }

    /// This runtime looking up in `registry` (as of `clock`) a node it has not read yet, instead
    /// of answering `Unavailable` until the next beat brings it.
    #[must_use]
    pub fn with_lookup(mut self, registry: Arc<dyn NodeRegistry>, clock: Arc<dyn Clock>) -> Self {
        self.lookup = Some(Lookup { registry, clock });
        self
    }

    async fn route(&self, container_id: &ContainerId) -> Result<Route, RuntimeError> {
        let (node, engine_id) = container_id.split_node();
        let engine_id =
            ContainerId::parse(engine_id).map_err(|error| RuntimeError::Other(Box::new(error)))?;
        match node {
            None => Ok(Route::Local(engine_id)),
            Some(node) if node == self.directory.local().as_str() => Ok(Route::Local(engine_id)),
            Some(_) if self.directory.is_lost(container_id) => Ok(Route::Lost),
            Some(node) => Ok(Route::Remote(self.remote(node).await?, engine_id)),
        }
    }

    /// The client of `node`, made at its registered address on first use. A node this process
    /// has not read yet (it registered after the last beat) is looked up in the registry once.
    async fn remote(&self, node: &str) -> Result<Arc<dyn SandboxRuntime>, RuntimeError> {
        let known = |nodes: Vec<NodeInfo>| nodes.into_iter().find(|n| n.node_id.as_str() == node);
        let info = match known(self.directory.nodes()) {
            Some(info) => info,
            None => {
                let looked_up = match &self.lookup {
                    Some(lookup) => lookup
                        .registry
                        .nodes(lookup.clock.now())
                        .await
                        .map_err(|error| RuntimeError::Unavailable(Box::new(error)))?,
                    None => Vec::new(),
                };
                self.directory.learned(looked_up.clone());
                known(looked_up).ok_or_else(|| {
                    RuntimeError::Unavailable(format!("node {node} is not registered").into())
                })?
            }
        };
        let mut remotes = self.remotes.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((address, client)) = remotes.get(&info.node_id)
            && *address == info.address
        {
            return Ok(Arc::clone(client));
        }
        let client = (self.connect)(&info)?;
        remotes.insert(
            info.node_id.clone(),
            (info.address.clone(), Arc::clone(&client)),
        );
        Ok(client)
    }

    /// The runtime that runs `node`'s containers.
    async fn runtime_of(&self, node: &NodeId) -> Result<Arc<dyn SandboxRuntime>, RuntimeError> {
        if node == self.directory.local() {
            Ok(Arc::clone(&self.local))
        } else {
            self.remote(node.as_str()).await
        }
    }

    /// The best of `sample` random candidates by free capacity.
    fn pick(&self, candidates: &[NodeInfo]) -> Option<NodeInfo> {
        let mut rng = rand::rng();
        candidates
            .choose_multiple(&mut rng, self.sample)
            .max_by_key(|node| node.free())
            .cloned()
    }

    fn prefixed(node: &NodeId, engine_id: &ContainerId) -> Result<ContainerId, RuntimeError> {
        node.container(engine_id.as_str())
            .map_err(|error| RuntimeError::Other(Box::new(error)))
    }

    fn prefix_all(
        node: &NodeId,
        containers: Vec<ManagedContainer>,
    ) -> Result<Vec<ManagedContainer>, RuntimeError> {
        containers
            .into_iter()
            .map(|mut container| {
                container.container_id = Self::prefixed(node, &container.container_id)?;
                Ok(container)
            })
            .collect()
    }
}

#[async_trait]
impl SandboxRuntime for FleetRuntime {
    async fn validate(
        &self,
        profile: &AgentProfile,
        volume: &VolumePath,
    ) -> Result<(), RuntimeError> {
        // Every node has the same policy; the node that runs the sandbox checks again.
        self.local.validate(profile, volume).await
    }

    async fn create(&self, spec: &NewSandbox) -> Result<StartedSandbox, RuntimeError> {
        let mut candidates = self.directory.candidates();
        let mut last_failure = None;
        while let Some(node) = self.pick(&candidates) {
            let outcome = match self.runtime_of(&node.node_id).await {
                Ok(runtime) => runtime.create(spec).await,
                Err(error) => Err(error),
            };
            match outcome {
                Ok(started) => {
                    count_placement(node.node_id.as_str(), "ok");
                    self.directory.note_placed(node.node_id.as_str());
                    return Ok(StartedSandbox {
                        container_id: Self::prefixed(&node.node_id, &started.container_id)?,
                        endpoint: started.endpoint,
                    });
                }
                // The node (or the hop to it) failed: another one may not.
                Err(RuntimeError::Unavailable(cause)) => {
                    count_placement(node.node_id.as_str(), "failed");
                    tracing::warn!(
                        name: event::PLACEMENT_FAILED,
                        message = event::PLACEMENT_FAILED,
                        node_id = %node.node_id,
                        error = %sandboxd_usecase::telemetry::ErrorChain(cause.as_ref()),
                    );
                    candidates.retain(|other| other.node_id != node.node_id);
                    last_failure = Some(RuntimeError::Unavailable(cause));
                }
                // The request's own failure (its volume, its image, its readiness): an answer.
                Err(error) => return Err(error),
            }
        }
        count_placement("", "none");
        Err(last_failure
            .unwrap_or_else(|| RuntimeError::Unavailable("no node accepts new sandboxes".into())))
    }

    async fn remove_gracefully(&self, container_id: &ContainerId) -> Result<(), RuntimeError> {
        match self.route(container_id).await? {
            Route::Local(id) => self.local.remove_gracefully(&id).await,
            Route::Remote(runtime, id) => runtime.remove_gracefully(&id).await,
            Route::Lost => Ok(()),
        }
    }

    async fn force_remove(&self, container_id: &ContainerId) -> Result<(), RuntimeError> {
        match self.route(container_id).await? {
            Route::Local(id) => self.local.force_remove(&id).await,
            Route::Remote(runtime, id) => runtime.force_remove(&id).await,
            Route::Lost => Ok(()),
        }
    }

    async fn inspect(&self, container_id: &ContainerId) -> Result<ContainerState, RuntimeError> {
        match self.route(container_id).await? {
            Route::Local(id) => self.local.inspect(&id).await,
            Route::Remote(runtime, id) => runtime.inspect(&id).await,
            Route::Lost => Err(lost()),
        }
    }

    /// This node's containers only: each node reconciles its own engine.
    async fn list_managed(&self) -> Result<Vec<ManagedContainer>, RuntimeError> {
        let containers = self.local.list_managed().await?;
        Self::prefix_all(self.directory.local(), containers)
    }

    /// The chat's containers on every healthy node (lost ones cannot answer; their reconcile
    /// removes what they hold when they return), so a create under the chat's lease sees them
    /// all and leaves exactly one.
    async fn list_chat(&self, chat_id: &ChatId) -> Result<Vec<ManagedContainer>, RuntimeError> {
        let nodes: Vec<NodeId> = self
            .directory
            .nodes()
            .into_iter()
            .filter(|node| node.healthy || node.node_id == *self.directory.local())
            .map(|node| node.node_id)
            .collect();
        let nodes = if nodes.is_empty() {
            vec![self.directory.local().clone()]
        } else {
            nodes
        };
        let lists = futures::future::join_all(nodes.iter().map(|node| async move {
            let runtime = self.runtime_of(node).await?;
            Self::prefix_all(node, runtime.list_chat(chat_id).await?)
        }))
        .await;
        let mut all = Vec::new();
        for list in lists {
            all.extend(list?);
        }
        Ok(all)
    }

    async fn pause(&self, container_id: &ContainerId) -> Result<(), RuntimeError> {
        match self.route(container_id).await? {
            Route::Local(id) => self.local.pause(&id).await,
            Route::Remote(runtime, id) => runtime.pause(&id).await,
            Route::Lost => Err(lost()),
        }
    }

    async fn unpause(&self, container_id: &ContainerId) -> Result<(), RuntimeError> {
        match self.route(container_id).await? {
            Route::Local(id) => self.local.unpause(&id).await,
            Route::Remote(runtime, id) => runtime.unpause(&id).await,
            Route::Lost => Err(lost()),
        }
    }

    async fn stop(&self, container_id: &ContainerId) -> Result<(), RuntimeError> {
        match self.route(container_id).await? {
            Route::Local(id) => self.local.stop(&id).await,
            Route::Remote(runtime, id) => runtime.stop(&id).await,
            Route::Lost => Err(lost()),
        }
    }

    async fn start(
        &self,
        container_id: &ContainerId,
        profile: &AgentProfile,
    ) -> Result<Option<Endpoint>, RuntimeError> {
        match self.route(container_id).await? {
            Route::Local(id) => self.local.start(&id, profile).await,
            Route::Remote(runtime, id) => runtime.start(&id, profile).await,
            Route::Lost => Err(lost()),
        }
    }

    async fn runtimes(&self) -> Result<BTreeSet<String>, RuntimeError> {
        self.local.runtimes().await
    }

    // The warm pool is node-local: this node's pool, this node's ids.
    async fn start_pooled(
        &self,
        agent_id: &AgentId,
        profile: &AgentProfile,
    ) -> Result<PooledSandbox, RuntimeError> {
        let mut pooled = self.local.start_pooled(agent_id, profile).await?;
        pooled.container_id = Self::prefixed(self.directory.local(), &pooled.container_id)?;
        Ok(pooled)
    }

    async fn claim(
        &self,
        mut pooled: PooledSandbox,
        spec: &NewSandbox,
    ) -> Result<StartedSandbox, ClaimError> {
        let local = self.directory.local().clone();
        pooled.container_id = match self.route(&pooled.container_id).await {
            Ok(Route::Local(id)) => id,
            Ok(_) => {
                return Err(ClaimError::Lost(RuntimeError::Other(
                    "a pooled sandbox of another node".into(),
                )));
            }
            Err(error) => return Err(ClaimError::Lost(error)),
        };
        let started = self.local.claim(pooled, spec).await?;
        Ok(StartedSandbox {
            container_id: Self::prefixed(&local, &started.container_id)
                .map_err(ClaimError::Failed)?,
            endpoint: started.endpoint,
        })
    }

    async fn discard_pooled(&self, mut pooled: PooledSandbox) -> Result<(), RuntimeError> {
        if let Route::Local(id) = self.route(&pooled.container_id).await? {
            pooled.container_id = id;
            self.local.discard_pooled(pooled).await?;
        }
        Ok(())
    }

    async fn recover_pool(&self) -> Result<PoolRecovery, RuntimeError> {
        let mut recovery = self.local.recover_pool().await?;
        for pooled in &mut recovery.waiting {
            pooled.container_id = Self::prefixed(self.directory.local(), &pooled.container_id)?;
        }
        Ok(recovery)
    }

    async fn ping(&self) -> Result<(), RuntimeError> {
        self.local.ping().await
    }

    fn is_lost(&self, container_id: &ContainerId) -> bool {
        self.directory.is_lost(container_id)
    }

    fn is_local(&self, container_id: &ContainerId) -> bool {
        self.directory.node_of(container_id) == self.directory.local().as_str()
    }
}

fn lost() -> RuntimeError {
    RuntimeError::Unavailable("the sandbox's node is lost".into())
}
