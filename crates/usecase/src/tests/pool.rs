//! The warm pool on the fakes: a create claims a waiting pooled sandbox instead of starting one,
//! falls back to a cold create when none is ready or the one taken is lost, fails as a cold
//! create would when the claim fails, and gives back what a refused create took; the refill fills
//! each profile's `pool_size`, only on a free engine slot, within `max_sandboxes`, backs off a
//! failing profile and takes over what an earlier process left waiting.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use super::harness::*;
use crate::pool::{RefillPool, WarmPool};
use crate::ports::RuntimeError;
use crate::telemetry::{event, metric};
use crate::testing::RuntimeOp;
use crate::{AdmissionPolicy, CreateResult, CreateSandboxError, PortError, RefillReport};

/// A world whose `default` agent pools `size` sandboxes.
fn pooled_world(size: u32) -> World {
    World::new().with_profile("default", |profile| profile.pool_size = size)
}

fn refill(create: &crate::CreateSandbox) -> RefillReport {
    let (report, _) = capture(create.refill_pool().execute());
    report.unwrap()
}

/// The session stored for `chat`, if any.
fn stored(world: &World, chat: sandboxd_domain::ChatId) -> Option<sandboxd_domain::SandboxSession> {
    world
        .repository
        .all()
        .into_iter()
        .find(|s| s.chat_id == chat)
}

#[test]
fn pool_off_creates_exactly_as_before_and_the_refill_has_nothing_to_do() {
    let world = World::new();
    let create = world.create();
    let refill = create.refill_pool();
    assert!(!refill.is_enabled());
    let (report, _) = capture(refill.execute());
    assert_eq!(report.unwrap(), RefillReport::default());
    world.calls.clear();
    let (out, cap) = capture(create.execute(create_command(new_chat(), "default", "/srv/a")));
    assert_eq!(out.unwrap().result, CreateResult::Created);
    assert!(
        world.calls.calls_of("runtime.claim").is_empty()
            && world.calls.calls_of("runtime.start_pooled").is_empty()
    );
    assert_eq!(world.calls.calls_of("runtime.create").len(), 1);
    assert!(
        cap.counter_lines()
            .iter()
            .all(|line| !line.starts_with("sandbox_pool")),
        "{:?}",
        cap.counter_lines()
    );
}

#[test]
fn the_refill_fills_the_pool_and_a_create_claims_instead_of_starting() {
    let world = pooled_world(2);
    let create = world.create();
    let report = refill(&create);
    assert_eq!(report.started, 2);
    assert_eq!(world.runtime.waiting().len(), 2);
    assert_eq!(create.refill_pool().pool().ready(&agent_id("default")), 2);
    // Waiting pooled sandboxes are the pool's: no listing shows them to reconcile.
    let (listed, _) = capture(world.ports.engines.list_local());
    assert!(listed.unwrap().is_empty());

    world.calls.clear();
    let chat = new_chat();
    let (out, cap) = capture(create.execute(create_command(chat, "default", "/srv/a")));
    let out = out.unwrap();
    assert_eq!(out.result, CreateResult::Created);
    assert!(world.calls.calls_of("runtime.create").is_empty());
    let claims = world.calls.calls_of("runtime.claim");
    assert_eq!(claims.len(), 1, "{:?}", world.calls.calls());
    assert!(claims[0].contains(out.session.container_id.as_str()));
    assert_eq!(world.runtime.waiting().len(), 1);
    assert_eq!(
        cap.counter_lines()
            .iter()
            .filter(|line| line.starts_with(metric::POOL_CLAIMS_TOTAL))
            .collect::<Vec<_>>(),
        [&format!(
            "{}{{agent=default,result=claimed}} 1",
            metric::POOL_CLAIMS_TOTAL
        )]
    );
    assert_eq!(cap.gauge(metric::POOL_READY), Some(1.0));
    // Claimed, it is the chat's sandbox: listed for the chat, stored as the session.
    let (listed, _) = capture(world.ports.engines.list_chat(&chat));
    let listed = listed.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].container_id, out.session.container_id);
    assert_eq!(
        stored(&world, chat).unwrap().container_id,
        out.session.container_id
    );
}

#[test]
fn an_empty_pool_falls_back_to_a_cold_create() {
    let world = pooled_world(1);
    let create = world.create();
    world.calls.clear();
    let (out, cap) = capture(create.execute(create_command(new_chat(), "default", "/srv/a")));
    assert_eq!(out.unwrap().result, CreateResult::Created);
    assert_eq!(world.calls.calls_of("runtime.create").len(), 1);
    assert!(
        cap.counter_lines().contains(&format!(
            "{}{{agent=default,result=empty}} 1",
            metric::POOL_CLAIMS_TOTAL
        )),
        "{:?}",
        cap.counter_lines()
    );
}

#[test]
fn a_lost_pooled_sandbox_falls_back_to_a_cold_create_and_is_gone() {
    let world = pooled_world(1);
    let create = world.create();
    refill(&create);
    let pooled = world.runtime.waiting();
    world.runtime.remove_direct(&pooled[0]);
    world.calls.clear();
    let (out, cap) = capture(create.execute(create_command(new_chat(), "default", "/srv/a")));
    let out = out.unwrap();
    assert_eq!(out.result, CreateResult::Created);
    assert_ne!(out.session.container_id, pooled[0]);
    assert_eq!(world.calls.calls_of("runtime.create").len(), 1);
    assert!(cap.counter_lines().contains(&format!(
        "{}{{agent=default,result=lost}} 1",
        metric::POOL_CLAIMS_TOTAL
    )));
    assert!(cap.event_names().contains(&event::POOL_CLAIM_LOST));
    assert_eq!(world.runtime.running(), vec![out.session.container_id]);
}

#[test]
fn a_failed_claim_fails_the_create_as_a_cold_one_would_and_leaves_nothing() {
    let world = pooled_world(1);
    let create = world.create();
    refill(&create);
    world.runtime.fail_next(
        RuntimeOp::Claim,
        RuntimeError::NotReady(Duration::from_secs(1)),
    );
    world.calls.clear();
    let chat = new_chat();
    let (out, cap) = capture(create.execute(create_command(chat, "default", "/srv/a")));
    let error = out.unwrap_err();
    assert!(
        matches!(
            error,
            CreateSandboxError::Port(PortError::Runtime(RuntimeError::NotReady(_)))
        ),
        "{error:?}"
    );
    assert!(world.calls.calls_of("runtime.create").is_empty());
    assert!(world.runtime.running().is_empty());
    assert!(stored(&world, chat).is_none());
    assert!(cap.counter_lines().contains(&format!(
        "{}{{agent=default,result=failed}} 1",
        metric::POOL_CLAIMS_TOTAL
    )));
}

#[test]
fn a_refused_create_puts_the_pooled_sandbox_back() {
    let world = pooled_world(1);
    let create = world.create().with_admission(AdmissionPolicy {
        max_sandboxes: Some(1),
        ..AdmissionPolicy::default()
    });
    refill(&create);
    let (first, _) = capture(create.execute(create_command(new_chat(), "python", "/srv/a")));
    assert_eq!(first.unwrap().result, CreateResult::Created);
    let (refused, _) = capture(create.execute(create_command(new_chat(), "default", "/srv/a")));
    assert!(matches!(refused, Err(CreateSandboxError::Refused(_))));
    assert_eq!(create.refill_pool().pool().ready(&agent_id("default")), 1);
    assert_eq!(world.runtime.waiting().len(), 1);
}

#[test]
fn the_refill_only_takes_a_free_engine_slot() {
    let world = pooled_world(2);
    let pool = WarmPool::new();
    let busy = RefillPool::new(
        world.ports.clone(),
        world.profiles.clone(),
        pool.clone(),
        Some(Arc::new(Semaphore::new(0))),
        None,
    );
    let (report, _) = capture(busy.execute());
    assert_eq!(report.unwrap().started, 0);
    assert!(world.calls.calls_of("runtime.start_pooled").is_empty());
    let free = RefillPool::new(
        world.ports.clone(),
        world.profiles.clone(),
        pool.clone(),
        Some(Arc::new(Semaphore::new(1))),
        None,
    );
    let (report, _) = capture(free.execute());
    assert_eq!(report.unwrap().started, 2);
    assert_eq!(pool.ready(&agent_id("default")), 2);
}

#[test]
fn the_refill_counts_waiting_sandboxes_against_max_sandboxes() {
    let world = pooled_world(3);
    world.existing_live(new_chat());
    let refill = RefillPool::new(
        world.ports.clone(),
        world.profiles.clone(),
        WarmPool::new(),
        None,
        Some(3),
    );
    let (report, _) = capture(refill.execute());
    // One running sandbox + two waiting = the deployment's three.
    assert_eq!(report.unwrap().started, 2);
}

#[test]
fn a_failing_profile_backs_off_instead_of_retrying_every_pass() {
    let world = pooled_world(1);
    let create = world.create();
    let refill = create.refill_pool();
    world.runtime_down(RuntimeOp::StartPooled);
    let (report, cap) = capture(refill.execute());
    let report = report.unwrap();
    assert_eq!((report.started, report.failed), (0, 1));
    assert!(cap.event_names().contains(&event::POOL_START_FAILED));
    assert!(cap.counter_lines().contains(&format!(
        "{}{{agent=default,result=error}} 1",
        metric::POOL_STARTS_TOTAL
    )));
    world.calls.clear();
    let (report, _) = capture(refill.execute());
    assert_eq!(report.unwrap(), RefillReport::default());
    assert!(world.calls.calls_of("runtime.start_pooled").is_empty());
}

#[test]
fn the_first_pass_takes_over_waiting_sandboxes_up_to_pool_size_and_discards_the_rest() {
    let world = pooled_world(3);
    // An earlier process left three of `default` and one of `python` (which does not pool).
    let before = world.create();
    capture(before.refill_pool().execute()).0.unwrap();
    let (_, _) = capture(async {
        crate::ports::PoolRuntime::start_pooled(
            &*world.runtime,
            &agent_id("python"),
            &sandboxd_domain::AgentProfile::new("python:local"),
        )
        .await
        .unwrap()
    });
    let smaller = crate::Profiles::new(world.profiles.iter().map(|(id, profile)| {
        let mut profile = profile.clone();
        profile.pool_size = profile.pool_size.min(2);
        (id.clone(), profile)
    }));
    let restarted = RefillPool::new(world.ports.clone(), smaller, WarmPool::new(), None, None);
    world.calls.clear();
    let (report, _) = capture(restarted.execute());
    let report = report.unwrap();
    assert_eq!((report.adopted, report.released, report.started), (2, 2, 0));
    assert_eq!(world.runtime.waiting().len(), 2);
    assert_eq!(world.calls.calls_of("runtime.discard_pooled").len(), 2);
}

#[test]
fn a_claim_is_in_flight_from_its_take_until_it_ends_or_goes_back() {
    let world = pooled_world(2);
    let create = world.create();
    refill(&create);
    let pool = create.refill_pool().pool().clone();
    let agent = agent_id("default");
    let taken = pool.take(&agent).unwrap();
    assert_eq!(pool.claims_in_flight(), 1);
    drop(taken);
    assert_eq!((pool.claims_in_flight(), pool.ready(&agent)), (0, 2));
    let (_pooled, in_flight) = pool.take(&agent).unwrap().into_inner();
    assert_eq!((pool.claims_in_flight(), pool.ready(&agent)), (1, 1));
    drop(in_flight);
    assert_eq!(pool.claims_in_flight(), 0);
    let (out, _) = capture(create.execute(create_command(new_chat(), "default", "/srv/a")));
    assert_eq!(out.unwrap().result, CreateResult::Created);
    assert_eq!(pool.claims_in_flight(), 0);
}
