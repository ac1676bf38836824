//! The warm pool's port: sandboxes started ahead of any chat and claimed by one (issue 18).
//!
//! A capability apart from the engine's lifecycle ([`SandboxRuntime`]): a runtime that can pool
//! implements both, one that cannot implements only the engine's, and `Ports::pool` is `None`.
//! Pooled sandboxes are this node's own: nothing here is routed to another node.

use async_trait::async_trait;
use sandboxd_domain::{AgentId, AgentProfile, ContainerId, Endpoint};

#[cfg(doc)]
use super::SandboxRuntime;
use super::{NewSandbox, RuntimeError, StartedSandbox};

/// A sandbox started ahead of any chat, waiting for its claim (the warm pool, issue 18): hardened
/// like a cold one, with an empty slot where the chat's volume will be and nothing of a chat yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PooledSandbox {
    pub container_id: ContainerId,
    pub agent_id: AgentId,
    /// The runtime's name for its slot (and whatever else it keeps per pooled sandbox): one
    /// plain path component, unique per host.
    pub slot: String,
    /// Where it will serve once claimed (published at start, so a claim needs no lookup).
    pub endpoint: Option<Endpoint>,
}

/// Why a claim did not give a sandbox. Either way the pooled sandbox is gone (claimed once or
/// discarded) and the chat's volume is untouched.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    /// The pooled sandbox was unusable (its waiter gone, its container vanished, the engine
    /// failed on it before the claim was sent): the caller falls back to a cold create.
    #[error("the pooled sandbox was lost")]
    Lost(#[source] RuntimeError),
    /// The request fails as a cold create would (volume refused, the command not ready in time):
    /// no fallback.
    #[error(transparent)]
    Failed(RuntimeError),
}

/// What [`PoolRuntime::recover_pool`] found and did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PoolRecovery {
    /// Pooled sandboxes still waiting for a claim, to be taken back into the pool.
    pub waiting: Vec<PooledSandbox>,
    /// Pooled sandboxes, slots or claims left half-way (a crash, a container removed behind the
    /// service's back) that were removed.
    pub released: u64,
    /// Slots that could not be settled now (a mount still busy): retried by the next pass.
    pub unsettled: u64,
}

/// The warm pool of this node's engine.
#[async_trait]
pub trait PoolRuntime: Send + Sync {
    /// Starts a sandbox of `profile` for `agent_id` that waits for a claim (a [`PooledSandbox`]),
    /// and returns once it waits. On any failure nothing is left.
    ///
    /// # Errors
    /// `ImageNotFound`, `NotReady` (it never started waiting), `Unavailable`, `Other` (also for
    /// a runtime or profile that cannot be pooled).
    async fn start_pooled(
        &self,
        agent_id: &AgentId,
        profile: &AgentProfile,
    ) -> Result<PooledSandbox, RuntimeError>;

    /// Gives `pooled` (of `spec`'s agent) to the chat of `spec`: its volume at the mount target,
    /// its identity in the command's environment, its labels for reconcile and
    /// [`SandboxRuntime::list_chat`]; returns once the endpoint is ready, as [`SandboxRuntime::create`] does. From
    /// then on it is the chat's sandbox, removed like any other (which releases its slot).
    ///
    /// # Errors
    /// `Lost` or `Failed` (see [`ClaimError`]); nothing of `pooled` is left either way.
    async fn claim(
        &self,
        pooled: PooledSandbox,
        spec: &NewSandbox,
    ) -> Result<StartedSandbox, ClaimError>;

    /// Removes a waiting pooled sandbox at once, with whatever it holds. Gone is success.
    ///
    /// # Errors
    /// `Unavailable`/`Other`.
    async fn discard_pooled(&self, pooled: PooledSandbox) -> Result<(), RuntimeError>;

    /// Settles this process's pool after a crash or a removal behind its back: keeps pooled
    /// sandboxes still waiting (returned), keeps claimed ones (they are chats' sandboxes, for
    /// reconcile), and removes what a claim or a release left half-way. Pooled sandboxes being
    /// started or claimed by this process are left alone.
    ///
    /// # Errors
    /// `Unavailable`/`Other`; a slot that cannot be settled now is counted, not an error.
    async fn recover_pool(&self) -> Result<PoolRecovery, RuntimeError>;
}
