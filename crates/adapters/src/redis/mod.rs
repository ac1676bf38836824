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
mod events;
mod keys;
mod locker;
pub mod names;
mod nodes;
mod repository;
mod scripts;
mod sentinel;

use std::sync::Arc;

use redis::aio::ConnectionManager;
use sandboxd_usecase::ports::BoxError;

pub use config::{InvalidRedisConfig, RedisConfig};
pub use events::RedisEventLog;
pub use locker::RedisLeaseLocker;
pub use nodes::RedisNodeRegistry;
pub use repository::RedisSessionRepository;
pub use sentinel::SentinelUrlError;

use client::{Connection, RedisClient};
use keys::Keys;
use sentinel::{SentinelConnector, SentinelTarget};

/// Why [`RedisStore::connect`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    InvalidConfig(#[from] InvalidRedisConfig),
    /// The URL does not parse (its text is not repeated: it may hold a password).
    #[error("invalid redis url")]
    InvalidUrl(#[source] redis::RedisError),
    /// The CA file for `rediss://` cannot be read or holds no usable certificate.
    #[error("cannot use the redis CA file")]
    CaFile(#[source] BoxError),
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
        let timeout = config.command_timeout;
        let connection = match open(&config)? {
            Target::Direct(client) => {
                let connecting =
                    ConnectionManager::new_with_config(client, client::manager_config(timeout));
                match tokio::time::timeout(timeout, connecting).await {
                    Ok(Ok(manager)) => Connection::Direct(manager),
                    Ok(Err(error)) => return Err(ConnectError::Unavailable(Box::new(error))),
                    Err(elapsed) => return Err(ConnectError::Unavailable(Box::new(elapsed))),
                }
            }
            Target::Sentinel(connector) => Connection::Sentinel(connector),
        };
        let store = Self::from_connection(connection, config);
        // A Sentinel connection is made by its first call: make it now, so that "connected"
        // means the same in both modes.
        if matches!(store.client.connection(), Connection::Sentinel(_)) {
            store
                .client
                .run(
                    "ping",
                    redis::cmd("PING").query_async::<()>(&mut store.client.connection()),
                )
                .await
                .map_err(|fault| ConnectError::Unavailable(Box::new(fault)))?;
        }
        Ok(store)
    }

    /// Like [`Self::connect`] without waiting for Redis: the first call connects. For a server
    /// that must start (and report NOT_SERVING) while Redis is still down.
    ///
    /// # Errors
    /// [`ConnectError::InvalidConfig`], [`ConnectError::InvalidUrl`] or
    /// [`ConnectError::CaFile`].
    pub fn connect_lazy(config: RedisConfig) -> Result<Self, ConnectError> {
        config.validate()?;
        let connection = match open(&config)? {
            Target::Direct(client) => Connection::Direct(
                ConnectionManager::new_lazy_with_config(
                    client,
                    client::manager_config(config.command_timeout),
                )
                .map_err(ConnectError::InvalidUrl)?,
            ),
            Target::Sentinel(connector) => Connection::Sentinel(connector),
        };
        Ok(Self::from_connection(connection, config))
    }

    fn from_connection(connection: Connection, config: RedisConfig) -> Self {
        Self {
            client: RedisClient::new(connection, config.command_timeout),
            keys: Keys::new(&config.key_prefix),
            config: Arc::new(config),
        }
    }

    /// The session store on this connection.
    #[must_use]
    pub fn repository(&self) -> RedisSessionRepository {
        RedisSessionRepository::new(self.clone())
    }

    /// The event log, with a connection of its own for waiting reads (made by its first call).
    ///
    /// # Errors
    /// As [`Self::connect_lazy`].
    pub fn event_log(&self) -> Result<RedisEventLog, ConnectError> {
        let waiting = Self::connect_lazy((*self.config).clone())?;
        Ok(RedisEventLog::new(self.clone(), waiting.client))
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

/// What the URL names: one server, or a primary to be found through sentinels. Built once at
/// startup, so the size difference between the variants does not matter.
#[allow(clippy::large_enum_variant)]
enum Target {
    Direct(redis::Client),
    Sentinel(Arc<SentinelConnector>),
}

/// Builds the client for the configured URL, with the configured CA for `rediss://` (else the
/// system's roots).
fn open(config: &RedisConfig) -> Result<Target, ConnectError> {
    if config.url.starts_with(sentinel::SCHEME) {
        let target = SentinelTarget::parse(&config.url).map_err(|error| {
            ConnectError::InvalidConfig(InvalidRedisConfig {
                setting: "url",
                reason: error.reason(),
            })
        })?;
        let connector = SentinelConnector::new(&target, config.command_timeout)
            .map_err(ConnectError::InvalidUrl)?;
        return Ok(Target::Sentinel(connector));
    }
    let client = match &config.ca_file {
        Some(path) => {
            let root_cert =
                std::fs::read(path).map_err(|error| ConnectError::CaFile(Box::new(error)))?;
            let certificates = redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(root_cert),
            };
            redis::Client::build_with_tls(config.url.as_str(), certificates).map_err(|error| {
                if error.kind() == redis::ErrorKind::InvalidClientConfig {
                    ConnectError::InvalidUrl(error)
                } else {
                    ConnectError::CaFile(Box::new(error))
                }
            })?
        }
        None => redis::Client::open(config.url.as_str()).map_err(ConnectError::InvalidUrl)?,
    };
    Ok(Target::Direct(client))
}
