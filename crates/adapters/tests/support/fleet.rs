//! A fleet of fake nodes for the fleet runtime's tests: this node `n1` over `local`, the others
//! over their own runtimes, all registered (and healthy) in an in-memory registry.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sandboxd_adapters::fleet::FleetRuntime;
use sandboxd_domain::NodeId;
use sandboxd_usecase::Heartbeat;
use sandboxd_usecase::NodeDirectory;
use sandboxd_usecase::ports::{Clock, NodeBeat, NodeRegistry, RuntimeError, SandboxRuntime};
use sandboxd_usecase::testing::{Fakes, InMemoryNodeRegistry};

pub(crate) const TTL: Duration = Duration::from_secs(30);

type Remotes = Arc<Mutex<HashMap<String, Arc<dyn SandboxRuntime>>>>;

pub(crate) struct TestFleet {
    pub runtime: Arc<FleetRuntime>,
    pub registry: Arc<InMemoryNodeRegistry>,
    pub fakes: Fakes,
    remotes: Remotes,
    heartbeat: Heartbeat,
}

impl TestFleet {
    /// `n1` over `local`; each of `others` (id, runtime, capacity, active) registered too.
    pub(crate) async fn new(
        local: Arc<dyn SandboxRuntime>,
        others: Vec<(&str, Arc<dyn SandboxRuntime>, u32, u32)>,
    ) -> Self {
        let fakes = Fakes::default();
        let registry = Arc::new(InMemoryNodeRegistry::default());
        let remotes: Remotes = Arc::default();
        let directory = NodeDirectory::fleet(NodeId::parse("n1").unwrap(), TTL);
        let reachable = Arc::clone(&remotes);
        let runtime = Arc::new(
            FleetRuntime::new(
                local,
                directory.clone(),
                Arc::new(move |node| {
                    reachable
                        .lock()
                        .unwrap()
                        .get(&node.address)
                        .cloned()
                        .ok_or_else(|| RuntimeError::Unavailable("no such test node".into()))
                }),
                2,
            )
            .with_lookup(registry.clone(), fakes.clock.clone()),
        );
        let mut ports = fakes.ports();
        ports.runtime = runtime.clone();
        let heartbeat = Heartbeat::new(
            ports,
            registry.clone() as Arc<dyn NodeRegistry>,
            directory,
            "n1:50052".to_owned(),
            0,
            TTL,
        );
        let fleet = Self {
            runtime,
            registry,
            fakes,
            remotes,
            heartbeat,
        };
        for (id, runtime, capacity, active) in others {
            fleet.register(id, runtime, capacity, active).await;
        }
        fleet.beat().await;
        fleet
    }

    /// Registers node `id` over `runtime` now (`n1` reads it at its next beat, or on lookup).
    pub(crate) async fn register(
        &self,
        id: &str,
        runtime: Arc<dyn SandboxRuntime>,
        capacity: u32,
        active: u32,
    ) {
        let beat = NodeBeat {
            node_id: NodeId::parse(id).unwrap(),
            address: format!("{id}:50052"),
            capacity,
            active,
        };
        self.registry
            .beat(&beat, TTL, self.fakes.clock.now())
            .await
            .unwrap();
        self.remotes
            .lock()
            .unwrap()
            .insert(format!("{id}:50052"), runtime);
    }

    /// One heartbeat of `n1`: renews it and refreshes the directory.
    pub(crate) async fn beat(&self) {
        self.heartbeat.beat().await.unwrap();
    }
}
