//! The session store port: a chat's current session, fenced writes, the expiry index, listing.

use async_trait::async_trait;
use sandboxd_domain::{AgentId, ChatId, SandboxSession, SessionId, Timestamp};

use super::{ActiveCount, BoxError, Lease};
use crate::error::{ErrorKind, UseCaseError, generic_message};

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

impl UseCaseError for RepositoryError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::LeaseLost => ErrorKind::Aborted,
            Self::InvalidPageToken => ErrorKind::InvalidArgument {
                field: "page_token",
            },
            Self::Unavailable(_) => ErrorKind::Unavailable,
            Self::Other(_) => ErrorKind::Internal,
        }
    }

    fn metric_label(&self) -> &'static str {
        match self {
            Self::LeaseLost => "lease_lost",
            Self::InvalidPageToken => "invalid_page_token",
            Self::Unavailable(_) => "repository_unavailable",
            Self::Other(_) => "repository_error",
        }
    }

    fn client_message(&self) -> String {
        match self {
            Self::InvalidPageToken => "invalid page token".to_owned(),
            other => generic_message(other.kind()).to_owned(),
        }
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
