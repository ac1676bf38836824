//! CreateSandbox, branch by branch (NOTES.md "CreateSandbox").

use crate::UseCaseError;
use crate::telemetry::{event, metric, span};
use std::sync::Arc;
use std::time::Duration;

use sandboxd_domain::ConflictReason;

use super::harness::*;
use crate::ports::{Clock as _, ContainerState, SandboxLabels};
use crate::ports::{LockError, RepositoryError, RuntimeError};
use crate::testing::{RepoOp, RuntimeOp};
use crate::{CreateResult, CreateSandboxCommand, CreateSandboxError, ErrorKind};
use sandboxd_domain::ContainerId;

fn command(chat: sandboxd_domain::ChatId, agent: &str, volume: &str) -> CreateSandboxCommand {
    CreateSandboxCommand {
        chat_id: chat,
        agent_id: agent_id(agent),
        volume_host_path: volume_path(volume),
    }
}

fn request_span_fields(cmd: &CreateSandboxCommand) -> Vec<(&'static str, String)> {
    vec![
        (span::CHAT_ID, cmd.chat_id.to_string()),
        (span::AGENT_ID, cmd.agent_id.to_string()),
        (span::VOLUME_HOST_PATH, cmd.volume_host_path.to_string()),
    ]
}

#[test]
fn creates_a_new_sandbox_when_the_chat_has_none() {
    let world = World::new();
    let chat = new_chat();
    let cmd = command(chat, "default", "/srv/a");
    let usecase = world.create();
    let (out, cap) = capture(usecase.execute(cmd.clone()));
    let out = out.unwrap();

    assert_eq!(out.result, CreateResult::Created);
    let session = &out.session;
    assert_eq!(session.chat_id, chat);
    assert_eq!(session.created_at, world.clock_now());
    assert_eq!(session.expires_at, session.created_at + TTL);
    assert_eq!(world.repository.all(), vec![session.clone()]);
    assert_eq!(world.runtime.running(), vec![session.container_id.clone()]);
    assert_eq!(
        world.calls.calls(),
        vec![
            format!("repository.get_current_by_chat_id({chat})"),
            format!("locker.lock({chat})"),
            format!("repository.get_current_by_chat_id({chat})"),
            "runtime.validate(default:local,/srv/a)".to_owned(),
            format!("runtime.list_chat({chat})"),
            format!("runtime.create({})", session.session_id),
            format!("repository.save({})", session.session_id),
            format!("locker.release({chat})"),
        ]
    );
    assert_eq!(
        cap.counter_lines(),
        vec!["sandbox_create_total{result=created} 1"]
    );
    assert_eq!(cap.gauge(metric::ACTIVE_COUNT), Some(1.0));
    let mut want = request_span_fields(&cmd);
    want.extend(session_span_fields(session));
    want.push((span::RESULT, "created".to_owned()));
    assert_eq!(cap.span(span::CREATE).fields, fields(&want));
    assert_eq!(cap.event_names(), vec![event::SANDBOX_CREATED]);
    let event = cap.event(event::SANDBOX_CREATED);
    assert_eq!(event.level, tracing::Level::INFO);
    assert_eq!(event.span.as_deref(), Some(span::CREATE));
    let mut want_event = session_log_fields(session);
    want_event.push(("message", event::SANDBOX_CREATED.to_owned()));
    assert_eq!(event.fields, fields(&want_event));
    assert!(!world.locker.is_held(&chat), "the lease is released");
}

#[test]
fn reuses_a_live_session_whose_agent_and_volume_match() {
    let world = World::new();
    let chat = new_chat();
    let existing = world.existing(chat, "default", "/srv/a", Duration::from_secs(60));
    let cmd = command(chat, "default", "/srv/a");
    let (out, cap) = capture(world.create().execute(cmd.clone()));
    let out = out.unwrap();

    assert_eq!(out.result, CreateResult::Reused);
    assert_eq!(out.session, existing, "returned unchanged");
    assert_eq!(
        world.calls.calls(),
        vec![format!("repository.get_current_by_chat_id({chat})")],
        "a reuse of a live session is one read: no lease, no runtime, no write"
    );
    assert_eq!(
        cap.counter_lines(),
        vec!["sandbox_create_total{result=reused} 1"]
    );
    assert_eq!(
        cap.gauge(metric::ACTIVE_COUNT),
        None,
        "no write, no gauge update"
    );
    let mut want = request_span_fields(&cmd);
    want.extend(session_span_fields(&existing));
    want.push((span::RESULT, "reused".to_owned()));
    assert_eq!(cap.span(span::CREATE).fields, fields(&want));
    let mut want_event = session_log_fields(&existing);
    want_event.push(("message", event::SANDBOX_REUSED.to_owned()));
    assert_eq!(cap.event(event::SANDBOX_REUSED).fields, fields(&want_event));
    assert_eq!(cap.event_names(), vec![event::SANDBOX_REUSED]);
}

fn assert_conflict(agent: &str, volume: &str, reason: ConflictReason, reason_text: &str) {
    let world = World::new();
    let chat = new_chat();
    let existing = world.existing(chat, "default", "/srv/a", Duration::from_secs(60));
    let cmd = command(chat, agent, volume);
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
    let event = cap.event(event::SANDBOX_CONFLICT);
    assert_eq!(event.level, tracing::Level::WARN);
    assert_eq!(
        event.fields,
        fields(&[
            ("chat_id", chat.to_string()),
            ("session_id", existing.session_id.to_string()),
            ("container_id", existing.container_id.to_string()),
            ("requested_agent_id", agent.to_owned()),
            ("session_agent_id", "default".to_owned()),
            ("requested_volume_host_path", volume.to_owned()),
            ("session_volume_host_path", "/srv/a".to_owned()),
            ("reason", reason_text.to_owned()),
            ("message", event::SANDBOX_CONFLICT.to_owned()),
        ])
    );
    assert_eq!(cap.event_names(), vec![event::SANDBOX_CONFLICT]);
    assert!(!world.locker.is_held(&chat));
}

#[test]
fn conflict_when_the_agent_differs() {
    assert_conflict("other", "/srv/a", ConflictReason::AgentId, "agent_id");
}

#[test]
fn conflict_when_the_volume_differs() {
    assert_conflict(
        "default",
        "/srv/b",
        ConflictReason::VolumeHostPath,
        "volume_host_path",
    );
}

#[test]
fn conflict_when_agent_and_volume_differ() {
    assert_conflict(
        "other",
        "/srv/b",
        ConflictReason::AgentIdAndVolumeHostPath,
        "agent_id,volume_host_path",
    );
}

#[test]
fn replaces_an_expired_session_stopping_the_old_container_first() {
    let world = World::new();
    let chat = new_chat();
    let old = world.existing_expired(chat, "default", "/srv/a");
    // A replacement may use another agent and volume: the old session no longer binds them.
    let cmd = command(chat, "other", "/srv/b");
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
        vec![
            format!("repository.get_current_by_chat_id({chat})"),
            format!("locker.lock({chat})"),
            format!("repository.get_current_by_chat_id({chat})"),
            "runtime.validate(other:local,/srv/b)".to_owned(),
            format!("runtime.list_chat({chat})"),
            format!("runtime.remove_gracefully({})", old.container_id),
            format!("repository.delete({})", old.session_id),
            format!("runtime.create({})", new.session_id),
            format!("repository.save({})", new.session_id),
            format!("locker.release({chat})"),
        ]
    );
    assert_eq!(
        cap.counter_lines(),
        vec!["sandbox_create_total{result=replaced} 1"]
    );
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
    let mut old_fields = session_log_fields(&old);
    old_fields.push(("message", event::SANDBOX_REPLACED.to_owned()));
    assert_eq!(
        cap.event(event::SANDBOX_REPLACED).fields,
        fields(&old_fields)
    );
    let mut new_fields = session_log_fields(new);
    new_fields.push(("message", event::SANDBOX_CREATED.to_owned()));
    assert_eq!(
        cap.event(event::SANDBOX_CREATED).fields,
        fields(&new_fields)
    );
}

#[test]
fn a_session_expiring_exactly_now_is_replaced_not_reused() {
    let world = World::new();
    let chat = new_chat();
    world.existing(chat, "default", "/srv/a", Duration::ZERO);
    let (out, _) = capture(world.create().execute(command(chat, "default", "/srv/a")));
    assert_eq!(out.unwrap().result, CreateResult::Replaced);
}

#[test]
fn save_failure_stops_the_new_container_and_surfaces_the_save_error() {
    let world = World::new();
    let chat = new_chat();
    world.repository.fail_next(
        RepoOp::Save,
        RepositoryError::Unavailable("redis down".into()),
    );
    let (out, cap) = capture(world.create().execute(command(chat, "default", "/srv/a")));

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
    assert_eq!(
        cap.counter_lines(),
        vec!["sandbox_create_total{result=error} 1"]
    );
    assert_eq!(cap.gauge(metric::ACTIVE_COUNT), Some(0.0));
    let span = cap.span(span::CREATE);
    assert_eq!(span.field(span::RESULT), Some("error"));
    assert_eq!(span.field(span::ERROR_TYPE), Some("repository_unavailable"));
    assert_eq!(span.field(span::OTEL_STATUS_CODE), Some("ERROR"));
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
        "no log at this level, as in the seed"
    );
}

#[test]
fn save_failure_with_a_failing_compensation_still_surfaces_the_save_error() {
    let world = World::new();
    let chat = new_chat();
    world
        .repository
        .fail_next(RepoOp::Save, RepositoryError::Other("boom".into()));
    world.runtime.fail_next(
        RuntimeOp::RemoveGracefully,
        RuntimeError::Unavailable("engine down".into()),
    );
    let (out, cap) = capture(world.create().execute(command(chat, "default", "/srv/a")));

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
    assert_eq!(
        cap.counter_lines(),
        vec!["sandbox_create_total{result=error} 1"]
    );
    assert_eq!(cap.gauge(metric::ACTIVE_COUNT), Some(0.0));
    assert_eq!(
        cap.span(span::CREATE).field(span::ERROR_TYPE),
        Some("repository_error")
    );
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
    let (out, cap) = capture(world.create().execute(command(chat, "default", "/srv/a")));

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
    assert_eq!(
        cap.counter_lines(),
        vec!["sandbox_create_total{result=error} 1"]
    );
    assert_eq!(
        cap.span(span::CREATE).field(span::ERROR_TYPE),
        Some("lease_lost")
    );
}

fn assert_plain_error(
    world: &World,
    chat: sandboxd_domain::ChatId,
    want_kind: ErrorKind,
    want_type: &str,
) {
    assert_plain_error_with_events(world, chat, want_kind, want_type, &[]);
}

fn assert_plain_error_with_events(
    world: &World,
    chat: sandboxd_domain::ChatId,
    want_kind: ErrorKind,
    want_type: &str,
    want_events: &[&str],
) {
    let (out, cap) = capture(world.create().execute(command(chat, "default", "/srv/a")));
    let err = out.unwrap_err();
    assert!(
        matches!(
            err,
            CreateSandboxError::Lock(_)
                | CreateSandboxError::Repository(_)
                | CreateSandboxError::Runtime(_)
        ),
        "{err:?}"
    );
    assert_eq!(err.kind(), want_kind);
    assert_eq!(err.metric_label(), want_type);
    assert_eq!(
        cap.counter_lines(),
        vec!["sandbox_create_total{result=error} 1"]
    );
    let span = cap.span(span::CREATE);
    assert_eq!(span.field(span::RESULT), Some("error"));
    assert_eq!(span.field(span::ERROR_TYPE), Some(want_type));
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
    let (out, cap) = capture(world.create().execute(command(chat, "default", "/srv/a")));
    let err = out.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Aborted);
    assert_eq!(err.metric_label(), "lock_busy");
    assert_eq!(
        world.calls.calls(),
        vec![
            format!("repository.get_current_by_chat_id({chat})"),
            format!("locker.lock({chat})")
        ]
    );
    assert_eq!(
        cap.counter_lines(),
        vec!["sandbox_create_total{result=error} 1"]
    );
    drop(held);
}

#[test]
fn a_lock_store_failure_is_unavailable() {
    let world = World::new();
    world
        .locker
        .fail_next(LockError::Unavailable("redis down".into()));
    let chat = new_chat();
    let (out, _) = capture(world.create().execute(command(chat, "default", "/srv/a")));
    assert_eq!(out.unwrap_err().kind(), ErrorKind::Unavailable);
    assert_eq!(
        world.calls.calls(),
        vec![
            format!("repository.get_current_by_chat_id({chat})"),
            format!("locker.lock({chat})")
        ]
    );
}

#[test]
fn a_read_failure_is_reported_and_nothing_is_started() {
    let world = World::new();
    world.repository.fail_next(
        RepoOp::GetActiveByChatId,
        RepositoryError::Unavailable("down".into()),
    );
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
    world.runtime.fail_next(
        RuntimeOp::Create,
        RuntimeError::Unavailable("engine down".into()),
    );
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
        RuntimeError::VolumeDenied("outside the roots"),
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
    let (out, _) = capture(world.create().execute(command(chat, "nope", "/srv/a")));
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
    // The seed logs the replacement before it stops the old container.
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

#[test]
fn a_session_created_while_waiting_for_the_lease_is_reused_after_the_re_read() {
    let world = World::new();
    let chat = new_chat();
    // Another holder saves a live session between the lock-free read and this lease.
    let theirs = world.existing(chat, "default", "/srv/a", Duration::from_secs(60));
    world.repository.remove_direct(&theirs.session_id);
    let (repository, saved) = (world.repository.clone(), theirs.clone());
    world
        .locker
        .on_lock(move |_| repository.insert(saved.clone()));
    world.calls.clear();
    let (out, cap) = capture(world.create().execute(command(chat, "default", "/srv/a")));
    let out = out.unwrap();
    assert_eq!(out.result, CreateResult::Reused);
    assert_eq!(out.session, theirs);
    assert_eq!(world.runtime.created_total(), 0);
    assert_eq!(
        world.calls.calls(),
        vec![
            format!("repository.get_current_by_chat_id({chat})"),
            format!("locker.lock({chat})"),
            format!("repository.get_current_by_chat_id({chat})"),
            format!("locker.release({chat})"),
        ]
    );
    assert_eq!(
        cap.counter_lines(),
        vec!["sandbox_create_total{result=reused} 1"]
    );
}

#[test]
fn thirty_two_concurrent_creates_for_one_chat_start_exactly_one_container() {
    let world = World::new();
    let chat = new_chat();
    let usecase = Arc::new(world.create());
    let (outs, cap) = capture(futures::future::join_all((0..32).map(|_| {
        let usecase = usecase.clone();
        async move { usecase.execute(command(chat, "default", "/srv/a")).await }
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
    assert_eq!(
        cap.counter_lines(),
        vec![
            "sandbox_create_total{result=created} 1",
            "sandbox_create_total{result=reused} 31"
        ]
    );
}

impl World {
    fn clock_now(&self) -> sandboxd_domain::Timestamp {
        crate::ports::Clock::now(&*self.clock)
    }
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
    let (out, cap) = capture(world.create().execute(command(chat, "default", "/srv/a")));
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
fn a_create_for_a_chat_whose_store_lost_its_session_adopts_the_running_sandbox() {
    let world = World::new();
    let chat = new_chat();
    let created_at = world.clock.now() - Duration::from_secs(60);
    let spec = world.spec(chat, "default", "/srv/a", created_at, created_at + TTL * 3);
    let kept = ContainerId::parse("survivor").unwrap();
    world.runtime.insert(
        kept.clone(),
        SandboxLabels::of(&spec),
        ContainerState::Running,
    );
    let other_volume = ContainerId::parse("other-volume").unwrap();
    world.runtime.insert(
        other_volume,
        SandboxLabels::of(&world.spec(chat, "default", "/srv/z", created_at, created_at + TTL)),
        ContainerState::Running,
    );
    let (out, cap) = capture(world.create().execute(command(chat, "default", "/srv/a")));
    let out = out.unwrap();
    assert_eq!(out.result, CreateResult::Reused);
    assert_eq!(out.session.session_id, spec.session_id, "the same session");
    assert_eq!(out.session.container_id, kept);
    assert_eq!(out.session.created_at, created_at);
    assert_eq!(
        out.session.expires_at,
        created_at + TTL * 3,
        "its later expiry kept"
    );
    assert_eq!(world.repository.all(), vec![out.session.clone()]);
    assert_eq!(world.runtime.running(), vec![kept]);
    assert_eq!(world.runtime.created_total(), 0);
    assert_eq!(
        cap.counter_lines(),
        vec![
            "sandbox_create_total{result=reused} 1",
            "sandbox_reconcile_total{result=adopted} 1",
            "sandbox_reconcile_total{result=stray_removed} 1",
        ]
    );
}
