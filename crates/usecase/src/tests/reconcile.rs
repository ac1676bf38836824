//! ReconcileSandboxes: unowned containers are judged under their chat's lease (adopted, stray,
//! dead), dead sessions are deleted, unlabelled containers wait out the grace, and a create
//! interrupted at any point ends as a complete session or nothing.

use crate::UseCaseError;
use crate::telemetry::{event, metric, span};
use std::sync::Arc;
use std::time::Duration;

use sandboxd_domain::{ContainerId, SandboxSession, SandboxState, SessionId};

use super::harness::*;
use crate::ports::{
    Clock, ContainerState, LifecycleLocker, NewSandbox, RuntimeError, SandboxLabels,
};
use crate::testing::{RepoOp, RuntimeOp};
use crate::{CreateSandboxCommand, ErrorKind, ReconcileOptions, ReconcileSandboxes};

const GRACE: Duration = Duration::from_secs(60);
const ADOPTION_GRACE: Duration = Duration::from_secs(600);

fn reconcile(world: &World) -> ReconcileSandboxes {
    ReconcileSandboxes::new(
        world.ports.clone(),
        ReconcileOptions {
            grace: GRACE,
            adoption_grace: ADOPTION_GRACE,
            page_size: 2,
            settle_pool: false,
        },
    )
}

/// A container of `chat` with complete labels, in `state`, created `age` ago and expiring
/// `expires_in` after its creation; no session.
fn labelled_container(
    world: &World,
    chat: sandboxd_domain::ChatId,
    age: Duration,
    expires_in: Duration,
    state: ContainerState,
) -> (ContainerId, NewSandbox) {
    let id = ContainerId::parse(&format!(
        "orphan-{}",
        &SessionId::new_random().to_string()[..8]
    ))
    .unwrap();
    let created_at = world.clock.now() - age;
    let spec = world.spec(
        chat,
        "default",
        "/srv/a",
        created_at,
        created_at + expires_in,
    );
    world
        .runtime
        .insert(id.clone(), SandboxLabels::of(&spec), state);
    (id, spec)
}

#[test]
fn a_live_container_whose_chat_lost_its_session_is_adopted_with_the_later_expiry() {
    let world = World::new();
    let healthy = world.existing(new_chat(), "default", "/srv/h", Duration::from_secs(600));
    // Extended long before the store lost it: its own expiry is kept.
    let (long_id, long) = labelled_container(
        &world,
        new_chat(),
        Duration::from_secs(5),
        Duration::from_secs(3600),
        ContainerState::Running,
    );
    // About to expire, and paused: the adoption grace gives the client time to find it.
    let (short_id, short) = labelled_container(
        &world,
        new_chat(),
        Duration::from_secs(5),
        Duration::from_secs(10),
        ContainerState::Paused,
    );
    world.calls.clear();
    let (out, cap) = capture(reconcile(&world).execute());
    let report = out.unwrap();
    assert_eq!(report.removed_containers, vec![]);
    assert_eq!(report.removed_sessions, vec![]);
    let stored = |chat| {
        world
            .repository
            .all()
            .into_iter()
            .find(|s| s.chat_id == chat)
    };
    let long_session = stored(long.chat_id).expect("adopted");
    assert_eq!(
        long_session.session_id, long.session_id,
        "the same session id"
    );
    assert_eq!(long_session.container_id, long_id);
    assert_eq!(long_session.agent_id, long.agent_id);
    assert_eq!(long_session.volume_host_path, long.volume_host_path);
    assert_eq!(long_session.created_at, long.created_at);
    assert_eq!(long_session.expires_at, long.expires_at);
    let short_session = stored(short.chat_id).expect("adopted");
    assert_eq!(short_session.container_id, short_id);
    assert_eq!(short_session.expires_at, world.clock.now() + ADOPTION_GRACE);
    let mut adopted: Vec<_> = report.adopted.iter().map(|s| s.session_id).collect();
    adopted.sort();
    let mut want = vec![long.session_id, short.session_id];
    want.sort();
    assert_eq!(adopted, want);
    assert_eq!(world.repository.all().len(), 3);
    assert!(world.repository.all().contains(&healthy));
    assert_eq!(world.runtime.running().len(), 3, "nothing removed");
    assert_eq!(
        cap.counter_lines(),
        vec!["sandbox_reconcile_total{result=adopted} 2"]
    );
    assert_eq!(cap.gauge(metric::ACTIVE_COUNT), Some(3.0));
    let span = cap.span(span::RECONCILE);
    assert_eq!(span.field(span::ADOPTED_SESSIONS), Some("2"));
    assert_eq!(span.field(span::RESULT), Some("completed"));
    assert_eq!(
        cap.event_names()
            .iter()
            .filter(|name| **name == event::SANDBOX_ADOPTED)
            .count(),
        2
    );
    let calls = world.calls.calls();
    let lock = calls
        .iter()
        .position(|c| *c == format!("locker.lock({})", long.chat_id))
        .expect("judged under the chat's lease");
    assert_eq!(calls[lock + 1], format!("runtime.inspect({long_id})"));
}

#[test]
fn a_container_of_a_chat_whose_session_names_another_is_a_stray_and_removed() {
    let world = World::new();
    let chat = new_chat();
    let session = world.existing(chat, "default", "/srv/a", Duration::from_secs(600));
    let (stray, _) = labelled_container(
        &world,
        chat,
        Duration::from_secs(1),
        Duration::from_secs(600),
        ContainerState::Running,
    );
    world.calls.clear();
    let (out, cap) = capture(reconcile(&world).execute());
    let report = out.unwrap();
    assert_eq!(report.removed_containers, vec![stray.clone()]);
    assert_eq!(world.runtime.running(), vec![session.container_id.clone()]);
    assert_eq!(world.repository.all(), vec![session]);
    assert_eq!(
        cap.counter_lines(),
        vec!["sandbox_reconcile_total{result=stray_removed} 1"]
    );
    let event = cap.event(event::SANDBOX_STRAY_CONTAINER_REMOVED);
    assert_eq!(event.fields.get("container_id"), Some(&stray.to_string()));
    assert_eq!(event.fields.get("chat_id"), Some(&chat.to_string()));
}

#[test]
fn a_dead_or_partly_labelled_container_without_a_session_is_removed_at_once() {
    let world = World::new();
    let (stopped, _) = labelled_container(
        &world,
        new_chat(),
        Duration::from_secs(1),
        Duration::from_secs(600),
        ContainerState::Stopped,
    );
    let partial = ContainerId::parse("partial-0001").unwrap();
    world.runtime.insert(
        partial.clone(),
        SandboxLabels {
            chat_id: Some(new_chat()),
            ..SandboxLabels::default()
        },
        ContainerState::Running,
    );
    let (out, cap) = capture(reconcile(&world).execute());
    let mut removed = out.unwrap().removed_containers;
    removed.sort();
    let mut want = vec![partial, stopped];
    want.sort();
    assert_eq!(removed, want, "no age grace: the chat's lease decided");
    assert_eq!(world.runtime.running(), vec![]);
    assert_eq!(world.repository.all(), vec![]);
    assert_eq!(
        cap.counter_lines(),
        vec!["sandbox_reconcile_total{result=container_removed} 2"]
    );
}

#[test]
fn a_container_started_since_the_listing_is_adopted_by_the_next_pass_as_it_is_then() {
    // A killed create's start can complete after the pass listed its container as created
    // (stopped). Adopting the session the listing describes would record a running sandbox
    // as hibernated, without its endpoint, and the next pass would stop it to match.
    let world = World::new();
    let (id, spec) = labelled_container(
        &world,
        new_chat(),
        Duration::from_secs(1),
        Duration::from_secs(600),
        ContainerState::Stopped,
    );
    let runtime = Arc::clone(&world.runtime);
    let started = id.clone();
    world
        .locker
        .on_lock(move |_| runtime.set_state(&started, ContainerState::Running));
    let (out, _) = capture(reconcile(&world).execute());
    let report = out.unwrap();
    assert_eq!(report.adopted, vec![]);
    assert_eq!(report.removed_containers, vec![]);
    assert_eq!(world.repository.all(), vec![]);
    assert_eq!(world.runtime.running(), vec![id.clone()], "left running");

    let (out, _) = capture(reconcile(&world).execute());
    let adopted = out.unwrap().adopted;
    assert_eq!(adopted.len(), 1);
    assert_eq!(adopted[0].session_id, spec.session_id);
    assert_eq!(adopted[0].state, SandboxState::Running);
    assert_eq!(world.repository.all(), adopted);
    assert_eq!(world.runtime.running(), vec![id]);
}

#[test]
fn a_container_whose_labels_name_no_chat_waits_out_the_grace() {
    let world = World::new();
    let insert = |name: &str, age: Duration| {
        let id = ContainerId::parse(name).unwrap();
        world.runtime.insert(
            id.clone(),
            SandboxLabels {
                created_at: Some(world.clock.now() - age),
                ..SandboxLabels::default()
            },
            ContainerState::Running,
        );
        id
    };
    let old = insert("nochat-old", GRACE + Duration::from_secs(1));
    let young = insert("nochat-young", Duration::from_secs(5));
    let (out, cap) = capture(reconcile(&world).execute());
    assert_eq!(out.unwrap().removed_containers, vec![old.clone()]);
    assert_eq!(world.runtime.running(), vec![young]);
    assert_eq!(
        cap.counter_lines(),
        vec!["sandbox_reconcile_total{result=container_removed} 1"]
    );
    let event = cap.event(event::SANDBOX_ORPHAN_CONTAINER_REMOVED);
    assert_eq!(event.fields.get("container_id"), Some(&old.to_string()));
}

#[test]
fn a_container_whose_chat_lease_is_held_is_left_for_the_next_pass() {
    // A create in flight holds the lease: its container has no session yet and must survive.
    let world = World::with_lock_wait(Duration::from_millis(20));
    let chat = new_chat();
    let (in_flight, _) = labelled_container(
        &world,
        chat,
        Duration::from_secs(0),
        Duration::from_secs(600),
        ContainerState::Running,
    );
    // Taken on the side, as another process's in-flight create holds it.
    let lease = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(world.locker.lock(&chat))
        .unwrap();
    let (out, _) = capture(reconcile(&world).execute());
    let report = out.unwrap();
    assert_eq!(report.error_count, 1, "lock_busy, retried by the next pass");
    assert_eq!(report.adopted, vec![]);
    assert_eq!(world.runtime.running(), vec![in_flight]);
    assert_eq!(world.repository.all(), vec![]);
    drop(lease);
}

#[test]
fn deletes_sessions_whose_container_is_gone() {
    let world = World::new();
    let mut session = world.existing(new_chat(), "default", "/srv/a", Duration::from_secs(600));
    session.created_at = world.clock.now() - GRACE - Duration::from_secs(1);
    world.repository.insert(session.clone());
    world.runtime.remove_direct(&session.container_id);
    world.calls.clear();
    let (out, cap) = capture(reconcile(&world).execute());
    let report = out.unwrap();
    assert_eq!(report.removed_sessions, vec![session.clone()]);
    assert_eq!(world.repository.all(), vec![]);
    assert_eq!(
        cap.counter_lines(),
        vec!["sandbox_reconcile_total{result=session_removed} 1"]
    );
    let mut want = session_log_fields(&session);
    want.push(("message", event::SANDBOX_ORPHAN_SESSION_REMOVED.to_owned()));
    assert_eq!(
        cap.event(event::SANDBOX_ORPHAN_SESSION_REMOVED).fields,
        fields(&want)
    );
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
fn another_nodes_sessions_are_left_to_that_node() {
    let mut world = World::new();
    let session = world.existing(new_chat(), "default", "/srv/a", Duration::from_secs(600));
    // Its container runs on another node's engine: this engine does not list it.
    world.runtime.remove_direct(&session.container_id);
    let fleet = crate::testing::Fakes::in_fleet("n1");
    fleet.set_nodes(&[("n1", true), ("n2", true)]);
    world.ports = world.ports_in(&fleet.directory);
    let session = SandboxSession {
        node_id: Some(crate::testing::node_id("n2")),
        ..session
    };
    world.repository.insert(session.clone());
    let (out, _cap) = capture(reconcile(&world).execute());
    let report = out.unwrap();
    assert_eq!(report.removed_sessions, vec![]);
    assert_eq!(world.repository.all(), vec![session]);
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
    assert_eq!(cap.counter_lines(), Vec::<String>::new());
}

#[test]
fn a_listing_failure_fails_the_pass() {
    let world = World::new();
    world.runtime_down(RuntimeOp::ListManaged);
    let (out, cap) = capture(reconcile(&world).execute());
    assert_eq!(out.unwrap_err().kind(), ErrorKind::Unavailable);
    assert_eq!(
        cap.counter_lines(),
        vec!["sandbox_reconcile_error_total{error_type=runtime_unavailable} 1"]
    );
    assert_eq!(cap.span(span::RECONCILE).field(span::RESULT), Some("error"));
}

#[test]
fn one_failed_repair_is_counted_and_the_pass_goes_on() {
    let world = World::new();
    let dead = |world: &World| {
        labelled_container(
            world,
            new_chat(),
            GRACE * 2,
            Duration::from_secs(600),
            ContainerState::Stopped,
        )
        .0
    };
    let first = dead(&world);
    let second = dead(&world);
    world
        .runtime
        .fail_next(RuntimeOp::ForceRemove, RuntimeError::Other("boom".into()));
    let (out, cap) = capture(reconcile(&world).execute());
    let report = out.unwrap();
    assert_eq!(report.error_count, 1);
    assert_eq!(report.removed_containers.len(), 1);
    assert_eq!(world.runtime.running().len(), 1);
    assert!([first, second].contains(&world.runtime.running()[0]));
    assert_eq!(
        cap.counter_lines(),
        vec![
            "sandbox_reconcile_error_total{error_type=runtime_error} 1",
            "sandbox_reconcile_total{result=container_removed} 1",
        ]
    );
    assert_eq!(
        cap.span(span::RECONCILE).field(span::RESULT),
        Some("completed_with_errors")
    );
}

#[test]
fn a_create_interrupted_after_the_container_started_ends_as_the_complete_session() {
    // The process "dies" between runtime.create and the save: the save fails and so does the
    // compensation, leaving a labelled container with no session, which is adopted.
    let world = World::new();
    let chat = new_chat();
    world.repository_down(RepoOp::Save);
    world.runtime_down(RuntimeOp::RemoveGracefully);
    let command = CreateSandboxCommand {
        chat_id: chat,
        agent_id: agent_id("default"),
        volume_host_path: volume_path("/srv/a"),
    };
    let (out, _) = capture(world.create().execute(command.clone()));
    assert!(out.is_err());
    assert_eq!(world.runtime.running().len(), 1);
    let (out, _) = capture(reconcile(&world).execute());
    let adopted = out.unwrap().adopted;
    assert_eq!(adopted.len(), 1);
    assert_eq!(world.repository.all(), adopted);
    assert_eq!(
        world.runtime.running(),
        vec![adopted[0].container_id.clone()]
    );
    // The client's retry reuses it.
    let (out, _) = capture(world.create().execute(command));
    assert_eq!(out.unwrap().result, crate::CreateResult::Reused);
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

#[test]
fn a_pass_settles_the_pool_only_when_a_profile_pools() {
    let world = World::new();
    let plain = reconcile(&world);
    let (report, _) = capture(plain.execute());
    report.unwrap();
    assert!(world.calls.calls_of("runtime.recover_pool").is_empty());
    let pooled = ReconcileSandboxes::new(
        world.ports.clone(),
        ReconcileOptions {
            settle_pool: true,
            ..ReconcileOptions::default()
        },
    );
    let (report, _) = capture(pooled.execute());
    report.unwrap();
    assert_eq!(world.calls.calls_of("runtime.recover_pool").len(), 1);
}
