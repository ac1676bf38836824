//! CreateSandbox when it succeeds: created, reused, refused as a conflict, replaced, and under
//! contention (docs/design.md §6). Its failures are in `create_failures`.

use crate::telemetry::{event, metric, span};
use std::sync::Arc;
use std::time::Duration;

use sandboxd_domain::{ChatId, ConflictReason, SandboxSession};

use super::harness::*;
use crate::ports::{Clock, ContainerState, SandboxLabels};
use crate::{CreateResult, CreateSandboxCommand, CreateSandboxError, ErrorKind, UseCaseError};
use sandboxd_domain::ContainerId;

fn request_span_fields(cmd: &CreateSandboxCommand) -> Vec<(&'static str, String)> {
    vec![
        (span::CHAT_ID, cmd.chat_id.to_string()),
        (span::AGENT_ID, cmd.agent_id.to_string()),
        (span::VOLUME_HOST_PATH, cmd.volume_host_path.to_string()),
    ]
}

/// A create that gets past the lock-free read-and-touch: that round trip, then under the lease
/// the same round trip again and `inner`.
pub(super) fn create_calls(chat: ChatId, inner: &[String]) -> Vec<String> {
    let mut calls = vec![
        format!("repository.touch({chat})"),
        format!("locker.lock({chat})"),
        format!("repository.touch({chat})"),
    ];
    calls.extend_from_slice(inner);
    calls.push(format!("locker.release({chat})"));
    calls
}

#[test]
fn creates_a_new_sandbox_when_the_chat_has_none() {
    let world = World::new();
    let chat = new_chat();
    let cmd = create_command(chat, "default", "/srv/a");
    let usecase = world.create();
    let (out, cap) = capture(usecase.execute(cmd.clone()));
    let out = out.unwrap();

    assert_eq!(out.result, CreateResult::Created);
    let session = &out.session;
    assert_eq!(session.chat_id, chat);
    assert_eq!(session.created_at, world.clock.now());
    assert_eq!(session.expires_at, session.created_at + TTL);
    assert_eq!(world.repository.all(), vec![session.clone()]);
    assert_eq!(world.runtime.running(), vec![session.container_id.clone()]);
    assert_eq!(
        world.calls.calls(),
        create_calls(
            chat,
            &[
                "runtime.validate(default:local,/srv/a)".to_owned(),
                format!("runtime.list_chat({chat})"),
                format!("runtime.create({})", session.session_id),
                format!("repository.save({})", session.session_id),
            ]
        )
    );
    cap.assert_counters(&["sandbox_create_total{result=created} 1"]);
    assert_eq!(cap.gauge(metric::ACTIVE_COUNT), Some(1.0));
    let mut want = request_span_fields(&cmd);
    want.extend(session_span_fields(session));
    want.push((span::RESULT, "created".to_owned()));
    assert_eq!(cap.span(span::CREATE).fields, fields(&want));
    assert_eq!(cap.event_names(), vec![event::SANDBOX_CREATED]);
    let event = cap.assert_session_event(event::SANDBOX_CREATED, session, &[]);
    assert_eq!(event.level, tracing::Level::INFO);
    assert_eq!(event.span.as_deref(), Some(span::CREATE));
    assert!(!world.locker.is_held(&chat), "the lease is released");
}

#[test]
fn reuses_a_live_session_whose_agent_and_volume_match() {
    let (world, chat, existing) = World::with_live_session();
    let cmd = create_command(chat, "default", "/srv/a");
    let (out, cap) = capture(world.create().execute(cmd.clone()));
    let out = out.unwrap();

    assert_eq!(out.result, CreateResult::Reused);
    let touched = SandboxSession {
        last_active_at: world.clock.now(),
        ..existing.clone()
    };
    assert_eq!(
        out.session, touched,
        "returned with the reuse as its last activity"
    );
    assert_eq!(world.repository.all(), vec![touched]);
    assert_eq!(
        world.calls.calls(),
        vec![format!("repository.touch({chat})")],
        "a reuse of a live session is one round trip: no lease, no runtime"
    );
    cap.assert_counters(&["sandbox_create_total{result=reused} 1"]);
    assert_eq!(
        cap.gauge(metric::ACTIVE_COUNT),
        None,
        "no write, no gauge update"
    );
    let mut want = request_span_fields(&cmd);
    want.extend(session_span_fields(&existing));
    want.push((span::RESULT, "reused".to_owned()));
    assert_eq!(cap.span(span::CREATE).fields, fields(&want));
    cap.assert_session_event(event::SANDBOX_REUSED, &existing, &[]);
    assert_eq!(cap.event_names(), vec![event::SANDBOX_REUSED]);
}

/// A live `default` session on `/srv/a`, then a create of `agent` on `volume`: refused.
#[test]
fn a_live_session_refuses_another_agent_or_volume_as_a_conflict() {
    for (agent, volume, reason, reason_text) in [
        ("other", "/srv/a", ConflictReason::AgentId, "agent_id"),
        (
            "default",
            "/srv/b",
            ConflictReason::VolumeHostPath,
            "volume_host_path",
        ),
        (
            "other",
            "/srv/b",
            ConflictReason::AgentIdAndVolumeHostPath,
            "agent_id,volume_host_path",
        ),
    ] {
        let (world, chat, existing) = World::with_live_session();
        let cmd = create_command(chat, agent, volume);
        let (out, cap) = capture(world.create().execute(cmd.clone()));

        let err = out.unwrap_err();
        assert!(
            matches!(&err, CreateSandboxError::Conflict { chat_id, session_id, reason: r }
                if *chat_id == chat && *session_id == existing.session_id && *r == reason),
            "{err:?}"
        );
        assert_eq!(err.kind(), ErrorKind::Conflict { reason });
        assert_eq!(
            world.runtime.running(),
            vec![existing.container_id.clone()],
            "nothing started or stopped"
        );
        assert_eq!(world.calls.calls_of("runtime."), Vec::<String>::new());
        assert_eq!(world.repository.all(), vec![existing.clone()]);
        assert_eq!(
            cap.counter_lines(),
            vec![format!(
                "sandbox_create_total{{reason={reason_text},result=conflict}} 1"
            )],
            "the conflict is counted once, without an error count"
        );
        let mut want = request_span_fields(&cmd);
        want.extend(session_span_fields(&existing));
        want.push((span::RESULT, "conflict".to_owned()));
        want.push((span::CONFLICT_REASON, reason_text.to_owned()));
        assert_eq!(cap.span(span::CREATE).fields, fields(&want));
        let event = cap.assert_session_event(
            event::SANDBOX_CONFLICT,
            &existing,
            &[
                ("requested_agent_id", agent.to_owned()),
                ("session_agent_id", "default".to_owned()),
                ("requested_volume_host_path", volume.to_owned()),
                ("session_volume_host_path", "/srv/a".to_owned()),
                ("reason", reason_text.to_owned()),
            ],
        );
        assert_eq!(event.level, tracing::Level::WARN);
        assert_eq!(cap.event_names(), vec![event::SANDBOX_CONFLICT]);
        assert!(!world.locker.is_held(&chat));
    }
}

#[test]
fn replaces_a_live_session_whose_node_was_lost_without_reusing_it() {
    let mut world = World::new();
    let chat = new_chat();
    let old = world.existing_live(chat);
    let old = world.on_lost_node(&old);
    let cmd = create_command(chat, "default", "/srv/a");
    let (out, _cap) = capture(world.create().execute(cmd));
    let out = out.unwrap();

    assert_eq!(out.result, CreateResult::Replaced);
    assert_ne!(out.session.session_id, old.session_id);
    assert_ne!(out.session.container_id, old.container_id);
    assert_eq!(world.repository.all(), vec![out.session.clone()]);
    // The lock-free reuse path did not answer: the lease was taken and the old session deleted.
    let calls = world.calls.calls();
    assert!(calls.contains(&format!("locker.lock({chat})")), "{calls:?}");
    assert!(
        calls.contains(&format!("repository.delete({})", old.session_id)),
        "{calls:?}"
    );
}

#[test]
fn replaces_an_expired_session_stopping_the_old_container_first() {
    let world = World::new();
    let chat = new_chat();
    let old = world.existing_expired(chat, "default", "/srv/a");
    // A replacement may use another agent and volume: the old session no longer binds them.
    let cmd = create_command(chat, "other", "/srv/b");
    let (out, cap) = capture(world.create().execute(cmd.clone()));
    let out = out.unwrap();

    assert_eq!(out.result, CreateResult::Replaced);
    let new = &out.session;
    assert_ne!(new.session_id, old.session_id);
    assert_eq!(world.repository.all(), vec![new.clone()]);
    assert_eq!(
        world.runtime.running(),
        vec![new.container_id.clone()],
        "old container stopped"
    );
    assert_eq!(
        world.calls.calls(),
        create_calls(
            chat,
            &[
                "runtime.validate(other:local,/srv/b)".to_owned(),
                format!("runtime.list_chat({chat})"),
                format!("runtime.remove_gracefully({})", old.container_id),
                format!("repository.delete({})", old.session_id),
                format!("runtime.create({})", new.session_id),
                format!("repository.save({})", new.session_id),
            ]
        )
    );
    cap.assert_counters(&["sandbox_create_total{result=replaced} 1"]);
    assert_eq!(cap.gauge(metric::ACTIVE_COUNT), Some(1.0));
    let mut want = request_span_fields(&cmd);
    want.extend([
        (span::PREVIOUS_SESSION_ID, old.session_id.to_string()),
        (span::PREVIOUS_CONTAINER_ID, old.container_id.to_string()),
        (span::PREVIOUS_AGENT_ID, "default".to_owned()),
        (span::PREVIOUS_VOLUME_HOST_PATH, "/srv/a".to_owned()),
        (span::NEW_SESSION_ID, new.session_id.to_string()),
        (span::NEW_CONTAINER_ID, new.container_id.to_string()),
        (span::NEW_AGENT_ID, "other".to_owned()),
        (span::NEW_VOLUME_HOST_PATH, "/srv/b".to_owned()),
        (span::RESULT, "replaced".to_owned()),
    ]);
    want.extend(session_span_fields(new));
    assert_eq!(cap.span(span::CREATE).fields, fields(&want));
    assert_eq!(
        cap.event_names(),
        vec![event::SANDBOX_REPLACED, event::SANDBOX_CREATED]
    );
    cap.assert_session_event(event::SANDBOX_REPLACED, &old, &[]);
    cap.assert_session_event(event::SANDBOX_CREATED, new, &[]);
}

#[test]
fn a_session_expiring_exactly_now_is_replaced_not_reused() {
    let world = World::new();
    let chat = new_chat();
    world.existing(chat, "default", "/srv/a", Duration::ZERO);
    let (out, _) = world.create_default(chat);
    assert_eq!(out.unwrap().result, CreateResult::Replaced);
}

#[test]
fn a_session_created_while_waiting_for_the_lease_is_reused_after_the_re_read() {
    let world = World::new();
    let chat = new_chat();
    // Another holder saves a live session between the lock-free read and this lease.
    let theirs = world.existing_live(chat);
    world.repository.remove_direct(&theirs.session_id);
    let (repository, saved) = (world.repository.clone(), theirs.clone());
    world
        .locker
        .on_lock(move |_| repository.insert(saved.clone()));
    world.calls.clear();
    let (out, cap) = world.create_default(chat);
    let out = out.unwrap();
    assert_eq!(out.result, CreateResult::Reused);
    assert_eq!(out.session, theirs.touched_at(world.clock.now()));
    assert_eq!(world.runtime.created_total(), 0);
    assert_eq!(world.calls.calls(), create_calls(chat, &[]));
    cap.assert_counters(&["sandbox_create_total{result=reused} 1"]);
}

#[test]
fn thirty_two_concurrent_creates_for_one_chat_start_exactly_one_container() {
    let world = World::new();
    let chat = new_chat();
    let usecase = Arc::new(world.create());
    let (outs, cap) = capture(futures::future::join_all((0..32).map(|_| {
        let usecase = usecase.clone();
        async move {
            usecase
                .execute(create_command(chat, "default", "/srv/a"))
                .await
        }
    })));
    let outs: Vec<_> = outs.into_iter().map(Result::unwrap).collect();
    assert_eq!(world.runtime.created_total(), 1);
    assert_eq!(
        outs.iter()
            .filter(|o| o.result == CreateResult::Created)
            .count(),
        1
    );
    assert_eq!(
        outs.iter()
            .filter(|o| o.result == CreateResult::Reused)
            .count(),
        31
    );
    assert!(
        outs.iter().all(|o| o.session == outs[0].session),
        "all answers name one session"
    );
    cap.assert_counters(&[
        "sandbox_create_total{result=created} 1",
        "sandbox_create_total{result=reused} 31",
    ]);
}

#[test]
fn a_create_removes_every_stray_container_of_the_chat_before_starting_its_own() {
    // Another volume's leftover and a stopped orphan both carry the chat's label; neither can
    // serve the request as it is.
    let world = World::new();
    let chat = new_chat();
    let now = world.clock.now();
    for (name, volume, state) in [
        ("stray-a", "/srv/z", ContainerState::Running),
        ("stray-b", "/srv/a", ContainerState::Stopped),
    ] {
        world.runtime.insert(
            ContainerId::parse(name).unwrap(),
            SandboxLabels::of(&world.spec(chat, "default", volume, now, now + TTL)),
            state,
        );
    }
    let unrelated = world.existing(new_chat(), "default", "/srv/b", TTL);
    let (out, cap) = capture(
        world
            .create()
            .execute(create_command(chat, "default", "/srv/a")),
    );
    let created = out.unwrap();
    assert_eq!(created.result, CreateResult::Created);
    let mut running = world.runtime.running();
    running.sort();
    let mut want = vec![created.session.container_id.clone(), unrelated.container_id];
    want.sort();
    assert_eq!(running, want, "exactly one container for the chat");
    let calls = world.calls.calls();
    let removed: Vec<_> = calls
        .iter()
        .filter(|c| c.starts_with("runtime.force_remove("))
        .collect();
    assert_eq!(
        removed,
        vec![
            "runtime.force_remove(stray-a)",
            "runtime.force_remove(stray-b)"
        ]
    );
    let create = calls
        .iter()
        .position(|c| c.starts_with("runtime.create("))
        .unwrap();
    assert!(
        calls[..create]
            .iter()
            .any(|c| c == "runtime.force_remove(stray-b)"),
        "the strays go before the new container starts: {calls:?}"
    );
    assert_eq!(
        cap.counter_lines(),
        vec![
            "sandbox_create_total{result=created} 1",
            "sandbox_reconcile_total{result=stray_removed} 2",
        ]
    );
}

#[test]
fn a_create_sweeps_even_a_matching_container_that_no_session_names() {
    // Such a container may be a stale lease holder's create, still waiting for readiness and
    // about to be compensated: only reconcile, which judges it under the lease, adopts.
    let world = World::new();
    let chat = new_chat();
    let created_at = world.clock.now() - Duration::from_secs(60);
    let spec = world.spec(chat, "default", "/srv/a", created_at, created_at + TTL * 3);
    let swept = ContainerId::parse("unsaved").unwrap();
    world.runtime.insert(
        swept.clone(),
        SandboxLabels::of(&spec),
        ContainerState::Running,
    );
    let (out, cap) = capture(
        world
            .create()
            .execute(create_command(chat, "default", "/srv/a")),
    );
    let out = out.unwrap();
    assert_eq!(out.result, CreateResult::Created);
    assert_ne!(out.session.session_id, spec.session_id);
    assert_eq!(
        world.runtime.running(),
        vec![out.session.container_id.clone()]
    );
    assert_eq!(world.repository.all(), vec![out.session]);
    assert_eq!(
        cap.counter_lines(),
        vec![
            "sandbox_create_total{result=created} 1",
            "sandbox_reconcile_total{result=stray_removed} 1",
        ]
    );
}
