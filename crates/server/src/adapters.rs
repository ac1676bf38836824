//! Builds the ports from the configuration: Redis session store and lease locker, the Docker
//! runtime and its warm pool (every node's engine routed by node in fleet mode), system clock;
//! and the egress packet filter the Docker runtime's sandboxes run under.

use std::sync::Arc;

use sandboxd_adapters::clock::SystemClock;
use sandboxd_adapters::docker::DockerRuntime;
use sandboxd_adapters::egress::EgressFirewall;
use sandboxd_adapters::redis::RedisStore;
use sandboxd_usecase::Ports;

use crate::fleet::Fleet;

use crate::config::Config;

/// Connects lazily: the server starts (and reports NOT_SERVING) while Redis or Docker is down,
/// and becomes SERVING when both answer. In fleet mode the runtime is the fleet's (see
/// [`crate::fleet`]).
///
/// # Errors
/// When a backend client cannot be built from the configuration.
pub(crate) fn connect(config: &Config) -> anyhow::Result<(Ports, Fleet)> {
    let store = RedisStore::connect_lazy(config.redis_config())?;
    let docker = Arc::new(DockerRuntime::new(config.docker_config()));
    let (fleet, engines) = crate::fleet::build(config, &store, docker.clone())?;
    let ports = Ports {
        repository: Arc::new(store.repository()),
        locker: Arc::new(store.locker()),
        engines,
        pool: Some(docker),
        clock: Arc::new(SystemClock),
        events: Arc::new(store.event_log()?),
    };
    Ok((ports, fleet))
}

/// The egress rules of the configured profiles; `None` when every profile is `open` (nothing to
/// enforce, no packet filter touched). The plan was checked when the configuration loaded.
///
/// # Errors
/// When the plan is refused (which [`Config::load`] already ruled out).
pub(crate) fn egress_firewall(config: &Config) -> anyhow::Result<Option<EgressFirewall>> {
    Ok(EgressFirewall::new(&config.egress_plan()?))
}
