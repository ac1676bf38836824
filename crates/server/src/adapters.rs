//! Builds the ports from the configuration: Redis session store and lease locker, Docker
//! runtime, system clock; and the egress packet filter the Docker runtime's sandboxes run under.

use std::sync::Arc;

use sandboxd_adapters::clock::SystemClock;
use sandboxd_adapters::docker::DockerRuntime;
use sandboxd_adapters::egress::EgressFirewall;
use sandboxd_adapters::redis::RedisStore;
use sandboxd_usecase::Ports;

use crate::config::Config;

/// Connects lazily: the server starts (and reports NOT_SERVING) while Redis or Docker is down,
/// and becomes SERVING when both answer.
///
/// # Errors
/// When a backend client cannot be built from the configuration.
pub(crate) fn connect(config: &Config) -> anyhow::Result<Ports> {
    let store = RedisStore::connect_lazy(config.redis_config())?;
    let runtime = DockerRuntime::new(config.docker_config());
    Ok(Ports {
        repository: Arc::new(store.repository()),
        locker: Arc::new(store.locker()),
        runtime: Arc::new(runtime),
        clock: Arc::new(SystemClock),
        events: Arc::new(store.event_log()?),
    })
}

/// The egress rules of the configured profiles; `None` when every profile is `open` (nothing to
/// enforce, no packet filter touched). The plan was checked when the configuration loaded.
///
/// # Errors
/// When the plan is refused (which [`Config::load`] already ruled out).
pub(crate) fn egress_firewall(config: &Config) -> anyhow::Result<Option<EgressFirewall>> {
    Ok(EgressFirewall::new(&config.egress_plan()?))
}
