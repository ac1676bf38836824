//! One contract suite for the session-store port, run against the Redis adapters and against the
//! in-memory fakes, so the fakes the use-case tests rely on cannot drift from the real store.
//!
//! Each check is an async fn over a [`Backend`]; the `contract_suite!` macro instantiates every
//! check once per backend.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/redis_server.rs"]
mod redis_server;

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis_server::{AdapterConfig, RedisServer, TestResult};
use sandboxd_adapters::redis::RedisStore;
use sandboxd_domain::{
    AgentId, ChatId, ContainerId, Endpoint, SandboxSession, SessionId, Timestamp, VolumePath,
};
use sandboxd_usecase::ports::{
    Lease, LifecycleLocker, ListQuery, LockError, RepositoryError, SessionRepository,
};
use sandboxd_usecase::testing::{CallLog, InMemoryLocker, InMemorySessionRepository};
use time::macros::datetime;

/// What the suite needs beyond the ports: ways to break things the ports cannot.
#[async_trait]
trait Backend: Send + Sync {
    fn repo(&self) -> Arc<dyn SessionRepository>;
    fn locker(&self) -> Arc<dyn LifecycleLocker>;
    /// The chat's lock disappears from the store, as when its TTL passes unrenewed.
    async fn drop_lock(&self, chat: &ChatId) -> TestResult;
    /// An expiry-index entry without a session, as TTL expiry of the hash leaves behind.
    async fn insert_stale_expiry_entry(&self, at: Timestamp, id: SessionId) -> TestResult;
    async fn expiry_index_len(&self) -> TestResult<usize>;
}

/// How long a test waits for a busy lock before `Busy` (both backends).
const LOCK_WAIT: Duration = Duration::from_millis(200);

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

fn at(seconds: i64) -> Timestamp {
    T0 + time::Duration::seconds(seconds)
}

fn agent(name: &str) -> AgentId {
    AgentId::parse(name).expect("valid agent id")
}

fn new_chat() -> ChatId {
    ChatId::from_uuid(uuid::Uuid::new_v4())
}

fn session(chat: ChatId, agent_name: &str, expires_at: Timestamp) -> SandboxSession {
    let session_id = SessionId::new_random();
    SandboxSession {
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
    }
}

/// Saves under a fresh lease of the session's chat, as the use cases do.
async fn put(b: &dyn Backend, s: &SandboxSession) -> TestResult<u64> {
    let lease = b.locker().lock(&s.chat_id).await?;
    let saved = b.repo().save(&lease, s).await;
    b.locker().release(lease).await?;
    Ok(saved?)
}

async fn remove(b: &dyn Backend, s: &SandboxSession) -> TestResult<u64> {
    let lease = b.locker().lock(&s.chat_id).await?;
    let deleted = b.repo().delete(&lease, s).await;
    b.locker().release(lease).await?;
    Ok(deleted?)
}

/// Every page of a listing, with the tokens it went through.
async fn list_all(
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

fn ids(sessions: &[SandboxSession]) -> Vec<SessionId> {
    sessions.iter().map(|s| s.session_id).collect()
}

// ---- the contract ---------------------------------------------------------------------------

async fn save_get_and_delete_round_trip(b: &dyn Backend) -> TestResult {
    let chat = new_chat();
    let with_endpoint = session(chat, "default", at(60));
    assert_eq!(put(b, &with_endpoint).await?, 1);
    assert_eq!(
        b.repo().get_current_by_chat_id(&chat).await?,
        Some(with_endpoint.clone())
    );
    assert_eq!(
        b.repo()
            .get_by_session_id(&with_endpoint.session_id)
            .await?,
        Some(with_endpoint.clone())
    );

    let other_chat = new_chat();
    let without_endpoint = SandboxSession {
        endpoint: None,
        ..session(other_chat, "py", at(90))
    };
    assert_eq!(put(b, &without_endpoint).await?, 2);
    assert_eq!(
        b.repo().get_current_by_chat_id(&other_chat).await?,
        Some(without_endpoint.clone())
    );

    assert_eq!(remove(b, &with_endpoint).await?, 1);
    assert_eq!(b.repo().get_current_by_chat_id(&chat).await?, None);
    assert_eq!(
        b.repo()
            .get_by_session_id(&with_endpoint.session_id)
            .await?,
        None
    );
    // Deleting what is already gone is success.
    assert_eq!(remove(b, &with_endpoint).await?, 1);
    assert_eq!(b.repo().count_active().await?, 1);
    assert_eq!(b.repo().get_current_by_chat_id(&new_chat()).await?, None);
    b.repo().ping().await?;
    Ok(())
}

async fn saving_again_overwrites_and_the_chat_points_to_the_newest(b: &dyn Backend) -> TestResult {
    let chat = new_chat();
    let first = session(chat, "default", at(10));
    put(b, &first).await?;
    let moved = SandboxSession {
        expires_at: at(20),
        agent_id: agent("other"),
        ..first.clone()
    };
    assert_eq!(
        put(b, &moved).await?,
        1,
        "re-saving one session does not count it twice"
    );
    assert_eq!(
        b.repo().get_by_session_id(&first.session_id).await?,
        Some(moved.clone())
    );
    assert_eq!(b.expiry_index_len().await?, 1);
    let listed = list_all(b, Some(agent("default")), 10).await?;
    assert!(
        listed.is_empty(),
        "the old agent no longer lists it: {listed:?}"
    );
    assert_eq!(
        ids(&list_all(b, Some(agent("other")), 10).await?),
        vec![first.session_id]
    );

    let second = session(chat, "default", at(30));
    assert_eq!(put(b, &second).await?, 2);
    assert_eq!(
        b.repo().get_current_by_chat_id(&chat).await?,
        Some(second.clone())
    );
    // Deleting the older session leaves the pointer to the newer one alone.
    assert_eq!(remove(b, &moved).await?, 1);
    assert_eq!(b.repo().get_current_by_chat_id(&chat).await?, Some(second));
    Ok(())
}

async fn list_expired_is_earliest_first_bounded_and_inclusive(b: &dyn Backend) -> TestResult {
    let mut due = Vec::new();
    for offset in [5, 1, 4, 2, 3] {
        let s = session(new_chat(), "default", at(offset));
        put(b, &s).await?;
        due.push(s);
    }
    due.sort_by_key(|s| s.expires_at);
    let live = session(new_chat(), "default", at(100));
    put(b, &live).await?;

    assert_eq!(ids(&b.repo().list_expired(at(5), 3).await?), ids(&due[..3]));
    assert_eq!(ids(&b.repo().list_expired(at(5), 10).await?), ids(&due));
    // expires_at == now is expired: live means strictly before expires_at.
    assert_eq!(
        ids(&b.repo().list_expired(at(2), 10).await?),
        ids(&due[..2])
    );
    assert!(b.repo().list_expired(at(0), 10).await?.is_empty());
    assert!(b.repo().list_expired(at(1000), 0).await?.is_empty());
    assert_eq!(b.repo().list_expired(at(1000), 10).await?.len(), 6);
    Ok(())
}

async fn list_expired_removes_stale_index_entries(b: &dyn Backend) -> TestResult {
    for offset in 1..=3 {
        b.insert_stale_expiry_entry(at(offset), SessionId::new_random())
            .await?;
    }
    let a = session(new_chat(), "default", at(10));
    let c = session(new_chat(), "default", at(11));
    put(b, &a).await?;
    put(b, &c).await?;
    assert_eq!(b.expiry_index_len().await?, 5);

    let expired = b.repo().list_expired(at(20), 2).await?;
    assert_eq!(
        ids(&expired),
        vec![a.session_id, c.session_id],
        "stale entries are skipped"
    );
    assert_eq!(b.expiry_index_len().await?, 2, "stale entries are removed");
    assert_eq!(b.repo().count_active().await?, 2);
    Ok(())
}

async fn count_follows_saves_and_deletes(b: &dyn Backend) -> TestResult {
    assert_eq!(b.repo().count_active().await?, 0);
    let sessions: Vec<_> = (0..4)
        .map(|i| session(new_chat(), "default", at(i)))
        .collect();
    for (n, s) in sessions.iter().enumerate() {
        assert_eq!(put(b, s).await?, n as u64 + 1);
    }
    assert_eq!(b.repo().count_active().await?, 4);
    assert_eq!(remove(b, &sessions[0]).await?, 3);
    assert_eq!(b.repo().count_active().await?, 3);
    Ok(())
}

async fn extend_moves_expiry_and_is_fenced(b: &dyn Backend) -> TestResult {
    let chat = new_chat();
    let s = session(chat, "default", at(10));
    put(b, &s).await?;

    let lease = b.locker().lock(&chat).await?;
    let extended = b.repo().extend(&lease, &s.session_id, at(30)).await?;
    let want = SandboxSession {
        expires_at: at(30),
        ..s.clone()
    };
    assert_eq!(extended, Some(want.clone()));
    assert_eq!(b.repo().get_current_by_chat_id(&chat).await?, Some(want));
    assert!(
        b.repo().list_expired(at(20), 10).await?.is_empty(),
        "no longer due at the old time"
    );
    assert_eq!(
        ids(&b.repo().list_expired(at(30), 10).await?),
        vec![s.session_id]
    );
    assert_eq!(
        b.repo()
            .extend(&lease, &SessionId::new_random(), at(40))
            .await?,
        None
    );
    b.locker().release(lease).await?;

    let forged = Lease::new(chat, "not-the-token".to_owned());
    assert!(matches!(
        b.repo().extend(&forged, &s.session_id, at(50)).await,
        Err(RepositoryError::LeaseLost)
    ));
    assert_eq!(
        b.repo()
            .get_by_session_id(&s.session_id)
            .await?
            .map(|s| s.expires_at),
        Some(at(30))
    );
    Ok(())
}

async fn paging_returns_each_session_once_in_order(b: &dyn Backend) -> TestResult {
    let mut by_agent: HashMap<&str, BTreeSet<SessionId>> = HashMap::new();
    for i in 0..23 {
        let name = if i % 3 == 0 { "py" } else { "js" };
        let s = session(new_chat(), name, at(i));
        put(b, &s).await?;
        by_agent.entry(name).or_default().insert(s.session_id);
    }
    for page_size in [1, 4, 23, 100] {
        let all = list_all(b, None, page_size).await?;
        let listed: Vec<_> = ids(&all);
        let mut sorted = listed.clone();
        sorted.sort_by_key(ToString::to_string);
        assert_eq!(listed, sorted, "stable order");
        assert_eq!(listed.len(), 23);
        for name in ["py", "js"] {
            let filtered: BTreeSet<_> = ids(&list_all(b, Some(agent(name)), page_size).await?)
                .into_iter()
                .collect();
            assert_eq!(&filtered, &by_agent[name]);
        }
    }
    let exact = b
        .repo()
        .list(&ListQuery {
            agent_id: None,
            page_size: 23,
            page_token: None,
        })
        .await?;
    assert_eq!((exact.sessions.len(), exact.next_page_token), (23, None));
    Ok(())
}

async fn paging_is_exactly_once_under_concurrent_inserts_and_deletes(
    b: &dyn Backend,
) -> TestResult {
    let mut stable = BTreeSet::new();
    for i in 0..40 {
        let s = session(new_chat(), if i % 2 == 0 { "py" } else { "js" }, at(i));
        put(b, &s).await?;
        stable.insert(s.session_id);
    }
    // Churn: sessions added and removed while the listing runs, on both sides of its cursor.
    let churn = async {
        let mut alive: Vec<SandboxSession> = Vec::new();
        for round in 0..60 {
            let s = session(
                new_chat(),
                if round % 2 == 0 { "py" } else { "js" },
                at(round),
            );
            put(b, &s).await?;
            alive.push(s);
            if round % 3 == 2 {
                let gone = alive.remove(alive.len() / 2);
                remove(b, &gone).await?;
            }
            tokio::task::yield_now().await;
        }
        TestResult::Ok(())
    };
    let listing = async {
        let mut seen = Vec::new();
        let mut page_token = None;
        loop {
            let page = b
                .repo()
                .list(&ListQuery {
                    agent_id: None,
                    page_size: 5,
                    page_token,
                })
                .await?;
            seen.extend(ids(&page.sessions));
            tokio::task::yield_now().await;
            match page.next_page_token {
                Some(token) => page_token = Some(token),
                None => return TestResult::Ok(seen),
            }
        }
    };
    let (churned, seen) = tokio::join!(churn, listing);
    churned?;
    let seen = seen?;
    let unique: BTreeSet<_> = seen.iter().copied().collect();
    assert_eq!(unique.len(), seen.len(), "no session listed twice");
    assert!(
        stable.is_subset(&unique),
        "every session that existed throughout is listed"
    );
    Ok(())
}

async fn foreign_and_truncated_page_tokens_are_refused(b: &dyn Backend) -> TestResult {
    for i in 0..5 {
        put(b, &session(new_chat(), "py", at(i))).await?;
    }
    let query = |agent_id: Option<AgentId>, page_token: Option<String>| ListQuery {
        agent_id,
        page_size: 2,
        page_token,
    };
    let first = b.repo().list(&query(Some(agent("py")), None)).await?;
    let token = first.next_page_token.expect("more than one page");
    assert_eq!(
        b.repo()
            .list(&query(Some(agent("py")), Some(token.clone())))
            .await?
            .sessions
            .len(),
        2
    );

    let refused = [
        query(None, Some(token.clone())),
        query(Some(agent("js")), Some(token.clone())),
        query(Some(agent("py")), Some(token[..token.len() - 3].to_owned())),
        query(Some(agent("py")), Some("not-a-token".to_owned())),
        query(Some(agent("py")), Some(String::new())),
    ];
    for q in refused {
        let outcome = b.repo().list(&q).await;
        assert!(
            matches!(outcome, Err(RepositoryError::InvalidPageToken)),
            "{q:?} gave {outcome:?}"
        );
    }
    Ok(())
}

async fn writes_under_a_lost_or_foreign_lease_change_nothing(b: &dyn Backend) -> TestResult {
    let chat = new_chat();
    let original = session(chat, "default", at(10));
    put(b, &original).await?;
    let intruder = session(chat, "default", at(99));

    // A lease whose token the store never issued.
    let forged = Lease::new(chat, "forged".to_owned());
    assert!(matches!(
        b.repo().save(&forged, &intruder).await,
        Err(RepositoryError::LeaseLost)
    ));
    assert!(matches!(
        b.repo().delete(&forged, &original).await,
        Err(RepositoryError::LeaseLost)
    ));

    // A lease the holder already knows it lost.
    let known_lost = b.locker().lock(&chat).await?;
    known_lost.loss_flag().mark_lost();
    assert!(matches!(
        b.repo().save(&known_lost, &intruder).await,
        Err(RepositoryError::LeaseLost)
    ));
    b.locker().release(known_lost).await?;

    // Lease A vanishes from the store, B takes the chat: A can no longer write, B can.
    let a = b.locker().lock(&chat).await?;
    b.drop_lock(&chat).await?;
    let lease_b = b.locker().lock(&chat).await?;
    assert!(matches!(
        b.repo().save(&a, &intruder).await,
        Err(RepositoryError::LeaseLost)
    ));
    assert!(matches!(
        b.repo().delete(&a, &original).await,
        Err(RepositoryError::LeaseLost)
    ));
    assert!(matches!(
        b.repo().extend(&a, &original.session_id, at(500)).await,
        Err(RepositoryError::LeaseLost)
    ));
    let by_b = SandboxSession {
        expires_at: at(20),
        ..original.clone()
    };
    assert_eq!(b.repo().save(&lease_b, &by_b).await?, 1);
    // A's release must not free B's lock.
    b.locker().release(a).await?;
    assert!(matches!(
        b.locker().lock(&chat).await,
        Err(LockError::Busy { .. })
    ));
    b.locker().release(lease_b).await?;

    assert_eq!(b.repo().get_current_by_chat_id(&chat).await?, Some(by_b));
    assert_eq!(
        b.repo().get_by_session_id(&intruder.session_id).await?,
        None
    );
    assert_eq!(b.repo().count_active().await?, 1);
    Ok(())
}

async fn a_held_lock_makes_others_wait_then_busy(b: &dyn Backend) -> TestResult {
    let chat = new_chat();
    let held = b.locker().lock(&chat).await?;
    let started = std::time::Instant::now();
    let outcome = b.locker().lock(&chat).await;
    assert!(
        matches!(outcome, Err(LockError::Busy { .. })),
        "{outcome:?}"
    );
    assert!(started.elapsed() >= LOCK_WAIT - Duration::from_millis(20));
    // Another chat is independent.
    let other = b.locker().lock(&new_chat()).await?;
    b.locker().release(other).await?;

    let locker = b.locker();
    let waiter = tokio::spawn(async move { locker.lock(&chat).await });
    tokio::time::sleep(LOCK_WAIT / 4).await;
    b.locker().release(held).await?;
    let next = waiter.await??;
    b.locker().release(next).await?;
    Ok(())
}

macro_rules! contract_suite {
    ($module:ident => $backend:ident: $($check:ident),* $(,)?) => {
        mod $module {
            $(
                #[tokio::test]
                async fn $check() -> super::TestResult {
                    let backend = super::$backend::new().await?;
                    super::$check(&backend).await
                }
            )*
        }
    };
}

macro_rules! contract {
    ($($module:ident => $backend:ident),*) => {$(
        contract_suite!($module => $backend:
            save_get_and_delete_round_trip,
            saving_again_overwrites_and_the_chat_points_to_the_newest,
            list_expired_is_earliest_first_bounded_and_inclusive,
            list_expired_removes_stale_index_entries,
            count_follows_saves_and_deletes,
            extend_moves_expiry_and_is_fenced,
            paging_returns_each_session_once_in_order,
            paging_is_exactly_once_under_concurrent_inserts_and_deletes,
            foreign_and_truncated_page_tokens_are_refused,
            writes_under_a_lost_or_foreign_lease_change_nothing,
            a_held_lock_makes_others_wait_then_busy,
        );
    )*};
}

contract!(in_memory => Fake, on_redis => Real);
