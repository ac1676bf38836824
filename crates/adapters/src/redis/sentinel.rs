//! Following a Sentinel-managed primary: `redis+sentinel://` URLs and the connection that asks the
//! sentinels where the primary is whenever the one it knew stops answering as a primary.
//!
//! redis-rs's `ConnectionManager` reconnects to one fixed address, which after a failover is dead
//! or a read-only replica; so in Sentinel mode the shared connection is a multiplexed connection
//! that is dropped on the first sign of trouble and re-resolved through the sentinels on the next
//! call. Calls during a failover fail fast (`Unavailable`) instead of queueing.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{AsyncConnectionConfig, ConnectionAddr, IntoConnectionInfo, RedisResult};

use super::error::is_unavailable;

/// The URL scheme that selects Sentinel mode.
pub(crate) const SCHEME: &str = "redis+sentinel://";

/// Why a `redis+sentinel://` URL is refused. Never carries the URL: it may hold a password.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.reason())]
pub enum SentinelUrlError {
    NoSentinel,
    BadAddress,
    NoMasterName,
    BadDatabase,
    BadCredentials,
}

impl SentinelUrlError {
    /// What is wrong, as a fixed text (configuration errors carry `&'static str` reasons).
    #[must_use]
    pub fn reason(self) -> &'static str {
        match self {
            Self::NoSentinel => {
                "redis+sentinel:// needs sentinel addresses: host:port[,host:port...]"
            }
            Self::BadAddress => "a sentinel address is not host:port",
            Self::NoMasterName => "redis+sentinel:// needs a master name: .../master_name[/db]",
            Self::BadDatabase => "the database after the master name is not a number",
            Self::BadCredentials => "the user or password does not parse",
        }
    }
}

/// A parsed `redis+sentinel://[user[:password]@]host:port[,host:port...]/master_name[/db]`.
/// The credentials and database apply to the primary; the sentinels are asked without them.
#[derive(Clone)]
pub(crate) struct SentinelTarget {
    sentinels: Vec<(String, u16)>,
    master_name: String,
    username: Option<String>,
    password: Option<String>,
    db: i64,
}

impl std::fmt::Debug for SentinelTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentinelTarget")
            .field("sentinels", &self.sentinels)
            .field("master_name", &self.master_name)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("db", &self.db)
            .finish()
    }
}

impl SentinelTarget {
    /// Parses a URL that starts with [`SCHEME`].
    ///
    /// # Errors
    /// [`SentinelUrlError`] naming what is missing or malformed.
    pub(crate) fn parse(url: &str) -> Result<Self, SentinelUrlError> {
        let rest = url.strip_prefix(SCHEME).unwrap_or(url);
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((userinfo, hosts)) => (Some(userinfo), hosts),
            None => (None, authority),
        };
        let sentinels = hosts
            .split(',')
            .filter(|host| !host.is_empty())
            .map(parse_host_port)
            .collect::<Result<Vec<_>, _>>()?;
        if sentinels.is_empty() {
            return Err(SentinelUrlError::NoSentinel);
        }
        let mut segments = path.split('/').filter(|segment| !segment.is_empty());
        let master_name = segments
            .next()
            .ok_or(SentinelUrlError::NoMasterName)?
            .to_owned();
        let db = match segments.next() {
            Some(db) => db.parse().map_err(|_| SentinelUrlError::BadDatabase)?,
            None => 0,
        };
        let (username, password) = match userinfo {
            Some(userinfo) => decode_credentials(userinfo)?,
            None => (None, None),
        };
        Ok(Self {
            sentinels,
            master_name,
            username,
            password,
            db,
        })
    }

    fn client(&self) -> RedisResult<SentinelClient> {
        let addresses = self
            .sentinels
            .iter()
            .map(|(host, port)| ConnectionAddr::Tcp(host.clone(), *port));
        let mut builder =
            SentinelClientBuilder::new(addresses, &self.master_name, SentinelServerType::Master)?
                .set_client_to_redis_db(self.db);
        if let Some(username) = &self.username {
            builder = builder.set_client_to_redis_username(username);
        }
        if let Some(password) = &self.password {
            builder = builder.set_client_to_redis_password(password);
        }
        builder.build()
    }
}

fn parse_host_port(address: &str) -> Result<(String, u16), SentinelUrlError> {
    let (host, port) = address
        .rsplit_once(':')
        .ok_or(SentinelUrlError::BadAddress)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = port.parse().map_err(|_| SentinelUrlError::BadAddress)?;
    if host.is_empty() {
        return Err(SentinelUrlError::BadAddress);
    }
    Ok((host.to_owned(), port))
}

/// Percent-decodes `user:password` the way a `redis://` URL's are, by letting redis-rs parse a
/// URL that carries only them.
fn decode_credentials(
    userinfo: &str,
) -> Result<(Option<String>, Option<String>), SentinelUrlError> {
    let info = format!("redis://{userinfo}@localhost")
        .into_connection_info()
        .map_err(|_| SentinelUrlError::BadCredentials)?;
    let settings = info.redis_settings();
    Ok((
        settings.username().map(str::to_owned),
        settings.password().map(str::to_owned),
    ))
}

/// The primary's connection as found through the sentinels; shared by every clone.
pub(crate) struct SentinelConnector {
    /// Asks the sentinels; a lock because a lookup needs `&mut` (it caches sentinel connections).
    client: tokio::sync::Mutex<SentinelClient>,
    /// The connection to the primary last found, with a generation so that a call that saw it
    /// fail drops only that one, not a newer one another call has made since.
    current: Mutex<Option<(u64, MultiplexedConnection)>>,
    /// Bounds of each connection attempt and reply.
    timeout: Duration,
}

impl std::fmt::Debug for SentinelConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentinelConnector")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl SentinelConnector {
    /// Checks the sentinel list; connects on the first call.
    ///
    /// # Errors
    /// When redis-rs refuses the addresses or credentials.
    pub(crate) fn new(target: &SentinelTarget, timeout: Duration) -> RedisResult<Arc<Self>> {
        Ok(Arc::new(Self {
            client: tokio::sync::Mutex::new(target.client()?),
            current: Mutex::new(None),
            timeout,
        }))
    }

    /// The current primary's connection, asking the sentinels first when there is none.
    async fn connection(&self) -> RedisResult<(u64, MultiplexedConnection)> {
        if let Some(current) = self.lock_current().clone() {
            return Ok(current);
        }
        // One lookup at a time; a caller that waited here finds the connection just made.
        let mut client = self.client.lock().await;
        if let Some(current) = self.lock_current().clone() {
            return Ok(current);
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        // The lookup asks ROLE of the address the sentinels give, so a demoted primary that
        // sentinels still name is refused here rather than answering READONLY later.
        let connection = client.get_async_connection_with_config(&config).await?;
        let mut current = self.lock_current();
        let generation = current.as_ref().map_or(0, |(generation, _)| generation + 1);
        *current = Some((generation, connection.clone()));
        Ok((generation, connection))
    }

    /// Drops the connection of `generation` after a failure that says the primary may have
    /// moved, so the next call asks the sentinels again.
    fn forget(&self, generation: u64) {
        let mut current = self.lock_current();
        if current
            .as_ref()
            .is_some_and(|(known, _)| *known == generation)
        {
            *current = None;
        }
    }

    fn lock_current(&self) -> std::sync::MutexGuard<'_, Option<(u64, MultiplexedConnection)>> {
        // The guarded value is a plain handle: a panic elsewhere cannot leave it half-written.
        self.current.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends one command (or pipeline) on the current primary's connection.
    pub(crate) async fn send<T>(
        &self,
        request: impl AsyncFnOnce(&mut MultiplexedConnection) -> RedisResult<T>,
    ) -> RedisResult<T> {
        let (generation, mut connection) = self.connection().await?;
        let outcome = request(&mut connection).await;
        if let Err(error) = &outcome
            && is_unavailable(error)
        {
            self.forget(generation);
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_full_url_gives_sentinels_master_credentials_and_db() {
        let target =
            SentinelTarget::parse("redis+sentinel://app:p%40ss@10.0.0.1:26379,[::1]:26380/main/3")
                .unwrap();
        assert_eq!(
            target.sentinels,
            vec![("10.0.0.1".to_owned(), 26379), ("::1".to_owned(), 26380)]
        );
        assert_eq!(target.master_name, "main");
        assert_eq!(target.username.as_deref(), Some("app"));
        assert_eq!(target.password.as_deref(), Some("p@ss"));
        assert_eq!(target.db, 3);
        assert!(!format!("{target:?}").contains("p@ss"));
    }

    #[test]
    fn missing_parts_are_named() {
        for (url, want) in [
            ("redis+sentinel:///main", SentinelUrlError::NoSentinel),
            ("redis+sentinel://h:1", SentinelUrlError::NoMasterName),
            ("redis+sentinel://h/main", SentinelUrlError::BadAddress),
            ("redis+sentinel://h:1/main/x", SentinelUrlError::BadDatabase),
        ] {
            assert_eq!(SentinelTarget::parse(url).unwrap_err(), want, "{url}");
        }
    }
}
