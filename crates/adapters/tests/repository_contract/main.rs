//! One contract suite for the session-store port, run against the Redis adapters and against the
//! in-memory fakes, so the fakes the use-case tests rely on cannot drift from the real store.
//!
//! Each check is an async fn over a [`Backend`]; the `contract!` macro instantiates every
//! check once per backend.
#![allow(clippy::unwrap_used, clippy::expect_used)]
//!
//! The checks live in `sessions`, `paging` and `leases`; this file holds the backends and the
//! fixtures they share.

#[path = "../support/contract.rs"]
#[macro_use]
mod contract;
#[path = "../support/redis_server.rs"]
mod redis_server;

mod leases;
mod lifecycle;
mod paging;
mod sessions;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis_server::{AdapterConfig, RedisServer, TestResult, change, note};
use sandboxd_adapters::redis::RedisStore;
use sandboxd_domain::{
    AgentId, ChatId, ContainerId, Endpoint, SandboxSession, SandboxState, SessionId, Timestamp,
    VolumePath,
};
use sandboxd_usecase::ports::{EventLog, LifecycleLocker, ListQuery, SessionRepository};
use sandboxd_usecase::testing::{CallLog, InMemoryLocker, InMemorySessionRepository};
use time::macros::datetime;

use leases::*;
use lifecycle::*;
use paging::*;
use sessions::*;

/// What the suite needs beyond the ports: ways to break things the ports cannot.
#[async_trait]
pub(crate) trait Backend: Send + Sync {
    fn repo(&self) -> Arc<dyn SessionRepository>;
    fn locker(&self) -> Arc<dyn LifecycleLocker>;
    fn events(&self) -> Arc<dyn EventLog>;
    /// The chat's lock disappears from the store, as when its TTL passes unrenewed.
    async fn drop_lock(&self, chat: &ChatId) -> TestResult;
    /// An expiry-index entry without a session, as TTL expiry of the hash leaves behind.
    async fn insert_stale_expiry_entry(&self, at: Timestamp, id: SessionId) -> TestResult;
    async fn expiry_index_len(&self) -> TestResult<usize>;
}

/// How long a test waits for a busy lock before `Busy` (both backends).
pub(crate) const LOCK_WAIT: Duration = Duration::from_millis(200);

struct Fake {
    locker: Arc<InMemoryLocker>,
    repo: Arc<InMemorySessionRepository>,
}

impl Fake {
    async fn new() -> TestResult<Self> {
        let calls = CallLog::default();
        let locker = Arc::new(InMemoryLocker::with_wait(calls.clone(), LOCK_WAIT));
        let repo = Arc::new(InMemorySessionRepository::new(locker.clone(), calls));
        Ok(Self { locker, repo })
    }
}

#[async_trait]
impl Backend for Fake {
    fn repo(&self) -> Arc<dyn SessionRepository> {
        self.repo.clone()
    }
    fn locker(&self) -> Arc<dyn LifecycleLocker> {
        self.locker.clone()
    }
    fn events(&self) -> Arc<dyn EventLog> {
        self.repo.clone()
    }
    async fn drop_lock(&self, chat: &ChatId) -> TestResult {
        self.locker.expire(chat);
        Ok(())
    }
    async fn insert_stale_expiry_entry(&self, at: Timestamp, id: SessionId) -> TestResult {
        self.repo.insert_stale_index_entry(at, id);
        Ok(())
    }
    async fn expiry_index_len(&self) -> TestResult<usize> {
        Ok(self.repo.expiry_index_len())
    }
}

struct Real {
    // Kept for its Drop: the server dies with the backend.
    server: RedisServer,
    prefix: String,
    repo: Arc<dyn SessionRepository>,
    locker: Arc<dyn LifecycleLocker>,
    events: Arc<dyn EventLog>,
}

impl Real {
    async fn new() -> TestResult<Self> {
        let server = RedisServer::start().await?;
        let config = sandboxd_adapters::redis::RedisConfig {
            lock_wait: LOCK_WAIT,
            ..server.config()
        };
        let prefix = config.key_prefix.clone();
        let store = RedisStore::connect(config).await?;
        Ok(Self {
            server,
            prefix,
            repo: Arc::new(store.repository()),
            locker: Arc::new(store.locker()),
            events: Arc::new(store.event_log()?),
        })
    }
}

#[async_trait]
impl Backend for Real {
    fn repo(&self) -> Arc<dyn SessionRepository> {
        self.repo.clone()
    }
    fn locker(&self) -> Arc<dyn LifecycleLocker> {
        self.locker.clone()
    }
    fn events(&self) -> Arc<dyn EventLog> {
        self.events.clone()
    }
    async fn drop_lock(&self, chat: &ChatId) -> TestResult {
        let mut con = self.server.connection().await?;
        let _: i64 = redis::cmd("DEL")
            .arg(format!("{}:lock:{chat}", self.prefix))
            .query_async(&mut con)
            .await?;
        Ok(())
    }
    async fn insert_stale_expiry_entry(&self, at: Timestamp, id: SessionId) -> TestResult {
        let mut con = self.server.connection().await?;
        let millis = i64::try_from(at.unix_timestamp_nanos() / 1_000_000)?;
        let _: i64 = redis::cmd("ZADD")
            .arg(format!("{}:expiry", self.prefix))
            .arg(millis)
            .arg(id.to_string())
            .query_async(&mut con)
            .await?;
        Ok(())
    }
    async fn expiry_index_len(&self) -> TestResult<usize> {
        let mut con = self.server.connection().await?;
        Ok(redis::cmd("ZCARD")
            .arg(format!("{}:expiry", self.prefix))
            .query_async(&mut con)
            .await?)
    }
}

// ---- fixtures -------------------------------------------------------------------------------

/// A round instant; timestamps in the suite are whole milliseconds (what Redis stores).
const T0: Timestamp = datetime!(2026-01-01 00:00 UTC);

pub(crate) fn at(seconds: i64) -> Timestamp {
    T0 + time::Duration::seconds(seconds)
}

pub(crate) fn agent(name: &str) -> AgentId {
    AgentId::parse(name).expect("valid agent id")
}

pub(crate) fn new_chat() -> ChatId {
    ChatId::from_uuid(uuid::Uuid::new_v4())
}

pub(crate) fn session(chat: ChatId, agent_name: &str, expires_at: Timestamp) -> SandboxSession {
    let session_id = SessionId::new_random();
    SandboxSession {
        node_id: None,
        session_id,
        chat_id: chat,
        agent_id: agent(agent_name),
        volume_host_path: VolumePath::parse("/srv/chats/x").expect("valid path"),
        container_id: ContainerId::parse(&format!("c-{}", session_id.as_uuid().simple()))
            .expect("valid container id"),
        endpoint: Some(
            Endpoint::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 40_000).expect("valid endpoint"),
        ),
        created_at: T0,
        expires_at,
        state: SandboxState::Running,
        last_active_at: T0,
        max_expires_at: None,
        idle_timeout: None,
    }
}

/// Saves under a fresh lease of the session's chat, as the use cases do.
pub(crate) async fn put(b: &dyn Backend, s: &SandboxSession) -> TestResult<u64> {
    let lease = b.locker().lock(&s.chat_id).await?;
    let saved = b.repo().save(&lease, s, &note()).await;
    b.locker().release(lease).await?;
    Ok(saved?)
}

pub(crate) async fn remove(b: &dyn Backend, s: &SandboxSession) -> TestResult<u64> {
    let lease = b.locker().lock(&s.chat_id).await?;
    let deleted = b.repo().delete(&lease, s, &change()).await;
    b.locker().release(lease).await?;
    Ok(deleted?)
}

/// Every page of a listing, with the tokens it went through.
pub(crate) async fn list_all(
    b: &dyn Backend,
    agent_id: Option<AgentId>,
    page_size: usize,
) -> TestResult<Vec<SandboxSession>> {
    let mut all = Vec::new();
    let mut page_token = None;
    loop {
        let page = b
            .repo()
            .list(&ListQuery {
                state: None,
                agent_id: agent_id.clone(),
                page_size,
                page_token,
            })
            .await?;
        assert!(page.sessions.len() <= page_size);
        all.extend(page.sessions);
        match page.next_page_token {
            Some(token) => page_token = Some(token),
            None => return Ok(all),
        }
    }
}

pub(crate) fn ids(sessions: &[SandboxSession]) -> Vec<SessionId> {
    sessions.iter().map(|s| s.session_id).collect()
}

// ---- the contract ---------------------------------------------------------------------------

contract!(in_memory => Fake, on_redis => Real: (
    save_get_and_delete_round_trip,
    saving_again_overwrites_and_the_chat_points_to_the_newest,
    list_expired_is_earliest_first_bounded_and_inclusive,
    list_expired_removes_stale_index_entries,
    count_follows_saves_and_deletes,
    update_writes_the_lifecycle_and_is_fenced,
    a_fenced_change_loses_to_a_touch_that_moved_the_expiry,
    touch_records_activity_only_on_a_running_live_matching_session,
    every_write_appends_its_event_with_the_session,
    events_are_read_after_a_cursor_and_waited_for,
    state_counts_and_state_filters_follow_transitions,
    reservations_count_against_the_limits_with_the_sessions,
    a_replaced_session_does_not_count_and_no_limit_admits_all,
    concurrent_reservations_never_exceed_the_limit,
    paging_returns_each_session_once_in_order,
    paging_is_exactly_once_under_concurrent_inserts_and_deletes,
    foreign_and_truncated_page_tokens_are_refused,
    writes_under_a_lost_or_foreign_lease_change_nothing,
    a_held_lock_makes_others_wait_then_busy,
));
