//! Admission on the fakes: quotas refuse before anything starts, a failed create gives its slot
//! back, a replace does not count the sandbox it replaces, and the engine bound refuses after
//! its wait.

use std::time::Duration;

use sandboxd_domain::AgentProfile;

use super::harness::*;
use crate::admission::{Admission, Refusal};
use crate::ports::RuntimeError;
use crate::telemetry::{event, span};
use crate::testing::RuntimeOp;
use crate::{AdmissionPolicy, CreateResult, CreateSandboxError, ErrorKind, UseCaseError};

fn policy(max_sandboxes: Option<u32>) -> AdmissionPolicy {
    AdmissionPolicy {
        max_sandboxes,
        max_concurrent_creates: None,
        wait: Duration::from_millis(50),
        reservation_ttl: Duration::from_secs(60),
    }
}

fn create(
    world: &World,
    chat: sandboxd_domain::ChatId,
    agent: &str,
    admission: AdmissionPolicy,
) -> (
    Result<crate::CreateSandboxOutput, CreateSandboxError>,
    Captured,
) {
    capture(
        world
            .create()
            .with_admission(admission)
            .execute(create_command(chat, agent, "/srv/a")),
    )
}

#[test]
fn the_deployment_quota_refuses_before_anything_starts() {
    let world = World::new();
    for _ in 0..2 {
        let (out, _) = create(&world, new_chat(), "default", policy(Some(2)));
        assert_eq!(out.unwrap().result, CreateResult::Created);
    }
    world.calls.clear();
    let chat = new_chat();
    let (out, cap) = create(&world, chat, "default", policy(Some(2)));
    let error = out.unwrap_err();
    assert!(
        matches!(error, CreateSandboxError::Refused(Refusal::Deployment(2))),
        "{error:?}"
    );
    assert_eq!(error.kind(), ErrorKind::ResourceExhausted);
    assert_eq!(error.quota_subject().as_deref(), Some("max_sandboxes"));
    assert_eq!(
        error.client_message(),
        "the deployment's max_sandboxes (2) is reached"
    );
    assert_eq!(world.runtime.created_total(), 2, "nothing started");
    assert!(
        !world
            .calls
            .calls()
            .iter()
            .any(|c| c.starts_with("runtime.create") || c.starts_with("runtime.list_chat")),
        "{:?}",
        world.calls.calls()
    );
    cap.assert_counters(&["sandbox_create_total{result=quota_exceeded} 1"]);
    assert_eq!(
        cap.span(span::CREATE).field(span::RESULT),
        Some("quota_exceeded")
    );
    assert_eq!(
        cap.event(event::SANDBOX_CREATE_REFUSED).field("limit"),
        Some("max_sandboxes")
    );
    // A reuse is never refused: it adds nothing.
    let existing = world.repository.all().remove(0);
    let (out, _) = create(&world, existing.chat_id, "default", policy(Some(2)));
    assert_eq!(out.unwrap().result, CreateResult::Reused);
}

#[test]
fn a_profiles_quota_counts_only_its_own_sandboxes() {
    let world = World::new().with_profile("python", |profile: &mut AgentProfile| {
        profile.max_sandboxes = Some(1);
    });
    let (out, _) = create(&world, new_chat(), "python", policy(None));
    assert_eq!(out.unwrap().result, CreateResult::Created);
    let (out, _) = create(&world, new_chat(), "python", policy(None));
    let error = out.unwrap_err();
    assert_eq!(
        error.quota_subject().as_deref(),
        Some("agents.python.max_sandboxes")
    );
    let (out, _) = create(&world, new_chat(), "default", policy(None));
    assert_eq!(
        out.unwrap().result,
        CreateResult::Created,
        "another profile is not limited"
    );
}

#[test]
fn a_failed_create_gives_its_slot_back_and_a_replace_does_not_count_twice() {
    let world = World::new();
    world.runtime.fail_next(
        RuntimeOp::Create,
        RuntimeError::Unavailable("engine down".into()),
    );
    let (out, _) = create(&world, new_chat(), "default", policy(Some(1)));
    assert_eq!(out.unwrap_err().kind(), ErrorKind::Unavailable);
    let chat = new_chat();
    let (out, _) = create(&world, chat, "default", policy(Some(1)));
    let first = out.unwrap().session;
    // The deployment is full; the chat's own expired sandbox is replaced in place.
    world.clock.advance(TTL);
    let (out, _) = create(&world, chat, "default", policy(Some(1)));
    let replaced = out.unwrap();
    assert_eq!(replaced.result, CreateResult::Replaced);
    assert_ne!(replaced.session.session_id, first.session_id);
    let (out, _) = create(&world, new_chat(), "default", policy(Some(1)));
    assert_eq!(out.unwrap_err().kind(), ErrorKind::ResourceExhausted);
}

#[test]
fn the_engine_bound_refuses_after_its_wait_and_frees_its_slot() {
    let world = World::new();
    let admission = Admission::new(AdmissionPolicy {
        max_concurrent_creates: Some(1),
        ..policy(Some(10))
    });
    let profile = AgentProfile::new("default:local");
    let agent = agent_id("default");
    let admit = || {
        admission.admit(
            &world.ports,
            sandboxd_domain::SessionId::new_random(),
            &agent,
            &profile,
            None,
            true,
        )
    };
    let (outcome, _) = capture(async {
        let held = admit().await.unwrap().unwrap();
        let busy = admit().await.unwrap();
        admission.release(&world.ports, held).await;
        let after = admit().await.unwrap();
        (busy, after.is_ok())
    });
    let (busy, after) = outcome;
    let refusal = busy.unwrap_err();
    assert!(
        matches!(refusal, Refusal::EngineBusy { in_flight: 1, .. }),
        "{refusal:?}"
    );
    let error = CreateSandboxError::Refused(refusal);
    assert_eq!(error.kind(), ErrorKind::Overloaded);
    assert!(after, "a slot freed by the first is taken by the next");
    assert_eq!(
        world
            .calls
            .calls()
            .iter()
            .filter(|c| c.starts_with("repository.release"))
            .count(),
        2,
        "the refused one gave its reservation back too: {:?}",
        world.calls.calls()
    );
}
