//! [`RedisEventLog`]: the event log port on the Redis Stream the write scripts append to.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use sandboxd_domain::{EventCursor, SandboxEvent};
use sandboxd_usecase::ports::{EventLog, RepositoryError};

use super::RedisStore;
use super::client::RedisClient;
use super::codec;
use super::error::StoreFault;
use super::names::command;

/// One stream entry as Redis sends it: the id and the flat field/value list.
type Entry = (String, Vec<String>);

/// Reads the event log. Waiting reads (`XREAD BLOCK`) hold their connection for the wait, so
/// they get one of their own; plain reads share the store's.
#[derive(Debug, Clone)]
pub struct RedisEventLog {
    store: RedisStore,
    /// A second connection, used only by [`EventLog::wait_after`].
    waiting: RedisClient,
}

impl RedisEventLog {
    pub(crate) fn new(store: RedisStore, waiting: RedisClient) -> Self {
        Self { store, waiting }
    }

    fn decode(command: &'static str, entries: Vec<Entry>) -> Result<Vec<SandboxEvent>, StoreFault> {
        entries
            .into_iter()
            .map(|(id, flat)| {
                let mut fields = HashMap::with_capacity(flat.len() / 2);
                let mut pairs = flat.into_iter();
                while let (Some(name), Some(value)) = (pairs.next(), pairs.next()) {
                    fields.insert(name, value);
                }
                codec::event_from_entry(&id, &fields)
                    .map_err(|reason| StoreFault::corrupt(command, reason))
            })
            .collect()
    }
}

/// `(cursor` for XRANGE (exclusive), `-` from the start.
fn range_start(after: Option<EventCursor>) -> String {
    after.map_or_else(|| "-".to_owned(), |cursor| format!("({cursor}"))
}

#[async_trait]
impl EventLog for RedisEventLog {
    async fn read_after(
        &self,
        after: Option<EventCursor>,
        limit: usize,
    ) -> Result<Vec<SandboxEvent>, RepositoryError> {
        let mut con = self.store.client.connection();
        let entries: Vec<Entry> = self
            .store
            .client
            .run(
                command::READ_EVENTS,
                redis::cmd("XRANGE")
                    .arg(self.store.keys.events())
                    .arg(range_start(after))
                    .arg("+")
                    .arg("COUNT")
                    .arg(limit.max(1))
                    .query_async(&mut con),
            )
            .await?;
        Ok(Self::decode(command::READ_EVENTS, entries)?)
    }

    async fn wait_after(
        &self,
        after: Option<EventCursor>,
        limit: usize,
        block: Duration,
    ) -> Result<Vec<SandboxEvent>, RepositoryError> {
        // XREAD's id is exclusive already; `0-0` reads from the start.
        let from = after.map_or_else(|| "0-0".to_owned(), |cursor| cursor.to_string());
        // The wait is bounded below the command timeout, so a healthy wait never times out.
        let block = block.min(self.waiting.timeout() / 2);
        let mut con = self.waiting.connection();
        let reply: Option<Vec<(String, Vec<Entry>)>> = self
            .waiting
            .run(
                command::WAIT_EVENTS,
                redis::cmd("XREAD")
                    .arg("COUNT")
                    .arg(limit.max(1))
                    .arg("BLOCK")
                    .arg(u64::try_from(block.as_millis()).unwrap_or(u64::MAX).max(1))
                    .arg("STREAMS")
                    .arg(self.store.keys.events())
                    .arg(from)
                    .query_async(&mut con),
            )
            .await?;
        let entries = reply
            .into_iter()
            .flatten()
            .flat_map(|(_key, entries)| entries)
            .collect();
        Ok(Self::decode(command::WAIT_EVENTS, entries)?)
    }

    async fn last_cursor(&self) -> Result<Option<EventCursor>, RepositoryError> {
        let mut con = self.store.client.connection();
        let entries: Vec<Entry> = self
            .store
            .client
            .run(
                command::LAST_EVENT,
                redis::cmd("XREVRANGE")
                    .arg(self.store.keys.events())
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(1)
                    .query_async(&mut con),
            )
            .await?;
        entries
            .first()
            .map(|(id, _)| {
                EventCursor::parse(id).map_err(|e| {
                    RepositoryError::from(StoreFault::corrupt(command::LAST_EVENT, e.to_string()))
                })
            })
            .transpose()
    }
}
