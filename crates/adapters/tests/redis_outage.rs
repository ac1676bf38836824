//! Redis going away and coming back: calls fail fast with `Unavailable`, never hang, and the same
//! adapter instances work again once Redis is back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/redis_server.rs"]
mod redis_server;

use std::future::Future;
use std::time::{Duration, Instant};

use redis_server::{TestResult, change, note, session_in, start_store};
use sandboxd_adapters::redis::{ConnectError, RedisConfig, RedisStore};
use sandboxd_domain::{ChatId, SandboxSession, SessionId};
use sandboxd_usecase::ports::{
    Lease, LifecycleLocker, ListQuery, LockError, RepositoryError, SessionRepository,
};
use time::macros::datetime;

const TIMEOUT: Duration = Duration::from_millis(300);
/// Scheduling slack on a loaded 2-core machine on top of the configured timeout.
const SLACK: Duration = Duration::from_millis(1500);

fn session(chat: ChatId) -> SandboxSession {
    session_in(chat, "c1")
}

async fn assert_unavailable_fast<T: std::fmt::Debug>(
    what: &str,
    call: impl Future<Output = Result<T, RepositoryError>>,
) {
    let started = Instant::now();
    let outcome = call.await;
    let took = started.elapsed();
    assert!(
        matches!(outcome, Err(RepositoryError::Unavailable(_))),
        "{what}: {outcome:?}"
    );
    assert!(took <= TIMEOUT + SLACK, "{what} took {took:?}");
}

#[tokio::test]
async fn a_stopped_redis_is_unavailable_within_the_timeout_and_a_restarted_one_is_used_again()
-> TestResult {
    let (mut server, _, store) = start_store(|config| config.command_timeout = TIMEOUT).await?;
    let (repo, locker) = (store.repository(), store.locker());
    let chat = ChatId::from_uuid(uuid::Uuid::new_v4());
    let lease = locker.lock(&chat).await?;
    repo.save(&lease, &session(chat), &note()).await?;

    server.stop();
    for _ in 0..3 {
        assert_unavailable_fast("ping", repo.ping()).await;
        assert_unavailable_fast("get", repo.get_current_by_chat_id(&chat)).await;
        assert_unavailable_fast(
            "get_by_session_id",
            repo.get_by_session_id(&SessionId::new_random()),
        )
        .await;
        assert_unavailable_fast("save", repo.save(&lease, &session(chat), &note())).await;
        assert_unavailable_fast("delete", repo.delete(&lease, &session(chat), &change())).await;
        assert_unavailable_fast("update", repo.update(&lease, &session(chat), &change())).await;
        assert_unavailable_fast(
            "touch",
            repo.touch(&chat, datetime!(2026-01-02 00:00 UTC), None),
        )
        .await;
        assert_unavailable_fast(
            "list_expired",
            repo.list_expired(datetime!(2030-01-01 00:00 UTC), 10),
        )
        .await;
        assert_unavailable_fast("count", repo.count_active()).await;
        assert_unavailable_fast(
            "list",
            repo.list(&ListQuery {
                state: None,
                agent_id: None,
                page_size: 10,
                page_token: None,
            }),
        )
        .await;
        let started = Instant::now();
        let locked = locker.lock(&ChatId::from_uuid(uuid::Uuid::new_v4())).await;
        assert!(
            matches!(locked, Err(LockError::Unavailable(_))),
            "lock: {locked:?}"
        );
        assert!(started.elapsed() <= TIMEOUT + SLACK);
        let released = locker.release(Lease::new(chat, "x".to_owned())).await;
        assert!(
            matches!(released, Err(LockError::Unavailable(_))),
            "release: {released:?}"
        );
    }
    drop(lease);

    // Back on the same port (empty: the test server keeps nothing): the same instances recover.
    server.restart().await?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while repo.ping().await.is_err() {
        assert!(Instant::now() < deadline, "the connection never came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let lease = locker.lock(&chat).await?;
    let again = session(chat);
    assert_eq!(repo.save(&lease, &again, &note()).await?, 1);
    assert_eq!(repo.get_current_by_chat_id(&chat).await?, Some(again));
    locker.release(lease).await?;
    Ok(())
}

#[tokio::test]
async fn a_server_that_never_answers_times_out_instead_of_hanging() -> TestResult {
    // Accepts connections and never replies: the worst case for a client.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let accepting = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let config = RedisConfig {
        url: format!("redis://{addr}"),
        command_timeout: TIMEOUT,
        ..RedisConfig::default()
    };
    let started = Instant::now();
    let connected = RedisStore::connect(config.clone()).await;
    assert!(
        matches!(connected, Err(ConnectError::Unavailable(_))),
        "{connected:?}"
    );
    assert!(started.elapsed() <= TIMEOUT + SLACK);

    let repo = RedisStore::connect_lazy(config)?.repository();
    assert_unavailable_fast("ping", repo.ping()).await;
    assert_unavailable_fast("count", repo.count_active()).await;
    accepting.abort();
    Ok(())
}

#[tokio::test]
async fn connecting_to_a_closed_port_is_unavailable() -> TestResult {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let config = RedisConfig {
        url: format!("redis://127.0.0.1:{port}"),
        command_timeout: TIMEOUT,
        ..RedisConfig::default()
    };
    let started = Instant::now();
    let connected = RedisStore::connect(config).await;
    assert!(
        matches!(connected, Err(ConnectError::Unavailable(_))),
        "{connected:?}"
    );
    assert!(started.elapsed() <= TIMEOUT + SLACK);
    Ok(())
}

#[tokio::test]
async fn bad_settings_are_refused_by_name() {
    let short_lease = RedisConfig {
        lock_ttl: Duration::from_millis(1),
        ..RedisConfig::default()
    };
    match RedisStore::connect(short_lease).await {
        Err(ConnectError::InvalidConfig(error)) => assert_eq!(error.setting, "lock_ttl"),
        other => panic!("expected InvalidConfig, got {other:?}"),
    }
    let bad_url = RedisConfig {
        url: "http://nope".to_owned(),
        ..RedisConfig::default()
    };
    assert!(matches!(
        RedisStore::connect(bad_url).await,
        Err(ConnectError::InvalidUrl(_))
    ));
}
