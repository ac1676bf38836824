//! [`RedisSessionRepository`]: the session store port on Redis, one round trip per operation.

use std::collections::HashMap;

use async_trait::async_trait;
use redis::Value;
use sandboxd_domain::{ChatId, EventNote, SandboxSession, SandboxState, SessionId, Timestamp};
use sandboxd_usecase::ports::{
    ActiveCount, Change, Lease, Limits, ListQuery, QuotaLimit, RepositoryError, Reservation,
    SessionPage, SessionRepository, StateCounts, TouchMatch,
};

use super::codec::{self, ListFilter, decode_page_token, encode_page_token};
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

    /// The event arguments every write script takes after its own: type, reason, at, retention.
    fn event_args<'i>(
        &self,
        invocation: &'i mut redis::ScriptInvocation<'static>,
        note: &EventNote,
    ) -> &'i mut redis::ScriptInvocation<'static> {
        invocation
            .arg(note.kind.as_str())
            .arg(note.reason.as_str())
            .arg(codec::to_millis(note.at))
            .arg(millis(self.store.config.event_retention))
    }

    /// A fenced change's expected expiry as the scripts compare it: '' when unfenced.
    fn expected(change: &Change) -> String {
        change
            .expect_expires_at
            .map(|at| codec::to_millis(at).to_string())
            .unwrap_or_default()
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
        match count {
            -2 => Err(RepositoryError::Changed),
            count => Self::count_or_lost(count),
        }
    }

    /// The lease flag is checked first: an operation that already knows its lease is gone must
    /// not even try (the script's token check covers the lease that expired silently).
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
        note: &EventNote,
    ) -> Result<ActiveCount, RepositoryError> {
        Self::refuse_lost(lease)?;
        let keys = &self.store.keys;
        let mut invocation = scripts::SAVE_SCRIPT.prepare_invoke();
        Self::session_write_keys(&mut invocation, keys, session)
            .arg(lease.token())
            .arg(keys.root())
            .arg(self.grace_ms())
            .arg(session.session_id.to_string())
            .arg(codec::to_millis(session.expires_at));
        self.event_args(&mut invocation, note);
        for (name, value) in codec::session_fields(session) {
            invocation.arg(name).arg(value);
        }
        self.fenced_write(command::SAVE, &invocation).await
    }

    async fn delete(
        &self,
        lease: &Lease,
        session: &SandboxSession,
        change: &Change,
    ) -> Result<ActiveCount, RepositoryError> {
        Self::refuse_lost(lease)?;
        let keys = &self.store.keys;
        let mut invocation = scripts::DELETE_SCRIPT.prepare_invoke();
        Self::session_write_keys(&mut invocation, keys, session)
            .arg(lease.token())
            .arg(keys.root())
            .arg(session.session_id.to_string())
            .arg(Self::expected(change));
        self.event_args(&mut invocation, &change.note);
        self.fenced_write(command::DELETE, &invocation).await
    }

    async fn update(
        &self,
        lease: &Lease,
        session: &SandboxSession,
        change: &Change,
    ) -> Result<Option<SandboxSession>, RepositoryError> {
        Self::refuse_lost(lease)?;
        let keys = &self.store.keys;
        let mut invocation = scripts::UPDATE_SCRIPT.prepare_invoke();
        invocation
            .key(keys.lock(lease.chat_id()))
            .key(keys.session(&session.session_id))
            .key(keys.expiry())
            .key(keys.sessions())
            .arg(lease.token())
            .arg(keys.root())
            .arg(self.grace_ms())
            .arg(session.session_id.to_string())
            .arg(lease.chat_id().to_string())
            .arg(Self::expected(change));
        self.event_args(&mut invocation, &change.note);
        for (name, value) in codec::lifecycle_fields(session) {
            invocation.arg(name).arg(value);
        }
        let mut con = self.store.client.connection();
        let reply: Vec<Value> = self
            .store
            .client
            .run(command::UPDATE, invocation.invoke_async(&mut con))
            .await?;
        let mut reply = reply.into_iter();
        let status: i64 = reply
            .next()
            .and_then(|value| redis::from_redis_value(value).ok())
            .ok_or_else(|| StoreFault::corrupt(command::UPDATE, "no status in the reply"))?;
        match (status, reply.next()) {
            (-1, _) => Err(RepositoryError::LeaseLost),
            (-2, _) => Err(RepositoryError::Changed),
            (0, _) => Ok(None),
            (1, Some(hash)) => {
                let hash = hash_from(command::UPDATE, hash)?;
                Ok(Some(Self::parse(command::UPDATE, &hash)?))
            }
            _ => Err(StoreFault::corrupt(command::UPDATE, "unexpected reply shape").into()),
        }
    }

    async fn touch(
        &self,
        chat_id: &ChatId,
        now: Timestamp,
        only_if: Option<TouchMatch<'_>>,
    ) -> Result<Option<SandboxSession>, RepositoryError> {
        let keys = &self.store.keys;
        let (agent, volume) = only_if.map_or((String::new(), String::new()), |m| {
            (m.agent_id.to_string(), m.volume_host_path.to_string())
        });
        let mut invocation = scripts::TOUCH_SCRIPT.prepare_invoke();
        invocation
            .key(keys.chat(chat_id))
            .key(keys.expiry())
            .arg(keys.root())
            .arg(codec::to_millis(now))
            .arg(agent)
            .arg(volume)
            .arg(self.grace_ms());
        let mut con = self.store.client.connection();
        let hash: Hash = self
            .store
            .client
            .run(command::TOUCH, invocation.invoke_async(&mut con))
            .await?;
        Ok(Self::parse_optional(command::TOUCH, &hash)?)
    }

    async fn append_event(
        &self,
        session: &SandboxSession,
        note: &EventNote,
    ) -> Result<(), RepositoryError> {
        let mut invocation = scripts::APPEND_EVENT_SCRIPT.prepare_invoke();
        invocation.arg(self.store.keys.root());
        self.event_args(&mut invocation, note);
        for (name, value) in codec::session_fields(session) {
            invocation.arg(name).arg(value);
        }
        let mut con = self.store.client.connection();
        let _: i64 = self
            .store
            .client
            .run(command::APPEND_EVENT, invocation.invoke_async(&mut con))
            .await?;
        Ok(())
    }

    async fn reserve(
        &self,
        reservation: &Reservation,
        limits: Limits,
        now: Timestamp,
    ) -> Result<Result<(), QuotaLimit>, RepositoryError> {
        let keys = &self.store.keys;
        let mut invocation = scripts::RESERVE_SCRIPT.prepare_invoke();
        invocation
            .key(keys.expiry())
            .key(keys.agent(&reservation.agent_id))
            .key(keys.reserved())
            .key(keys.reserved_by(&reservation.agent_id))
            .arg(codec::to_millis(now))
            .arg(reservation.session_id.to_string())
            .arg(codec::to_millis(reservation.expires_at))
            .arg(limits.deployment.unwrap_or(0))
            .arg(limits.agent.unwrap_or(0))
            .arg(
                reservation
                    .replacing
                    .map(|id| id.to_string())
                    .unwrap_or_default(),
            );
        let mut con = self.store.client.connection();
        let reply: (i64, Option<String>) = self
            .store
            .client
            .run(command::RESERVE, invocation.invoke_async(&mut con))
            .await?;
        match (reply, limits) {
            ((1, _), _) => Ok(Ok(())),
            (
                (0, Some(which)),
                Limits {
                    deployment: Some(limit),
                    ..
                },
            ) if which == "deployment" => Ok(Err(QuotaLimit::Deployment(limit))),
            (
                (0, Some(which)),
                Limits {
                    agent: Some(limit), ..
                },
            ) if which == "agent" => Ok(Err(QuotaLimit::Agent(limit))),
            _ => Err(StoreFault::corrupt(command::RESERVE, "unexpected reply").into()),
        }
    }

    async fn release(&self, reservation: &Reservation) -> Result<(), RepositoryError> {
        let keys = &self.store.keys;
        let mut invocation = scripts::RELEASE_RESERVATION_SCRIPT.prepare_invoke();
        invocation
            .key(keys.reserved())
            .key(keys.reserved_by(&reservation.agent_id))
            .arg(reservation.session_id.to_string());
        let mut con = self.store.client.connection();
        let _: i64 = self
            .store
            .client
            .run(
                command::RELEASE_RESERVATION,
                invocation.invoke_async(&mut con),
            )
            .await?;
        Ok(())
    }

    async fn count_by_state(&self) -> Result<StateCounts, RepositoryError> {
        let keys = &self.store.keys;
        let mut pipe = redis::pipe();
        pipe.zcard(keys.expiry())
            .zcard(keys.state(SandboxState::Paused))
            .zcard(keys.state(SandboxState::Hibernated));
        let mut con = self.store.client.connection();
        let (total, paused, hibernated): (u64, u64, u64) = self
            .store
            .client
            .run(command::COUNT_BY_STATE, pipe.query_async(&mut con))
            .await?;
        Ok(StateCounts {
            running: total.saturating_sub(paused + hibernated),
            paused,
            hibernated,
        })
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
            .key(keys.state(SandboxState::Paused))
            .key(keys.state(SandboxState::Hibernated))
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
        let filter = ListFilter {
            agent: query.agent_id.as_ref(),
            state: query.state,
        };
        let start = match query.page_token.as_deref() {
            Some(token) => format!("({}", decode_page_token(&filter, token)?),
            None => "-".to_owned(),
        };
        let page_size = query.page_size.max(1);
        let keys = &self.store.keys;
        // The narrowest index: one agent's, else a suspended state's, else all; the script
        // skips sessions of another state.
        let index = match (filter.agent, filter.state) {
            (Some(agent), _) => keys.agent(agent),
            (None, Some(state @ (SandboxState::Paused | SandboxState::Hibernated))) => {
                keys.state(state)
            }
            (None, _) => keys.sessions(),
        };
        let mut invocation = scripts::LIST_PAGE_SCRIPT.prepare_invoke();
        // One more than the page: whether it comes back says if there is a next page.
        invocation
            .key(index)
            .arg(keys.session_prefix())
            .arg(start)
            .arg(page_size + 1)
            .arg(STALE_BUDGET)
            .arg(filter.state.map_or("", SandboxState::as_str));
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
                .map(|last| encode_page_token(&filter, &last.session_id))
        } else if resume.is_empty() {
            None
        } else {
            // The stale budget ran out before the page filled: continue after what was looked at.
            let resume = SessionId::parse(&resume)
                .map_err(|_| StoreFault::corrupt(command::LIST, "resume marker is not an id"))?;
            Some(encode_page_token(&filter, &resume))
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
