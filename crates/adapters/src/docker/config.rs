//! What the Docker runtime is given: engine connection, label namespace and volume roots.
//! Plain values: the settings are validated by their owner (sandboxd's `docker` configuration
//! section) before a runtime is built. Agent profiles arrive with each sandbox's spec.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

pub use super::pool::PoolConfig;

/// The warm pool's default root: it must outlive a restart of sandboxd (see `PoolConfig`).
pub const DEFAULT_POOL_ROOT: &str = "/var/lib/sandboxd/pool";

/// Everything the Docker runtime needs.
#[derive(Debug, Clone, PartialEq)]
pub struct DockerConfig {
    /// Engine address (`unix:///…`, `tcp://…`); `None` = `DOCKER_HOST`, else the local socket.
    pub docker_host: Option<String>,
    /// Label namespace (`{key_prefix}.managed-by`, …), so two deployments can share an engine.
    pub key_prefix: String,
    /// Host address endpoints are published on; loopback keeps sandboxes off the network.
    /// `0.0.0.0` publishes on every interface: endpoints then report `0.0.0.0` and the readiness
    /// probe uses loopback.
    pub publish_host_ip: IpAddr,
    /// Graceful-stop period before the engine kills the container (whole seconds on the wire).
    pub stop_grace: Duration,
    /// Bound on every engine API call; longer than `stop_grace`, which a stop call waits out.
    pub engine_timeout: Duration,
    /// Host directories that volumes must lie under (after resolving symlinks); empty = refuse all.
    pub allowed_volume_roots: Vec<PathBuf>,
    /// Where the warm pool keeps its slots, claim channels and records, and its waiter binary.
    pub pool: PoolConfig,
}

impl Default for DockerConfig {
    /// The values of sandboxd's defaults, for tests and examples that build a runtime by hand.
    fn default() -> Self {
        Self {
            docker_host: None,
            key_prefix: "sandboxd".to_owned(),
            publish_host_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            stop_grace: Duration::from_secs(2),
            engine_timeout: Duration::from_secs(30),
            allowed_volume_roots: Vec::new(),
            pool: PoolConfig {
                root: PathBuf::from(DEFAULT_POOL_ROOT),
                waiter: None,
            },
        }
    }
}
