//! One contract suite for the node registry port (fleet mode), run against the Redis registry
//! and the in-memory fake the use-case tests rely on.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/contract.rs"]
#[macro_use]
mod contract;
#[path = "support/redis_server.rs"]
mod redis_server;

use std::sync::Arc;
use std::time::Duration;

use sandboxd_domain::{NodeId, Timestamp};
use sandboxd_testkit::{RedisServer, TestResult};
use sandboxd_usecase::ports::{NodeBeat, NodeRegistry};
use sandboxd_usecase::testing::InMemoryNodeRegistry;
use time::macros::datetime;

const TTL: Duration = Duration::from_secs(10);
const T0: Timestamp = datetime!(2026-01-01 00:00:00 UTC);

trait Backend {
    fn registry(&self) -> Arc<dyn NodeRegistry>;
}

struct Fake(Arc<InMemoryNodeRegistry>);

impl Fake {
    async fn new() -> TestResult<Self> {
        Ok(Self(Arc::new(InMemoryNodeRegistry::default())))
    }
}

impl Backend for Fake {
    fn registry(&self) -> Arc<dyn NodeRegistry> {
        self.0.clone()
    }
}

struct Real {
    // Kept for its Drop: the server dies with the backend.
    _server: RedisServer,
    registry: Arc<dyn NodeRegistry>,
}

impl Real {
    async fn new() -> TestResult<Self> {
        let (server, _prefix, store) = redis_server::start_store(|_| {}).await?;
        Ok(Self {
            registry: Arc::new(store.node_registry()),
            _server: server,
        })
    }
}

impl Backend for Real {
    fn registry(&self) -> Arc<dyn NodeRegistry> {
        self.registry.clone()
    }
}

fn id(raw: &str) -> NodeId {
    NodeId::parse(raw).unwrap()
}

fn beat(node: &str, active: u32) -> NodeBeat {
    NodeBeat {
        node_id: id(node),
        address: format!("10.0.0.{}:50052", node.len()),
        capacity: 8,
        active,
    }
}

async fn a_beat_registers_and_answers_every_node(backend: &impl Backend) -> TestResult {
    let registry = backend.registry();
    let first = registry.beat(&beat("n1", 1), TTL, T0).await?;
    assert_eq!(first.len(), 1);
    let both = registry.beat(&beat("n22", 3), TTL, T0).await?;
    let mut ids: Vec<_> = both.iter().map(|n| n.node_id.to_string()).collect();
    ids.sort();
    assert_eq!(ids, ["n1", "n22"]);
    let n22 = both.iter().find(|n| n.node_id == id("n22")).unwrap();
    assert_eq!(
        (
            n22.address.as_str(),
            n22.capacity,
            n22.active,
            n22.draining,
            n22.healthy
        ),
        ("10.0.0.3:50052", 8, 3, false, true)
    );
    assert_eq!(n22.last_heartbeat_at, T0);
    Ok(())
}

async fn health_lapses_after_the_ttl_and_returns_with_a_beat(backend: &impl Backend) -> TestResult {
    let registry = backend.registry();
    registry.beat(&beat("n1", 0), TTL, T0).await?;
    let just_before = registry.nodes(T0 + TTL - Duration::from_millis(1)).await?;
    assert!(just_before[0].healthy);
    let after = registry.nodes(T0 + TTL).await?;
    assert!(!after[0].healthy, "listed, unhealthy: {after:?}");
    let back = registry.beat(&beat("n1", 0), TTL, T0 + TTL * 2).await?;
    assert!(back[0].healthy);
    Ok(())
}

async fn draining_is_kept_across_beats_and_unknown_nodes_are_none(
    backend: &impl Backend,
) -> TestResult {
    let registry = backend.registry();
    assert_eq!(registry.set_draining(&id("n1"), true, T0).await?, None);
    assert!(registry.nodes(T0).await?.is_empty(), "nothing written");
    registry.beat(&beat("n1", 0), TTL, T0).await?;
    let drained = registry.set_draining(&id("n1"), true, T0).await?.unwrap();
    assert!(drained.draining);
    let after_beat = registry.beat(&beat("n1", 2), TTL, T0).await?;
    assert!(after_beat[0].draining);
    assert_eq!(after_beat[0].active, 2);
    let undrained = registry.set_draining(&id("n1"), false, T0).await?.unwrap();
    assert!(!undrained.draining);
    Ok(())
}

async fn a_lapse_is_claimed_once_per_beat(backend: &impl Backend) -> TestResult {
    let registry = backend.registry();
    registry.beat(&beat("n1", 0), TTL, T0).await?;
    let lapsed = registry.nodes(T0 + TTL * 2).await?.remove(0);
    assert!(registry.claim_loss(&lapsed).await?);
    assert!(!registry.claim_loss(&lapsed).await?);
    registry.beat(&beat("n1", 0), TTL, T0 + TTL * 3).await?;
    let again = registry.nodes(T0 + TTL * 5).await?.remove(0);
    assert!(
        registry.claim_loss(&again).await?,
        "a new lapse is a new loss"
    );
    Ok(())
}

contract!(fake => Fake, redis => Real: (
    a_beat_registers_and_answers_every_node,
    health_lapses_after_the_ttl_and_returns_with_a_beat,
    draining_is_kept_across_beats_and_unknown_nodes_are_none,
    a_lapse_is_claimed_once_per_beat,
));
