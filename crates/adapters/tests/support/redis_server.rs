//! The Redis adapter tests' view of the kit's `redis-server` launcher: the launcher itself is
//! `sandboxd_testkit::RedisServer`; this adds the adapter settings for one server.
#![allow(dead_code)]

use std::time::Duration;

use sandboxd_adapters::redis::{RedisConfig, RedisStore};
use sandboxd_domain::{
    AgentId, ChatId, ContainerId, EventNote, EventReason, EventType, SandboxSession, SandboxState,
    SessionId, VolumePath,
};
pub(crate) use sandboxd_testkit::{RedisServer, TestResult};
use sandboxd_usecase::ports::Change;
use time::macros::datetime;

/// Adapter settings for a test server.
pub(crate) trait AdapterConfig {
    /// This server with a random key prefix (tests never share keys) and short timeouts so
    /// failures show quickly.
    fn config(&self) -> RedisConfig;
}

impl AdapterConfig for RedisServer {
    fn config(&self) -> RedisConfig {
        RedisConfig {
            url: self.url(),
            key_prefix: random_prefix(),
            command_timeout: Duration::from_millis(500),
            lock_ttl: Duration::from_secs(2),
            lock_wait: Duration::from_millis(300),
            ..RedisConfig::default()
        }
    }
}

pub(crate) fn random_prefix() -> String {
    format!("test-{}", uuid::Uuid::new_v4().simple())
}

/// Where nearly every Redis adapter test starts: a fresh `redis-server`, and one store connected
/// to it with the test settings after `adjust`; with the store's key prefix, to read and plant
/// its keys directly.
pub(crate) async fn start_store(
    adjust: impl FnOnce(&mut RedisConfig),
) -> TestResult<(RedisServer, String, RedisStore)> {
    let server = RedisServer::start().await?;
    let mut config = server.config();
    adjust(&mut config);
    let prefix = config.key_prefix.clone();
    let store = RedisStore::connect(config).await?;
    Ok((server, prefix, store))
}

/// A session of `chat` in `container`, the `default` agent on `/srv/a`, for tests that need one
/// stored and do not look at its fields.
pub(crate) fn session_in(chat: ChatId, container: &str) -> SandboxSession {
    SandboxSession {
        node_id: None,
        session_id: SessionId::new_random(),
        chat_id: chat,
        agent_id: AgentId::parse("default").expect("agent"),
        volume_host_path: VolumePath::parse("/srv/a").expect("path"),
        container_id: ContainerId::parse(container).expect("container"),
        endpoint: None,
        created_at: datetime!(2026-01-01 00:00 UTC),
        expires_at: datetime!(2026-01-01 00:30 UTC),
        state: SandboxState::Running,
        last_active_at: datetime!(2026-01-01 00:00 UTC),
        max_expires_at: None,
        idle_timeout: None,
    }
}

/// The event a test's plain write records (a create, on request).
pub(crate) fn note() -> EventNote {
    EventNote::new(
        EventType::Created,
        EventReason::Requested,
        datetime!(2026-01-01 00:00 UTC),
    )
}

/// An unfenced change of a test's plain delete or update (a delete, on request).
pub(crate) fn change() -> Change {
    Change::new(EventNote::new(
        EventType::Deleted,
        EventReason::Requested,
        datetime!(2026-01-01 00:00 UTC),
    ))
}
