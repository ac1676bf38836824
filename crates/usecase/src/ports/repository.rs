//! The session store port: a chat's current session, fenced writes, the expiry index, listing.

use async_trait::async_trait;
use sandboxd_domain::{
    AgentId, ChatId, EventNote, SandboxSession, SandboxState, SessionId, Timestamp, VolumePath,
};

use super::{ActiveCount, BoxError, Lease};
use crate::error::{ErrorKind, UseCaseError, generic_message};

/// Failures of the session store.
#[derive(Debug, thiserror::Error)]
pub enum RepositoryError {
    /// A fenced write found that its lease is no longer held: nothing was written.
    #[error("the lease is no longer held; the write was not applied")]
    LeaseLost,
    /// A fenced transition found the session changed since it was decided on (a touch moved its
    /// expiry, or it is gone): nothing was written.
    #[error("the session changed meanwhile; the write was not applied")]
    Changed,
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
            Self::LeaseLost | Self::Changed => ErrorKind::Aborted,
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
            Self::Changed => "session_changed",
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
    /// Only sessions in this state; `None` for all.
    pub state: Option<SandboxState>,
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

/// What a fenced write appends to the event log and, for a transition decided on the session's
/// expiry, the expiry it was decided on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    pub note: EventNote,
    /// Applied only while the stored session still expires at this instant: a touch that landed
    /// after the decision wins (`Changed`). `None` applies unconditionally.
    pub expect_expires_at: Option<Timestamp>,
}

impl Change {
    #[must_use]
    pub const fn new(note: EventNote) -> Self {
        Self {
            note,
            expect_expires_at: None,
        }
    }

    /// Fenced on the expiry `decided_on` was judged by.
    #[must_use]
    pub const fn fenced(note: EventNote, decided_on: &SandboxSession) -> Self {
        Self {
            note,
            expect_expires_at: Some(decided_on.expires_at),
        }
    }
}

/// What a reuse must match for [`SessionRepository::touch`] to count it as activity.
#[derive(Debug, Clone, Copy)]
pub struct TouchMatch<'a> {
    pub agent_id: &'a AgentId,
    pub volume_host_path: &'a VolumePath,
}

/// How many stored sessions are in each state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StateCounts {
    pub running: u64,
    pub paused: u64,
    pub hibernated: u64,
}

impl StateCounts {
    #[must_use]
    pub const fn of(&self, state: SandboxState) -> u64 {
        match state {
            SandboxState::Running => self.running,
            SandboxState::Paused => self.paused,
            SandboxState::Hibernated => self.hibernated,
        }
    }
}

/// A claim on one sandbox slot, taken atomically before the engine starts anything and given
/// back once the session is saved (it then counts itself) or the create failed. It expires on
/// its own, so a process that dies mid-create holds no slot for long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// The session the create will save.
    pub session_id: SessionId,
    pub agent_id: AgentId,
    /// When the slot frees itself if never given back.
    pub expires_at: Timestamp,
    /// The expired session this create replaces (removed before the new one starts): it does
    /// not count against the limits.
    pub replacing: Option<SessionId>,
}

/// The limits a reservation is checked against; `None` = no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Sessions of the whole deployment plus reservations in flight.
    pub deployment: Option<u32>,
    /// Sessions of the reservation's agent plus its reservations in flight.
    pub agent: Option<u32>,
}

/// Which limit refused a reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaLimit {
    /// `max_sandboxes`.
    Deployment(u32),
    /// `agents.<id>.max_sandboxes`.
    Agent(u32),
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

    /// Stores `session` as its chat's current session (hash, chat index, expiry and state
    /// indexes) and appends `note`'s event, in one atomic, fenced write; returns the active count
    /// after it.
    ///
    /// # Errors
    /// `LeaseLost` when `lease` is lost or no longer the chat's lock holder (nothing written);
    /// `Unavailable`/`Other` as above.
    async fn save(
        &self,
        lease: &Lease,
        session: &SandboxSession,
        note: &EventNote,
    ) -> Result<ActiveCount, RepositoryError>;

    /// Removes `session` (hash, expiry and state entries; the chat index only while it still
    /// names this session) and appends the change's event with the session as it was, in one
    /// atomic, fenced write. Removing what is already gone is success, without an event, unless
    /// the change is fenced.
    ///
    /// # Errors
    /// As [`Self::save`]; `Changed` when a fenced change finds another expiry or no session.
    async fn delete(
        &self,
        lease: &Lease,
        session: &SandboxSession,
        change: &Change,
    ) -> Result<ActiveCount, RepositoryError>;

    /// Writes the lifecycle fields of `session` (state, expiry, last activity, endpoint) over the
    /// stored session of that id and appends the change's event with the result, in one atomic,
    /// fenced write. Returns the stored session after the write; `None` when it no longer exists.
    ///
    /// # Errors
    /// As [`Self::delete`].
    async fn update(
        &self,
        lease: &Lease,
        session: &SandboxSession,
        change: &Change,
    ) -> Result<Option<SandboxSession>, RepositoryError>;

    /// Records activity at `now` on the chat's current session in one round trip and without a
    /// lease, when it is running, live at `now` and (with `only_if`) has that agent and volume:
    /// [`SandboxSession::touched_at`]. Returns the chat's current session after it, touched or
    /// not (the caller tells which from its state and expiry); `None` when the chat has none.
    ///
    /// # Errors
    /// `Unavailable`/`Other`.
    async fn touch(
        &self,
        chat_id: &ChatId,
        now: Timestamp,
        only_if: Option<TouchMatch<'_>>,
    ) -> Result<Option<SandboxSession>, RepositoryError>;

    /// Appends an event that records no change of a stored session (a stray container removed).
    ///
    /// # Errors
    /// `Unavailable`/`Other`.
    async fn append_event(
        &self,
        session: &SandboxSession,
        note: &EventNote,
    ) -> Result<(), RepositoryError>;

    /// Takes a slot for `reservation` if, counting every stored session and reservation in
    /// flight (expired reservations dropped on the way), `limits` leave room; one atomic round
    /// trip, so concurrent creates on every replica sharing the store are counted exactly.
    ///
    /// # Errors
    /// `Unavailable`/`Other`. A full limit is `Ok(Err(limit))`, not an error of the store.
    async fn reserve(
        &self,
        reservation: &Reservation,
        limits: Limits,
        now: Timestamp,
    ) -> Result<Result<(), QuotaLimit>, RepositoryError>;

    /// Gives a reservation's slot back (nothing when it is already gone).
    ///
    /// # Errors
    /// `Unavailable`/`Other`; the slot then frees itself at its expiry.
    async fn release(&self, reservation: &Reservation) -> Result<(), RepositoryError>;

    /// How many stored sessions are in each state.
    ///
    /// # Errors
    /// `Unavailable`/`Other`.
    async fn count_by_state(&self) -> Result<StateCounts, RepositoryError>;

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

    /// One page of sessions in a stable order, optionally of one agent and one state. Across pages every
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
