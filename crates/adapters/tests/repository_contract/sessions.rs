//! Contract checks of saving, reading, deleting, counting and expiring sessions.

use redis_server::TestResult;
use sandboxd_domain::{SandboxSession, SessionId};

use crate::*;

pub(crate) async fn save_get_and_delete_round_trip(b: &dyn Backend) -> TestResult {
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

pub(crate) async fn saving_again_overwrites_and_the_chat_points_to_the_newest(
    b: &dyn Backend,
) -> TestResult {
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

pub(crate) async fn list_expired_is_earliest_first_bounded_and_inclusive(
    b: &dyn Backend,
) -> TestResult {
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

pub(crate) async fn list_expired_removes_stale_index_entries(b: &dyn Backend) -> TestResult {
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

pub(crate) async fn count_follows_saves_and_deletes(b: &dyn Backend) -> TestResult {
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
