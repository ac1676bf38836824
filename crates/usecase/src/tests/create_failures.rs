//! CreateSandbox when it fails: the save, its compensation, a lost lease, the lock, the reads,
//! the runtime and the agent table (docs/design.md §6). Each failure is counted once and
//! leaves no session behind.

use crate::telemetry::{event, metric, span};
use std::time::Duration;

use sandboxd_domain::ChatId;

use super::harness::*;
use crate::ports::{RepositoryError, RuntimeError, VolumeRefusal};
use crate::testing::{RepoOp, RuntimeOp};
use crate::{CreateSandboxError, ErrorKind, UseCaseError};

#[test]
fn save_failure_stops_the_new_container_and_surfaces_the_save_error() {
    let world = World::new();
    let chat = new_chat();
    world.repository_down(RepoOp::Save);
    let (out, cap) = world.create_default(chat);

    let err = out.unwrap_err();
    assert!(
        matches!(
            &err,
            CreateSandboxError::SaveFailed {
                save: RepositoryError::Unavailable(_),
                compensation: None
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    assert_eq!(world.repository.all(), vec![]);
    assert_eq!(
        world.runtime.running(),
        vec![],
        "the new container was stopped"
    );
    let calls = world.calls.calls();
    let created = calls
        .iter()
        .position(|c| c.starts_with("runtime.create("))
        .unwrap();
    assert_eq!(
        calls[created + 1..].to_vec(),
        vec![
            calls[created].replace("runtime.create", "repository.save"),
            "runtime.remove_gracefully(fake-0001)".to_owned(),
            "repository.count_active".to_owned(),
            format!("locker.release({chat})"),
        ],
        "save, then the compensation stop, then the gauge refresh"
    );
    cap.assert_counters(&["sandbox_create_total{result=error} 1"]);
    assert_eq!(cap.gauge(metric::ACTIVE_COUNT), Some(0.0));
    let span = cap.assert_error_span(span::CREATE, "repository_unavailable");
    assert_eq!(
        span.fields.get(span::SESSION_ID).cloned(),
        calls[created]
            .strip_prefix("runtime.create(")
            .and_then(|s| s.strip_suffix(')'))
            .map(str::to_owned)
    );
    assert_eq!(
        cap.event_names(),
        Vec::<&str>::new(),
        "no log here: the server logs the error where it answers"
    );
}

#[test]
fn save_failure_with_a_failing_compensation_still_surfaces_the_save_error() {
    let world = World::new();
    let chat = new_chat();
    world
        .repository
        .fail_next(RepoOp::Save, RepositoryError::Other("boom".into()));
    world.runtime_down(RuntimeOp::RemoveGracefully);
    let (out, cap) = world.create_default(chat);

    let err = out.unwrap_err();
    assert!(
        matches!(
            &err,
            CreateSandboxError::SaveFailed {
                save: RepositoryError::Other(_),
                compensation: Some(RuntimeError::Unavailable(_))
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        err.kind(),
        ErrorKind::Internal,
        "the save error decides the kind"
    );
    assert_eq!(world.repository.all(), vec![]);
    assert_eq!(
        world.runtime.running().len(),
        1,
        "the stop failed: the reconciler's job now"
    );
    cap.assert_counters(&["sandbox_create_total{result=error} 1"]);
    assert_eq!(cap.gauge(metric::ACTIVE_COUNT), Some(0.0));
    cap.assert_error_span(span::CREATE, "repository_error");
    let event = cap.event(event::SANDBOX_COMPENSATION_FAILED);
    assert_eq!(event.level, tracing::Level::ERROR);
    assert_eq!(event.field("error"), Some("runtime_unavailable"));
    assert_eq!(event.field("container_id"), Some("fake-0001"));
}

#[test]
fn a_lease_lost_before_the_save_commits_nothing_and_stops_the_new_container() {
    let world = World::new();
    let chat = new_chat();
    let locker = world.locker.clone();
    // The lease expires while the container starts, as a stalled process's Redis lease would.
    world
        .runtime
        .on_create(move |spec| locker.expire(&spec.chat_id));
    let (out, cap) = world.create_default(chat);

    let err = out.unwrap_err();
    assert!(
        matches!(
            &err,
            CreateSandboxError::SaveFailed {
                save: RepositoryError::LeaseLost,
                compensation: None
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.kind(), ErrorKind::Aborted, "retryable");
    assert_eq!(world.repository.all(), vec![], "nothing saved");
    assert_eq!(
        world.runtime.running(),
        vec![],
        "the new container was stopped"
    );
    cap.assert_counters(&["sandbox_create_total{result=error} 1"]);
    cap.assert_error_span(span::CREATE, "lease_lost");
}

/// The calls of a create that reads without a lease, then fails to take the lease.
fn lock_free_read_then_lock(chat: ChatId) -> Vec<String> {
    vec![
        format!("repository.touch({chat})"),
        format!("locker.lock({chat})"),
    ]
}

fn assert_plain_error(world: &World, chat: ChatId, want_kind: ErrorKind, want_type: &str) {
    assert_plain_error_with_events(world, chat, want_kind, want_type, &[]);
}

fn assert_plain_error_with_events(
    world: &World,
    chat: ChatId,
    want_kind: ErrorKind,
    want_type: &str,
    want_events: &[&str],
) {
    let (out, cap) = world.create_default(chat);
    let err = out.unwrap_err();
    assert!(matches!(err, CreateSandboxError::Port(_)), "{err:?}");
    assert_eq!(err.kind(), want_kind);
    assert_eq!(err.metric_label(), want_type);
    cap.assert_counters(&["sandbox_create_total{result=error} 1"]);
    let span = cap.assert_error_span(span::CREATE, want_type);
    assert!(span.fields.contains_key(span::EXCEPTION_MESSAGE));
    assert_eq!(cap.event_names(), want_events);
    assert!(!world.locker.is_held(&chat));
}

#[test]
fn a_busy_lock_is_an_aborted_error_and_touches_nothing() {
    let world = World::with_lock_wait(Duration::from_millis(20));
    let chat = new_chat();
    let held = capture(async { crate::ports::LifecycleLocker::lock(&*world.locker, &chat).await })
        .0
        .unwrap();
    world.calls.clear();
    let (out, cap) = world.create_default(chat);
    let err = out.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Aborted);
    assert_eq!(err.metric_label(), "lock_busy");
    assert_eq!(world.calls.calls(), lock_free_read_then_lock(chat));
    cap.assert_counters(&["sandbox_create_total{result=error} 1"]);
    drop(held);
}

#[test]
fn a_lock_store_failure_is_unavailable() {
    let world = World::new();
    world.locker_down();
    let chat = new_chat();
    let (out, _) = world.create_default(chat);
    assert_eq!(out.unwrap_err().kind(), ErrorKind::Unavailable);
    assert_eq!(world.calls.calls(), lock_free_read_then_lock(chat));
}

#[test]
fn a_read_failure_is_reported_and_nothing_is_started() {
    let world = World::new();
    world.repository_down(RepoOp::Touch);
    let chat = new_chat();
    assert_plain_error(
        &world,
        chat,
        ErrorKind::Unavailable,
        "repository_unavailable",
    );
    assert_eq!(world.calls.calls_of("runtime."), Vec::<String>::new());
}

#[test]
fn a_runtime_create_failure_saves_nothing() {
    let world = World::new();
    world.runtime_down(RuntimeOp::Create);
    let chat = new_chat();
    assert_plain_error(&world, chat, ErrorKind::Unavailable, "runtime_unavailable");
    assert_eq!(
        world.calls.calls_of("repository.save"),
        Vec::<String>::new()
    );
    assert_eq!(world.repository.all(), vec![]);
}

#[test]
fn a_refused_volume_on_replace_leaves_the_expired_sandbox_untouched() {
    let world = World::new();
    let chat = new_chat();
    let old = world.existing_expired(chat, "default", "/srv/a");
    world.runtime.fail_next(
        RuntimeOp::Validate,
        RuntimeError::VolumeDenied(VolumeRefusal::OutsideAllowedRoots),
    );
    assert_plain_error(
        &world,
        chat,
        ErrorKind::PermissionDenied {
            field: "volume_host_path",
        },
        "volume_denied",
    );
    assert_eq!(world.repository.all(), vec![old.clone()]);
    assert_eq!(world.runtime.running(), vec![old.container_id]);
    assert_eq!(
        world.calls.calls_of("runtime.remove_gracefully"),
        Vec::<String>::new()
    );
}

#[test]
fn an_unknown_agent_is_an_invalid_argument_on_agent_id() {
    let world = World::new();
    let chat = new_chat();
    let (out, _) = capture(
        world
            .create()
            .execute(create_command(chat, "nope", "/srv/a")),
    );
    assert_eq!(
        out.unwrap_err().kind(),
        ErrorKind::InvalidArgument { field: "agent_id" }
    );
    assert_eq!(world.runtime.created_total(), 0);
}

#[test]
fn a_failing_stop_of_the_expired_container_aborts_the_replace() {
    let world = World::new();
    let chat = new_chat();
    let old = world.existing_expired(chat, "default", "/srv/a");
    world.runtime.fail_container(old.container_id.clone());
    // The replacement is logged before the old container is stopped.
    assert_plain_error_with_events(
        &world,
        chat,
        ErrorKind::Internal,
        "runtime_error",
        &[event::SANDBOX_REPLACED],
    );
    assert_eq!(
        world.repository.all(),
        vec![old],
        "the old session is kept for a retry"
    );
    assert_eq!(world.runtime.created_total(), 0);
}
