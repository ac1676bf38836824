//! Builds the ports from the configuration: Redis session store and lease locker, Docker
//! runtime, system clock.

use std::sync::Arc;

use sandboxd_adapters::redis::{RedisConfig, RedisStore};
use sandboxd_usecase::Ports;

use crate::config::Config;

/// The Redis part of the configuration.
#[must_use]
pub fn redis_config(config: &Config) -> RedisConfig {
    RedisConfig {
        url: config.redis_url.clone(),
        key_prefix: config.key_prefix.clone(),
        lock_ttl: config.lock_ttl,
        lock_wait: config.lock_wait,
        ..RedisConfig::default()
    }
}

/// Connects lazily: the server starts (and reports NOT_SERVING) while Redis or Docker is down,
/// and becomes SERVING when they answer.
///
/// # Errors
/// When a backend client cannot be built from the configuration.
pub async fn connect(config: &Config) -> anyhow::Result<Ports> {
    let store = RedisStore::connect_lazy(redis_config(config))?;
    let _repository = Arc::new(store.repository());
    let _locker = Arc::new(store.locker());
    // The Docker runtime and the system clock come with the Docker adapter branch.
    anyhow::bail!("the Docker runtime is not wired in yet")
}
