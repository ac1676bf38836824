//! The per-chat lease port: mutual exclusion whose proof (the lease) fences every write.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use sandboxd_domain::ChatId;

use super::BoxError;
use crate::error::{ErrorKind, UseCaseError, generic_message};

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

impl UseCaseError for LockError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::Busy { .. } => ErrorKind::Aborted,
            Self::Unavailable(_) => ErrorKind::Unavailable,
            Self::Other(_) => ErrorKind::Internal,
        }
    }

    fn metric_label(&self) -> &'static str {
        match self {
            Self::Busy { .. } => "lock_busy",
            Self::Unavailable(_) => "lock_unavailable",
            Self::Other(_) => "lock_error",
        }
    }

    fn client_message(&self) -> String {
        generic_message(self.kind()).to_owned()
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
