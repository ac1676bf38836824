//! The engines as the use cases call them: the engine of a sandbox's node, where a new sandbox
//! runs (placement by load: the best of two sampled nodes by free capacity), a chat's containers
//! on every node, and this node's own containers, each marked with the node that reported it.

mod telemetry;

use std::sync::Arc;

use rand::seq::IndexedRandom;
use sandboxd_domain::{ChatId, NodeId, NodeInfo};

use crate::ports::{ManagedContainer, NewSandbox, RuntimeError, SandboxRuntime, StartedSandbox};
use crate::routing::Engines;

/// Nodes sampled per placement: the best of two by free capacity (the power of two choices).
const PLACEMENT_SAMPLE: usize = 2;

impl Engines {
    /// The engine that runs a sandbox of `node`.
    ///
    /// # Errors
    /// `Unavailable` for a lost node or one that cannot be reached.
    pub async fn of(&self, node: Option<&NodeId>) -> Result<Arc<dyn SandboxRuntime>, RuntimeError> {
        Ok(self.to(node).await?)
    }

    /// The engine that runs a sandbox of `node`, or `None` on a lost node: a removal there is
    /// left to that node's reconcile, which removes what it holds when it returns, seeing its
    /// chat moved on.
    ///
    /// # Errors
    /// `Unavailable` for a node that cannot be reached.
    pub async fn removing(
        &self,
        node: Option<&NodeId>,
    ) -> Result<Option<Arc<dyn SandboxRuntime>>, RuntimeError> {
        Ok(self.unless_lost(node).await?)
    }

    /// Starts the sandbox of `spec` on a node that takes it, and records that node in
    /// `spec.node_id`: this node's engine in single-node mode; in fleet mode the best of two
    /// sampled candidates, the next one when a node (or the hop to it) is unavailable.
    ///
    /// # Errors
    /// The engine's; `Unavailable` when no node accepts new sandboxes.
    pub async fn place(&self, spec: &mut NewSandbox) -> Result<StartedSandbox, RuntimeError> {
        if self.local_node_id().is_none() {
            spec.node_id = None;
            return self.local().create(spec).await;
        }
        let mut candidates = self.directory().candidates();
        let mut last_failure = None;
        while let Some(node) = pick(&candidates) {
            spec.node_id = Some(node.node_id.clone());
            let outcome = match self.to_node(&node.node_id).await {
                Ok(engine) => engine.create(spec).await,
                Err(error) => Err(error.into()),
            };
            match outcome {
                Ok(started) => {
                    telemetry::count_placement(node.node_id.as_str(), "ok");
                    self.directory().note_placed(node.node_id.as_str());
                    return Ok(started);
                }
                // The node (or the hop to it) failed: another one may not.
                Err(RuntimeError::Unavailable(cause)) => {
                    telemetry::count_placement(node.node_id.as_str(), "failed");
                    telemetry::log_placement_failed(&node.node_id, cause.as_ref());
                    candidates.retain(|other| other.node_id != node.node_id);
                    last_failure = Some(RuntimeError::Unavailable(cause));
                }
                // The request's own failure (its volume, its image, its readiness): an answer.
                Err(error) => return Err(error),
            }
        }
        telemetry::count_placement("", "none");
        Err(last_failure
            .unwrap_or_else(|| RuntimeError::Unavailable("no node accepts new sandboxes".into())))
    }

    /// The chat's containers on this node and every healthy one (lost ones cannot answer; their
    /// reconcile removes what they hold when they return), so a create under the chat's lease
    /// sees them all and leaves exactly one.
    ///
    /// # Errors
    /// The first engine's failure, or a node that cannot be reached.
    pub async fn list_chat(&self, chat_id: &ChatId) -> Result<Vec<ManagedContainer>, RuntimeError> {
        let Some(local) = self.local_node_id() else {
            return self.local().list_chat(chat_id).await;
        };
        let nodes: Vec<NodeId> = self
            .directory()
            .nodes()
            .into_iter()
            .filter(|node| node.healthy && node.node_id != local)
            .map(|node| node.node_id)
            .collect();
        let nodes: Vec<NodeId> = nodes.into_iter().chain(std::iter::once(local)).collect();
        let lists = futures::future::join_all(nodes.iter().map(|node| async move {
            let engine = self.to_node(node).await?;
            let containers = engine.list_chat(chat_id).await?;
            Ok::<_, RuntimeError>(on_node(node, containers))
        }))
        .await;
        let mut all = Vec::new();
        for list in lists {
            all.extend(list?);
        }
        Ok(all)
    }

    /// Every container of this deployment on this node's engine (each node reconciles its own).
    ///
    /// # Errors
    /// The engine's.
    pub async fn list_local(&self) -> Result<Vec<ManagedContainer>, RuntimeError> {
        let containers = self.local().list_managed().await?;
        Ok(match self.local_node_id() {
            Some(local) => on_node(&local, containers),
            None => containers,
        })
    }
}

/// `containers` as reported by `node`'s engine: that node runs them, whatever a label says.
fn on_node(node: &NodeId, mut containers: Vec<ManagedContainer>) -> Vec<ManagedContainer> {
    for container in &mut containers {
        container.node_id = Some(node.clone());
    }
    containers
}

/// The best of [`PLACEMENT_SAMPLE`] random candidates by free capacity.
fn pick(candidates: &[NodeInfo]) -> Option<NodeInfo> {
    let mut rng = rand::rng();
    candidates
        .choose_multiple(&mut rng, PLACEMENT_SAMPLE)
        .max_by_key(|node| node.free())
        .cloned()
}
