//! The container runtime port: start, remove, inspect and list sandboxes on one engine.
//!
//! Engine-neutral: nothing here names Docker, and nothing here knows of nodes (the use cases
//! route to the engine of a session's node: `crate::routing`). A runtime is an adapter that
//! passes the runtime contract suite (`crates/adapters/tests/runtime_contract.rs`); see
//! `docs/design.md`, "Adding a runtime". A new operation (pause, a network policy, ...) is a new
//! method here with its own `# Errors`, implemented by every runtime; existing methods and
//! callers stay as they are. The warm pool is a capability of its own (`super::pool`), which a
//! runtime that cannot pool does not implement.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sandboxd_domain::{
    AgentId, AgentProfile, ChatId, ContainerId, Endpoint, NodeId, SandboxSession, SandboxState,
    SessionId, Timestamp, VolumePath,
};

use super::BoxError;
use crate::error::{ErrorKind, UseCaseError, generic_message};

/// Failures of the container runtime.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The volume path is malformed for this host (e.g. does not exist, not a directory).
    #[error("volume_host_path is not usable: {0}")]
    VolumeInvalid(VolumeRefusal),
    /// The volume path is refused by policy (outside the allowed roots, a forbidden path); the
    /// reason does not reveal whether the path exists.
    #[error("volume_host_path is not allowed: {0}")]
    VolumeDenied(VolumeRefusal),
    /// The profile's image is not present on the engine (nothing can be pulled).
    #[error("image {0} not found on the engine")]
    ImageNotFound(String),
    /// The container was removed by someone else while it was worked on (another holder of the
    /// chat's lease swept it while it started, or it was removed behind the service's back
    /// before a pause, stop or start). Retryable: the next create or reconcile sees it gone.
    #[error("the sandbox's container was removed meanwhile")]
    Vanished,
    /// The container started but its endpoint never became ready; it was removed (`create`) or
    /// stopped again (`start`).
    #[error("sandbox endpoint not ready within {0:?}; the container was removed or stopped")]
    NotReady(Duration),
    #[error("container engine unavailable")]
    Unavailable(#[source] BoxError),
    #[error("container engine failed")]
    Other(#[source] BoxError),
}

impl UseCaseError for RuntimeError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::VolumeInvalid(_) => ErrorKind::InvalidArgument {
                field: "volume_host_path",
            },
            Self::VolumeDenied(_) => ErrorKind::PermissionDenied {
                field: "volume_host_path",
            },
            Self::Vanished => ErrorKind::Aborted,
            // The sandbox could not come up now; a retry may succeed once the engine recovers.
            Self::NotReady(_) | Self::Unavailable(_) => ErrorKind::Unavailable,
            Self::ImageNotFound(_) | Self::Other(_) => ErrorKind::Internal,
        }
    }

    fn metric_label(&self) -> &'static str {
        match self {
            Self::VolumeInvalid(_) => "volume_invalid",
            Self::VolumeDenied(_) => "volume_denied",
            Self::ImageNotFound(_) => "image_not_found",
            Self::Vanished => "runtime_vanished",
            Self::NotReady(_) => "runtime_not_ready",
            Self::Unavailable(_) => "runtime_unavailable",
            Self::Other(_) => "runtime_error",
        }
    }

    fn client_message(&self) -> String {
        match self {
            Self::VolumeInvalid(reason) => format!("volume_host_path is not usable: {reason}"),
            Self::VolumeDenied(reason) => format!("volume_host_path is not allowed: {reason}"),
            other => generic_message(other.kind()).to_owned(),
        }
    }
}

/// Why a volume was refused: a fixed reason, never the path, so it is safe for clients. Its
/// [`code`](Self::code) is what crosses the node API, so a new variant goes into
/// [`ALL`](Self::ALL) too, or it cannot come back from another node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolumeRefusal {
    /// No allowed volume root is configured (or none resolves).
    NoAllowedRoots,
    /// The path, as written, is not strictly under an allowed root.
    OutsideAllowedRoots,
    /// The path is under a root as written, but a symlink takes it outside.
    ResolvesOutsideAllowedRoots,
    /// The path is, contains or lies under a protected host path (`/etc`, the engine's data,
    /// the warm pool's root, ...).
    ProtectedPath,
    DoesNotExist,
    /// The path could not be canonicalised (permissions, a loop, ...).
    CannotBeResolved,
    NotADirectory,
    /// The resolved directory's metadata could not be read.
    CannotBeRead,
    /// The resolved path is not UTF-8, so the engine cannot be given it.
    NonUtf8Path,
    /// A refusal by policy under a code this node does not know (a newer serving node): still
    /// a denial, so the client's status stays right.
    DeniedByServingNode,
    /// An unusable path under a code this node does not know (a newer serving node).
    UnusableOnServingNode,
}

impl VolumeRefusal {
    /// Every reason, for [`Self::from_code`].
    pub const ALL: [Self; 11] = [
        Self::NoAllowedRoots,
        Self::OutsideAllowedRoots,
        Self::ResolvesOutsideAllowedRoots,
        Self::ProtectedPath,
        Self::DoesNotExist,
        Self::CannotBeResolved,
        Self::NotADirectory,
        Self::CannotBeRead,
        Self::NonUtf8Path,
        Self::DeniedByServingNode,
        Self::UnusableOnServingNode,
    ];

    /// The phrase a client reads after `volume_host_path is not usable: ` or `is not allowed: `.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::NoAllowedRoots => "no allowed volume roots are configured",
            Self::OutsideAllowedRoots => "is not under an allowed volume root",
            Self::ResolvesOutsideAllowedRoots => "resolves outside the allowed volume roots",
            Self::ProtectedPath => "is or contains a protected host path",
            Self::DoesNotExist => "does not exist",
            Self::CannotBeResolved => "cannot be resolved",
            Self::NotADirectory => "is not a directory",
            Self::CannotBeRead => "cannot be read",
            Self::NonUtf8Path => "resolves to a non-UTF-8 path",
            Self::DeniedByServingNode => "is refused by the serving node's volume policy",
            Self::UnusableOnServingNode => "is not usable on the serving node",
        }
    }

    /// A stable name of the reason, for the wire: the phrase may be reworded, the code not.
    #[must_use]
    pub const fn code(self) -> &'static str {
        match self {
            Self::NoAllowedRoots => "no_allowed_roots",
            Self::OutsideAllowedRoots => "outside_allowed_roots",
            Self::ResolvesOutsideAllowedRoots => "resolves_outside_allowed_roots",
            Self::ProtectedPath => "protected_path",
            Self::DoesNotExist => "does_not_exist",
            Self::CannotBeResolved => "cannot_be_resolved",
            Self::NotADirectory => "not_a_directory",
            Self::CannotBeRead => "cannot_be_read",
            Self::NonUtf8Path => "non_utf8_path",
            Self::DeniedByServingNode => "denied_by_serving_node",
            Self::UnusableOnServingNode => "unusable_on_serving_node",
        }
    }

    /// The reason of `code`; `None` for a code this version does not know.
    #[must_use]
    pub fn from_code(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|reason| reason.code() == code)
    }
}

impl std::fmt::Display for VolumeRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the runtime needs to start a sandbox: the identity and lifetime of the session it will
/// serve, and the profile of its agent. Runtimes label the container with the identity and
/// lifetime, so a reconcile can rebuild the session from the engine alone
/// ([`ManagedContainer::session`]).
#[derive(Debug, Clone, PartialEq)]
pub struct NewSandbox {
    pub session_id: SessionId,
    pub chat_id: ChatId,
    pub agent_id: AgentId,
    /// The engine-neutral profile of `agent_id`, which the runtime translates.
    pub profile: Arc<AgentProfile>,
    pub volume_host_path: VolumePath,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    /// The node it is placed on (set by the placement; `None` in single-node mode), which the
    /// runtime writes into the labels so an adopted sandbox keeps its node.
    pub node_id: Option<NodeId>,
}

impl NewSandbox {
    /// The session of this sandbox once `started`: the use case, not the runtime, builds it.
    #[must_use]
    pub fn into_session(self, started: StartedSandbox) -> SandboxSession {
        SandboxSession {
            state: SandboxState::Running,
            last_active_at: self.created_at,
            max_expires_at: self.profile.max_expires_at(self.created_at),
            idle_timeout: self.profile.idle_timeout,
            session_id: self.session_id,
            chat_id: self.chat_id,
            agent_id: self.agent_id,
            volume_host_path: self.volume_host_path,
            node_id: self.node_id,
            container_id: started.container_id,
            endpoint: started.endpoint,
            created_at: self.created_at,
            expires_at: self.expires_at,
        }
    }
}

/// What `create` reports: the engine's handle and where the sandbox serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartedSandbox {
    pub container_id: ContainerId,
    /// `None` when the profile publishes no port.
    pub endpoint: Option<Endpoint>,
}

/// A container's state as the engine reports it, in the terms a reconcile judges by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ContainerState {
    /// Started and not frozen.
    Running,
    /// Frozen by the engine (memory kept, no CPU): alive, not dead.
    Paused,
    /// Exited, created but never started, or restarting: its process does not run.
    Stopped,
    /// The engine does not know it, or is removing it.
    Gone,
}

impl ContainerState {
    /// Whether the container still holds its sandbox (running or frozen). A stopped or gone
    /// container serves no session: reconcile deletes a session whose container is in neither
    /// state.
    #[must_use]
    pub const fn is_alive(self) -> bool {
        matches!(self, Self::Running | Self::Paused)
    }

    /// Lower-case name for logs.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Stopped => "stopped",
            Self::Gone => "gone",
        }
    }
}

/// A sandbox's labels, decoded: each field `None` when its label is missing or malformed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SandboxLabels {
    pub session_id: Option<SessionId>,
    pub chat_id: Option<ChatId>,
    pub agent_id: Option<AgentId>,
    pub volume_host_path: Option<VolumePath>,
    pub created_at: Option<Timestamp>,
    pub expires_at: Option<Timestamp>,
    /// The node it was placed on; `None` in single-node mode (no label written).
    pub node_id: Option<NodeId>,
}

impl SandboxLabels {
    /// The labels a runtime puts on the sandbox of `spec`.
    #[must_use]
    pub fn of(spec: &NewSandbox) -> Self {
        Self {
            session_id: Some(spec.session_id),
            chat_id: Some(spec.chat_id),
            agent_id: Some(spec.agent_id.clone()),
            volume_host_path: Some(spec.volume_host_path.clone()),
            created_at: Some(spec.created_at),
            expires_at: Some(spec.expires_at),
            node_id: spec.node_id.clone(),
        }
    }
}

/// A container the runtime found carrying this deployment's labels (for reconciliation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedContainer {
    /// The node whose engine runs it: set by the routing for the node it asked (fleet mode),
    /// else what its label says.
    pub node_id: Option<NodeId>,
    pub container_id: ContainerId,
    pub state: ContainerState,
    pub labels: SandboxLabels,
    /// Where it serves, as the engine publishes it; `None` when it publishes nothing (or is not
    /// running, so nothing is bound).
    pub endpoint: Option<Endpoint>,
}

impl ManagedContainer {
    /// The session this container was started for, rebuilt from its labels and the engine's
    /// endpoint; `None` when a label it needs is missing or malformed.
    #[must_use]
    pub fn session(&self) -> Option<SandboxSession> {
        let labels = &self.labels;
        let state = match self.state {
            ContainerState::Paused => SandboxState::Paused,
            ContainerState::Stopped => SandboxState::Hibernated,
            ContainerState::Running | ContainerState::Gone => SandboxState::Running,
        };
        Some(SandboxSession {
            state,
            last_active_at: labels.created_at?,
            // The labels carry no lifecycle policy: an adopted session has a fixed expiry.
            max_expires_at: None,
            idle_timeout: None,
            session_id: labels.session_id?,
            chat_id: labels.chat_id?,
            agent_id: labels.agent_id.clone()?,
            volume_host_path: labels.volume_host_path.clone()?,
            node_id: self.node_id.clone(),
            container_id: self.container_id.clone(),
            endpoint: self.endpoint,
            created_at: labels.created_at?,
            expires_at: labels.expires_at?,
        })
    }
}

/// The container engine.
#[async_trait]
pub trait SandboxRuntime: Send + Sync {
    /// Checks, without side effects, that a sandbox of this profile with this volume could be
    /// created: the volume passes the mount policy.
    ///
    /// # Errors
    /// `VolumeInvalid`, `VolumeDenied`.
    async fn validate(
        &self,
        profile: &AgentProfile,
        volume: &VolumePath,
    ) -> Result<(), RuntimeError>;

    /// Starts the sandbox, labelled with everything in `spec` ([`SandboxLabels::of`]), and
    /// returns once its endpoint is ready. On any failure nothing is left running. A profile
    /// whose `runtime` the engine does not have ([`Self::runtimes`]) is refused, never run under
    /// the engine's default: its isolation is what the operator asked for or nothing.
    ///
    /// # Errors
    /// Those of [`Self::validate`], `ImageNotFound`, `NotReady`, `Vanished` (removed by another
    /// holder while starting), `Unavailable`, `Other` (also for an unknown runtime).
    async fn create(&self, spec: &NewSandbox) -> Result<StartedSandbox, RuntimeError>;

    /// Stops the sandbox gracefully (its process gets the configured grace, then is killed) and
    /// removes it. A container already gone is success.
    ///
    /// # Errors
    /// `Unavailable`/`Other`.
    async fn remove_gracefully(&self, container_id: &ContainerId) -> Result<(), RuntimeError>;

    /// Removes the sandbox at once, killing its process. A container already gone is success.
    ///
    /// # Errors
    /// `Unavailable`/`Other`.
    async fn force_remove(&self, container_id: &ContainerId) -> Result<(), RuntimeError>;

    /// The container's state now; [`ContainerState::Gone`] when the engine does not know it.
    /// The reconciler asks under the chat's lease, so a container removed since it was listed is
    /// not reported as removed.
    ///
    /// # Errors
    /// `Unavailable`/`Other`.
    async fn inspect(&self, container_id: &ContainerId) -> Result<ContainerState, RuntimeError>;

    /// Every container labelled for this deployment, in any state.
    ///
    /// # Errors
    /// `Unavailable`/`Other`.
    async fn list_managed(&self) -> Result<Vec<ManagedContainer>, RuntimeError>;

    /// The containers labelled for this deployment and `chat_id`, in any state: what a create or
    /// delete sweeps under the chat's lease so that nothing but the session's container runs.
    ///
    /// # Errors
    /// `Unavailable`/`Other`.
    async fn list_chat(&self, chat_id: &ChatId) -> Result<Vec<ManagedContainer>, RuntimeError>;

    /// Freezes the sandbox (the engine's pause: memory kept, no CPU). Pausing a paused
    /// container is success.
    ///
    /// # Errors
    /// `Vanished` when the container is gone or not running (a stopped one cannot be frozen);
    /// `Unavailable`/`Other`.
    async fn pause(&self, container_id: &ContainerId) -> Result<(), RuntimeError>;

    /// Thaws a paused sandbox. Unpausing a running container is success.
    ///
    /// # Errors
    /// `Vanished` when the container is gone or stopped; `Unavailable`/`Other`.
    async fn unpause(&self, container_id: &ContainerId) -> Result<(), RuntimeError>;

    /// Stops the sandbox gracefully and keeps the container (its own filesystem survives; memory
    /// is freed). A paused container is thawed first; stopping a stopped one is success.
    ///
    /// # Errors
    /// `Vanished` when the container is gone; `Unavailable`/`Other`.
    async fn stop(&self, container_id: &ContainerId) -> Result<(), RuntimeError>;

    /// Starts a stopped sandbox again and returns once its endpoint is ready, with the endpoint
    /// the engine published this time (it may differ from the last one). Starting a running
    /// container returns its endpoint. A sandbox that does not become ready is stopped again.
    ///
    /// # Errors
    /// `Vanished` when the container is gone or paused (thawing is [`Self::unpause`]'s);
    /// `NotReady`; `Unavailable`/`Other`.
    async fn start(
        &self,
        container_id: &ContainerId,
        profile: &AgentProfile,
    ) -> Result<Option<Endpoint>, RuntimeError>;

    /// The names of the OCI runtimes the engine can start sandboxes under, the engine's default
    /// among them: the values a profile's `runtime` may take. The server checks every profile
    /// against them before it serves, so a profile the engine cannot honour stops the start
    /// instead of failing each of its creates.
    ///
    /// # Errors
    /// `Unavailable` when the engine does not answer; `Other`.
    async fn runtimes(&self) -> Result<BTreeSet<String>, RuntimeError>;

    /// Cheap liveness check for health reporting.
    ///
    /// # Errors
    /// `Unavailable` when the engine does not answer.
    async fn ping(&self) -> Result<(), RuntimeError>;
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn every_volume_refusal_comes_back_from_its_code() {
        for reason in VolumeRefusal::ALL {
            assert_eq!(VolumeRefusal::from_code(reason.code()), Some(reason));
            assert!(
                reason
                    .code()
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "{reason:?}"
            );
        }
        let codes: HashSet<_> = VolumeRefusal::ALL.iter().map(|r| r.code()).collect();
        assert_eq!(codes.len(), VolumeRefusal::ALL.len(), "codes are unique");
        assert_eq!(VolumeRefusal::from_code("a_reason_of_a_newer_node"), None);
        assert_eq!(VolumeRefusal::from_code("is not a directory"), None);
    }

    #[test]
    fn a_volume_refusal_tells_the_client_its_fixed_phrase() {
        let denied = RuntimeError::VolumeDenied(VolumeRefusal::OutsideAllowedRoots);
        assert_eq!(
            denied.client_message(),
            "volume_host_path is not allowed: is not under an allowed volume root"
        );
        assert_eq!(denied.to_string(), denied.client_message());
        let invalid = RuntimeError::VolumeInvalid(VolumeRefusal::NotADirectory);
        assert_eq!(
            invalid.client_message(),
            "volume_host_path is not usable: is not a directory"
        );
    }
}
