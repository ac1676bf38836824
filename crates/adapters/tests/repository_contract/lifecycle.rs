//! Contract checks of the lifecycle writes: fenced updates, lease-free touches, the event log
//! every write appends to, the per-state counts and filters, and admission reservations.

use std::time::Duration;

use redis_server::TestResult;
use sandboxd_domain::{EventNote, EventReason, EventType, SandboxSession, SandboxState, SessionId};
use sandboxd_usecase::ports::{
    Change, Lease, Limits, QuotaLimit, RepositoryError, Reservation, TouchMatch,
};

use crate::*;

fn requested(kind: EventType, at_s: i64) -> Change {
    Change::new(EventNote::new(kind, EventReason::Requested, at(at_s)))
}

/// A session with an idle timeout of 60 s and a hard cap at 200 s, active at `at(0)`.
fn idle_session(chat: ChatId) -> SandboxSession {
    SandboxSession {
        idle_timeout: Some(Duration::from_secs(60)),
        max_expires_at: Some(at(200)),
        ..session(chat, "default", at(60))
    }
}

pub(crate) async fn update_writes_the_lifecycle_and_is_fenced(b: &dyn Backend) -> TestResult {
    let chat = new_chat();
    let s = session(chat, "default", at(10));
    put(b, &s).await?;

    let lease = b.locker().lock(&chat).await?;
    let paused = SandboxSession {
        state: SandboxState::Paused,
        expires_at: at(30),
        last_active_at: at(5),
        endpoint: None,
        ..s.clone()
    };
    let stored = b
        .repo()
        .update(&lease, &paused, &requested(EventType::Paused, 5))
        .await?;
    assert_eq!(
        stored,
        Some(paused.clone()),
        "every lifecycle field written"
    );
    assert_eq!(b.repo().get_current_by_chat_id(&chat).await?, Some(paused));
    assert!(
        b.repo().list_expired(at(20), 10).await?.is_empty(),
        "no longer due at the old time"
    );
    assert_eq!(
        ids(&b.repo().list_expired(at(30), 10).await?),
        vec![s.session_id]
    );
    let gone = SandboxSession {
        session_id: SessionId::new_random(),
        ..s.clone()
    };
    assert_eq!(
        b.repo()
            .update(&lease, &gone, &requested(EventType::Extended, 6))
            .await?,
        None,
        "an unfenced update of a missing session is None"
    );
    b.locker().release(lease).await?;

    let forged = Lease::new(chat, "not-the-token".to_owned());
    let later = SandboxSession {
        expires_at: at(50),
        ..s.clone()
    };
    assert!(matches!(
        b.repo()
            .update(&forged, &later, &requested(EventType::Extended, 7))
            .await,
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

pub(crate) async fn a_fenced_change_loses_to_a_touch_that_moved_the_expiry(
    b: &dyn Backend,
) -> TestResult {
    let chat = new_chat();
    let decided_on = idle_session(chat);
    put(b, &decided_on).await?;
    // The touch lands after the (simulated) decision and moves the expiry to at(70).
    let touched = b.repo().touch(&chat, at(10), None).await?;
    assert_eq!(touched.as_ref().map(|s| s.expires_at), Some(at(70)));

    let lease = b.locker().lock(&chat).await?;
    let note = EventNote::new(EventType::Paused, EventReason::Idle, at(61));
    let paused = SandboxSession {
        state: SandboxState::Paused,
        ..decided_on.clone()
    };
    let before = b.events().read_after(None, 100).await?.len();
    assert!(matches!(
        b.repo()
            .update(&lease, &paused, &Change::fenced(note, &decided_on))
            .await,
        Err(RepositoryError::Changed)
    ));
    assert!(matches!(
        b.repo()
            .delete(&lease, &decided_on, &Change::fenced(note, &decided_on))
            .await,
        Err(RepositoryError::Changed)
    ));
    b.locker().release(lease).await?;
    assert_eq!(b.repo().get_current_by_chat_id(&chat).await?, touched);
    assert_eq!(
        b.events().read_after(None, 100).await?.len(),
        before,
        "a refused change appends no event"
    );

    // Fenced on the expiry that is stored now, the same change applies.
    let current = touched.ok_or("touched")?;
    let lease = b.locker().lock(&chat).await?;
    let stored = b
        .repo()
        .update(
            &lease,
            &SandboxSession {
                state: SandboxState::Paused,
                ..current.clone()
            },
            &Change::fenced(note, &current),
        )
        .await?;
    b.locker().release(lease).await?;
    assert_eq!(stored.map(|s| s.state), Some(SandboxState::Paused));
    Ok(())
}

pub(crate) async fn touch_records_activity_only_on_a_running_live_matching_session(
    b: &dyn Backend,
) -> TestResult {
    let chat = new_chat();
    assert_eq!(b.repo().touch(&chat, at(1), None).await?, None);

    // Without an idle timeout: the activity only.
    let fixed = session(chat, "default", at(60));
    put(b, &fixed).await?;
    let touched = b.repo().touch(&chat, at(5), None).await?;
    assert_eq!(
        touched,
        Some(SandboxSession {
            last_active_at: at(5),
            ..fixed.clone()
        })
    );

    // With one: the expiry follows the activity, never past the cap, never backwards.
    let idle = idle_session(new_chat());
    put(b, &idle).await?;
    let chat = idle.chat_id;
    let at_30 = b
        .repo()
        .touch(&chat, at(30), None)
        .await?
        .ok_or("session")?;
    assert_eq!((at_30.last_active_at, at_30.expires_at), (at(30), at(90)));
    let at_80 = b
        .repo()
        .touch(&chat, at(80), None)
        .await?
        .ok_or("session")?;
    assert_eq!((at_80.last_active_at, at_80.expires_at), (at(80), at(140)));
    assert!(
        !ids(&b.repo().list_expired(at(100), 10).await?).contains(&idle.session_id),
        "the expiry index moved with it"
    );
    b.repo().touch(&chat, at(130), None).await?;
    let capped = b
        .repo()
        .touch(&chat, at(150), None)
        .await?
        .ok_or("session")?;
    assert_eq!(capped.expires_at, at(200));
    let early = b
        .repo()
        .touch(&chat, at(120), None)
        .await?
        .ok_or("session")?;
    assert_eq!(early.expires_at, at(200), "never moved backwards");

    // Not touched: another agent or volume asked, expired, or not running.
    let other = agent("other");
    let volume = VolumePath::parse("/srv/chats/x")?;
    let refused = b
        .repo()
        .touch(
            &chat,
            at(121),
            Some(TouchMatch {
                agent_id: &other,
                volume_host_path: &volume,
            }),
        )
        .await?;
    assert_eq!(refused.map(|s| s.last_active_at), Some(at(120)));
    let expired = b.repo().touch(&chat, at(200), None).await?;
    assert_eq!(expired.map(|s| s.last_active_at), Some(at(120)));

    let paused = SandboxSession {
        state: SandboxState::Paused,
        ..early.clone()
    };
    let lease = b.locker().lock(&chat).await?;
    b.repo()
        .update(&lease, &paused, &requested(EventType::Paused, 122))
        .await?;
    b.locker().release(lease).await?;
    let not_running = b.repo().touch(&chat, at(123), None).await?;
    assert_eq!(
        not_running.map(|s| (s.state, s.last_active_at)),
        Some((SandboxState::Paused, at(120)))
    );
    Ok(())
}

pub(crate) async fn every_write_appends_its_event_with_the_session(b: &dyn Backend) -> TestResult {
    let chat = new_chat();
    let s = session(chat, "default", at(60));
    let start = b.events().last_cursor().await?;
    put(b, &s).await?;
    let lease = b.locker().lock(&chat).await?;
    let extended = SandboxSession {
        expires_at: at(90),
        ..s.clone()
    };
    b.repo()
        .update(&lease, &extended, &requested(EventType::Extended, 2))
        .await?;
    b.repo()
        .delete(&lease, &extended, &requested(EventType::Deleted, 3))
        .await?;
    // Deleting what is gone changes nothing and appends nothing.
    b.repo()
        .delete(&lease, &extended, &requested(EventType::Deleted, 4))
        .await?;
    b.locker().release(lease).await?;
    b.repo()
        .append_event(
            &s,
            &EventNote::new(EventType::Reconciled, EventReason::Stray, at(5)),
        )
        .await?;

    let events = b.events().read_after(start, 100).await?;
    let seen: Vec<_> = events
        .iter()
        .map(|e| (e.kind, e.reason, e.occurred_at, e.session.clone()))
        .collect();
    assert_eq!(
        seen,
        vec![
            (EventType::Created, EventReason::Requested, at(0), s.clone()),
            (
                EventType::Extended,
                EventReason::Requested,
                at(2),
                extended.clone()
            ),
            (
                EventType::Deleted,
                EventReason::Requested,
                at(3),
                extended.clone()
            ),
            (EventType::Reconciled, EventReason::Stray, at(5), s.clone()),
        ]
    );
    assert!(
        events.windows(2).all(|w| w[0].cursor < w[1].cursor),
        "cursors increase"
    );
    assert_eq!(
        b.events().last_cursor().await?,
        events.last().map(|e| e.cursor)
    );
    Ok(())
}

pub(crate) async fn events_are_read_after_a_cursor_and_waited_for(b: &dyn Backend) -> TestResult {
    let first = session(new_chat(), "default", at(60));
    put(b, &first).await?;
    let after_first = b.events().last_cursor().await?;
    assert!(after_first.is_some());
    assert!(b.events().read_after(after_first, 10).await?.is_empty());
    assert!(
        b.events()
            .wait_after(after_first, 10, Duration::from_millis(50))
            .await?
            .is_empty(),
        "nothing new: the wait ends empty"
    );

    let events = b.events();
    let waiting = tokio::spawn(async move {
        events
            .wait_after(after_first, 10, Duration::from_secs(5))
            .await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second = session(new_chat(), "default", at(60));
    put(b, &second).await?;
    let woken = waiting.await??;
    assert_eq!(
        woken
            .iter()
            .map(|e| e.session.session_id)
            .collect::<Vec<_>>(),
        vec![second.session_id],
        "a waiting read wakes with the appended event"
    );
    let limited = b.events().read_after(None, 1).await?;
    assert_eq!(limited.len(), 1);
    Ok(())
}

pub(crate) async fn state_counts_and_state_filters_follow_transitions(
    b: &dyn Backend,
) -> TestResult {
    let running = session(new_chat(), "default", at(60));
    let to_pause = session(new_chat(), "default", at(60));
    let to_hibernate = session(new_chat(), "other", at(60));
    for s in [&running, &to_pause, &to_hibernate] {
        put(b, s).await?;
    }
    for (s, state) in [
        (&to_pause, SandboxState::Paused),
        (&to_hibernate, SandboxState::Hibernated),
    ] {
        let lease = b.locker().lock(&s.chat_id).await?;
        let changed = SandboxSession {
            state,
            ..(*s).clone()
        };
        b.repo()
            .update(&lease, &changed, &requested(EventType::Paused, 1))
            .await?;
        b.locker().release(lease).await?;
    }
    let counts = b.repo().count_by_state().await?;
    assert_eq!(
        (counts.running, counts.paused, counts.hibernated),
        (1, 1, 1)
    );
    let of_state = |state| async move {
        let page = b
            .repo()
            .list(&ListQuery {
                agent_id: None,
                state: Some(state),
                page_size: 10,
                page_token: None,
            })
            .await?;
        TestResult::Ok(ids(&page.sessions))
    };
    assert_eq!(
        of_state(SandboxState::Running).await?,
        vec![running.session_id]
    );
    assert_eq!(
        of_state(SandboxState::Paused).await?,
        vec![to_pause.session_id]
    );
    assert_eq!(
        of_state(SandboxState::Hibernated).await?,
        vec![to_hibernate.session_id]
    );
    remove(b, &to_pause).await?;
    let counts = b.repo().count_by_state().await?;
    assert_eq!(
        (counts.running, counts.paused, counts.hibernated),
        (1, 0, 1)
    );
    assert!(of_state(SandboxState::Paused).await?.is_empty());
    Ok(())
}

fn reservation(agent_name: &str, expires_at: Timestamp) -> Reservation {
    Reservation {
        session_id: SessionId::new_random(),
        agent_id: agent(agent_name),
        expires_at,
        replacing: None,
    }
}

pub(crate) async fn reservations_count_against_the_limits_with_the_sessions(
    b: &dyn Backend,
) -> TestResult {
    let limits = Limits {
        deployment: Some(3),
        agent: Some(2),
    };
    put(b, &session(new_chat(), "default", at(600))).await?;
    let first = reservation("default", at(60));
    assert_eq!(b.repo().reserve(&first, limits, at(0)).await?, Ok(()));
    // The agent has one session and one reservation: full for it, not for another agent.
    let second = reservation("default", at(60));
    assert_eq!(
        b.repo().reserve(&second, limits, at(0)).await?,
        Err(QuotaLimit::Agent(2))
    );
    let other = reservation("other", at(60));
    assert_eq!(b.repo().reserve(&other, limits, at(0)).await?, Ok(()));
    let third = reservation("other", at(60));
    assert_eq!(
        b.repo().reserve(&third, limits, at(0)).await?,
        Err(QuotaLimit::Deployment(3)),
        "one session and two reservations fill the deployment"
    );
    // A release makes room; so does a reservation's expiry.
    b.repo().release(&first).await?;
    assert_eq!(b.repo().reserve(&third, limits, at(0)).await?, Ok(()));
    let late = reservation("other", at(120));
    assert_eq!(
        b.repo().reserve(&late, limits, at(30)).await?,
        Err(QuotaLimit::Deployment(3))
    );
    assert_eq!(
        b.repo().reserve(&late, limits, at(60)).await?,
        Ok(()),
        "reservations that expired at 60 s no longer count"
    );
    Ok(())
}

pub(crate) async fn a_replaced_session_does_not_count_and_no_limit_admits_all(
    b: &dyn Backend,
) -> TestResult {
    let old = session(new_chat(), "default", at(10));
    put(b, &old).await?;
    let limits = Limits {
        deployment: Some(1),
        agent: Some(1),
    };
    assert_eq!(
        b.repo()
            .reserve(&reservation("default", at(60)), limits, at(20))
            .await?,
        Err(QuotaLimit::Deployment(1))
    );
    let replacing = Reservation {
        replacing: Some(old.session_id),
        ..reservation("default", at(60))
    };
    assert_eq!(b.repo().reserve(&replacing, limits, at(20)).await?, Ok(()));
    for _ in 0..5 {
        assert_eq!(
            b.repo()
                .reserve(&reservation("default", at(60)), Limits::default(), at(20))
                .await?,
            Ok(())
        );
    }
    Ok(())
}

pub(crate) async fn concurrent_reservations_never_exceed_the_limit(b: &dyn Backend) -> TestResult {
    let limits = Limits {
        deployment: Some(5),
        agent: None,
    };
    let repo = b.repo();
    let attempts = (0..40).map(|_| {
        let repo = Arc::clone(&repo);
        async move {
            repo.reserve(&reservation("default", at(60)), limits, at(0))
                .await
        }
    });
    let outcomes = futures::future::join_all(attempts).await;
    let admitted = outcomes
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .filter(Result::is_ok)
        .count();
    assert_eq!(admitted, 5);
    Ok(())
}
