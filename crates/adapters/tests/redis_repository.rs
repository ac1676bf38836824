//! Redis-only checks of the session store: the data model on the wire, TTLs on every key,
//! prefix isolation, corrupt data and metrics.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/redis_server.rs"]
mod redis_server;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use redis_server::{
    AdapterConfig, RedisServer, TestResult, change as note_change, note, random_prefix, session_in,
    start_store,
};
use sandboxd_adapters::redis::{RedisConfig, RedisStore, names};
use sandboxd_domain::{
    AgentId, ChatId, ContainerId, Endpoint, SandboxSession, SessionId, VolumePath,
};
use sandboxd_usecase::ports::{Lease, LifecycleLocker, RepositoryError, SessionRepository};
use time::macros::datetime;

fn session(chat: ChatId) -> SandboxSession {
    SandboxSession {
        session_id: SessionId::new_random(),
        chat_id: chat,
        agent_id: AgentId::parse("py").expect("agent"),
        volume_host_path: VolumePath::parse("/srv/chats/a").expect("path"),
        container_id: ContainerId::parse("abc123").expect("container"),
        endpoint: Some(Endpoint::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 40_001).expect("endpoint")),
        created_at: datetime!(2026-01-01 00:00:00.250 UTC),
        expires_at: datetime!(2026-01-01 00:30:00.500 UTC),
        last_active_at: datetime!(2026-01-01 00:10:00 UTC),
        max_expires_at: Some(datetime!(2026-01-02 00:00 UTC)),
        idle_timeout: Some(Duration::from_secs(900)),
        ..session_in(chat, "abc123")
    }
}

async fn keys_of(
    con: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
) -> TestResult<Vec<String>> {
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(con)
        .await?;
    keys.sort();
    Ok(keys)
}

/// A store with [`session`] of a new chat saved under the chat's lease, which is still held.
async fn one_saved_session() -> TestResult<(RedisServer, String, RedisStore, SandboxSession, Lease)>
{
    let (server, p, store) = start_store(|_| {}).await?;
    let chat = ChatId::from_uuid(uuid::Uuid::new_v4());
    let s = session(chat);
    let lease = store.locker().lock(&chat).await?;
    store.repository().save(&lease, &s, &note()).await?;
    Ok((server, p, store, s, lease))
}

#[tokio::test]
async fn a_saved_session_is_laid_out_as_designed() -> TestResult {
    let (server, p, store, s, lease) = one_saved_session().await?;
    let locker = store.locker();
    let chat = s.chat_id;

    let mut con = server.connection().await?;
    let id = s.session_id.to_string();
    let hash: HashMap<String, String> = redis::cmd("HGETALL")
        .arg(format!("{p}:session:{id}"))
        .query_async(&mut con)
        .await?;
    let want: HashMap<String, String> = [
        ("session_id", id.as_str()),
        ("chat_id", &chat.to_string()),
        ("agent_id", "py"),
        ("volume_host_path", "/srv/chats/a"),
        ("container_id", "abc123"),
        ("node_id", ""),
        ("endpoint_ip", "127.0.0.1"),
        ("endpoint_port", "40001"),
        ("created_at", "1767225600250"),
        ("expires_at", "1767227400500"),
        ("state", "running"),
        ("last_active_at", "1767226200000"),
        ("max_expires_at", "1767312000000"),
        ("idle_timeout_ms", "900000"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    assert_eq!(hash, want);
    let pointer: String = redis::cmd("GET")
        .arg(format!("{p}:chat:{chat}"))
        .query_async(&mut con)
        .await?;
    assert_eq!(pointer, id);
    let score: i64 = redis::cmd("ZSCORE")
        .arg(format!("{p}:expiry"))
        .arg(&id)
        .query_async(&mut con)
        .await?;
    assert_eq!(score, 1_767_227_400_500);
    for index in [format!("{p}:sessions"), format!("{p}:agent:py")] {
        let score: Option<i64> = redis::cmd("ZSCORE")
            .arg(&index)
            .arg(&id)
            .query_async(&mut con)
            .await?;
        assert_eq!(score, Some(0), "{index}");
    }
    let token: String = redis::cmd("GET")
        .arg(format!("{p}:lock:{chat}"))
        .query_async(&mut con)
        .await?;
    assert_eq!(token, lease.token());
    locker.release(lease).await?;
    Ok(())
}

/// A fleet session as main stored it before the node was a field (`container_id` =
/// `<node_id>/<engine id>`, no `node_id`) still reads, by chat and by id, with its node apart;
/// written again, it is stored in today's form.
#[tokio::test]
async fn a_fleet_session_stored_before_the_node_field_still_reads() -> TestResult {
    let (server, p, store, s, lease) = one_saved_session().await?;
    let (repo, locker) = (store.repository(), store.locker());
    let chat = s.chat_id;
    let key = format!("{p}:session:{}", s.session_id);
    let mut con = server.connection().await?;
    redis::pipe()
        .cmd("HSET")
        .arg(&key)
        .arg("container_id")
        .arg("node-2/abc123")
        .cmd("HDEL")
        .arg(&key)
        .arg("node_id")
        .query_async::<()>(&mut con)
        .await?;
    let on_node_2 = SandboxSession {
        node_id: Some(sandboxd_domain::NodeId::parse("node-2")?),
        ..s.clone()
    };
    assert_eq!(
        repo.get_current_by_chat_id(&chat).await?,
        Some(on_node_2.clone())
    );
    assert_eq!(
        repo.get_by_session_id(&s.session_id).await?,
        Some(on_node_2.clone())
    );
    repo.save(&lease, &on_node_2, &note()).await?;
    let stored: HashMap<String, String> = redis::cmd("HGETALL")
        .arg(&key)
        .query_async(&mut con)
        .await?;
    assert_eq!(
        (stored["container_id"].as_str(), stored["node_id"].as_str()),
        ("abc123", "node-2")
    );
    locker.release(lease).await?;
    Ok(())
}

#[tokio::test]
async fn every_key_has_a_ttl_past_expiry_and_an_update_refreshes_it() -> TestResult {
    let mut key_grace = Duration::ZERO;
    let (server, p, store) = start_store(|config| key_grace = config.key_grace).await?;
    let grace_ms = i64::try_from(key_grace.as_millis())?;
    let (repo, locker) = (store.repository(), store.locker());
    let mut con = server.connection().await?;

    // One session expiring in the past (a manual clock) and one an hour ahead of real time.
    let chat_past = ChatId::from_uuid(uuid::Uuid::new_v4());
    let chat_future = ChatId::from_uuid(uuid::Uuid::new_v4());
    let past = session(chat_past);
    let future = SandboxSession {
        expires_at: time::OffsetDateTime::now_utc() + time::Duration::hours(1),
        ..session(chat_future)
    };
    for s in [&past, &future] {
        let lease = locker.lock(&s.chat_id).await?;
        repo.save(&lease, s, &note()).await?;
        locker.release(lease).await?;
    }
    let keys = keys_of(&mut con, &p).await?;
    assert_eq!(
        keys.len(),
        2 * 2 + 3 + 1,
        "two hashes, two chat pointers, three indexes, the event log: {keys:?}"
    );
    let events_ttl: i64 = redis::cmd("PTTL")
        .arg(format!("{p}:events"))
        .query_async(&mut con)
        .await?;
    assert!(
        events_ttl > 0,
        "the event log outlives its last event by the retention only"
    );
    for key in keys.iter().filter(|key| !key.ends_with(":events")) {
        let ttl: i64 = redis::cmd("PTTL").arg(key).query_async(&mut con).await?;
        assert!(ttl > 0, "{key} has no TTL ({ttl})");
        assert!(
            ttl > grace_ms - 60_000,
            "{key}: TTL {ttl} is not a grace period"
        );
    }
    let future_hash: i64 = redis::cmd("PTTL")
        .arg(format!("{p}:session:{}", future.session_id))
        .query_async(&mut con)
        .await?;
    assert!(
        future_hash > grace_ms + 3_500_000,
        "the TTL runs past expires_at: {future_hash}"
    );

    let lease = locker.lock(&chat_past).await?;
    let later = time::OffsetDateTime::now_utc() + time::Duration::hours(5);
    let extended = SandboxSession {
        expires_at: later,
        ..past.clone()
    };
    repo.update(&lease, &extended, &note_change()).await?;
    locker.release(lease).await?;
    for key in [
        format!("{p}:session:{}", past.session_id),
        format!("{p}:chat:{chat_past}"),
        format!("{p}:expiry"),
        format!("{p}:sessions"),
        format!("{p}:agent:py"),
    ] {
        let ttl: i64 = redis::cmd("PTTL").arg(&key).query_async(&mut con).await?;
        assert!(
            ttl > grace_ms + 4 * 3_600_000,
            "{key} was not refreshed: {ttl}"
        );
    }
    let lock_ttl: i64 = redis::cmd("PTTL")
        .arg(format!("{p}:lock:{chat_past}"))
        .query_async(&mut con)
        .await?;
    assert_eq!(lock_ttl, -2, "released locks are gone");
    Ok(())
}

#[tokio::test]
async fn two_prefixes_on_one_redis_do_not_see_each_other() -> TestResult {
    let server = RedisServer::start().await?;
    let a = RedisStore::connect(server.config()).await?;
    let b = RedisStore::connect(RedisConfig {
        key_prefix: random_prefix(),
        ..server.config()
    })
    .await?;
    let chat = ChatId::from_uuid(uuid::Uuid::new_v4());
    let s = session(chat);
    let lease = a.locker().lock(&chat).await?;
    a.repository().save(&lease, &s, &note()).await?;
    // The other deployment's lock for the same chat is independent.
    let other_lease = b.locker().lock(&chat).await?;
    assert_eq!(b.repository().get_current_by_chat_id(&chat).await?, None);
    assert_eq!(b.repository().count_active().await?, 0);
    assert!(
        b.repository()
            .list_expired(datetime!(2030-01-01 00:00 UTC), 10)
            .await?
            .is_empty()
    );
    assert_eq!(a.repository().count_active().await?, 1);
    a.locker().release(lease).await?;
    b.locker().release(other_lease).await?;
    Ok(())
}

#[tokio::test]
async fn a_corrupt_hash_is_other_not_a_panic() -> TestResult {
    let (server, p, store) = start_store(|_| {}).await?;
    let repo = store.repository();
    let chat = ChatId::from_uuid(uuid::Uuid::new_v4());
    let id = SessionId::new_random();
    let mut con = server.connection().await?;
    let _: () = redis::cmd("SET")
        .arg(format!("{p}:chat:{chat}"))
        .arg(id.to_string())
        .query_async(&mut con)
        .await?;
    let _: () = redis::cmd("HSET")
        .arg(format!("{p}:session:{id}"))
        .arg("session_id")
        .arg(id.to_string())
        .arg("expires_at")
        .arg("tomorrow")
        .query_async(&mut con)
        .await?;
    assert!(matches!(
        repo.get_current_by_chat_id(&chat).await,
        Err(RepositoryError::Other(_))
    ));
    assert!(matches!(
        repo.get_by_session_id(&id).await,
        Err(RepositoryError::Other(_))
    ));
    // A chat pointer naming a vanished hash is no session.
    let _: () = redis::cmd("DEL")
        .arg(format!("{p}:session:{id}"))
        .query_async(&mut con)
        .await?;
    assert_eq!(repo.get_current_by_chat_id(&chat).await?, None);
    Ok(())
}

#[tokio::test]
async fn stale_paging_index_entries_are_skipped_and_removed() -> TestResult {
    let (server, p, store) = start_store(|_| {}).await?;
    let (repo, locker) = (store.repository(), store.locker());
    let mut con = server.connection().await?;
    let mut live = Vec::new();
    for _ in 0..3 {
        let s = session(ChatId::from_uuid(uuid::Uuid::new_v4()));
        let lease = locker.lock(&s.chat_id).await?;
        repo.save(&lease, &s, &note()).await?;
        locker.release(lease).await?;
        live.push(s.session_id);
    }
    for _ in 0..5 {
        let _: i64 = redis::cmd("ZADD")
            .arg(format!("{p}:sessions"))
            .arg(0)
            .arg(SessionId::new_random().to_string())
            .query_async(&mut con)
            .await?;
    }
    let page = repo
        .list(&sandboxd_usecase::ports::ListQuery {
            state: None,
            agent_id: None,
            page_size: 10,
            page_token: None,
        })
        .await?;
    let mut listed: Vec<_> = page.sessions.iter().map(|s| s.session_id).collect();
    listed.sort();
    live.sort();
    assert_eq!(listed, live);
    let remaining: i64 = redis::cmd("ZCARD")
        .arg(format!("{p}:sessions"))
        .query_async(&mut con)
        .await?;
    assert_eq!(remaining, 3);
    Ok(())
}

#[tokio::test(flavor = "current_thread")]
async fn each_call_is_timed_by_operation() -> TestResult {
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let server = RedisServer::start().await?;
    let store = RedisStore::connect(server.config()).await?;
    let chat = ChatId::from_uuid(uuid::Uuid::new_v4());
    let lease = store.locker().lock(&chat).await?;
    store
        .repository()
        .save(&lease, &session(chat), &note())
        .await?;
    store.repository().get_current_by_chat_id(&chat).await?;
    store.locker().release(lease).await?;

    let mut seen = HashMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let labels: Vec<String> = key
            .key()
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        if let metrics_util::debugging::DebugValue::Histogram(samples) = value {
            seen.insert(
                format!("{}{{{}}}", key.key().name(), labels.join(",")),
                samples.len(),
            );
        }
    }
    let histogram = names::REDIS_COMMAND_DURATION_SECONDS;
    for command in [
        "lock_acquire",
        "save",
        "get_current_by_chat_id",
        "lock_release",
    ] {
        assert_eq!(
            seen.get(&format!("{histogram}{{command={command}}}")),
            Some(&1),
            "{seen:?}"
        );
    }
    assert_eq!(
        seen.get(&format!("{}{{result=acquired}}", names::LOCK_WAIT_SECONDS)),
        Some(&1)
    );
    Ok(())
}
