//! ReconcileSandboxes: orphans on either side are repaired after the grace period, and a create
//! interrupted at any point ends as a complete session or nothing.

use crate::UseCaseError;
use crate::telemetry::{event, metric, span};
use std::time::Duration;

use sandboxd_domain::{ContainerId, SessionId};

use super::harness::*;
use crate::ports::{Clock, RepositoryError, RuntimeError};
use crate::testing::{RepoOp, RuntimeOp};
use crate::{ErrorKind, ReconcileOptions, ReconcileSandboxes};

const GRACE: Duration = Duration::from_secs(60);

fn reconcile(world: &World) -> ReconcileSandboxes {
    ReconcileSandboxes::new(
        world.ports.clone(),
        ReconcileOptions {
            grace: GRACE,
            page_size: 2,
        },
    )
}

fn orphan_container(world: &World, age: Duration) -> ContainerId {
    let id = ContainerId::parse(&format!(
        "orphan-{}",
        &SessionId::new_random().to_string()[..8]
    ))
    .unwrap();
    let created_at = world.clock.now() - age;
    world.runtime.insert_running(
        id.clone(),
        world.spec(
            new_chat(),
            "default",
            "/srv/a",
            created_at,
            created_at + TTL,
        ),
    );
    id
}

#[test]
fn removes_containers_without_a_session_only_after_the_grace_period() {
    let world = World::new();
    let healthy = world.existing(new_chat(), "default", "/srv/h", Duration::from_secs(600));
    let old = orphan_container(&world, GRACE + Duration::from_secs(1));
    let young = orphan_container(&world, Duration::from_secs(5));
    world.calls.clear();
    let (out, cap) = capture(reconcile(&world).execute());
    let report = out.unwrap();
    assert_eq!(report.removed_containers, vec![old.clone()]);
    assert_eq!(report.removed_sessions, vec![]);
    let mut running = world.runtime.running();
    running.sort();
    let mut want = vec![healthy.container_id.clone(), young];
    want.sort();
    assert_eq!(running, want, "the young one may be an in-flight create");
    assert_eq!(world.repository.all(), vec![healthy]);
    cap.assert_counters(&["sandbox_reconcile_total{result=container_removed} 1"]);
    assert_eq!(cap.gauge(metric::ACTIVE_COUNT), Some(1.0));
    let span = cap.span(span::RECONCILE);
    assert_eq!(span.field(span::REMOVED_CONTAINERS), Some("1"));
    assert_eq!(span.field(span::CONTAINER_COUNT), Some("3"));
    assert_eq!(span.field(span::SESSION_COUNT), Some("1"));
    assert_eq!(span.field(span::RESULT), Some("completed"));
    let event = cap.event(event::SANDBOX_ORPHAN_CONTAINER_REMOVED);
    assert_eq!(event.fields.get("container_id"), Some(&old.to_string()));
    assert!(
        world
            .calls
            .calls()
            .contains(&format!("runtime.force_remove({old})"))
    );
}

#[test]
fn deletes_sessions_whose_container_is_gone() {
    let world = World::new();
    let mut session = world.existing(new_chat(), "default", "/srv/a", Duration::from_secs(600));
    session.created_at = world.clock.now() - GRACE - Duration::from_secs(1);
    world.repository.insert(session.clone());
    world.runtime.remove_direct(&session.container_id);
    let mut young = world.existing(new_chat(), "default", "/srv/b", Duration::from_secs(600));
    young.created_at = world.clock.now();
    world.repository.insert(young.clone());
    world.runtime.remove_direct(&young.container_id);
    world.calls.clear();
    let (out, cap) = capture(reconcile(&world).execute());
    let report = out.unwrap();
    assert_eq!(report.removed_sessions, vec![session.clone()]);
    assert_eq!(
        world.repository.all(),
        vec![young],
        "a session younger than the grace is kept"
    );
    cap.assert_counters(&["sandbox_reconcile_total{result=session_removed} 1"]);
    cap.assert_session_event(event::SANDBOX_ORPHAN_SESSION_REMOVED, &session, &[]);
    let calls = world.calls.calls();
    let lock = calls
        .iter()
        .position(|c| *c == format!("locker.lock({})", session.chat_id))
        .unwrap();
    assert_eq!(
        calls[lock + 1],
        format!("repository.get_by_session_id({})", session.session_id),
        "re-checked under the lease"
    );
}

#[test]
fn a_consistent_world_is_left_alone() {
    let world = World::new();
    for i in 0..5 {
        world.existing(
            new_chat(),
            "default",
            &format!("/srv/{i}"),
            Duration::from_secs(600),
        );
    }
    world.clock.advance(GRACE * 2);
    world.calls.clear();
    let (out, cap) = capture(reconcile(&world).execute());
    assert_eq!(out.unwrap(), crate::ReconcileReport::default());
    assert_eq!(
        world.calls.calls_of("runtime.force_remove"),
        Vec::<String>::new()
    );
    assert_eq!(
        world.calls.calls_of("repository.list").len(),
        3,
        "paged through 5 sessions by 2"
    );
    cap.assert_counters(&[]);
}

#[test]
fn a_listing_failure_fails_the_pass() {
    let world = World::new();
    world.runtime.fail_next(
        RuntimeOp::ListManaged,
        RuntimeError::Unavailable("down".into()),
    );
    let (out, cap) = capture(reconcile(&world).execute());
    assert_eq!(out.unwrap_err().kind(), ErrorKind::Unavailable);
    cap.assert_counters(&["sandbox_reconcile_error_total{error_type=runtime_unavailable} 1"]);
    assert_eq!(cap.span(span::RECONCILE).field(span::RESULT), Some("error"));
}

#[test]
fn one_failed_repair_is_counted_and_the_pass_goes_on() {
    let world = World::new();
    let first = orphan_container(&world, GRACE * 2);
    let second = orphan_container(&world, GRACE * 2);
    world
        .runtime
        .fail_next(RuntimeOp::ForceRemove, RuntimeError::Other("boom".into()));
    let (out, cap) = capture(reconcile(&world).execute());
    let report = out.unwrap();
    assert_eq!(report.error_count, 1);
    assert_eq!(report.removed_containers.len(), 1);
    assert_eq!(world.runtime.running().len(), 1);
    assert!([first, second].contains(&world.runtime.running()[0]));
    cap.assert_counters(&[
        "sandbox_reconcile_error_total{error_type=runtime_error} 1",
        "sandbox_reconcile_total{result=container_removed} 1",
    ]);
    assert_eq!(
        cap.span(span::RECONCILE).field(span::RESULT),
        Some("completed_with_errors")
    );
}

#[test]
fn a_create_interrupted_after_the_container_started_ends_as_nothing() {
    // The process "dies" between runtime.create and the save: the save fails and so does the
    // compensation, leaving a labelled container with no session.
    let world = World::new();
    let chat = new_chat();
    world
        .repository
        .fail_next(RepoOp::Save, RepositoryError::Unavailable("killed".into()));
    world.runtime.fail_next(
        RuntimeOp::RemoveGracefully,
        RuntimeError::Unavailable("killed".into()),
    );
    let (out, _) = world.create_default(chat);
    assert!(out.is_err());
    assert_eq!(world.runtime.running().len(), 1);
    world.clock.advance(GRACE + Duration::from_secs(1));
    let (out, _) = capture(reconcile(&world).execute());
    assert_eq!(out.unwrap().removed_containers.len(), 1);
    assert_eq!(
        (world.runtime.running(), world.repository.all()),
        (vec![], vec![])
    );
}

#[test]
fn a_replace_interrupted_after_the_old_stop_ends_as_nothing() {
    // Killed after stopping the expired container, before deleting its session.
    let world = World::new();
    let chat = new_chat();
    let old = world.existing_expired(chat, "default", "/srv/a");
    world.runtime.remove_direct(&old.container_id);
    world.clock.advance(GRACE);
    let (out, _) = capture(reconcile(&world).execute());
    assert_eq!(out.unwrap().removed_sessions, vec![old]);
    assert_eq!(
        (world.runtime.running(), world.repository.all()),
        (vec![], vec![])
    );
}

#[test]
fn lists_the_sessions_before_the_containers() {
    // Delete and cleanup remove the container before the session: listing containers first made
    // every delete finishing between the two listings look like an orphan to remove and report.
    let world = World::new();
    world.existing(new_chat(), "default", "/srv/h", Duration::from_secs(600));
    world.calls.clear();
    let (out, _cap) = capture(reconcile(&world).execute());
    out.unwrap();
    let calls = world.calls.calls();
    let first_list = calls.iter().position(|c| c.starts_with("repository.list"));
    let containers = calls
        .iter()
        .position(|c| c.starts_with("runtime.list_managed"));
    assert!(
        matches!((first_list, containers), (Some(s), Some(c)) if s < c),
        "{calls:?}"
    );
}
