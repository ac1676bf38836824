//! The Redis lease locker against a real server: renewal, loss, fencing after expiry, release by
//! a non-owner, and mutual exclusion between racing lockers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/redis_server.rs"]
mod redis_server;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use redis_server::{AdapterConfig, RedisServer, TestResult, change, note, session_in, start_store};
use sandboxd_adapters::redis::{RedisConfig, RedisStore};
use sandboxd_domain::ChatId;
use sandboxd_usecase::ports::{
    Lease, LifecycleLocker, LockError, RepositoryError, SessionRepository,
};
use time::macros::datetime;

fn new_chat() -> ChatId {
    ChatId::from_uuid(uuid::Uuid::new_v4())
}

async fn lock_token(
    server: &RedisServer,
    prefix: &str,
    chat: &ChatId,
) -> TestResult<Option<String>> {
    let mut con = server.connection().await?;
    Ok(redis::cmd("GET")
        .arg(format!("{prefix}:lock:{chat}"))
        .query_async(&mut con)
        .await?)
}

#[tokio::test]
async fn renewal_keeps_a_lease_through_three_times_its_ttl() -> TestResult {
    let (server, prefix, store) = start_store(|config| {
        config.lock_ttl = Duration::from_millis(300);
        config.lock_wait = Duration::from_millis(50);
    })
    .await?;
    let (repo, locker) = (store.repository(), store.locker());
    let chat = new_chat();
    let lease = locker.lock(&chat).await?;

    // A long operation: 3x the TTL, checking nobody else can get in meanwhile.
    let until = Instant::now() + Duration::from_millis(900);
    while Instant::now() < until {
        assert!(matches!(
            locker.lock(&chat).await,
            Err(LockError::Busy { .. })
        ));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!lease.is_lost());
    assert_eq!(
        lock_token(&server, &prefix, &chat).await?.as_deref(),
        Some(lease.token())
    );
    repo.save(&lease, &session_in(chat, "c1"), &note()).await?;
    locker.release(lease).await?;
    assert_eq!(lock_token(&server, &prefix, &chat).await?, None);
    Ok(())
}

#[tokio::test]
async fn a_dropped_lease_stops_renewing_and_expires() -> TestResult {
    let (server, prefix, store) =
        start_store(|config| config.lock_ttl = Duration::from_millis(150)).await?;
    let locker = store.locker();
    let chat = new_chat();
    drop(locker.lock(&chat).await?);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(lock_token(&server, &prefix, &chat).await?, None);
    Ok(())
}

#[tokio::test]
async fn a_lease_whose_token_was_replaced_reports_loss() -> TestResult {
    let (server, prefix, store) =
        start_store(|config| config.lock_ttl = Duration::from_millis(300)).await?;
    let chat = new_chat();
    let lease = store.locker().lock(&chat).await?;
    let mut con = server.connection().await?;
    let _: () = redis::cmd("SET")
        .arg(format!("{prefix}:lock:{chat}"))
        .arg("someone-else")
        .query_async(&mut con)
        .await?;
    // The next renewal (a third of the TTL) finds the token gone.
    let deadline = Instant::now() + Duration::from_millis(300);
    while !lease.is_lost() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(lease.is_lost());
    assert!(matches!(
        store
            .repository()
            .save(&lease, &session_in(chat, "c1"), &note())
            .await,
        Err(RepositoryError::LeaseLost)
    ));
    Ok(())
}

#[tokio::test]
async fn an_expired_lease_cannot_overwrite_the_next_holders_work() -> TestResult {
    let (server, prefix, store) =
        start_store(|config| config.lock_ttl = Duration::from_millis(100)).await?;
    let (repo, locker) = (store.repository(), store.locker());
    let chat = new_chat();
    let mut con = server.connection().await?;

    // Lease A is taken with no renewal (a holder that stalled), and lets its key expire.
    let _: () = redis::cmd("SET")
        .arg(format!("{prefix}:lock:{chat}"))
        .arg("token-a")
        .arg("PX")
        .arg(100)
        .query_async(&mut con)
        .await?;
    let a = Lease::new(chat, "token-a".to_owned());
    let original = session_in(chat, "a-container");
    repo.save(&a, &original, &note()).await?;
    tokio::time::sleep(Duration::from_millis(150)).await;

    // B takes the chat and writes its own session.
    let b = locker.lock(&chat).await?;
    repo.delete(&b, &original, &change()).await?;
    let by_b = session_in(chat, "b-container");
    repo.save(&b, &by_b, &note()).await?;

    let stale_write = session_in(chat, "a-late");
    assert!(matches!(
        repo.save(&a, &stale_write, &note()).await,
        Err(RepositoryError::LeaseLost)
    ));
    assert!(matches!(
        repo.delete(&a, &by_b, &change()).await,
        Err(RepositoryError::LeaseLost)
    ));
    assert!(matches!(
        repo.update(
            &a,
            &sandboxd_domain::SandboxSession {
                expires_at: datetime!(2027-01-01 00:00 UTC),
                ..by_b.clone()
            },
            &change()
        )
        .await,
        Err(RepositoryError::LeaseLost)
    ));
    locker.release(a).await?;
    assert_eq!(
        lock_token(&server, &prefix, &chat).await?.as_deref(),
        Some(b.token())
    );
    locker.release(b).await?;

    assert_eq!(repo.get_current_by_chat_id(&chat).await?, Some(by_b));
    assert_eq!(repo.get_by_session_id(&stale_write.session_id).await?, None);
    assert_eq!(repo.count_active().await?, 1);
    Ok(())
}

#[tokio::test]
async fn release_by_a_non_owner_deletes_nothing() -> TestResult {
    let (server, prefix, store) = start_store(|_| {}).await?;
    let locker = store.locker();
    let chat = new_chat();
    let owner = locker.lock(&chat).await?;
    locker
        .release(Lease::new(chat, "impostor".to_owned()))
        .await?;
    assert_eq!(
        lock_token(&server, &prefix, &chat).await?.as_deref(),
        Some(owner.token())
    );
    // Releasing a chat nobody holds is not an error either.
    locker
        .release(Lease::new(new_chat(), "nobody".to_owned()))
        .await?;
    locker.release(owner).await?;
    assert_eq!(lock_token(&server, &prefix, &chat).await?, None);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_lockers_never_hold_one_chat_together() -> TestResult {
    let server = RedisServer::start().await?;
    let config = RedisConfig {
        lock_wait: Duration::from_secs(10),
        ..server.config()
    };
    let prefix = config.key_prefix.clone();
    // Two lockers on two connections, as two sandboxd replicas would be.
    let lockers = [
        Arc::new(RedisStore::connect(config.clone()).await?.locker()),
        Arc::new(RedisStore::connect(config).await?.locker()),
    ];
    let chat = new_chat();
    let held = Arc::new(AtomicBool::new(false));
    let acquisitions = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for worker in 0..4 {
        let locker = lockers[worker % 2].clone();
        let (held, acquisitions) = (held.clone(), acquisitions.clone());
        let url = server.url();
        let prefix = prefix.clone();
        tasks.push(tokio::spawn(async move {
            let mut con = redis::Client::open(url)?
                .get_multiplexed_async_connection()
                .await?;
            for _ in 0..50 {
                let lease = locker.lock(&chat).await?;
                assert!(!held.swap(true, Ordering::SeqCst), "two holders at once");
                let token: Option<String> = redis::cmd("GET")
                    .arg(format!("{prefix}:lock:{chat}"))
                    .query_async(&mut con)
                    .await?;
                assert_eq!(token.as_deref(), Some(lease.token()));
                tokio::task::yield_now().await;
                held.store(false, Ordering::SeqCst);
                acquisitions.fetch_add(1, Ordering::SeqCst);
                locker.release(lease).await?;
            }
            TestResult::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    assert_eq!(acquisitions.load(Ordering::SeqCst), 200);
    Ok(())
}
