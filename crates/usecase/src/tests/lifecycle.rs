//! The lifecycle on the fakes: idle timeouts and the hard cap, pause, hibernate and resume
//! (requested, idle and through CreateSandbox), touch, the events each change appends, and the
//! compensation when a write after the engine call fails.

use std::time::Duration;

use sandboxd_domain::{
    AgentProfile, ChatId, EventReason, EventType, OnIdle, SandboxSession, SandboxState,
};

use super::harness::*;
use crate::ports::{Clock, ContainerState, RepositoryError};
use crate::telemetry::{event, metric, span};
use crate::testing::{RepoOp, RuntimeOp};
use crate::{
    CleanupExpiredSandboxes, CleanupOptions, CreateResult, ErrorKind, ExtendSandbox,
    ExtendSandboxCommand, LifecycleError, PauseSandbox, ResumeSandbox, TouchSandbox, UseCaseError,
};

const IDLE: Duration = Duration::from_secs(60);

/// A world whose `default` profile has an idle timeout of a minute and `on_idle`.
fn idle_world(on_idle: OnIdle, max_lifetime: Option<Duration>) -> World {
    World::new().with_profile("default", |profile: &mut AgentProfile| {
        profile.idle_timeout = Some(IDLE);
        profile.on_idle = on_idle;
        profile.max_lifetime = max_lifetime;
    })
}

fn cleanup(world: &World) -> CleanupExpiredSandboxes {
    CleanupExpiredSandboxes::new(
        world.ports.clone(),
        world.profiles.clone(),
        TTL,
        CleanupOptions::default(),
    )
}

fn pause(world: &World) -> PauseSandbox {
    PauseSandbox::new(world.ports.clone(), world.profiles.clone(), TTL)
}

fn resume(world: &World) -> ResumeSandbox {
    ResumeSandbox::new(world.ports.clone(), world.profiles.clone(), TTL)
}

fn touch(world: &World) -> TouchSandbox {
    TouchSandbox::new(world.ports.clone())
}

/// Creates the chat's sandbox through the use case and clears the call log.
fn created(world: &World, chat: ChatId) -> SandboxSession {
    let (out, _) = world.create_default(chat);
    let session = out.unwrap().session;
    world.calls.clear();
    session
}

/// The (type, reason, state) of every event so far.
fn event_log(world: &World) -> Vec<(EventType, EventReason, SandboxState)> {
    world
        .repository
        .events()
        .into_iter()
        .map(|e| (e.kind, e.reason, e.session.state))
        .collect()
}

fn container_state(world: &World, session: &SandboxSession) -> ContainerState {
    world.runtime.state_of(&session.container_id)
}

#[test]
fn a_new_session_takes_its_profiles_idle_timeout_and_hard_cap() {
    let world = idle_world(OnIdle::Delete, Some(Duration::from_secs(600)));
    let now = world.clock.now();
    let session = created(&world, new_chat());
    assert_eq!(session.state, SandboxState::Running);
    assert_eq!(session.last_active_at, now);
    assert_eq!(session.expires_at, now + IDLE, "idle timeout, not the TTL");
    assert_eq!(session.max_expires_at, Some(now + Duration::from_secs(600)));
    assert_eq!(session.idle_timeout, Some(IDLE));
    assert_eq!(
        event_log(&world),
        vec![(
            EventType::Created,
            EventReason::Requested,
            SandboxState::Running
        )]
    );
}

#[test]
fn without_lifecycle_settings_a_profile_behaves_as_before() {
    let world = World::new();
    let now = world.clock.now();
    let session = created(&world, new_chat());
    assert_eq!(session.expires_at, now + TTL);
    assert_eq!((session.max_expires_at, session.idle_timeout), (None, None));
    world.clock.advance(TTL / 2);
    let (out, _) = world.create_default(session.chat_id);
    let reused = out.unwrap();
    assert_eq!(reused.result, CreateResult::Reused);
    assert_eq!(
        reused.session.expires_at, session.expires_at,
        "activity does not move a TTL"
    );
    assert_eq!(reused.session.last_active_at, world.clock.now());
}

#[test]
fn an_idle_sandbox_is_paused_by_the_cleanup_and_a_create_resumes_it() {
    let world = idle_world(OnIdle::Pause, None);
    let chat = new_chat();
    let session = created(&world, chat);
    world.clock.advance(IDLE + Duration::from_secs(1));

    let (report, cap) = capture(cleanup(&world).execute());
    let report = report.unwrap();
    assert!(report.cleaned.is_empty());
    let paused = &report.suspended[0];
    assert_eq!(paused.state, SandboxState::Paused);
    assert_eq!(
        paused.expires_at,
        session.expires_at + AgentProfile::new("x").paused_retention,
        "kept paused_retention from when it went idle"
    );
    assert_eq!(container_state(&world, &session), ContainerState::Paused);
    assert!(
        cap.counter_lines()
            .contains(&"sandbox_pause_total{result=paused} 1".to_owned())
    );
    cap.assert_session_event(
        event::SANDBOX_PAUSED,
        paused,
        &[("reason", "idle".to_owned())],
    );

    // Touching a paused sandbox is refused: resume it instead.
    let (touched, _) = capture(touch(&world).execute(chat));
    let error = touched.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::FailedPrecondition);
    assert!(error.client_message().contains("resume it first"));

    world.clock.advance(Duration::from_secs(5));
    world.calls.clear();
    let (out, cap) = world.create_default(chat);
    let out = out.unwrap();
    assert_eq!(out.result, CreateResult::Resumed);
    assert_eq!(
        out.session.session_id, session.session_id,
        "the same session"
    );
    assert_eq!(out.session.container_id, session.container_id);
    assert_eq!(out.session.state, SandboxState::Running);
    assert_eq!(out.session.expires_at, world.clock.now() + IDLE);
    assert_eq!(container_state(&world, &session), ContainerState::Running);
    cap.assert_counters(&["sandbox_create_total{result=resumed} 1"]);
    assert_eq!(
        world.calls.calls(),
        super::create::create_calls(
            chat,
            &[
                format!("runtime.unpause({})", session.container_id),
                format!("repository.update({})", session.session_id),
            ]
        )
    );
    assert_eq!(
        event_log(&world),
        vec![
            (
                EventType::Created,
                EventReason::Requested,
                SandboxState::Running
            ),
            (EventType::Paused, EventReason::Idle, SandboxState::Paused),
            (
                EventType::Resumed,
                EventReason::Requested,
                SandboxState::Running
            ),
        ]
    );
}

#[test]
fn an_idle_sandbox_on_a_lost_node_is_deleted_not_paused() {
    let mut world = idle_world(OnIdle::Pause, None);
    let session = created(&world, new_chat());
    let session = world.on_lost_node(&session);
    world.clock.advance(IDLE + Duration::from_secs(1));
    let (report, _cap) = capture(cleanup(&world).execute());
    let report = report.unwrap();
    assert!(report.suspended.is_empty(), "{report:?}");
    assert_eq!(report.cleaned, vec![session.clone()]);
    assert_eq!(report.error_count, 0);
    assert!(world.repository.all().is_empty());
    assert!(
        !world
            .calls
            .calls()
            .iter()
            .any(|c| c.starts_with("runtime.pause")),
        "{:?}",
        world.calls.calls()
    );
}

#[test]
fn a_touched_sandbox_stays_running_past_its_idle_timeout() {
    let world = idle_world(OnIdle::Pause, None);
    let chat = new_chat();
    created(&world, chat);
    for _ in 0..3 {
        world.clock.advance(Duration::from_secs(40));
        let (touched, cap) = capture(touch(&world).execute(chat));
        let touched = touched.unwrap();
        assert_eq!(touched.expires_at, world.clock.now() + IDLE);
        cap.assert_counters(&["sandbox_touch_total{result=touched} 1"]);
        assert_eq!(cap.span(span::TOUCH).field(span::STATE), Some("running"));
    }
    // 120 s after the creation, twice the idle timeout: still running, nothing due.
    world.calls.clear();
    let (report, _) = capture(cleanup(&world).execute());
    let report = report.unwrap();
    assert!(report.suspended.is_empty() && report.cleaned.is_empty());
    assert_eq!(
        world.calls.calls()[..1],
        ["repository.list_expired".to_owned()],
        "a touch is one store round trip and no engine call"
    );
}

#[test]
fn the_hard_cap_deletes_even_a_touched_sandbox_and_bounds_extend() {
    let world = idle_world(OnIdle::Pause, Some(Duration::from_secs(100)));
    let chat = new_chat();
    let session = created(&world, chat);
    world.clock.advance(Duration::from_secs(50));
    let extend = ExtendSandbox::new(world.ports.clone(), TTL, Duration::from_secs(24 * 3600));
    let (too_far, _) = capture(extend.execute(ExtendSandboxCommand {
        chat_id: chat,
        ttl: Some(Duration::from_secs(60)),
    }));
    let error = too_far.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidArgument { field: "ttl" });
    assert!(error.client_message().contains("max lifetime"), "{error}");

    let (touched, _) = capture(touch(&world).execute(chat));
    assert_eq!(
        touched.unwrap().expires_at,
        session.created_at + Duration::from_secs(100),
        "the touch stops at the cap"
    );
    world.clock.advance(Duration::from_secs(51));
    let (report, _) = capture(cleanup(&world).execute());
    let report = report.unwrap();
    assert_eq!(report.cleaned.len(), 1, "removed, not paused: {report:?}");
    assert!(world.repository.all().is_empty());
    assert_eq!(container_state(&world, &session), ContainerState::Gone);
    assert_eq!(
        event_log(&world).last(),
        Some(&(
            EventType::Expired,
            EventReason::MaxLifetime,
            SandboxState::Running
        ))
    );
}

#[test]
fn hibernation_stops_the_container_and_resume_starts_it_on_a_new_endpoint() {
    let world = idle_world(OnIdle::Hibernate, None);
    let chat = new_chat();
    let session = created(&world, chat);
    world.clock.advance(IDLE);
    let (report, cap) = capture(cleanup(&world).execute());
    let hibernated = report.unwrap().suspended.remove(0);
    assert_eq!(hibernated.state, SandboxState::Hibernated);
    assert_eq!(
        hibernated.endpoint, None,
        "a stopped container publishes nothing"
    );
    assert_eq!(container_state(&world, &session), ContainerState::Stopped);
    assert!(
        cap.counter_lines()
            .contains(&"sandbox_pause_total{result=hibernated} 1".to_owned())
    );

    // Pausing a hibernated sandbox is refused; touching it too.
    let (paused, _) = capture(pause(&world).execute(chat));
    assert!(matches!(
        paused.unwrap_err(),
        LifecycleError::WrongState {
            state: SandboxState::Hibernated,
            ..
        }
    ));

    world.calls.clear();
    let (resumed, cap) = capture(resume(&world).execute(chat));
    let resumed = resumed.unwrap();
    assert_eq!(resumed.state, SandboxState::Running);
    assert!(resumed.endpoint.is_some());
    assert_ne!(
        resumed.endpoint, session.endpoint,
        "the engine published anew"
    );
    assert_eq!(container_state(&world, &session), ContainerState::Running);
    cap.assert_counters(&["sandbox_resume_total{result=resumed} 1"]);
    assert_eq!(
        world.calls.calls(),
        leased_calls(
            chat,
            &[
                format!("runtime.start({})", session.container_id),
                format!("repository.update({})", session.session_id),
            ]
        )
    );
    assert_eq!(
        event_log(&world)[1..],
        [
            (
                EventType::Hibernated,
                EventReason::Idle,
                SandboxState::Hibernated
            ),
            (
                EventType::Resumed,
                EventReason::Requested,
                SandboxState::Running
            ),
        ]
    );
}

#[test]
fn a_suspended_sandbox_is_removed_after_its_retention() {
    let world = World::new().with_profile("default", |profile: &mut AgentProfile| {
        profile.idle_timeout = Some(IDLE);
        profile.on_idle = OnIdle::Pause;
        profile.paused_retention = Duration::from_secs(300);
    });
    let chat = new_chat();
    let session = created(&world, chat);
    world.clock.advance(IDLE);
    capture(cleanup(&world).execute()).0.unwrap();
    world.clock.advance(Duration::from_secs(299));
    let (report, _) = capture(cleanup(&world).execute());
    assert!(
        report.unwrap().cleaned.is_empty(),
        "kept within the retention"
    );
    world.clock.advance(Duration::from_secs(1));
    world.calls.clear();
    let (report, _) = capture(cleanup(&world).execute());
    assert_eq!(report.unwrap().cleaned.len(), 1);
    assert!(
        world
            .calls
            .calls()
            .contains(&format!("runtime.force_remove({})", session.container_id)),
        "a frozen container is removed at once: {:?}",
        world.calls.calls()
    );
    assert_eq!(
        event_log(&world).last(),
        Some(&(
            EventType::Expired,
            EventReason::Retention,
            SandboxState::Paused
        ))
    );
}

#[test]
fn an_idle_pause_that_loses_to_a_touch_is_undone_and_skipped() {
    let world = idle_world(OnIdle::Pause, None);
    let chat = new_chat();
    let session = created(&world, chat);
    world.clock.advance(IDLE);
    // The fenced write finds the expiry moved (a touch landed after the decision).
    world
        .repository
        .fail_next(RepoOp::Update, RepositoryError::Changed);
    let (report, cap) = capture(cleanup(&world).execute());
    let report = report.unwrap();
    assert!(report.suspended.is_empty());
    assert_eq!((report.skipped_count, report.error_count), (1, 0));
    assert_eq!(
        container_state(&world, &session),
        ContainerState::Running,
        "thawed again"
    );
    let calls = world.calls.calls();
    let pause_at = calls
        .iter()
        .position(|c| c == &format!("runtime.pause({})", session.container_id));
    let unpause_at = calls
        .iter()
        .position(|c| c == &format!("runtime.unpause({})", session.container_id));
    assert!(pause_at < unpause_at && pause_at.is_some(), "{calls:?}");
    assert_eq!(event_log(&world).len(), 1, "no event without its change");
    assert!(
        !cap.counter_lines()
            .iter()
            .any(|l| l.starts_with(metric::PAUSE_TOTAL))
    );
}

#[test]
fn pause_is_idempotent_refuses_what_it_cannot_pause_and_counts_every_outcome() {
    let world = World::new();
    let chat = new_chat();
    let (missing, cap) = capture(pause(&world).execute(chat));
    assert_eq!(missing.unwrap_err().kind(), ErrorKind::NotFound);
    cap.assert_counters(&["sandbox_pause_total{result=not_found} 1"]);
    assert_eq!(
        cap.event(event::SANDBOX_LIFECYCLE_REFUSED).field("result"),
        Some("not_found")
    );

    let session = created(&world, chat);
    let (paused, cap) = capture(pause(&world).execute(chat));
    let paused = paused.unwrap();
    assert_eq!(paused.state, SandboxState::Paused);
    assert_eq!(
        paused.expires_at,
        world.clock.now() + AgentProfile::new("x").paused_retention,
        "a requested pause keeps it the retention from now"
    );
    cap.assert_counters(&["sandbox_pause_total{result=paused} 1"]);
    assert_eq!(cap.span(span::PAUSE).field(span::STATE), Some("paused"));

    world.calls.clear();
    let (again, cap) = capture(pause(&world).execute(chat));
    assert_eq!(again.unwrap(), paused);
    cap.assert_counters(&["sandbox_pause_total{result=already_paused} 1"]);
    assert!(
        !world
            .calls
            .calls()
            .iter()
            .any(|c| c.starts_with("runtime.")),
        "no engine call for a paused sandbox"
    );

    // An expired one is refused.
    world.clock.advance(AgentProfile::new("x").paused_retention);
    let (expired, _) = capture(pause(&world).execute(chat));
    assert_eq!(expired.unwrap_err().kind(), ErrorKind::FailedPrecondition);
    assert_eq!(world.repository.all()[0].state, SandboxState::Paused);
    assert_eq!(
        container_state(&world, &session),
        ContainerState::Paused,
        "nothing changed"
    );
}

#[test]
fn a_failed_engine_pause_changes_nothing_and_a_failed_write_thaws_it_again() {
    let world = World::new();
    let chat = new_chat();
    let session = created(&world, chat);
    world.runtime_down(RuntimeOp::Pause);
    let (out, cap) = capture(pause(&world).execute(chat));
    assert_eq!(out.unwrap_err().kind(), ErrorKind::Unavailable);
    cap.assert_error_span(span::PAUSE, "runtime_unavailable");
    assert_eq!(world.repository.all(), vec![session.clone()]);
    assert_eq!(event_log(&world).len(), 1);

    world.lease_lost_on(RepoOp::Update);
    let (out, _) = capture(pause(&world).execute(chat));
    assert_eq!(out.unwrap_err().kind(), ErrorKind::Aborted);
    assert_eq!(container_state(&world, &session), ContainerState::Running);
    assert_eq!(world.repository.all(), vec![session]);
}

#[test]
fn resume_of_a_running_sandbox_is_a_touch_and_of_a_missing_one_not_found() {
    let world = idle_world(OnIdle::Pause, None);
    let chat = new_chat();
    let (missing, cap) = capture(resume(&world).execute(chat));
    assert_eq!(missing.unwrap_err().kind(), ErrorKind::NotFound);
    cap.assert_counters(&["sandbox_resume_total{result=not_found} 1"]);

    created(&world, chat);
    world.clock.advance(Duration::from_secs(10));
    let (out, cap) = capture(resume(&world).execute(chat));
    let out = out.unwrap();
    assert_eq!(out.last_active_at, world.clock.now());
    assert_eq!(
        out.expires_at,
        world.clock.now() + IDLE,
        "counts as activity"
    );
    cap.assert_counters(&["sandbox_resume_total{result=already_running} 1"]);
    assert_eq!(
        world.calls.calls(),
        leased_calls(chat, &[format!("repository.touch({chat})")])
    );
}

#[test]
fn touch_outcomes() {
    let world = World::new();
    let chat = new_chat();
    let (missing, cap) = capture(touch(&world).execute(chat));
    assert_eq!(missing.unwrap_err().kind(), ErrorKind::NotFound);
    cap.assert_counters(&["sandbox_touch_total{result=not_found} 1"]);

    let session = created(&world, chat);
    world.clock.advance(TTL);
    let (expired, cap) = capture(touch(&world).execute(chat));
    assert_eq!(expired.unwrap_err().kind(), ErrorKind::FailedPrecondition);
    cap.assert_counters(&["sandbox_touch_total{result=expired} 1"]);
    assert_eq!(
        world.repository.all(),
        vec![session],
        "an expired one is not touched"
    );
}

#[test]
fn reconcile_brings_a_drifted_engine_back_to_the_sessions_state() {
    let world = World::new();
    let running = created(&world, new_chat());
    let paused_chat = new_chat();
    let paused = created(&world, paused_chat);
    capture(pause(&world).execute(paused_chat)).0.unwrap();
    let stopped_chat = new_chat();
    let stopped = created(&world, stopped_chat);
    capture(pause(&world).execute(stopped_chat)).0.unwrap();
    // Behind the service's back: one frozen, one thawed, one stopped.
    world
        .runtime
        .set_state(&running.container_id, ContainerState::Paused);
    world
        .runtime
        .set_state(&paused.container_id, ContainerState::Running);
    world
        .runtime
        .set_state(&stopped.container_id, ContainerState::Stopped);

    let reconcile = crate::ReconcileSandboxes::new(world.ports.clone(), Default::default());
    let (report, cap) = capture(reconcile.execute());
    let report = report.unwrap();
    assert_eq!(report.repaired.len(), 3, "{report:?}");
    assert!(report.removed_sessions.is_empty() && report.removed_containers.is_empty());
    assert_eq!(container_state(&world, &running), ContainerState::Running);
    assert_eq!(container_state(&world, &paused), ContainerState::Paused);
    assert_eq!(container_state(&world, &stopped), ContainerState::Stopped);
    let stored = world
        .repository
        .all()
        .into_iter()
        .find(|s| s.session_id == stopped.session_id)
        .unwrap();
    assert_eq!(
        stored.state,
        SandboxState::Hibernated,
        "the session follows a stop"
    );
    assert!(
        cap.counter_lines()
            .contains(&"sandbox_reconcile_total{result=drift_repaired} 3".to_owned())
    );
    let drift_events = event_log(&world)
        .into_iter()
        .filter(|(kind, reason, _)| *kind == EventType::Reconciled && *reason == EventReason::Drift)
        .count();
    assert_eq!(drift_events, 3);
}
