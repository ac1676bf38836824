//! DeleteSandbox, branch by branch (docs/design.md §6).

use crate::UseCaseError;
use crate::telemetry::{event, metric, span};
use std::time::Duration;

use super::harness::*;
use crate::ports::RepositoryError;
use crate::ports::{Clock as _, ContainerState, SandboxLabels};
use crate::testing::{RepoOp, RuntimeOp};
use crate::{DeleteResult, DeleteSandbox, DeleteSandboxCommand, ErrorKind};
use sandboxd_domain::ContainerId;

#[test]
fn deleting_a_chat_without_a_session_is_not_found() {
    let world = World::new();
    let chat = new_chat();
    let (out, cap) = capture(
        DeleteSandbox::new(world.ports.clone()).execute(DeleteSandboxCommand { chat_id: chat }),
    );
    let out = out.unwrap();
    assert_eq!(out.result, DeleteResult::NotFound);
    assert_eq!((out.session_id, out.container_id), (None, None));
    assert_eq!(
        world.calls.calls(),
        leased_calls(chat, &[format!("runtime.list_chat({chat})")])
    );
    cap.assert_counters(&["sandbox_delete_total{result=not_found} 1"]);
    assert_eq!(
        cap.span(span::DELETE).fields,
        fields(&[
            (span::CHAT_ID, chat.to_string()),
            (span::RESULT, "not_found".to_owned())
        ])
    );
    let event = cap.event(event::SANDBOX_DELETE_NOT_FOUND);
    assert_eq!(event.level, tracing::Level::INFO);
    assert_eq!(
        event.fields,
        fields(&[
            ("chat_id", chat.to_string()),
            ("message", event::SANDBOX_DELETE_NOT_FOUND.to_owned())
        ])
    );
}

#[test]
fn deleting_removes_the_container_before_the_session() {
    let world = World::new();
    let chat = new_chat();
    let other = world.existing(new_chat(), "default", "/srv/z", Duration::from_secs(60));
    let session = world.existing_live(chat);
    let (out, cap) = capture(
        DeleteSandbox::new(world.ports.clone()).execute(DeleteSandboxCommand { chat_id: chat }),
    );
    let out = out.unwrap();
    assert_eq!(out.result, DeleteResult::Deleted);
    assert_eq!(out.session_id, Some(session.session_id));
    assert_eq!(out.container_id, Some(session.container_id.clone()));
    assert_eq!(world.repository.all(), vec![other.clone()]);
    assert_eq!(world.runtime.running(), vec![other.container_id]);
    assert_eq!(
        world.calls.calls(),
        leased_calls(
            chat,
            &[
                format!("runtime.force_remove({})", session.container_id),
                format!("runtime.list_chat({chat})"),
                format!("repository.delete({})", session.session_id),
            ]
        )
    );
    cap.assert_counters(&["sandbox_delete_total{result=deleted} 1"]);
    assert_eq!(cap.gauge(metric::ACTIVE_COUNT), Some(1.0));
    let mut want = vec![(span::CHAT_ID, chat.to_string())];
    want.extend(session_span_fields(&session));
    want.push((span::RESULT, "deleted".to_owned()));
    assert_eq!(cap.span(span::DELETE).fields, fields(&want));
    cap.assert_session_event(event::SANDBOX_DELETED, &session, &[]);
}

fn assert_delete_error(
    world: &World,
    chat: sandboxd_domain::ChatId,
    want_kind: ErrorKind,
    want_type: &str,
    read: Option<&sandboxd_domain::SandboxSession>,
) {
    let (out, cap) = capture(
        DeleteSandbox::new(world.ports.clone()).execute(DeleteSandboxCommand { chat_id: chat }),
    );
    let err = out.unwrap_err();
    assert_eq!(err.kind(), want_kind);
    cap.assert_counters(&["sandbox_delete_total{result=error} 1"]);
    cap.assert_error_span(span::DELETE, want_type);
    let event = cap.event(event::SANDBOX_DELETE_FAILED);
    assert_eq!(event.level, tracing::Level::ERROR);
    let mut want = match read {
        Some(session) => session_log_fields(session),
        None => vec![("chat_id", chat.to_string())],
    };
    want.push(("error", want_type.to_owned()));
    want.push(("message", event::SANDBOX_DELETE_FAILED.to_owned()));
    assert_eq!(event.fields, fields(&want));
    assert!(!world.locker.is_held(&chat), "released also on failure");
}

#[test]
fn a_lock_failure_is_reported_without_session_fields() {
    let world = World::new();
    world.locker_down();
    assert_delete_error(
        &world,
        new_chat(),
        ErrorKind::Unavailable,
        "lock_unavailable",
        None,
    );
}

#[test]
fn a_repository_read_failure_is_reported() {
    let world = World::new();
    world.repository.fail_next(
        RepoOp::GetActiveByChatId,
        RepositoryError::Other("corrupt".into()),
    );
    assert_delete_error(
        &world,
        new_chat(),
        ErrorKind::Internal,
        "repository_error",
        None,
    );
}

#[test]
fn a_runtime_failure_keeps_the_session_for_a_retry() {
    let (world, chat, session) = World::with_live_session();
    world.runtime_down(RuntimeOp::ForceRemove);
    assert_delete_error(
        &world,
        chat,
        ErrorKind::Unavailable,
        "runtime_unavailable",
        Some(&session),
    );
    assert_eq!(world.repository.all(), vec![session]);
    assert_eq!(
        world.calls.calls_of("repository.delete"),
        Vec::<String>::new()
    );
}

#[test]
fn a_repository_delete_failure_is_reported_with_the_session() {
    let (world, chat, session) = World::with_live_session();
    world.lease_lost_on(RepoOp::Delete);
    assert_delete_error(
        &world,
        chat,
        ErrorKind::Aborted,
        "lease_lost",
        Some(&session),
    );
}

#[test]
fn when_a_delete_answers_nothing_of_the_chat_runs_session_or_not() {
    let world = World::new();
    let with_session = new_chat();
    let session = world.existing(with_session, "default", "/srv/a", TTL);
    let without_session = new_chat();
    let now = world.clock.now();
    for (name, chat) in [("stray-1", with_session), ("stray-2", without_session)] {
        world.runtime.insert(
            ContainerId::parse(name).unwrap(),
            SandboxLabels::of(&world.spec(chat, "default", "/srv/a", now, now + TTL)),
            ContainerState::Paused,
        );
    }
    let delete = |chat| {
        capture(
            DeleteSandbox::new(world.ports.clone()).execute(DeleteSandboxCommand { chat_id: chat }),
        )
    };
    let (out, _) = delete(with_session);
    assert_eq!(out.unwrap().result, DeleteResult::Deleted);
    let (out, cap) = delete(without_session);
    assert_eq!(out.unwrap().result, DeleteResult::NotFound);
    assert_eq!(world.runtime.running(), vec![]);
    assert_eq!(world.repository.all(), vec![]);
    assert!(!world.calls.calls().is_empty());
    assert_eq!(
        cap.counter_lines(),
        vec![
            "sandbox_delete_total{result=not_found} 1",
            "sandbox_reconcile_total{result=stray_removed} 1",
        ]
    );
    let _ = session;
}

#[test]
fn a_failed_stray_sweep_keeps_the_session_for_the_retry() {
    let world = World::new();
    let chat = new_chat();
    let session = world.existing(chat, "default", "/srv/a", TTL);
    world.runtime_down(RuntimeOp::ListChat);
    let (out, _) = capture(
        DeleteSandbox::new(world.ports.clone()).execute(DeleteSandboxCommand { chat_id: chat }),
    );
    assert_eq!(out.unwrap_err().kind(), ErrorKind::Unavailable);
    assert_eq!(world.repository.all(), vec![session]);
}
