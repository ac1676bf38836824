//! [`RedisSessionRepository`]: the session store port on Redis, one round trip per operation.

use std::collections::HashMap;

use async_trait::async_trait;
use redis::Value;
use sandboxd_domain::{ChatId, SandboxSession, SessionId, Timestamp};
use sandboxd_usecase::ports::{
    ActiveCount, Lease, ListQuery, RepositoryError, SessionPage, SessionRepository,
};

use super::codec::{self, decode_page_token, encode_page_token};
use super::config::millis;
use super::error::StoreFault;
use super::names::command;
use super::scripts;
use super::{Keys, RedisStore};

/// At most this many stale index entries are removed by one `list`/`list_expired` call, so one
/// call stays short however much TTL expiry left behind; later calls continue.
const STALE_BUDGET: usize = 1000;

/// The session store on Redis (data model in [`super::keys`]).
#[derive(Debug, Clone)]
pub struct RedisSessionRepository {
    store: RedisStore,
}

type Hash = HashMap<String, String>;

impl RedisSessionRepository {
    #[must_use]
    pub fn new(store: RedisStore) -> Self {
        Self { store }
    }

    fn grace_ms(&self) -> u64 {
        millis(self.store.config.key_grace)
    }

    fn parse(command: &'static str, hash: &Hash) -> Result<SandboxSession, StoreFault> {
        codec::session_from_fields(hash).map_err(|reason| StoreFault::corrupt(command, reason))
    }

    /// `None` for an empty hash (no such session).
    fn parse_optional(
        command: &'static str,
        hash: &Hash,
    ) -> Result<Option<SandboxSession>, StoreFault> {
        if hash.is_empty() {
            Ok(None)
        } else {
            Self::parse(command, hash).map(Some)
        }
    }

    /// The lease flag is checked first: an operation that already knows its lease is gone must
    /// not even try (the script's token check covers the lease that expired silently).
    /// The keys the save and delete scripts take, in their order. The lock is the one of the
    /// session's own chat: a lease can only ever write its chat's sessions.
    fn session_write_keys<'i>(
        invocation: &'i mut redis::ScriptInvocation<'static>,
        keys: &Keys,
        session: &SandboxSession,
    ) -> &'i mut redis::ScriptInvocation<'static> {
        invocation
            .key(keys.lock(&session.chat_id))
            .key(keys.session(&session.session_id))
            .key(keys.chat(&session.chat_id))
            .key(keys.expiry())
            .key(keys.sessions())
            .key(keys.agent(&session.agent_id))
    }

    /// Runs a fenced write script (save or delete) and reads its reply: the active count, or
    /// the lease-lost marker.
    async fn fenced_write(
        &self,
        command: &'static str,
        invocation: &redis::ScriptInvocation<'static>,
    ) -> Result<ActiveCount, RepositoryError> {
        let mut con = self.store.client.connection();
        let count: i64 = self
            .store
            .client
            .run(command, invocation.invoke_async(&mut con))
            .await?;
        Self::count_or_lost(count)
    }

    fn refuse_lost(lease: &Lease) -> Result<(), RepositoryError> {
        if lease.is_lost() {
            Err(RepositoryError::LeaseLost)
        } else {
            Ok(())
        }
    }

    fn count_or_lost(count: i64) -> Result<ActiveCount, RepositoryError> {
        ActiveCount::try_from(count).map_err(|_| RepositoryError::LeaseLost)
    }
}

fn hash_from(command: &'static str, value: Value) -> Result<Hash, StoreFault> {
    redis::from_redis_value(value).map_err(|error| StoreFault::corrupt(command, error.to_string()))
}

#[async_trait]
impl SessionRepository for RedisSessionRepository {
    async fn get_current_by_chat_id(
        &self,
        chat_id: &ChatId,
    ) -> Result<Option<SandboxSession>, RepositoryError> {
        let keys = &self.store.keys;
        let mut invocation = scripts::GET_BY_CHAT_SCRIPT.prepare_invoke();
        invocation
            .key(keys.chat(chat_id))
            .arg(keys.session_prefix());
        let mut con = self.store.client.connection();
        let hash: Hash = self
            .store
            .client
            .run(
                command::GET_ACTIVE_BY_CHAT_ID,
                invocation.invoke_async(&mut con),
            )
            .await?;
        Ok(Self::parse_optional(command::GET_ACTIVE_BY_CHAT_ID, &hash)?)
    }

    async fn get_by_session_id(
        &self,
        session_id: &SessionId,
    ) -> Result<Option<SandboxSession>, RepositoryError> {
        let mut con = self.store.client.connection();
        let hash: Hash = self
            .store
            .client
            .run(
                command::GET_BY_SESSION_ID,
                redis::cmd("HGETALL")
                    .arg(self.store.keys.session(session_id))
                    .query_async(&mut con),
            )
            .await?;
        Ok(Self::parse_optional(command::GET_BY_SESSION_ID, &hash)?)
    }

    async fn save(
        &self,
        lease: &Lease,
        session: &SandboxSession,
    ) -> Result<ActiveCount, RepositoryError> {
        Self::refuse_lost(lease)?;
        let keys = &self.store.keys;
        let mut invocation = scripts::SAVE_SCRIPT.prepare_invoke();
        Self::session_write_keys(&mut invocation, keys, session)
            .arg(lease.token())
            .arg(keys.agent_prefix())
            .arg(self.grace_ms())
            .arg(session.session_id.to_string())
            .arg(codec::to_millis(session.expires_at));
        for (name, value) in codec::session_fields(session) {
            invocation.arg(name).arg(value);
        }
        self.fenced_write(command::SAVE, &invocation).await
    }

    async fn delete(
        &self,
        lease: &Lease,
        session: &SandboxSession,
    ) -> Result<ActiveCount, RepositoryError> {
        Self::refuse_lost(lease)?;
        let keys = &self.store.keys;
        let mut invocation = scripts::DELETE_SCRIPT.prepare_invoke();
        Self::session_write_keys(&mut invocation, keys, session)
            .arg(lease.token())
            .arg(keys.agent_prefix())
            .arg(session.session_id.to_string());
        self.fenced_write(command::DELETE, &invocation).await
    }

    async fn extend(
        &self,
        lease: &Lease,
        session_id: &SessionId,
        expires_at: Timestamp,
    ) -> Result<Option<SandboxSession>, RepositoryError> {
        Self::refuse_lost(lease)?;
        let keys = &self.store.keys;
        let mut invocation = scripts::EXTEND_SCRIPT.prepare_invoke();
        invocation
            .key(keys.lock(lease.chat_id()))
            .key(keys.session(session_id))
            .key(keys.expiry())
            .key(keys.sessions())
            .arg(lease.token())
            .arg(keys.root())
            .arg(self.grace_ms())
            .arg(session_id.to_string())
            .arg(codec::to_millis(expires_at))
            .arg(lease.chat_id().to_string());
        let mut con = self.store.client.connection();
        let reply: Vec<Value> = self
            .store
            .client
            .run(command::EXTEND, invocation.invoke_async(&mut con))
            .await?;
        let mut reply = reply.into_iter();
        let status: i64 = reply
            .next()
            .and_then(|value| redis::from_redis_value(value).ok())
            .ok_or_else(|| StoreFault::corrupt(command::EXTEND, "no status in the reply"))?;
        match (status, reply.next()) {
            (-1, _) => Err(RepositoryError::LeaseLost),
            (0, _) => Ok(None),
            (1, Some(hash)) => {
                let hash = hash_from(command::EXTEND, hash)?;
                Ok(Some(Self::parse(command::EXTEND, &hash)?))
            }
            _ => Err(StoreFault::corrupt(command::EXTEND, "unexpected reply shape").into()),
        }
    }

    async fn list_expired(
        &self,
        now: Timestamp,
        limit: usize,
    ) -> Result<Vec<SandboxSession>, RepositoryError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let keys = &self.store.keys;
        let mut invocation = scripts::LIST_EXPIRED_SCRIPT.prepare_invoke();
        invocation
            .key(keys.expiry())
            .key(keys.sessions())
            .arg(keys.session_prefix())
            .arg(codec::to_millis(now))
            .arg(limit)
            .arg(STALE_BUDGET);
        let mut con = self.store.client.connection();
        let hashes: Vec<Hash> = self
            .store
            .client
            .run(command::LIST_EXPIRED, invocation.invoke_async(&mut con))
            .await?;
        hashes
            .iter()
            .map(|hash| Self::parse(command::LIST_EXPIRED, hash).map_err(RepositoryError::from))
            .collect()
    }

    async fn count_active(&self) -> Result<ActiveCount, RepositoryError> {
        let mut con = self.store.client.connection();
        let count: u64 = self
            .store
            .client
            .run(
                command::COUNT_ACTIVE,
                redis::cmd("ZCARD")
                    .arg(self.store.keys.expiry())
                    .query_async(&mut con),
            )
            .await?;
        Ok(count)
    }

    async fn list(&self, query: &ListQuery) -> Result<SessionPage, RepositoryError> {
        let agent = query.agent_id.as_ref();
        let start = match query.page_token.as_deref() {
            Some(token) => format!("({}", decode_page_token(agent, token)?),
            None => "-".to_owned(),
        };
        let page_size = query.page_size.max(1);
        let keys = &self.store.keys;
        let index = agent.map_or_else(|| keys.sessions(), |agent| keys.agent(agent));
        let mut invocation = scripts::LIST_PAGE_SCRIPT.prepare_invoke();
        // One more than the page: whether it comes back says if there is a next page.
        invocation
            .key(index)
            .arg(keys.session_prefix())
            .arg(start)
            .arg(page_size + 1)
            .arg(STALE_BUDGET);
        let mut con = self.store.client.connection();
        let reply: Vec<Value> = self
            .store
            .client
            .run(command::LIST, invocation.invoke_async(&mut con))
            .await?;
        let mut reply = reply.into_iter();
        let resume: String = reply
            .next()
            .and_then(|value| redis::from_redis_value(value).ok())
            .ok_or_else(|| StoreFault::corrupt(command::LIST, "no resume marker in the reply"))?;
        let mut sessions = reply
            .map(|hash| {
                let hash = hash_from(command::LIST, hash)?;
                Self::parse(command::LIST, &hash)
            })
            .collect::<Result<Vec<_>, StoreFault>>()?;
        let next_page_token = if sessions.len() > page_size {
            sessions.truncate(page_size);
            sessions
                .last()
                .map(|last| encode_page_token(agent, &last.session_id))
        } else if resume.is_empty() {
            None
        } else {
            // The stale budget ran out before the page filled: continue after what was looked at.
            let resume = SessionId::parse(&resume)
                .map_err(|_| StoreFault::corrupt(command::LIST, "resume marker is not an id"))?;
            Some(encode_page_token(agent, &resume))
        };
        Ok(SessionPage {
            sessions,
            next_page_token,
        })
    }

    async fn ping(&self) -> Result<(), RepositoryError> {
        let mut con = self.store.client.connection();
        let _pong: String = self
            .store
            .client
            .run(command::PING, redis::cmd("PING").query_async(&mut con))
            .await?;
        Ok(())
    }
}
