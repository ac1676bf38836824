//! The ports the use cases drive: session store, per-chat lease locker, container runtime, clock.
//!
//! Adapters implement these traits; the use cases only ever see `Arc<dyn Trait>`.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use sandboxd_domain::{
    AgentId, ChatId, ContainerId, SandboxSession, SessionId, Timestamp, VolumePath,
};

/// A boxed cause, kept for logs and never sent to clients.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Number of sessions in the store right after a write: what the `sandbox_active_count` gauge shows.
/// Writes return it so the gauge costs no extra round trip.
pub type ActiveCount = u64;

/// Failures of the session store.
#[derive(Debug, thiserror::Error)]
pub enum RepositoryError {
    /// A fenced write found that its lease is no longer held: nothing was written.
    #[error("the lease is no longer held; the write was not applied")]
    LeaseLost,
    /// A `list` page token that this store did not issue (forged, truncated, or of another filter).
    #[error("invalid page token")]
    InvalidPageToken,
    /// The store did not answer in time or refused the connection; retrying later may work.
    #[error("session store unavailable")]
    Unavailable(#[source] BoxError),
    /// Anything else, including stored data that no longer parses.
    #[error("session store failed")]
    Other(#[source] BoxError),
}

impl RepositoryError {
    /// Low-cardinality label for metrics and logs.
    #[must_use]
    pub const fn metric_label(&self) -> &'static str {
        match self {
            Self::LeaseLost => "lease_lost",
            Self::InvalidPageToken => "invalid_page_token",
            Self::Unavailable(_) => "repository_unavailable",
            Self::Other(_) => "repository_error",
        }
    }
}

/// Failures of the per-chat locker.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another holder kept the chat's lock for the whole configured wait.
    #[error("the chat's lock was busy for {waited:?}")]
    Busy { waited: Duration },
    #[error("lock store unavailable")]
    Unavailable(#[source] BoxError),
    #[error("lock store failed")]
    Other(#[source] BoxError),
}

impl LockError {
    #[must_use]
    pub const fn metric_label(&self) -> &'static str {
        match self {
            Self::Busy { .. } => "lock_busy",
            Self::Unavailable(_) => "lock_unavailable",
            Self::Other(_) => "lock_error",
        }
    }
}

/// Failures of the container runtime.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// No profile is configured for this agent id; nothing was created.
    #[error("unknown agent profile {0}")]
    UnknownAgent(AgentId),
    /// The volume path is malformed for this host (e.g. does not exist, not a directory).
    #[error("volume_host_path is not usable: {0}")]
    VolumeInvalid(String),
    /// The volume path is refused by policy (outside the allowed roots, a forbidden path).
    #[error("volume_host_path is not allowed: {0}")]
    VolumeDenied(String),
    /// The profile's image is not present on the engine (nothing can be pulled).
    #[error("image {0} not found on the engine")]
    ImageNotFound(String),
    /// The container started but its endpoint never became ready; it was removed.
    #[error("sandbox endpoint not ready within {0:?}; the container was removed")]
    NotReady(Duration),
    #[error("container engine unavailable")]
    Unavailable(#[source] BoxError),
    #[error("container engine failed")]
    Other(#[source] BoxError),
}

impl RuntimeError {
    #[must_use]
    pub const fn metric_label(&self) -> &'static str {
        match self {
            Self::UnknownAgent(_) => "unknown_agent",
            Self::VolumeInvalid(_) => "volume_invalid",
            Self::VolumeDenied(_) => "volume_denied",
            Self::ImageNotFound(_) => "image_not_found",
            Self::NotReady(_) => "runtime_not_ready",
            Self::Unavailable(_) => "runtime_unavailable",
            Self::Other(_) => "runtime_error",
        }
    }
}

/// Shared flag an adapter raises when it learns the lease is gone (renewal failed, token replaced).
#[derive(Debug, Clone, Default)]
pub struct LeaseLossFlag(Arc<AtomicBool>);

impl LeaseLossFlag {
    pub fn mark_lost(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    #[must_use]
    pub fn is_lost(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Proof of holding one chat's lock, passed into every fenced write.
///
/// Rust has no async drop, so a lease is given back with [`LifecycleLocker::release`]; dropping
/// it without release only stops its renewal (the keepalive) and lets it expire.
pub struct Lease {
    chat_id: ChatId,
    token: String,
    lost: LeaseLossFlag,
    /// Whatever keeps the lease renewed (an adapter's background task handle); dropped with it.
    _keepalive: Option<Box<dyn Send + Sync>>,
}

impl Lease {
    #[must_use]
    pub fn new(chat_id: ChatId, token: String) -> Self {
        Self {
            chat_id,
            token,
            lost: LeaseLossFlag::default(),
            _keepalive: None,
        }
    }

    /// Attaches the renewal guard; it is dropped (and so stopped) with the lease.
    #[must_use]
    pub fn with_keepalive(mut self, keepalive: impl Send + Sync + 'static) -> Self {
        self._keepalive = Some(Box::new(keepalive));
        self
    }

    #[must_use]
    pub fn chat_id(&self) -> &ChatId {
        &self.chat_id
    }

    /// The random token the store holds for this lease; fenced writes compare it.
    #[must_use]
    pub fn token(&self) -> &str {
        &self.token
    }

    /// A handle the renewal task uses to report loss.
    #[must_use]
    pub fn loss_flag(&self) -> LeaseLossFlag {
        self.lost.clone()
    }

    /// True once the adapter knows the lease is gone; writes under it must not commit.
    #[must_use]
    pub fn is_lost(&self) -> bool {
        self.lost.is_lost()
    }
}

impl fmt::Debug for Lease {
    // The token is a capability: keep it out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("chat_id", &self.chat_id)
            .field("lost", &self.is_lost())
            .finish_non_exhaustive()
    }
}

/// Which sessions a `list` call returns and from where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    pub agent_id: Option<AgentId>,
    /// 1..=1000; the service layer applies the default.
    pub page_size: usize,
    /// Opaque token from the previous page; `None` starts from the beginning.
    pub page_token: Option<String>,
}

/// One page of `list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionPage {
    pub sessions: Vec<SandboxSession>,
    /// `None` on the last page.
    pub next_page_token: Option<String>,
}

/// The session store.
#[async_trait]
pub trait SessionRepository: Send + Sync {
    /// The chat's current session, expired or not.
    ///
    /// # Errors
    /// `Unavailable` when the store cannot be reached, `Other` when stored data is corrupt.
    async fn get_current_by_chat_id(
        &self,
        chat_id: &ChatId,
    ) -> Result<Option<SandboxSession>, RepositoryError>;

    /// A session by its id, whether or not it is its chat's current one.
    ///
    /// # Errors
    /// As [`Self::get_current_by_chat_id`].
    async fn get_by_session_id(
        &self,
        session_id: &SessionId,
    ) -> Result<Option<SandboxSession>, RepositoryError>;

    /// Stores `session` as its chat's current session (hash, chat index and expiry index in one
    /// atomic, fenced write) and returns the active count after it.
    ///
    /// # Errors
    /// `LeaseLost` when `lease` is lost or no longer the chat's lock holder (nothing written);
    /// `Unavailable`/`Other` as above.
    async fn save(
        &self,
        lease: &Lease,
        session: &SandboxSession,
    ) -> Result<ActiveCount, RepositoryError>;

    /// Removes `session` (hash and expiry entry; the chat index only while it still names this
    /// session) in one atomic, fenced write; removing what is already gone is success.
    ///
    /// # Errors
    /// As [`Self::save`].
    async fn delete(
        &self,
        lease: &Lease,
        session: &SandboxSession,
    ) -> Result<ActiveCount, RepositoryError>;

    /// Sets a live session's `expires_at` (hash, expiry index, key TTLs), fenced. Returns the
    /// updated session, or `None` when the session no longer exists.
    ///
    /// # Errors
    /// As [`Self::save`].
    async fn extend(
        &self,
        lease: &Lease,
        session_id: &SessionId,
        expires_at: Timestamp,
    ) -> Result<Option<SandboxSession>, RepositoryError>;

    /// Up to `limit` sessions with `expires_at <= now`, earliest first, read from the expiry index.
    /// Index entries whose session no longer exists are removed on the way and not returned.
    ///
    /// # Errors
    /// `Unavailable`/`Other`.
    async fn list_expired(
        &self,
        now: Timestamp,
        limit: usize,
    ) -> Result<Vec<SandboxSession>, RepositoryError>;

    /// Number of stored sessions, in O(1).
    ///
    /// # Errors
    /// `Unavailable`/`Other`.
    async fn count_active(&self) -> Result<ActiveCount, RepositoryError>;

    /// One page of sessions in a stable order, optionally of one agent. Across pages every
    /// session that exists for the whole listing is returned exactly once, even while others are
    /// added or removed.
    ///
    /// # Errors
    /// `InvalidPageToken` for a token this store did not issue for this query;
    /// `Unavailable`/`Other`.
    async fn list(&self, query: &ListQuery) -> Result<SessionPage, RepositoryError>;

    /// Cheap liveness check for health reporting.
    ///
    /// # Errors
    /// `Unavailable` when the store does not answer.
    async fn ping(&self) -> Result<(), RepositoryError>;
}

/// Per-chat mutual exclusion with lease semantics.
#[async_trait]
pub trait LifecycleLocker: Send + Sync {
    /// Waits (bounded by the configured wait) for the chat's lock and returns its lease, which is
    /// renewed in the background until released.
    ///
    /// # Errors
    /// `Busy` when another holder kept it for the whole wait; `Unavailable`/`Other`.
    async fn lock(&self, chat_id: &ChatId) -> Result<Lease, LockError>;

    /// Gives the lock back if `lease` still holds it (compare-and-delete); a lease that was already
    /// lost or expired releases nothing and is not an error.
    ///
    /// # Errors
    /// `Unavailable`/`Other` when the store could not be asked; the lease then expires by itself.
    async fn release(&self, lease: Lease) -> Result<(), LockError>;
}

/// What the runtime needs to start a sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSandbox {
    pub session_id: SessionId,
    pub chat_id: ChatId,
    pub agent_id: AgentId,
    pub volume_host_path: VolumePath,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
}

/// A container the runtime found carrying this deployment's labels (for reconciliation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedContainer {
    pub container_id: ContainerId,
    /// Parsed from the labels; `None` when a label is missing or malformed.
    pub session_id: Option<SessionId>,
    pub chat_id: Option<ChatId>,
    pub created_at: Option<Timestamp>,
    pub running: bool,
}

/// The container engine.
#[async_trait]
pub trait SandboxRuntime: Send + Sync {
    /// Checks, without side effects, that a sandbox for this agent and volume could be created:
    /// the profile exists and the volume passes the mount policy.
    ///
    /// # Errors
    /// `UnknownAgent`, `VolumeInvalid`, `VolumeDenied`.
    async fn validate(&self, agent_id: &AgentId, volume: &VolumePath) -> Result<(), RuntimeError>;

    /// Starts the sandbox and returns once its endpoint is ready, as a session carrying the
    /// container id and endpoint. On any failure nothing is left running.
    ///
    /// # Errors
    /// Those of [`Self::validate`], `ImageNotFound`, `NotReady`, `Unavailable`, `Other`.
    async fn create(&self, spec: &NewSandbox) -> Result<SandboxSession, RuntimeError>;

    /// Graceful stop (configured grace, then kill) and removal; a container already gone is success.
    ///
    /// # Errors
    /// `Unavailable`/`Other`.
    async fn stop(&self, container_id: &ContainerId) -> Result<(), RuntimeError>;

    /// Forced removal; a container already gone is success.
    ///
    /// # Errors
    /// `Unavailable`/`Other`.
    async fn delete(&self, container_id: &ContainerId) -> Result<(), RuntimeError>;

    /// Whether the engine still has this container (in any state). The reconciler asks under
    /// the chat's lease, so a container removed since it was listed is not reported as removed.
    ///
    /// # Errors
    /// `Unavailable`/`Other`.
    async fn exists(&self, container_id: &ContainerId) -> Result<bool, RuntimeError>;

    /// Every container labelled for this deployment, running or not.
    ///
    /// # Errors
    /// `Unavailable`/`Other`.
    async fn list_managed(&self) -> Result<Vec<ManagedContainer>, RuntimeError>;

    /// Cheap liveness check for health reporting.
    ///
    /// # Errors
    /// `Unavailable` when the engine does not answer.
    async fn ping(&self) -> Result<(), RuntimeError>;
}

/// Time as the use cases see it; a port so tests can decide expiry.
pub trait Clock: Send + Sync {
    fn now(&self) -> Timestamp;
}
