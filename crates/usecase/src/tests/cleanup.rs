//! CleanupExpiredSandboxes, branch by branch (docs/design.md §6 and §9).

use crate::UseCaseError;
use crate::telemetry::{event, metric, span};
use std::time::Duration;

use super::harness::*;
use crate::ports::Clock;
use crate::testing::{RepoOp, RuntimeOp};
use crate::{CleanupExpiredSandboxes, CleanupOptions, CleanupReport, ErrorKind};

fn pass(world: &World, concurrency: usize) -> CleanupExpiredSandboxes {
    CleanupExpiredSandboxes::new(
        world.ports.clone(),
        world.profiles.clone(),
        TTL,
        CleanupOptions {
            concurrency,
            batch_size: 1000,
        },
    )
}

/// Asserts the pass span's whole field set: its expired, cleaned, error and skipped counts (none
/// suspended), and its result.
fn assert_pass_span(cap: &Captured, [expired, cleaned, errors, skipped]: [&str; 4], result: &str) {
    cap.assert_span_fields(
        span::CLEANUP_PASS,
        &[
            (span::EXPIRED_COUNT, expired),
            (span::CLEANED_COUNT, cleaned),
            (span::SUSPENDED_COUNT, "0"),
            (span::ERROR_COUNT, errors),
            (span::SKIPPED_COUNT, skipped),
            (span::RESULT, result),
        ],
    );
}

/// The pass cleaned nothing, failed nothing, and skipped its one listed session.
fn assert_only_one_skipped(report: &CleanupReport) {
    assert_eq!(
        (
            report.cleaned.len(),
            report.skipped_count,
            report.error_count
        ),
        (0, 1, 0),
        "{report:?}"
    );
}

#[test]
fn a_failing_listing_is_counted_with_its_reason_and_raised() {
    let world = World::new();
    world.repository_down(RepoOp::ListExpired);
    let (out, cap) = capture(pass(&world, 8).execute());
    let err = out.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    cap.assert_counters(&[
        "sandbox_cleanup_error_total{error_type=repository_unavailable,reason=list_expired} 1",
    ]);
    let span = cap.assert_error_span(span::CLEANUP_PASS, "repository_unavailable");
    assert!(!span.fields.contains_key(span::EXPIRED_COUNT));
    assert_eq!(
        world.calls.calls(),
        vec!["repository.list_expired".to_owned()]
    );
}

#[test]
fn cleans_expired_sessions_and_leaves_live_ones() {
    let world = World::new();
    let a = world.existing_expired(new_chat(), "default", "/srv/a");
    let live = world.existing(new_chat(), "default", "/srv/b", Duration::from_secs(60));
    let (out, cap) = capture(pass(&world, 8).execute());
    let report = out.unwrap();
    assert_eq!(report.cleaned, vec![a.clone()]);
    assert_eq!((report.error_count, report.skipped_count), (0, 0));
    assert_eq!(world.repository.all(), vec![live.clone()]);
    assert_eq!(world.runtime.running(), vec![live.container_id]);
    assert_eq!(
        world.calls.calls(),
        vec![
            "repository.list_expired".to_owned(),
            format!("locker.lock({})", a.chat_id),
            format!("repository.get_current_by_chat_id({})", a.chat_id),
            format!("runtime.remove_gracefully({})", a.container_id),
            format!("repository.delete({})", a.session_id),
            format!("locker.release({})", a.chat_id),
            "repository.count_by_state".to_owned(),
        ],
        "re-read under the chat's lease, stop before delete, then the per-state gauge"
    );
    cap.assert_counters(&["sandbox_cleanup_total{result=cleaned} 1"]);
    assert_eq!(cap.gauge(metric::ACTIVE_COUNT), Some(1.0));
    assert_pass_span(&cap, ["1", "1", "0", "0"], "completed");
    let child = cap.span(span::CLEANUP_ONE);
    assert_eq!(child.parent.as_deref(), Some(span::CLEANUP_PASS));
    assert_eq!(
        child.fields,
        fields(&[
            (span::CHAT_ID, a.chat_id.to_string()),
            (span::SESSION_ID, a.session_id.to_string()),
            (span::CONTAINER_ID, a.container_id.to_string()),
            (span::RESULT, "cleaned".to_owned()),
        ])
    );
    let event = cap.assert_session_event(event::SANDBOX_CLEANED, &a, &[]);
    assert_eq!(event.span.as_deref(), Some(span::CLEANUP_ONE));
}

#[test]
fn skips_a_session_that_was_deleted_after_listing() {
    let world = World::new();
    let a = world.existing_expired(new_chat(), "default", "/srv/a");
    let repository = world.repository.clone();
    let gone = a.session_id;
    // Another replica deletes it between the listing and this pass taking the lease.
    world
        .locker
        .on_lock(move |_| repository.remove_direct(&gone));
    let (out, cap) = capture(pass(&world, 8).execute());
    assert_only_one_skipped(&out.unwrap());
    assert_eq!(world.calls.calls_of("runtime."), Vec::<String>::new());
    assert_eq!(
        cap.counter_lines(),
        Vec::<String>::new(),
        "a skip counts nothing"
    );
    assert_eq!(
        cap.span(span::CLEANUP_ONE).field(span::RESULT),
        Some("skipped")
    );
    assert_eq!(
        cap.span(span::CLEANUP_PASS).field(span::SKIPPED_COUNT),
        Some("1")
    );
}

#[test]
fn skips_a_superseded_session_and_removes_it_from_the_expiry_index() {
    let world = World::new();
    let chat = new_chat();
    let stale = world.existing_expired(chat, "default", "/srv/a");
    // The chat moved on to a new live session; the old one lingers in the index.
    let current = world.existing_live(chat);
    assert_eq!(world.repository.expiry_index_len(), 2);
    let (out, cap) = capture(pass(&world, 8).execute());
    assert_only_one_skipped(&out.unwrap());
    assert_eq!(world.repository.all(), vec![current.clone()]);
    assert_eq!(
        world.repository.expiry_index_len(),
        1,
        "the stale entry is gone"
    );
    assert_eq!(
        world.calls.calls_of("runtime."),
        Vec::<String>::new(),
        "the current container is untouched"
    );
    assert_eq!(
        world.calls.calls_of("repository.delete"),
        vec![format!("repository.delete({})", stale.session_id)]
    );
    assert_eq!(
        cap.span(span::CLEANUP_ONE).field(span::RESULT),
        Some("skipped")
    );
    cap.assert_session_event(event::SANDBOX_STALE_INDEX_REMOVED, &stale, &[]);
    // The next pass no longer lists it.
    world.calls.clear();
    let (again, _) = capture(pass(&world, 8).execute());
    assert_eq!(again.unwrap().skipped_count, 0);
}

#[test]
fn skips_a_session_extended_after_listing() {
    let world = World::new();
    let a = world.existing_expired(new_chat(), "default", "/srv/a");
    let repository = world.repository.clone();
    let clock = world.clock.clone();
    let listed = a.clone();
    world.locker.on_lock(move |_| {
        let mut extended = listed.clone();
        extended.expires_at = clock.now() + Duration::from_secs(600);
        repository.insert(extended);
    });
    let (out, cap) = capture(pass(&world, 8).execute());
    assert_only_one_skipped(&out.unwrap());
    assert_eq!(world.runtime.running(), vec![a.container_id.clone()]);
    assert_eq!(world.repository.all().len(), 1);
    assert_eq!(
        cap.span(span::CLEANUP_ONE).field(span::RESULT),
        Some("skipped")
    );
    cap.assert_counters(&[]);
}

#[test]
fn one_failing_session_does_not_stop_the_pass() {
    let world = World::new();
    let a = world.existing_expired(new_chat(), "default", "/srv/a");
    let b = world.existing_expired(new_chat(), "default", "/srv/b");
    let c = world.existing_expired(new_chat(), "default", "/srv/c");
    world.runtime.fail_container(b.container_id.clone());
    let (out, cap) = capture(pass(&world, 8).execute());
    let report = out.unwrap();
    let mut cleaned_ids: Vec<_> = report.cleaned.iter().map(|s| s.session_id).collect();
    cleaned_ids.sort();
    let mut want_ids = vec![a.session_id, c.session_id];
    want_ids.sort();
    assert_eq!(cleaned_ids, want_ids);
    assert_eq!((report.error_count, report.skipped_count), (1, 0));
    assert_eq!(
        world.repository.all(),
        vec![b.clone()],
        "the failed one is kept for the next pass"
    );
    cap.assert_counters(&[
        "sandbox_cleanup_error_total{error_type=runtime_error} 1",
        "sandbox_cleanup_total{result=cleaned} 2",
    ]);
    assert_eq!(
        cap.span(span::CLEANUP_PASS).field(span::RESULT),
        Some("completed_with_errors")
    );
    let failed: Vec<_> = cap
        .spans_named(span::CLEANUP_ONE)
        .into_iter()
        .filter(|s| s.field(span::RESULT) == Some("error"))
        .collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(
        failed[0].fields.get(span::SESSION_ID),
        Some(&b.session_id.to_string())
    );
    assert_eq!(failed[0].field(span::ERROR_TYPE), Some("runtime_error"));
    let event = cap.assert_session_event(
        event::SANDBOX_CLEAN_FAILED,
        &b,
        &[("error", "runtime_error".to_owned())],
    );
    assert_eq!(event.level, tracing::Level::ERROR);
}

#[test]
fn returns_cleaned_sessions_in_expiry_order_with_bounded_concurrency() {
    let world = World::new();
    let mut expected = Vec::new();
    for i in 0..20u64 {
        // Distinct expiry instants in the past, earliest first.
        let session = world.existing(new_chat(), "default", "/srv/a", Duration::ZERO);
        let mut session = session;
        session.expires_at -= Duration::from_secs(100 - i);
        world.repository.insert(session.clone());
        expected.push(session);
    }
    world.calls.clear();
    let (out, cap) = capture(pass(&world, 4).execute());
    let report = out.unwrap();
    assert_eq!(report.cleaned, expected);
    assert_eq!(world.runtime.running(), vec![]);
    let max = world.runtime.max_stops_in_flight();
    assert!(
        max > 1 && max <= 4,
        "stops overlap up to the bound, got {max}"
    );
    cap.assert_counters(&["sandbox_cleanup_total{result=cleaned} 20"]);
    assert_eq!(cap.gauge(metric::ACTIVE_COUNT), Some(0.0));
}

#[test]
fn concurrency_one_runs_stops_one_at_a_time() {
    let world = World::new();
    for _ in 0..5 {
        world.existing_expired(new_chat(), "default", "/srv/a");
    }
    let (out, _) = capture(pass(&world, 1).execute());
    assert_eq!(out.unwrap().cleaned.len(), 5);
    assert_eq!(world.runtime.max_stops_in_flight(), 1);
}

#[test]
fn an_empty_pass_completes() {
    let world = World::new();
    let (out, cap) = capture(pass(&world, 8).execute());
    assert_eq!(out.unwrap(), crate::CleanupReport::default());
    assert_pass_span(&cap, ["0", "0", "0", "0"], "completed");
}

#[test]
fn an_unavailable_engine_is_counted_and_logged_at_debug_only() {
    // The server's loop logs the outage once; a line per session per tick would flood the log.
    let world = World::new();
    let a = world.existing_expired(new_chat(), "default", "/srv/a");
    world.runtime_down(RuntimeOp::RemoveGracefully);
    let (out, cap) = capture(pass(&world, 8).execute());
    let report = out.unwrap();
    assert_eq!((report.error_count, report.unavailable_count), (1, 1));
    assert!(report.cleaned.is_empty());
    assert_eq!(world.repository.all(), vec![a]);
    assert_eq!(
        cap.event(event::SANDBOX_CLEAN_FAILED).level,
        tracing::Level::DEBUG
    );
}
