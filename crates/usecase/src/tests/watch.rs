//! The event hub on the fakes: exactly the events after a cursor, in order, filtered; a watcher
//! that falls behind the broadcast catches up from the log without loss or duplicates; expired
//! cursors are refused; closing ends every watch.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use sandboxd_domain::{EventCursor, EventNote, EventReason, EventType, SandboxEvent};

use super::harness::*;
use crate::ports::{Clock, SessionRepository};
use crate::{ErrorKind, EventHub, UseCaseError, WatchError, WatchRequest};

fn hub(world: &World, buffer: usize) -> Arc<EventHub> {
    EventHub::new(
        world.repository.clone(),
        world.clock.clone(),
        Duration::from_secs(3600),
        buffer,
    )
}

fn all() -> WatchRequest {
    WatchRequest {
        after: None,
        chat_id: None,
        agent_id: None,
    }
}

/// Appends one event about `session`, with a distinct reason index so events are told apart.
async fn append(world: &World, session: &sandboxd_domain::SandboxSession, kind: EventType) {
    let note = EventNote::new(kind, EventReason::Requested, world.clock.now());
    world.repository.append_event(session, &note).await.unwrap();
}

async fn take(
    stream: &mut (impl futures::Stream<Item = Result<SandboxEvent, crate::PortError>> + Unpin),
    n: usize,
) -> Vec<SandboxEvent> {
    let mut out = Vec::new();
    while out.len() < n {
        let next = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("an event within 5 s")
            .expect("the stream is open")
            .expect("no error");
        out.push(next);
    }
    out
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

#[test]
fn watchers_get_exactly_the_events_after_their_cursor_in_order_and_filtered() {
    runtime().block_on(async {
        let world = World::new();
        let (a, b) = (
            world.existing_live(new_chat()),
            world.existing(new_chat(), "other", "/srv/b", Duration::from_secs(60)),
        );
        append(&world, &a, EventType::Created).await;
        let hub = hub(&world, 16);
        let reader = tokio::spawn(Arc::clone(&hub).run_reader());

        let mut everything = Box::pin(hub.watch(all()).await.unwrap());
        let mut of_b = Box::pin(
            hub.watch(WatchRequest {
                chat_id: Some(b.chat_id),
                ..all()
            })
            .await
            .unwrap(),
        );
        let mut of_default = Box::pin(
            hub.watch(WatchRequest {
                agent_id: Some(agent_id("default")),
                ..all()
            })
            .await
            .unwrap(),
        );
        for (session, kind) in [
            (&a, EventType::Paused),
            (&b, EventType::Created),
            (&a, EventType::Resumed),
            (&b, EventType::Deleted),
        ] {
            append(&world, session, kind).await;
        }
        let kinds = |events: Vec<SandboxEvent>| {
            events
                .into_iter()
                .map(|e| (e.session.chat_id, e.kind))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            kinds(take(&mut everything, 4).await),
            vec![
                (a.chat_id, EventType::Paused),
                (b.chat_id, EventType::Created),
                (a.chat_id, EventType::Resumed),
                (b.chat_id, EventType::Deleted),
            ],
            "an empty cursor: only what came after the watch opened"
        );
        assert_eq!(
            kinds(take(&mut of_b, 2).await),
            vec![
                (b.chat_id, EventType::Created),
                (b.chat_id, EventType::Deleted)
            ]
        );
        assert_eq!(
            kinds(take(&mut of_default, 2).await),
            vec![
                (a.chat_id, EventType::Paused),
                (a.chat_id, EventType::Resumed)
            ]
        );

        // From a cursor: exactly what followed it, then live events.
        let log = world.repository.events();
        let mut resumed = Box::pin(
            hub.watch(WatchRequest {
                after: Some(log[2].cursor),
                ..all()
            })
            .await
            .unwrap(),
        );
        let caught_up = take(&mut resumed, 2).await;
        assert_eq!(caught_up, log[3..].to_vec(), "no gap, no duplicate");
        append(&world, &a, EventType::Extended).await;
        assert_eq!(take(&mut resumed, 1).await[0].kind, EventType::Extended);

        hub.close();
        assert!(
            tokio::time::timeout(Duration::from_secs(5), everything.next())
                .await
                .unwrap()
                .is_none(),
            "closing ends the watch"
        );
        tokio::time::timeout(Duration::from_secs(5), reader)
            .await
            .unwrap()
            .unwrap();
    });
}

#[test]
fn a_watcher_that_falls_behind_catches_up_from_the_log_without_loss_or_duplicates() {
    runtime().block_on(async {
        let world = World::new();
        let session = world.existing_live(new_chat());
        let hub = hub(&world, 2);
        let reader = tokio::spawn(Arc::clone(&hub).run_reader());
        let mut slow = Box::pin(hub.watch(all()).await.unwrap());
        let mut fast = Box::pin(hub.watch(all()).await.unwrap());
        let mut fast_seen = Vec::new();
        for i in 0..40 {
            world.clock.advance(Duration::from_millis(1));
            append(
                &world,
                &session,
                if i % 2 == 0 {
                    EventType::Paused
                } else {
                    EventType::Resumed
                },
            )
            .await;
            // The fast watcher keeps up; the slow one is not polled at all.
            fast_seen.extend(take(&mut fast, 1).await);
        }
        let slow_seen = take(&mut slow, 40).await;
        let log = world.repository.events();
        assert_eq!(slow_seen, log, "every event once, in order");
        assert_eq!(fast_seen, log);
        hub.close();
        reader.await.unwrap();
    });
}

#[test]
fn a_cursor_older_than_the_retention_is_out_of_range_and_a_new_one_is_fine() {
    runtime().block_on(async {
        let world = World::new();
        let hub = hub(&world, 4);
        let now_ms = u64::try_from(world.clock.now().unix_timestamp_nanos() / 1_000_000).unwrap();
        let old = EventCursor {
            millis: now_ms - 3_600_001,
            sequence: 0,
        };
        let refused = hub
            .watch(WatchRequest {
                after: Some(old),
                ..all()
            })
            .await
            .err()
            .expect("refused");
        assert!(matches!(refused, WatchError::CursorExpired));
        assert_eq!(refused.kind(), ErrorKind::OutOfRange);
        assert!(refused.client_message().contains("ListSandboxes"));
        let ahead = EventCursor {
            millis: now_ms + 3_600_000,
            sequence: 0,
        };
        let refused = hub
            .watch(WatchRequest {
                after: Some(ahead),
                ..all()
            })
            .await
            .err()
            .expect("refused");
        assert_eq!(
            refused.kind(),
            ErrorKind::InvalidArgument { field: "after" }
        );
        let recent = EventCursor {
            millis: now_ms - 3_599_000,
            sequence: 0,
        };
        assert!(
            hub.watch(WatchRequest {
                after: Some(recent),
                ..all()
            })
            .await
            .is_ok()
        );
    });
}
