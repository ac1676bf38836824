//! Routing and placement over fake nodes: a session's node decides which engine an operation
//! reaches (with the engine's own id), placement takes the freer of the healthy, non-draining
//! nodes with room and moves on from a node that fails, a lost node is never called, and a node
//! registered since the last beat is looked up.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sandboxd_domain::{ContainerId, NodeId};

use super::harness::*;
use crate::ports::{
    Clock, ContainerState, NewSandbox, NodeBeat, NodeRegistry, RuntimeError, SandboxRuntime,
    VolumeRefusal,
};
use crate::testing::{CallLog, FakeRuntime, InMemoryNodeRegistry, RuntimeOp, node_id};
use crate::{Engines, Heartbeat, NodeDirectory};

const TTL: Duration = Duration::from_secs(30);

fn fake() -> Arc<FakeRuntime> {
    Arc::new(FakeRuntime::new(CallLog::default()))
}

/// This node `n1` over `local`, the others over their own fakes, reached by address.
struct Fleet {
    world: World,
    engines: Engines,
    registry: Arc<InMemoryNodeRegistry>,
    heartbeat: Heartbeat,
    /// Each registered node's engine, by address.
    remotes: Arc<Mutex<HashMap<String, Arc<FakeRuntime>>>>,
}

impl Fleet {
    /// `n1` over `local`; each of `others` (id, engine, capacity, active) registered, then a beat.
    async fn new(local: Arc<FakeRuntime>, others: Vec<(&str, Arc<FakeRuntime>, u32, u32)>) -> Self {
        let world = World::new();
        let registry = Arc::new(InMemoryNodeRegistry::default());
        let remotes: Arc<Mutex<HashMap<String, Arc<FakeRuntime>>>> = Arc::default();
        let directory = NodeDirectory::fleet(node_id("n1"), TTL);
        let reachable = Arc::clone(&remotes);
        let engines = Engines::fleet(
            local as Arc<dyn SandboxRuntime>,
            directory.clone(),
            Arc::new(move |node| {
                let remote = reachable.lock().unwrap().get(&node.address).cloned();
                remote
                    .map(|engine| engine as Arc<dyn SandboxRuntime>)
                    .ok_or_else(|| "no such test node".into())
            }),
            Some((
                Arc::clone(&registry) as Arc<dyn NodeRegistry>,
                world.clock.clone() as Arc<dyn Clock>,
            )),
        );
        let mut ports = world.ports_in(&directory);
        ports.engines = engines.clone();
        let heartbeat = Heartbeat::new(
            ports,
            Arc::clone(&registry) as Arc<dyn NodeRegistry>,
            directory,
            "n1:50052".to_owned(),
            0,
            TTL,
        );
        let fleet = Self {
            world,
            engines,
            registry,
            heartbeat,
            remotes,
        };
        for (id, engine, capacity, active) in others {
            fleet.register(id, engine, capacity, active).await;
        }
        fleet.beat().await;
        fleet
    }

    /// Registers node `id` over `engine` now (`n1` reads it at its next beat, or on lookup).
    async fn register(&self, id: &str, engine: Arc<FakeRuntime>, capacity: u32, active: u32) {
        let beat = NodeBeat {
            node_id: node_id(id),
            address: format!("{id}:50052"),
            capacity,
            active,
        };
        let now = self.world.clock.now();
        self.registry.beat(&beat, TTL, now).await.unwrap();
        self.remotes
            .lock()
            .unwrap()
            .insert(format!("{id}:50052"), engine);
    }

    async fn beat(&self) {
        self.heartbeat.beat().await.unwrap();
    }

    fn spec(&self) -> NewSandbox {
        let now = self.world.clock.now();
        self.world
            .spec(new_chat(), "default", "/srv/a", now, now + TTL)
    }

    async fn place(&self) -> Result<(NewSandbox, ContainerId), RuntimeError> {
        let mut spec = self.spec();
        let started = self.engines.place(&mut spec).await?;
        Ok((spec, started.container_id))
    }
}

fn on(node: &str) -> Option<NodeId> {
    Some(node_id(node))
}

#[tokio::test]
async fn a_create_lands_on_the_freer_node_and_every_operation_follows_it() {
    let (local, remote) = (fake(), fake());
    // n1 (this node) drains: only n2 can take it.
    let fleet = Fleet::new(local.clone(), vec![("n2", remote.clone(), 4, 0)]).await;
    let now = fleet.world.clock.now();
    fleet
        .registry
        .set_draining(&node_id("n1"), true, now)
        .await
        .unwrap();
    fleet.beat().await;
    let (spec, id) = fleet.place().await.unwrap();
    assert_eq!(spec.node_id, on("n2"), "the spec names its node");
    assert_eq!(remote.running(), vec![id.clone()], "the engine's own id");
    assert!(local.running().is_empty());
    let labels = remote.list_chat(&spec.chat_id).await.unwrap();
    assert_eq!(labels[0].labels.node_id, on("n2"), "labelled with its node");

    let engine = fleet.engines.of(spec.node_id.as_ref()).await.unwrap();
    engine.pause(&id).await.unwrap();
    assert_eq!(remote.inspect(&id).await.unwrap(), ContainerState::Paused);
    let chat = fleet.engines.list_chat(&spec.chat_id).await.unwrap();
    assert_eq!(chat.len(), 1);
    assert_eq!(
        (chat[0].node_id.clone(), &chat[0].container_id),
        (on("n2"), &id)
    );
    assert!(
        fleet.engines.list_local().await.unwrap().is_empty(),
        "only this node's"
    );
    let engine = fleet.engines.removing(spec.node_id.as_ref()).await.unwrap();
    engine.unwrap().force_remove(&id).await.unwrap();
    assert!(remote.running().is_empty());
}

#[tokio::test]
async fn placement_takes_the_node_with_more_room_and_skips_full_ones() {
    let (local, spare, full) = (fake(), fake(), fake());
    let fleet = Fleet::new(
        local.clone(),
        vec![("n2", spare.clone(), 10, 1), ("n3", full.clone(), 2, 2)],
    )
    .await;
    // n1 is unbounded with nothing running; n3 is full.
    for _ in 0..6 {
        let (spec, _) = fleet.place().await.unwrap();
        assert_ne!(spec.node_id, on("n3"));
    }
    assert!(full.running().is_empty());
    assert_eq!(local.running().len() + spare.running().len(), 6);
}

#[tokio::test]
async fn a_node_that_fails_the_create_is_left_for_another() {
    let (local, broken) = (fake(), fake());
    let fleet = Fleet::new(local.clone(), vec![("n2", broken.clone(), 0, 0)]).await;
    for engine in [&broken, &local] {
        engine.fail_next(RuntimeOp::Create, RuntimeError::Unavailable("down".into()));
    }
    // Both fail: the last failure is the answer.
    let error = fleet.place().await.unwrap_err();
    assert!(matches!(error, RuntimeError::Unavailable(_)), "{error:?}");
    // One failure queued on n2 only: whichever is tried first, n1 serves.
    broken.fail_next(RuntimeOp::Create, RuntimeError::Unavailable("down".into()));
    let (spec, _) = fleet.place().await.unwrap();
    let expected = if broken.running().is_empty() {
        "n1"
    } else {
        "n2"
    };
    assert_eq!(spec.node_id, on(expected));
    assert_eq!(local.running().len() + broken.running().len(), 1);
    // A refusal of the request itself is the answer, not a node failure.
    for engine in [&broken, &local] {
        engine.fail_next(
            RuntimeOp::Create,
            RuntimeError::VolumeDenied(VolumeRefusal::OutsideAllowedRoots),
        );
    }
    let error = fleet.place().await.unwrap_err();
    assert!(matches!(error, RuntimeError::VolumeDenied(_)), "{error:?}");
}

#[tokio::test]
async fn a_lost_node_is_never_called_and_its_removals_are_left_to_it() {
    let (local, gone) = (fake(), fake());
    let fleet = Fleet::new(local.clone(), vec![("n2", gone.clone(), 0, 0)]).await;
    let spec = NewSandbox {
        node_id: on("n2"),
        ..fleet.spec()
    };
    let on_n2 = gone.create(&spec).await.unwrap().container_id;
    assert!(!fleet.engines.directory().is_lost(on("n2").as_ref()));
    // n2 stops beating; n1 goes on.
    fleet.world.clock.advance(TTL + Duration::from_secs(1));
    fleet.beat().await;
    assert!(fleet.engines.directory().is_lost(on("n2").as_ref()));
    assert!(
        fleet
            .engines
            .removing(on("n2").as_ref())
            .await
            .unwrap()
            .is_none(),
        "a removal there is left to it"
    );
    let error = fleet.engines.of(on("n2").as_ref()).await.err();
    assert!(
        matches!(error, Some(RuntimeError::Unavailable(_))),
        "{error:?}"
    );
    assert_eq!(gone.running(), vec![on_n2], "not called");
    // Its chat's listing skips it: the containers it holds go with its own reconcile.
    assert!(
        fleet
            .engines
            .list_chat(&spec.chat_id)
            .await
            .unwrap()
            .is_empty()
    );
    // New sandboxes go elsewhere.
    let (placed, _) = fleet.place().await.unwrap();
    assert_eq!(placed.node_id, on("n1"));
}

#[tokio::test]
async fn a_node_registered_since_the_last_beat_is_looked_up_not_refused() {
    let (local, late) = (fake(), fake());
    let fleet = Fleet::new(local.clone(), Vec::new()).await;
    // n2 registers after n1's last beat, and places a sandbox on itself.
    fleet.register("n2", late.clone(), 0, 0).await;
    let on_n2 = late.create(&fleet.spec()).await.unwrap().container_id;
    let engine = fleet.engines.of(on("n2").as_ref()).await.unwrap();
    engine.pause(&on_n2).await.unwrap();
    assert_eq!(late.inspect(&on_n2).await.unwrap(), ContainerState::Paused);
    // A node nobody registered is unreachable, not this node's.
    let error = fleet.engines.of(on("n9").as_ref()).await.err();
    assert!(
        matches!(error, Some(RuntimeError::Unavailable(_))),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_sandbox_without_a_node_is_this_nodes_whatever_its_engine_id_looks_like() {
    // A Kubernetes-style engine id (`namespace/name`) names no node: single-node mode's
    // sandboxes, and a fleet node's from before it joined, are the local engine's.
    let (local, other) = (fake(), fake());
    let fleet = Fleet::new(local.clone(), vec![("sandboxes", other.clone(), 0, 0)]).await;
    let pod = ContainerId::parse("sandboxes/pod-1").unwrap();
    local.insert_running(pod.clone(), fleet.spec());
    let engine = fleet.engines.of(None).await.unwrap();
    engine.pause(&pod).await.unwrap();
    assert_eq!(local.inspect(&pod).await.unwrap(), ContainerState::Paused);
    assert!(other.running().is_empty());
    let single = Engines::single(
        local.clone() as Arc<dyn SandboxRuntime>,
        NodeDirectory::single(NodeId::single()),
    );
    assert_eq!(single.local_node_id(), None);
    let mut spec = fleet.spec();
    single.place(&mut spec).await.unwrap();
    assert_eq!(spec.node_id, None, "single-node mode names no node");
}
