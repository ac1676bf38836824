//! The event log port: reading the lifecycle events the store's writes appended.

use std::time::Duration;

use async_trait::async_trait;
use sandboxd_domain::{EventCursor, SandboxEvent};

use super::RepositoryError;

/// The lifecycle event log, oldest first. Writing is part of the store's fenced writes
/// ([`super::SessionRepository`]); this port only reads.
#[async_trait]
pub trait EventLog: Send + Sync {
    /// Up to `limit` events strictly after `after` (from the oldest retained when `None`).
    ///
    /// # Errors
    /// `Unavailable`/`Other`.
    async fn read_after(
        &self,
        after: Option<EventCursor>,
        limit: usize,
    ) -> Result<Vec<SandboxEvent>, RepositoryError>;

    /// As [`Self::read_after`], but when there is nothing yet waits up to `block` for the next
    /// appended events (an empty answer after that). Only one caller per process should wait.
    ///
    /// # Errors
    /// `Unavailable`/`Other`.
    async fn wait_after(
        &self,
        after: Option<EventCursor>,
        limit: usize,
        block: Duration,
    ) -> Result<Vec<SandboxEvent>, RepositoryError>;

    /// The newest event's cursor; `None` when the log is empty.
    ///
    /// # Errors
    /// `Unavailable`/`Other`.
    async fn last_cursor(&self) -> Result<Option<EventCursor>, RepositoryError>;
}
