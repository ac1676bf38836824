//! Contract checks of the lease: fenced writes and a held lock's waiting.

use std::time::Duration;

use redis_server::TestResult;
use sandboxd_domain::SandboxSession;
use sandboxd_usecase::ports::{Lease, LockError, RepositoryError};

use crate::*;

pub(crate) async fn writes_under_a_lost_or_foreign_lease_change_nothing(
    b: &dyn Backend,
) -> TestResult {
    let chat = new_chat();
    let original = session(chat, "default", at(10));
    put(b, &original).await?;
    let intruder = session(chat, "default", at(99));

    // A lease whose token the store never issued.
    let forged = Lease::new(chat, "forged".to_owned());
    assert!(matches!(
        b.repo().save(&forged, &intruder, &note()).await,
        Err(RepositoryError::LeaseLost)
    ));
    assert!(matches!(
        b.repo().delete(&forged, &original, &change()).await,
        Err(RepositoryError::LeaseLost)
    ));

    // A lease the holder already knows it lost.
    let known_lost = b.locker().lock(&chat).await?;
    known_lost.loss_flag().mark_lost();
    assert!(matches!(
        b.repo().save(&known_lost, &intruder, &note()).await,
        Err(RepositoryError::LeaseLost)
    ));
    b.locker().release(known_lost).await?;

    // Lease A vanishes from the store, B takes the chat: A can no longer write, B can.
    let a = b.locker().lock(&chat).await?;
    b.drop_lock(&chat).await?;
    let lease_b = b.locker().lock(&chat).await?;
    assert!(matches!(
        b.repo().save(&a, &intruder, &note()).await,
        Err(RepositoryError::LeaseLost)
    ));
    assert!(matches!(
        b.repo().delete(&a, &original, &change()).await,
        Err(RepositoryError::LeaseLost)
    ));
    assert!(matches!(
        b.repo()
            .update(
                &a,
                &SandboxSession {
                    expires_at: at(500),
                    ..original.clone()
                },
                &change()
            )
            .await,
        Err(RepositoryError::LeaseLost)
    ));
    let by_b = SandboxSession {
        expires_at: at(20),
        ..original.clone()
    };
    assert_eq!(b.repo().save(&lease_b, &by_b, &note()).await?, 1);
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

pub(crate) async fn a_held_lock_makes_others_wait_then_busy(b: &dyn Backend) -> TestResult {
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
