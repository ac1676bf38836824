//! GetSandbox, ListSandboxes and ExtendSandbox: result, calls, metric, span and log per outcome.

use crate::UseCaseError;
use crate::telemetry::{event, span};
use std::time::Duration;

use super::harness::*;
use crate::ports::{Clock, ListQuery};
use crate::testing::RepoOp;
use crate::{
    ErrorKind, ExtendSandbox, ExtendSandboxCommand, ExtendSandboxError, GetSandbox,
    GetSandboxError, ListSandboxes,
};

const MAX_TTL: Duration = Duration::from_secs(24 * 3600);

#[test]
fn get_returns_the_current_session_even_when_expired() {
    let world = World::new();
    let chat = new_chat();
    let session = world.existing_expired(chat, "default", "/srv/a");
    let (out, cap) = capture(GetSandbox::new(world.ports.clone()).execute(chat));
    assert_eq!(out.unwrap(), session);
    assert_eq!(
        world.calls.calls(),
        vec![format!("repository.get_current_by_chat_id({chat})")],
        "a read takes no lease"
    );
    cap.assert_counters(&["sandbox_get_total{result=found} 1"]);
    let mut want = vec![(span::CHAT_ID, chat.to_string())];
    want.extend(session_span_fields(&session));
    want.push((span::RESULT, "found".to_owned()));
    assert_eq!(cap.span(span::GET).fields, fields(&want));
}

#[test]
fn get_of_an_unknown_chat_is_not_found() {
    let world = World::new();
    let chat = new_chat();
    let (out, cap) = capture(GetSandbox::new(world.ports.clone()).execute(chat));
    let err = out.unwrap_err();
    assert!(matches!(err, GetSandboxError::NotFound(c) if c == chat));
    assert_eq!(err.kind(), ErrorKind::NotFound);
    cap.assert_counters(&["sandbox_get_total{result=not_found} 1"]);
    assert_eq!(cap.event_names(), Vec::<&str>::new());
}

#[test]
fn get_failure_is_counted_and_on_the_span_but_logged_only_where_handled() {
    let world = World::new();
    world.repository_down(RepoOp::GetActiveByChatId);
    let chat = new_chat();
    let (out, cap) = capture(GetSandbox::new(world.ports.clone()).execute(chat));
    assert_eq!(out.unwrap_err().kind(), ErrorKind::Unavailable);
    cap.assert_counters(&["sandbox_get_total{result=error} 1"]);
    cap.assert_error_span(span::GET, "repository_unavailable");
    // The server maps the error to its status and logs it there, once.
    assert_eq!(cap.event_names(), Vec::<&str>::new());
}

#[test]
fn list_pages_through_every_session_once_with_an_agent_filter() {
    let world = World::new();
    let mut python = Vec::new();
    for i in 0..5 {
        world.existing(
            new_chat(),
            "default",
            &format!("/srv/{i}"),
            Duration::from_secs(60),
        );
        python.push(world.existing(
            new_chat(),
            "python",
            &format!("/srv/p{i}"),
            Duration::from_secs(60),
        ));
    }
    python.sort_by_key(|s| s.session_id.to_string());
    let usecase = ListSandboxes::new(world.ports.clone());
    let mut seen = Vec::new();
    let mut token = None;
    let mut pages = 0;
    let cap = loop {
        let query = ListQuery {
            agent_id: Some(agent_id("python")),
            state: None,
            page_size: 2,
            page_token: token,
        };
        let (page, cap) = capture(usecase.execute(query));
        let page = page.unwrap();
        pages += 1;
        seen.extend(page.sessions);
        token = page.next_page_token;
        if token.is_none() {
            break cap;
        }
    };
    assert_eq!(seen, python);
    assert_eq!(pages, 3);
    cap.assert_counters(&["sandbox_list_total{result=ok} 1"]);
    cap.assert_span_fields(
        span::LIST,
        &[
            (span::AGENT_ID, "python"),
            (span::PAGE_SIZE, "2"),
            (span::RETURNED_COUNT, "1"),
            (span::RESULT, "ok"),
        ],
    );
}

#[test]
fn list_refuses_a_forged_page_token_as_an_invalid_argument() {
    let world = World::new();
    let query = ListQuery {
        agent_id: None,
        state: None,
        page_size: 10,
        page_token: Some("forged".to_owned()),
    };
    let (out, cap) = capture(ListSandboxes::new(world.ports.clone()).execute(query));
    assert_eq!(
        out.unwrap_err().kind(),
        ErrorKind::InvalidArgument {
            field: "page_token"
        }
    );
    cap.assert_counters(&["sandbox_list_total{result=error} 1"]);
    cap.assert_error_span(span::LIST, "invalid_page_token");
    assert_eq!(cap.event_names(), Vec::<&str>::new());
}

fn extend(
    world: &World,
    chat: sandboxd_domain::ChatId,
    ttl: Option<Duration>,
) -> (
    Result<sandboxd_domain::SandboxSession, ExtendSandboxError>,
    Captured,
) {
    capture(
        ExtendSandbox::new(world.ports.clone(), TTL, MAX_TTL)
            .execute(ExtendSandboxCommand { chat_id: chat, ttl }),
    )
}

#[test]
fn extend_sets_expiry_to_now_plus_ttl_under_the_lease() {
    let (world, chat, session) = World::with_live_session();
    world.clock.advance(Duration::from_secs(10));
    let (out, cap) = extend(&world, chat, Some(Duration::from_secs(3600)));
    let extended = out.unwrap();
    assert_eq!(
        extended.expires_at,
        world.clock.now() + Duration::from_secs(3600)
    );
    assert_eq!(extended.session_id, session.session_id);
    assert_eq!(world.repository.all(), vec![extended.clone()]);
    assert_eq!(
        world.calls.calls(),
        leased_calls(
            chat,
            &[format!("repository.update({})", session.session_id)]
        )
    );
    cap.assert_counters(&["sandbox_extend_total{result=extended} 1"]);
    let mut want = vec![
        (span::CHAT_ID, chat.to_string()),
        (span::TTL_MS, "3600000".to_owned()),
    ];
    want.extend(session_span_fields(&extended));
    want.push((span::EXPIRES_AT, extended.expires_at.to_string()));
    want.push((span::RESULT, "extended".to_owned()));
    assert_eq!(cap.span(span::EXTEND).fields, fields(&want));
    cap.assert_session_event(
        event::SANDBOX_EXTENDED,
        &extended,
        &[("expires_at", extended.expires_at.to_string())],
    );
}

#[test]
fn extend_without_ttl_uses_the_configured_session_ttl() {
    let (world, chat, _) = World::with_live_session();
    let (out, _) = extend(&world, chat, None);
    assert_eq!(out.unwrap().expires_at, world.clock.now() + TTL);
}

#[test]
fn extend_refuses_zero_and_over_max_ttl_without_touching_anything() {
    for ttl in [Duration::ZERO, MAX_TTL + Duration::from_millis(1)] {
        let (world, chat, session) = World::with_live_session();
        let (out, cap) = extend(&world, chat, Some(ttl));
        let err = out.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument { field: "ttl" });
        assert_eq!(
            world.calls.calls(),
            Vec::<String>::new(),
            "refused before the lock"
        );
        assert_eq!(world.repository.all(), vec![session]);
        cap.assert_counters(&["sandbox_extend_total{result=invalid} 1"]);
    }
    let (world, chat, _) = World::with_live_session();
    assert!(
        extend(&world, chat, Some(MAX_TTL)).0.is_ok(),
        "exactly max_ttl is allowed"
    );
}

#[test]
fn extend_of_an_expired_session_is_a_failed_precondition() {
    let world = World::new();
    let chat = new_chat();
    let session = world.existing_expired(chat, "default", "/srv/a");
    let (out, cap) = extend(&world, chat, None);
    assert_eq!(out.unwrap_err().kind(), ErrorKind::FailedPrecondition);
    assert_eq!(world.repository.all(), vec![session]);
    cap.assert_counters(&["sandbox_extend_total{result=expired} 1"]);
    assert_eq!(
        cap.event(event::SANDBOX_EXTEND_FAILED).fields,
        fields(&[
            ("chat_id", chat.to_string()),
            ("error", "expired".to_owned()),
            ("message", event::SANDBOX_EXTEND_FAILED.to_owned())
        ])
    );
}

#[test]
fn extend_of_an_unknown_chat_is_not_found() {
    let world = World::new();
    let (out, cap) = extend(&world, new_chat(), None);
    assert_eq!(out.unwrap_err().kind(), ErrorKind::NotFound);
    cap.assert_counters(&["sandbox_extend_total{result=not_found} 1"]);
}

#[test]
fn extend_with_a_lost_lease_commits_nothing() {
    let (world, chat, session) = World::with_live_session();
    world.lease_lost_on(RepoOp::Update);
    let (out, cap) = extend(&world, chat, None);
    assert_eq!(out.unwrap_err().kind(), ErrorKind::Aborted);
    assert_eq!(world.repository.all(), vec![session]);
    cap.assert_counters(&["sandbox_extend_total{result=error} 1"]);
    cap.assert_error_span(span::EXTEND, "lease_lost");
}
