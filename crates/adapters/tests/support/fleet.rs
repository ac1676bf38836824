//! A fleet of fake nodes for the fleet runtime's tests: this node `n1` over `local`, the others
//! over their own runtimes, all registered (and healthy) in an in-memory registry.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use sandboxd_adapters::fleet::FleetRuntime;
use sandboxd_domain::NodeId;
use sandboxd_usecase::ports::{NodeBeat, NodeRegistry, RuntimeError, SandboxRuntime};
use sandboxd_usecase::testing::{Fakes, InMemoryNodeRegistry};
use sandboxd_usecase::{Heartbeat, NodeDirectory};

pub(crate) const TTL: Duration = Duration::from_secs(30);

pub(crate) struct TestFleet {
    pub runtime: Arc<FleetRuntime>,
    pub registry: Arc<InMemoryNodeRegistry>,
    pub fakes: Fakes,
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
        let mut remotes: HashMap<String, Arc<dyn SandboxRuntime>> = HashMap::new();
        for (id, runtime, capacity, active) in others {
            let beat = NodeBeat {
                node_id: NodeId::parse(id).unwrap(),
                address: format!("{id}:50052"),
                capacity,
                active,
            };
            registry
                .beat(
                    &beat,
                    TTL,
                    sandboxd_usecase::ports::Clock::now(&*fakes.clock),
                )
                .await
                .unwrap();
            remotes.insert(format!("{id}:50052"), runtime);
        }
        let directory = NodeDirectory::fleet(NodeId::parse("n1").unwrap(), TTL);
        let remotes = Arc::new(remotes);
        let runtime = Arc::new(FleetRuntime::new(
            local,
            directory.clone(),
            Arc::new(move |node| {
                remotes
                    .get(&node.address)
                    .cloned()
                    .ok_or_else(|| RuntimeError::Unavailable("no such test node".into()))
            }),
            2,
        ));
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
            heartbeat,
        };
        fleet.beat().await;
        fleet
    }

    /// One heartbeat of `n1`: renews it and refreshes the directory.
    pub(crate) async fn beat(&self) {
        self.heartbeat.beat().await.unwrap();
    }
}
