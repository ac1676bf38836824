//! The fleet runtime over fake nodes: ids carry their node, operations reach the node that runs
//! the container (with its engine's own id), placement takes the freer of the healthy,
//! non-draining nodes with room and moves on from a node that fails, and a lost node is never
//! called.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/docker_engine.rs"]
mod docker_engine;
#[path = "support/fleet.rs"]
mod fleet;

use std::sync::Arc;
use std::time::Duration;

use docker_engine::new_sandbox;
use fleet::{TTL, TestFleet};
use sandboxd_domain::{ContainerId, NodeId};
use sandboxd_usecase::ports::{Clock, ContainerState, NodeRegistry, RuntimeError, SandboxRuntime};
use sandboxd_usecase::testing::{CallLog, FakeRuntime, RuntimeOp};

fn fake() -> Arc<FakeRuntime> {
    Arc::new(FakeRuntime::new(CallLog::default()))
}

fn node_of(id: &ContainerId) -> &str {
    id.split_node().0.unwrap()
}

#[tokio::test]
async fn a_create_lands_on_the_freer_node_and_every_operation_follows_it() {
    let (local, remote) = (fake(), fake());
    // n1 (this node) has no capacity left: only n2 can take it.
    let fleet = TestFleet::new(local.clone(), vec![("n2", remote.clone(), 4, 0)]).await;
    fleet
        .registry
        .set_draining(&NodeId::parse("n1").unwrap(), true, fleet.fakes.clock.now())
        .await
        .unwrap();
    fleet.beat().await;
    let dir = tempfile::tempdir().unwrap();
    let spec = new_sandbox(dir.path());
    let started = fleet.runtime.create(&spec).await.unwrap();
    assert_eq!(node_of(&started.container_id), "n2");
    let engine_id = ContainerId::parse(started.container_id.split_node().1).unwrap();
    assert_eq!(remote.running(), vec![engine_id.clone()]);
    assert!(local.running().is_empty());
    assert!(!fleet.runtime.is_local(&started.container_id));

    fleet.runtime.pause(&started.container_id).await.unwrap();
    assert_eq!(
        remote.inspect(&engine_id).await.unwrap(),
        ContainerState::Paused
    );
    assert_eq!(
        fleet.runtime.inspect(&started.container_id).await.unwrap(),
        ContainerState::Paused
    );
    fleet.runtime.unpause(&started.container_id).await.unwrap();
    let chat = fleet.runtime.list_chat(&spec.chat_id).await.unwrap();
    assert_eq!(chat.len(), 1);
    assert_eq!(
        chat[0].container_id, started.container_id,
        "listed with its node"
    );
    assert!(
        fleet.runtime.list_managed().await.unwrap().is_empty(),
        "only this node's"
    );
    fleet
        .runtime
        .force_remove(&started.container_id)
        .await
        .unwrap();
    assert!(remote.running().is_empty());
}

#[tokio::test]
async fn placement_takes_the_node_with_more_room_and_skips_full_ones() {
    let (local, spare, full) = (fake(), fake(), fake());
    let fleet = TestFleet::new(
        local.clone(),
        vec![("n2", spare.clone(), 10, 1), ("n3", full.clone(), 2, 2)],
    )
    .await;
    // n1 is unbounded with nothing running; n3 is full.
    let dir = tempfile::tempdir().unwrap();
    for _ in 0..6 {
        let started = fleet
            .runtime
            .create(&new_sandbox(dir.path()))
            .await
            .unwrap();
        assert_ne!(node_of(&started.container_id), "n3");
    }
    assert!(full.running().is_empty());
    assert_eq!(local.running().len() + spare.running().len(), 6);
}

#[tokio::test]
async fn a_node_that_fails_the_create_is_left_for_another() {
    let (local, broken) = (fake(), fake());
    let fleet = TestFleet::new(local.clone(), vec![("n2", broken.clone(), 0, 0)]).await;
    for _ in 0..4 {
        broken.fail_next(
            RuntimeOp::Create,
            RuntimeError::Unavailable("engine down".into()),
        );
        local.fail_next(
            RuntimeOp::Create,
            RuntimeError::Unavailable("engine down".into()),
        );
    }
    let dir = tempfile::tempdir().unwrap();
    // Both fail: the last failure is the answer.
    let error = fleet
        .runtime
        .create(&new_sandbox(dir.path()))
        .await
        .unwrap_err();
    assert!(matches!(error, RuntimeError::Unavailable(_)), "{error:?}");
    // One more failure queued on n2 only: whichever is tried first, n1 serves.
    let (local, broken) = (fake(), fake());
    let fleet = TestFleet::new(local.clone(), vec![("n2", broken.clone(), 0, 0)]).await;
    broken.fail_next(
        RuntimeOp::Create,
        RuntimeError::Unavailable("engine down".into()),
    );
    let started = fleet.runtime.create(&new_sandbox(dir.path())).await;
    let started = match started {
        Ok(started) => started,
        Err(error) => panic!("{error:?}"),
    };
    assert_eq!(
        node_of(&started.container_id),
        if broken.running().is_empty() {
            "n1"
        } else {
            "n2"
        }
    );
    assert_eq!(local.running().len() + broken.running().len(), 1);
    // A refusal of the request itself is the answer, not a node failure.
    local.fail_next(
        RuntimeOp::Create,
        RuntimeError::VolumeDenied("outside the allowed roots"),
    );
    broken.fail_next(
        RuntimeOp::Create,
        RuntimeError::VolumeDenied("outside the allowed roots"),
    );
    let error = fleet
        .runtime
        .create(&new_sandbox(dir.path()))
        .await
        .unwrap_err();
    assert!(matches!(error, RuntimeError::VolumeDenied(_)), "{error:?}");
}

#[tokio::test]
async fn a_lost_node_is_never_called_and_its_removals_are_left_to_it() {
    let (local, gone) = (fake(), fake());
    let fleet = TestFleet::new(local.clone(), vec![("n2", gone.clone(), 0, 0)]).await;
    let dir = tempfile::tempdir().unwrap();
    let spec = new_sandbox(dir.path());
    let on_n2 = gone.create(&spec).await.unwrap();
    let id = NodeId::parse("n2")
        .unwrap()
        .container(on_n2.container_id.as_str())
        .unwrap();
    assert!(!fleet.runtime.is_lost(&id));
    // n2 stops beating; n1 goes on.
    fleet.fakes.clock.advance(TTL + Duration::from_secs(1));
    fleet.beat().await;
    assert!(fleet.runtime.is_lost(&id));
    gone.fail_next(RuntimeOp::ForceRemove, RuntimeError::Other("called".into()));
    fleet.runtime.force_remove(&id).await.unwrap();
    fleet.runtime.remove_gracefully(&id).await.unwrap();
    assert_eq!(
        gone.running(),
        vec![on_n2.container_id.clone()],
        "not called"
    );
    assert!(matches!(
        fleet.runtime.inspect(&id).await,
        Err(RuntimeError::Unavailable(_))
    ));
    // Its chat's listing skips it: the containers it holds go with its own reconcile.
    assert!(
        fleet
            .runtime
            .list_chat(&spec.chat_id)
            .await
            .unwrap()
            .is_empty()
    );
    // New sandboxes go elsewhere.
    let started = fleet
        .runtime
        .create(&new_sandbox(dir.path()))
        .await
        .unwrap();
    assert_eq!(node_of(&started.container_id), "n1");
}

#[tokio::test]
async fn a_node_registered_since_the_last_beat_is_looked_up_not_refused() {
    let (local, late) = (fake(), fake());
    let fleet = TestFleet::new(local.clone(), Vec::new()).await;
    // n2 registers after n1's last beat, and places a sandbox on itself.
    fleet.register("n2", late.clone(), 0, 0).await;
    let dir = tempfile::tempdir().unwrap();
    let on_n2 = late.create(&new_sandbox(dir.path())).await.unwrap();
    let id = NodeId::parse("n2")
        .unwrap()
        .container(on_n2.container_id.as_str())
        .unwrap();
    fleet.runtime.pause(&id).await.unwrap();
    assert_eq!(
        late.inspect(&on_n2.container_id).await.unwrap(),
        ContainerState::Paused
    );
}
