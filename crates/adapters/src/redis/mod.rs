//! The Redis adapters: the session store ([`RedisSessionRepository`]) and the per-chat lease
//! locker ([`RedisLeaseLocker`]), sharing one connection made by [`RedisStore::connect`].
//!
//! Data model: see [`keys`](self::keys) (docs/design.md §3, with two lex-ordered indexes for paging).
//! Every fenced write is one Lua script that checks the lease token first; every call is bounded
//! by `command_timeout`, and an unreachable Redis is `Unavailable`, never a hang.

mod client;
mod codec;
mod config;
mod error;
mod keys;
mod locker;
pub mod names;
mod repository;
mod scripts;

use std::sync::Arc;

use redis::aio::ConnectionManager;
use sandboxd_usecase::ports::BoxError;

pub use config::{InvalidRedisConfig, RedisConfig};
pub use locker::RedisLeaseLocker;
pub use repository::RedisSessionRepository;

use client::RedisClient;
use keys::Keys;

/// Why [`RedisStore::connect`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    InvalidConfig(#[from] InvalidRedisConfig),
    /// The URL does not parse (its text is not repeated: it may hold a password).
    #[error("invalid redis url")]
    InvalidUrl(#[source] redis::RedisError),
    /// Redis did not answer within `command_timeout`.
    #[error("redis unavailable")]
    Unavailable(#[source] BoxError),
}

/// One connection to Redis and the configuration both adapters read; cheap to clone.
#[derive(Debug, Clone)]
pub struct RedisStore {
    client: RedisClient,
    config: Arc<RedisConfig>,
    keys: Keys,
}

impl RedisStore {
    /// Validates `config` and connects, waiting at most `command_timeout` for Redis to answer.
    /// The connection reconnects by itself afterwards whenever Redis comes back.
    ///
    /// # Errors
    /// [`ConnectError`]: a bad setting, a bad URL, or no answer in time.
    pub async fn connect(config: RedisConfig) -> Result<Self, ConnectError> {
        config.validate()?;
        let client = redis::Client::open(config.url.as_str()).map_err(ConnectError::InvalidUrl)?;
        let timeout = config.command_timeout;
        let connecting =
            ConnectionManager::new_with_config(client, client::manager_config(timeout));
        let manager = match tokio::time::timeout(timeout, connecting).await {
            Ok(Ok(manager)) => manager,
            Ok(Err(error)) => return Err(ConnectError::Unavailable(Box::new(error))),
            Err(elapsed) => return Err(ConnectError::Unavailable(Box::new(elapsed))),
        };
        Ok(Self::from_manager(manager, config))
    }

    /// Like [`Self::connect`] without waiting for Redis: the first call connects. For a server
    /// that must start (and report NOT_SERVING) while Redis is still down.
    ///
    /// # Errors
    /// [`ConnectError::InvalidConfig`] or [`ConnectError::InvalidUrl`].
    pub fn connect_lazy(config: RedisConfig) -> Result<Self, ConnectError> {
        config.validate()?;
        let client = redis::Client::open(config.url.as_str()).map_err(ConnectError::InvalidUrl)?;
        let manager = ConnectionManager::new_lazy_with_config(
            client,
            client::manager_config(config.command_timeout),
        )
        .map_err(ConnectError::InvalidUrl)?;
        Ok(Self::from_manager(manager, config))
    }

    fn from_manager(manager: ConnectionManager, config: RedisConfig) -> Self {
        Self {
            client: RedisClient::new(manager, config.command_timeout),
            keys: Keys::new(&config.key_prefix),
            config: Arc::new(config),
        }
    }

    /// The session store on this connection.
    #[must_use]
    pub fn repository(&self) -> RedisSessionRepository {
        RedisSessionRepository::new(self.clone())
    }

    /// The lease locker on this connection.
    #[must_use]
    pub fn locker(&self) -> RedisLeaseLocker {
        RedisLeaseLocker::new(self.clone())
    }

    #[must_use]
    pub fn config(&self) -> &RedisConfig {
        &self.config
    }
}
