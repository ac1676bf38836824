//! Fleet mode's use cases over the fakes: the heartbeat renews and reports a lost node's
//! sessions exactly once, the directory fences a node that cannot renew and places only on
//! healthy, non-draining nodes with room, and ListNodes/DrainNode in both modes.

use std::sync::Arc;
use std::time::Duration;

use sandboxd_domain::{EventReason, EventType, NodeId, NodeInfo};

use super::harness::*;
use crate::ports::{Clock, NodeBeat, NodeRegistry};
use crate::testing::InMemoryNodeRegistry;
use crate::{
    CreateSandboxError, ErrorKind, Heartbeat, NodeDirectory, NodeError, Nodes, UseCaseError,
};

const TTL: Duration = Duration::from_secs(3);

fn node(raw: &str) -> NodeId {
    NodeId::parse(raw).unwrap()
}

fn heartbeat(
    world: &World,
    registry: &Arc<InMemoryNodeRegistry>,
    directory: &NodeDirectory,
) -> Heartbeat {
    Heartbeat::new(
        world.ports.clone(),
        Arc::clone(registry) as Arc<dyn NodeRegistry>,
        directory.clone(),
        "10.0.0.1:50052".to_owned(),
        10,
        TTL,
    )
}

/// `other` registers once, at the world's clock.
fn register(
    world: &World,
    registry: &InMemoryNodeRegistry,
    other: &str,
    capacity: u32,
    active: u32,
) {
    let beat = NodeBeat {
        node_id: node(other),
        address: format!("{other}:50052"),
        capacity,
        active,
    };
    let (out, _) = capture(registry.beat(&beat, TTL, world.clock.now()));
    out.unwrap();
}

#[test]
fn a_fleet_node_is_fenced_until_it_renews_and_then_refuses_nothing() {
    let world = World::new();
    let registry = Arc::new(InMemoryNodeRegistry::default());
    let directory = NodeDirectory::fleet(node("n1"), TTL);
    assert!(directory.fenced().is_some(), "never renewed");
    let (out, _) = capture(heartbeat(&world, &registry, &directory).beat());
    assert_eq!(out.unwrap().nodes, 1);
    assert_eq!(directory.fenced(), None);
    // A CreateSandbox on a fenced node is refused before anything is read.
    let fenced = NodeDirectory::fleet(node("n1"), TTL);
    world.calls.clear();
    let (out, _) = capture(world.create_in(&fenced).execute(create_command(
        new_chat(),
        "default",
        "/srv/a",
    )));
    let error = out.unwrap_err();
    assert!(
        matches!(error, CreateSandboxError::NodeRefuses(_)),
        "{error:?}"
    );
    assert_eq!(error.kind(), ErrorKind::Unavailable);
    assert_eq!(world.calls.calls(), Vec::<String>::new());
}

#[test]
fn placement_candidates_are_healthy_not_draining_with_room() {
    let world = World::new();
    let registry = Arc::new(InMemoryNodeRegistry::default());
    register(&world, &registry, "n2", 5, 5); // full
    register(&world, &registry, "n3", 5, 1);
    register(&world, &registry, "n4", 0, 100); // unbounded
    register(&world, &registry, "n5", 5, 0);
    let (out, _) = capture(registry.set_draining(&node("n5"), true, world.clock.now()));
    assert!(out.unwrap().is_some_and(|n| n.draining));
    // n6 registered long ago and stopped beating.
    let now = world.clock.now();
    world.clock.set(now - TTL * 2);
    register(&world, &registry, "n6", 5, 0);
    world.clock.set(now);
    let directory = NodeDirectory::fleet(node("n1"), TTL);
    let (out, _) = capture(heartbeat(&world, &registry, &directory).beat());
    out.unwrap();
    let mut ids: Vec<String> = directory
        .candidates()
        .iter()
        .map(|n| n.node_id.to_string())
        .collect();
    ids.sort();
    assert_eq!(ids, ["n1", "n3", "n4"]);
    assert!(directory.is_lost(Some(&node("n6"))));
    assert!(!directory.is_lost(Some(&node("n3"))));
    assert!(
        !directory.is_lost(Some(&node("n1"))),
        "this node is never lost"
    );
    assert!(
        !directory.is_lost(None),
        "a sandbox made in single-node mode is this node's"
    );
    assert!(directory.is_local(None));
    assert!(!directory.is_local(Some(&node("n6"))));
}

#[test]
fn a_lost_node_is_reported_once_with_one_lost_event_per_session() {
    let world = World::new();
    let registry = Arc::new(InMemoryNodeRegistry::default());
    register(&world, &registry, "n2", 5, 2);
    let mut on_n2 = Vec::new();
    for _ in 0..2 {
        let mut session = world.existing_live(new_chat());
        session.node_id = Some(node("n2"));
        world.repository.insert(session.clone());
        on_n2.push(session);
    }
    let local = world.existing_live(new_chat());
    world.clock.advance(TTL + Duration::from_secs(1));
    let n1 = NodeDirectory::fleet(node("n1"), TTL);
    let n3 = NodeDirectory::fleet(node("n3"), TTL);
    let (first, _) = capture(heartbeat(&world, &registry, &n1).beat());
    let (second, _) = capture(heartbeat(&world, &registry, &n3).beat());
    let (first, second) = (first.unwrap(), second.unwrap());
    assert_eq!(first.lost_nodes, vec![node("n2")]);
    assert_eq!(first.lost_sessions, 2);
    assert_eq!(second.lost_sessions, 0, "reported by one node only");
    let lost: Vec<_> = world
        .repository
        .events()
        .into_iter()
        .filter(|e| e.kind == EventType::Lost)
        .collect();
    assert_eq!(lost.len(), 2);
    assert!(lost.iter().all(|e| e.reason == EventReason::NodeLost));
    assert!(lost.iter().all(|e| e.session.chat_id != local.chat_id));
    // Sessions are kept: a CreateSandbox for the chat replaces them.
    assert_eq!(world.repository.all().len(), 3);
    // It returns and lapses again: a new loss, reported again.
    register(&world, &registry, "n2", 5, 2);
    world.clock.advance(TTL + Duration::from_secs(1));
    let (again, _) = capture(heartbeat(&world, &registry, &n1).beat());
    assert_eq!(again.unwrap().lost_sessions, 2);
}

#[test]
fn a_single_node_lists_itself_and_drains_only_itself() {
    let world = World::new();
    let directory = NodeDirectory::single(NodeId::single());
    let nodes = Nodes::new(world.ports.clone(), directory.clone(), None, 7);
    world.existing_live(new_chat());
    let (out, _) = capture(nodes.list());
    let listed: Vec<NodeInfo> = out.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (
            listed[0].node_id.as_str(),
            listed[0].capacity,
            listed[0].active,
            listed[0].healthy
        ),
        ("local", 7, 1, true)
    );
    let (out, _) = capture(nodes.drain(&node("n9"), true));
    assert!(matches!(out, Err(NodeError::NotFound(_))));
    let (out, _) = capture(nodes.drain(&NodeId::single(), true));
    assert!(out.unwrap().draining);
    assert!(directory.refuses_new().is_some());
    assert_eq!(directory.fenced(), None, "draining is not fencing");
    let (out, _) = capture(world.create_in(&directory).execute(create_command(
        new_chat(),
        "default",
        "/srv/a",
    )));
    assert!(matches!(out, Err(CreateSandboxError::NodeRefuses(_))));
    let (out, _) = capture(nodes.drain(&NodeId::single(), false));
    assert!(!out.unwrap().draining);
    assert_eq!(directory.refuses_new(), None);
}

#[test]
fn in_fleet_mode_drain_goes_to_the_registry_and_unknown_nodes_are_not_found() {
    let world = World::new();
    let registry = Arc::new(InMemoryNodeRegistry::default());
    register(&world, &registry, "n2", 5, 0);
    let directory = NodeDirectory::fleet(node("n1"), TTL);
    let nodes = Nodes::new(
        world.ports.clone(),
        directory,
        Some(Arc::clone(&registry) as Arc<dyn NodeRegistry>),
        5,
    );
    let (out, _) = capture(nodes.drain(&node("n2"), true));
    assert!(out.unwrap().draining);
    let (out, _) = capture(nodes.list());
    let listed = out.unwrap();
    assert_eq!(listed.len(), 1);
    assert!(listed[0].draining);
    let (out, _) = capture(nodes.drain(&node("n7"), true));
    let error = out.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::NotFound);
}

#[test]
fn a_fleet_node_claims_from_its_pool_only_while_it_takes_placements() {
    let world = World::new().with_profile("default", |profile| profile.pool_size = 1);
    let registry = Arc::new(InMemoryNodeRegistry::default());
    let directory = NodeDirectory::fleet(node("n1"), TTL);
    register(&world, &registry, "n2", 5, 0);
    let create = world.create_in(&directory);
    let (report, _) = capture(create.refill_pool().execute());
    assert_eq!(report.unwrap().started, 1);
    let (out, _) = capture(heartbeat(&world, &registry, &directory).beat());
    out.unwrap();
    assert!(directory.takes_new_locally());
    let (out, _) = capture(registry.set_draining(&node("n1"), true, world.clock.now()));
    assert!(out.unwrap().is_some());
    let (out, _) = capture(heartbeat(&world, &registry, &directory).beat());
    out.unwrap();
    assert!(!directory.takes_new_locally(), "draining");
    world.calls.clear();
    let (out, _) = capture(create.execute(create_command(new_chat(), "default", "/srv/a")));
    assert_eq!(
        out.unwrap().session.node_id,
        Some(node("n2")),
        "placed on the other node"
    );
    assert!(
        world.calls.calls_of("runtime.claim").is_empty(),
        "{:?}",
        world.calls.calls()
    );
    assert_eq!(
        world.calls.calls_of("runtime.create").len(),
        1,
        "placed, not claimed here"
    );
    assert_eq!(
        world.runtime.waiting().len(),
        1,
        "the pooled sandbox still waits"
    );
}
