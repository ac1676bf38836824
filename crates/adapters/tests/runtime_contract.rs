//! One contract suite for the runtime port, run against the Docker runtime and against the
//! in-memory fake, so the fake the use-case tests rely on cannot drift from a real engine and a
//! new runtime has one list of cases to pass (`docs/design.md`, "Adding a runtime").
//!
//! Each check is an async fn over a [`Backend`]; `contract!` instantiates every check once per
//! backend. Engine-specific behaviour (hardening, volume policy, readiness) stays in
//! `docker_runtime.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/contract.rs"]
#[macro_use]
mod contract;
#[path = "support/docker_engine.rs"]
mod docker_engine;

use std::sync::Arc;

use docker_engine::{TestSandboxes, new_sandbox};
use sandboxd_domain::ContainerId;
use sandboxd_testkit::TestResult;
use sandboxd_usecase::ports::{
    ContainerState, NewSandbox, PoolRuntime, RuntimeError, SandboxLabels, SandboxRuntime,
};
use sandboxd_usecase::testing::{CallLog, FakeRuntime};

/// What the suite needs besides the port: specs it may create.
trait Backend {
    fn runtime(&self) -> Arc<dyn SandboxRuntime>;
    /// The same engine's warm pool.
    fn pool(&self) -> Arc<dyn PoolRuntime>;
    /// A spec of the `web` profile with a fresh volume the backend allows.
    fn spec(&self, volume: &str) -> NewSandbox;
}

struct Docker {
    world: TestSandboxes,
    runtime: Arc<sandboxd_adapters::docker::DockerRuntime>,
}

impl Docker {
    async fn new() -> TestResult<Self> {
        let world = TestSandboxes::new();
        let runtime = Arc::new(sandboxd_adapters::docker::DockerRuntime::new(
            world.pooled_config(),
        ));
        Ok(Self { world, runtime })
    }
}

impl Backend for Docker {
    fn runtime(&self) -> Arc<dyn SandboxRuntime> {
        self.runtime.clone()
    }
    fn pool(&self) -> Arc<dyn PoolRuntime> {
        self.runtime.clone()
    }
    fn spec(&self, volume: &str) -> NewSandbox {
        new_sandbox(&self.world.volume_dir(volume))
    }
}

struct Fake {
    runtime: Arc<FakeRuntime>,
    root: tempfile::TempDir,
}

impl Fake {
    async fn new() -> TestResult<Self> {
        let runtime = Arc::new(FakeRuntime::new(CallLog::default()));
        Ok(Self {
            runtime,
            root: tempfile::tempdir()?,
        })
    }
}

impl Backend for Fake {
    fn runtime(&self) -> Arc<dyn SandboxRuntime> {
        self.runtime.clone()
    }
    fn pool(&self) -> Arc<dyn PoolRuntime> {
        self.runtime.clone()
    }
    fn spec(&self, volume: &str) -> NewSandbox {
        let dir = self.root.path().join(volume);
        std::fs::create_dir(&dir).unwrap();
        new_sandbox(&dir)
    }
}

async fn a_created_sandbox_is_listed_running_with_labels_that_rebuild_its_session(
    backend: &dyn Backend,
) -> TestResult {
    let runtime = backend.runtime();
    let spec = backend.spec("a");
    let started = runtime.create(&spec).await.unwrap();
    assert!(
        started.endpoint.is_some(),
        "the web profile publishes a port"
    );
    assert_eq!(
        runtime.inspect(&started.container_id).await.unwrap(),
        ContainerState::Running
    );

    let listed = runtime.list_managed().await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    let container = &listed[0];
    assert_eq!(container.container_id, started.container_id);
    assert_eq!(container.state, ContainerState::Running);
    assert_eq!(container.labels, SandboxLabels::of(&spec));
    assert_eq!(container.endpoint, started.endpoint);
    assert_eq!(
        container.session(),
        Some(spec.into_session(started.clone())),
        "a reconcile can rebuild the session from the engine alone"
    );
    runtime.force_remove(&started.container_id).await.unwrap();
    Ok(())
}

async fn removals_are_idempotent_and_leave_the_container_gone(backend: &dyn Backend) -> TestResult {
    let runtime = backend.runtime();
    let first = runtime.create(&backend.spec("a")).await.unwrap();
    let second = runtime.create(&backend.spec("b")).await.unwrap();
    assert_eq!(runtime.list_managed().await.unwrap().len(), 2);

    runtime
        .remove_gracefully(&first.container_id)
        .await
        .unwrap();
    runtime
        .remove_gracefully(&first.container_id)
        .await
        .unwrap();
    assert_eq!(
        runtime.inspect(&first.container_id).await.unwrap(),
        ContainerState::Gone
    );
    assert_eq!(
        runtime.inspect(&second.container_id).await.unwrap(),
        ContainerState::Running,
        "removing one sandbox leaves the others"
    );
    runtime.force_remove(&second.container_id).await.unwrap();
    runtime.force_remove(&second.container_id).await.unwrap();
    assert_eq!(
        runtime.inspect(&second.container_id).await.unwrap(),
        ContainerState::Gone
    );
    assert!(runtime.list_managed().await.unwrap().is_empty());

    let never = ContainerId::parse("sandbox-never-existed-0000").unwrap();
    runtime.remove_gracefully(&never).await.unwrap();
    runtime.force_remove(&never).await.unwrap();
    assert_eq!(runtime.inspect(&never).await.unwrap(), ContainerState::Gone);
    Ok(())
}

async fn a_chat_listing_holds_exactly_that_chats_containers(backend: &dyn Backend) -> TestResult {
    let runtime = backend.runtime();
    let first = backend.spec("a");
    let mut second = backend.spec("b");
    second.chat_id = first.chat_id;
    let other = backend.spec("c");
    let mut want = Vec::new();
    for spec in [&first, &second] {
        want.push(runtime.create(spec).await.unwrap().container_id);
    }
    let unrelated = runtime.create(&other).await.unwrap();
    let mut listed: Vec<_> = runtime
        .list_chat(&first.chat_id)
        .await
        .unwrap()
        .into_iter()
        .map(|c| {
            assert_eq!(c.labels.chat_id, Some(first.chat_id));
            c.container_id
        })
        .collect();
    listed.sort();
    want.sort();
    assert_eq!(listed, want);
    assert!(
        runtime
            .list_chat(&sandboxd_domain::ChatId::from_uuid(uuid::Uuid::new_v4()))
            .await
            .unwrap()
            .is_empty()
    );
    for id in want.iter().chain([&unrelated.container_id]) {
        runtime.force_remove(id).await.unwrap();
    }
    Ok(())
}

async fn an_allowed_volume_validates_and_creates_nothing(backend: &dyn Backend) -> TestResult {
    let runtime = backend.runtime();
    let spec = backend.spec("a");
    runtime
        .validate(&spec.profile, &spec.volume_host_path)
        .await
        .unwrap();
    runtime.ping().await.unwrap();
    assert!(
        runtime.list_managed().await.unwrap().is_empty(),
        "validate creates nothing"
    );
    Ok(())
}

async fn pause_freezes_and_unpause_thaws_each_idempotently(backend: &dyn Backend) -> TestResult {
    let runtime = backend.runtime();
    let id = runtime
        .create(&backend.spec("a"))
        .await
        .unwrap()
        .container_id;

    runtime.pause(&id).await.unwrap();
    assert_eq!(runtime.inspect(&id).await.unwrap(), ContainerState::Paused);
    runtime.pause(&id).await.unwrap();
    assert_eq!(runtime.inspect(&id).await.unwrap(), ContainerState::Paused);
    assert_eq!(
        runtime.list_managed().await.unwrap()[0].state,
        ContainerState::Paused
    );

    runtime.unpause(&id).await.unwrap();
    assert_eq!(runtime.inspect(&id).await.unwrap(), ContainerState::Running);
    runtime.unpause(&id).await.unwrap();
    assert_eq!(runtime.inspect(&id).await.unwrap(), ContainerState::Running);
    runtime.force_remove(&id).await.unwrap();
    Ok(())
}

async fn stop_keeps_the_container_stopped_and_is_idempotent(backend: &dyn Backend) -> TestResult {
    let runtime = backend.runtime();
    let id = runtime
        .create(&backend.spec("a"))
        .await
        .unwrap()
        .container_id;

    runtime.stop(&id).await.unwrap();
    assert_eq!(runtime.inspect(&id).await.unwrap(), ContainerState::Stopped);
    runtime.stop(&id).await.unwrap();
    assert_eq!(runtime.inspect(&id).await.unwrap(), ContainerState::Stopped);
    let listed = runtime.list_managed().await.unwrap();
    assert_eq!(listed.len(), 1, "a stopped sandbox is kept: {listed:?}");
    assert_eq!(listed[0].state, ContainerState::Stopped);
    runtime.force_remove(&id).await.unwrap();
    Ok(())
}

async fn a_paused_sandbox_stops(backend: &dyn Backend) -> TestResult {
    let runtime = backend.runtime();
    let id = runtime
        .create(&backend.spec("a"))
        .await
        .unwrap()
        .container_id;
    runtime.pause(&id).await.unwrap();

    runtime.stop(&id).await.unwrap();
    assert_eq!(runtime.inspect(&id).await.unwrap(), ContainerState::Stopped);
    runtime.force_remove(&id).await.unwrap();
    Ok(())
}

async fn start_runs_a_stopped_sandbox_again_and_returns_its_endpoint(
    backend: &dyn Backend,
) -> TestResult {
    let runtime = backend.runtime();
    let spec = backend.spec("a");
    let id = runtime.create(&spec).await.unwrap().container_id;
    runtime.stop(&id).await.unwrap();

    let endpoint = runtime.start(&id, &spec.profile).await.unwrap();
    assert!(endpoint.is_some(), "the web profile publishes a port");
    assert_eq!(runtime.inspect(&id).await.unwrap(), ContainerState::Running);
    let listed = runtime.list_managed().await.unwrap();
    assert_eq!(
        listed[0].endpoint, endpoint,
        "the endpoint published by this start, not the one of the create"
    );
    // Starting a running sandbox changes nothing and answers where it serves.
    assert_eq!(runtime.start(&id, &spec.profile).await.unwrap(), endpoint);
    assert_eq!(runtime.inspect(&id).await.unwrap(), ContainerState::Running);
    runtime.force_remove(&id).await.unwrap();
    Ok(())
}

async fn a_state_change_the_sandbox_is_not_in_a_state_for_is_vanished(
    backend: &dyn Backend,
) -> TestResult {
    let runtime = backend.runtime();
    let spec = backend.spec("a");
    let id = runtime.create(&spec).await.unwrap().container_id;

    runtime.stop(&id).await.unwrap();
    assert_vanished(runtime.pause(&id).await, "pause of a stopped sandbox");
    assert_vanished(runtime.unpause(&id).await, "unpause of a stopped sandbox");
    assert_eq!(runtime.inspect(&id).await.unwrap(), ContainerState::Stopped);

    runtime.start(&id, &spec.profile).await.unwrap();
    runtime.pause(&id).await.unwrap();
    assert_vanished(
        runtime.start(&id, &spec.profile).await,
        "start of a paused sandbox (thawing is unpause's)",
    );
    assert_eq!(runtime.inspect(&id).await.unwrap(), ContainerState::Paused);
    runtime.force_remove(&id).await.unwrap();
    Ok(())
}

async fn every_state_change_of_a_removed_sandbox_is_vanished(backend: &dyn Backend) -> TestResult {
    let runtime = backend.runtime();
    let spec = backend.spec("a");
    let removed = runtime.create(&spec).await.unwrap().container_id;
    runtime.force_remove(&removed).await.unwrap();
    let never = ContainerId::parse("sandbox-never-existed-0000").unwrap();

    for id in [&removed, &never] {
        assert_vanished(runtime.pause(id).await, "pause");
        assert_vanished(runtime.unpause(id).await, "unpause");
        assert_vanished(runtime.stop(id).await, "stop");
        assert_vanished(runtime.start(id, &spec.profile).await, "start");
    }
    assert!(runtime.list_managed().await.unwrap().is_empty());
    Ok(())
}

async fn runtimes_name_the_default_and_a_create_under_an_unlisted_one_is_refused(
    backend: &dyn Backend,
) -> TestResult {
    let runtime = backend.runtime();
    let registered = runtime.runtimes().await.unwrap();
    assert!(registered.contains("runc"), "{registered:?}");

    // A listed runtime named explicitly is the one the sandbox runs under.
    let mut explicit = backend.spec("a");
    Arc::make_mut(&mut explicit.profile).runtime = Some("runc".to_owned());
    let id = runtime.create(&explicit).await.unwrap().container_id;
    assert_eq!(runtime.inspect(&id).await.unwrap(), ContainerState::Running);
    runtime.force_remove(&id).await.unwrap();

    // An unlisted one is refused, never replaced by the default, and leaves nothing behind.
    let mut unknown = backend.spec("b");
    Arc::make_mut(&mut unknown.profile).runtime = Some("no-such-runtime".to_owned());
    assert!(!registered.contains("no-such-runtime"));
    let refused = runtime.create(&unknown).await;
    assert!(
        matches!(refused, Err(RuntimeError::Other(_))),
        "{refused:?}"
    );
    assert!(runtime.list_managed().await.unwrap().is_empty());
    Ok(())
}

#[track_caller]
fn assert_vanished<T: std::fmt::Debug>(result: Result<T, RuntimeError>, what: &str) {
    assert!(
        matches!(result, Err(RuntimeError::Vanished)),
        "{what}: {result:?}"
    );
}

/// The warm pool: a pooled sandbox waits unlisted (no reconcile or chat sweep sees it) and is
/// found by recovery; claimed, it is the chat's, with the labels a cold create gives, and is
/// removed like one.
async fn a_pooled_sandbox_waits_unlisted_and_a_claim_makes_it_the_chats(
    backend: &dyn Backend,
) -> TestResult {
    let runtime = backend.runtime();
    let pool = backend.pool();
    let spec = backend.spec("a");
    let pooled = pool
        .start_pooled(&spec.agent_id, &spec.profile)
        .await
        .unwrap();
    assert!(pooled.endpoint.is_some(), "published at start");
    assert!(runtime.list_managed().await.unwrap().is_empty());
    assert!(runtime.list_chat(&spec.chat_id).await.unwrap().is_empty());
    let recovered = pool.recover_pool().await.unwrap();
    assert_eq!(recovered.waiting, vec![pooled.clone()]);
    assert_eq!(recovered.released, 0);

    let started = pool.claim(pooled.clone(), &spec).await.unwrap();
    assert_eq!(started.container_id, pooled.container_id);
    assert_eq!(started.endpoint, pooled.endpoint);
    let listed = runtime.list_chat(&spec.chat_id).await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].labels, SandboxLabels::of(&spec));
    assert_eq!(
        listed[0].session(),
        Some(spec.clone().into_session(started.clone()))
    );
    assert_eq!(runtime.list_managed().await.unwrap().len(), 1);
    assert!(pool.recover_pool().await.unwrap().waiting.is_empty());

    runtime
        .remove_gracefully(&started.container_id)
        .await
        .unwrap();
    assert_eq!(
        runtime.inspect(&started.container_id).await.unwrap(),
        ContainerState::Gone
    );
    assert!(runtime.list_managed().await.unwrap().is_empty());
    Ok(())
}

/// A discarded pooled sandbox is gone; a claim of a pooled sandbox whose container vanished is
/// `Lost` (the create falls back) and leaves nothing.
async fn a_discarded_or_vanished_pooled_sandbox_is_gone_and_its_claim_lost(
    backend: &dyn Backend,
) -> TestResult {
    let runtime = backend.runtime();
    let pool = backend.pool();
    let spec = backend.spec("a");
    let first = pool
        .start_pooled(&spec.agent_id, &spec.profile)
        .await
        .unwrap();
    pool.discard_pooled(first.clone()).await.unwrap();
    assert_eq!(
        runtime.inspect(&first.container_id).await.unwrap(),
        ContainerState::Gone
    );
    let second = pool
        .start_pooled(&spec.agent_id, &spec.profile)
        .await
        .unwrap();
    runtime.force_remove(&second.container_id).await.unwrap();
    let claimed = pool.claim(second, &spec).await;
    assert!(
        matches!(claimed, Err(sandboxd_usecase::ports::ClaimError::Lost(_))),
        "{claimed:?}"
    );
    assert!(runtime.list_chat(&spec.chat_id).await.unwrap().is_empty());
    assert!(pool.recover_pool().await.unwrap().waiting.is_empty());
    Ok(())
}

contract!(in_memory => Fake, on_docker => Docker: (
    a_pooled_sandbox_waits_unlisted_and_a_claim_makes_it_the_chats,
    a_discarded_or_vanished_pooled_sandbox_is_gone_and_its_claim_lost,
    a_created_sandbox_is_listed_running_with_labels_that_rebuild_its_session,
    removals_are_idempotent_and_leave_the_container_gone,
    a_chat_listing_holds_exactly_that_chats_containers,
    an_allowed_volume_validates_and_creates_nothing,
    pause_freezes_and_unpause_thaws_each_idempotently,
    stop_keeps_the_container_stopped_and_is_idempotent,
    a_paused_sandbox_stops,
    start_runs_a_stopped_sandbox_again_and_returns_its_endpoint,
    a_state_change_the_sandbox_is_not_in_a_state_for_is_vanished,
    every_state_change_of_a_removed_sandbox_is_vanished,
    runtimes_name_the_default_and_a_create_under_an_unlisted_one_is_refused,
));
