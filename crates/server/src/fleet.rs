//! Fleet mode's wiring: the node directory and registry, the engines the use cases route to by
//! node (this node's in process, others' through their node API), and the heartbeat loop. In
//! single-node mode ([`Fleet::single`]) only the directory exists, naming the one local node.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sandboxd_adapters::clock::SystemClock;
use sandboxd_adapters::node::{NodeClientTls, RemoteNodeConfig, RemoteRuntime};
use sandboxd_adapters::redis::RedisStore;
use sandboxd_domain::{NodeId, NodeInfo};
use sandboxd_usecase::ports::{NodeRegistry, SandboxRuntime};
use sandboxd_usecase::telemetry::ErrorChain;
use sandboxd_usecase::{Connect, Engines, Heartbeat, NodeDirectory};

use crate::background::{Background, FirstPass};
use crate::config::Config;
use crate::names;

/// Bound on establishing a connection to another node.
const NODE_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Which node this process is, and in fleet mode what it needs to be one.
#[derive(Clone)]
pub struct Fleet {
    pub directory: NodeDirectory,
    /// `None` in single-node mode.
    pub node: Option<FleetNode>,
}

/// What a fleet node runs besides the single-node product.
#[derive(Clone)]
pub struct FleetNode {
    pub registry: Arc<dyn NodeRegistry>,
    /// This node's own engine, which its node API serves to the others.
    pub local: Arc<dyn SandboxRuntime>,
    /// The node API's listener.
    pub grpc_addr: SocketAddr,
    /// Where the others reach it.
    pub advertise_addr: String,
    pub heartbeat_ttl: Duration,
}

impl std::fmt::Debug for FleetNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetNode")
            .field("grpc_addr", &self.grpc_addr)
            .field("advertise_addr", &self.advertise_addr)
            .field("heartbeat_ttl", &self.heartbeat_ttl)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("directory", &self.directory)
            .field("fleet_mode", &self.node.is_some())
            .finish()
    }
}

impl Fleet {
    /// Single-node mode: one local node, no registry, no node API; `directory` is the one the
    /// ports' engines route by ([`Engines::directory`]), so both see one draining flag.
    #[must_use]
    pub fn single(directory: NodeDirectory) -> Self {
        Self {
            directory,
            node: None,
        }
    }

    /// This node's capacity as the registry and ListNodes show it (its `max_sandboxes`).
    pub(crate) fn capacity(config: &Config) -> u32 {
        u32::try_from(config.admission.max_sandboxes).unwrap_or(u32::MAX)
    }
}

/// The fleet for `config` around this node's engine `local`, and the engines the use cases route
/// to: in single-node mode `local` alone; in fleet mode every node's, others' through their node
/// API.
///
/// # Errors
/// When the bearer token file cannot be read.
pub(crate) fn build(
    config: &Config,
    store: &RedisStore,
    local: Arc<dyn SandboxRuntime>,
) -> anyhow::Result<(Fleet, Engines)> {
    let Some(node_id) = config.node.node_id() else {
        let engines = Engines::single(local, NodeDirectory::single(NodeId::single()));
        return Ok((Fleet::single(engines.directory().clone()), engines));
    };
    let directory = NodeDirectory::fleet(node_id, config.node.node_heartbeat_ttl);
    let connect = connector(config)?;
    let registry: Arc<dyn NodeRegistry> = Arc::new(store.node_registry());
    let engines = Engines::fleet(
        Arc::clone(&local),
        directory.clone(),
        connect,
        Some((Arc::clone(&registry), Arc::new(SystemClock))),
    );
    let fleet = Fleet {
        directory,
        node: Some(FleetNode {
            registry,
            local,
            grpc_addr: config.node.node_grpc_addr,
            advertise_addr: config.node.advertise_addr(),
            heartbeat_ttl: config.node.node_heartbeat_ttl,
        }),
    };
    Ok((fleet, engines))
}

/// Builds the client of another node's API from its registration: the deployment's bearer
/// token, and TLS with this node's certificate when the ports speak TLS.
fn connector(config: &Config) -> anyhow::Result<Connect<dyn SandboxRuntime>> {
    let token: Option<Arc<str>> = match &config.server.auth_token_file {
        Some(path) => Some(Arc::from(crate::auth::read_token(path)?)),
        None => None,
    };
    let tls = match (config.server.tls_files()?, &config.node.node_tls_ca_file) {
        (Some(own), Some(ca)) => Some(NodeClientTls {
            ca_pem: std::fs::read(ca)
                .map_err(|e| anyhow::anyhow!("reading node_tls_ca_file {}: {e}", ca.display()))?,
            identity: Some((own.cert_pem, own.key_pem)),
            domain: None,
        }),
        _ => None,
    };
    let profiles = config.agents.by_agent_id();
    // Longer than any engine call the serving node makes (a graceful stop waits out its grace).
    let call_timeout = 2 * config.docker.engine_timeout + config.docker.stop_grace;
    Ok(Arc::new(move |node: &NodeInfo| {
        let config = RemoteNodeConfig {
            address: node.address.clone(),
            token: token.clone(),
            tls: tls.clone(),
            connect_timeout: NODE_CONNECT_TIMEOUT,
            call_timeout,
        };
        let client = RemoteRuntime::new(config, profiles.clone())?;
        Ok(Arc::new(client) as Arc<dyn SandboxRuntime>)
    }))
}

/// Beats every third of the TTL until `stop`; failures are logged once per outage (the node
/// meanwhile stops creating once its registration is no longer fresh: see
/// [`NodeDirectory::fenced`]).
pub(crate) fn register_heartbeat(background: &mut Background, heartbeat: Heartbeat) {
    sandboxd_usecase::telemetry::init_fleet_metrics();
    background.periodic(
        names::LOOP_HEARTBEAT,
        heartbeat.interval(),
        FirstPass::AtStart,
        move || {
            let heartbeat = heartbeat.clone();
            async move {
                heartbeat
                    .beat()
                    .await
                    .map(drop)
                    .map_err(|error| ErrorChain(&error).to_string())
            }
        },
    );
}
