//! The shared connection: one auto-reconnecting multiplexed connection (to a fixed address, or to
//! the primary the sentinels name), every call bounded by the command timeout and timed into the
//! command-duration histogram.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};

use super::error::StoreFault;
use super::names;
use super::sentinel::SentinelConnector;

/// A handle to the one connection, passed into a call's future (redis-rs wants `&mut`).
#[derive(Clone)]
pub(crate) enum Connection {
    /// `redis://`, `rediss://`, `unix://`: one address, reconnected by redis-rs.
    Direct(ConnectionManager),
    /// `redis+sentinel://`: whichever node the sentinels name primary.
    Sentinel(Arc<SentinelConnector>),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Direct(manager) => manager.req_packed_command(cmd),
            Self::Sentinel(connector) => Box::pin(async move {
                connector
                    .send(async |connection| connection.req_packed_command(cmd).await)
                    .await
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Direct(manager) => manager.req_packed_commands(pipeline, offset, count),
            Self::Sentinel(connector) => Box::pin(async move {
                connector
                    .send(async |connection| {
                        connection
                            .req_packed_commands(pipeline, offset, count)
                            .await
                    })
                    .await
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Direct(manager) => manager.get_db(),
            // Only used by redis-rs's cluster and cache code, neither of which runs here.
            Self::Sentinel(_) => 0,
        }
    }
}

/// Cheap to clone: clones share the one connection.
#[derive(Clone)]
pub(crate) struct RedisClient {
    connection: Connection,
    /// Bound of every call, including the wait for a reconnection in progress.
    timeout: Duration,
}

impl std::fmt::Debug for RedisClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisClient")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Reconnection policy: fail fast while Redis is down (one retry, short delays) and let the next
/// call start a fresh attempt, instead of queueing callers behind a long backoff.
pub(crate) fn manager_config(timeout: Duration) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(20))
        .set_max_delay(Duration::from_millis(200))
}

impl RedisClient {
    pub(crate) fn new(connection: Connection, timeout: Duration) -> Self {
        Self {
            connection,
            timeout,
        }
    }

    /// A handle to pass into one call's future.
    pub(crate) fn connection(&self) -> Connection {
        self.connection.clone()
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Runs one round trip under the timeout and records its duration as `command`.
    pub(crate) async fn run<T>(
        &self,
        command: &'static str,
        call: impl Future<Output = RedisResult<T>>,
    ) -> Result<T, StoreFault> {
        let started = Instant::now();
        let outcome = tokio::time::timeout(self.timeout, call).await;
        metrics::histogram!(names::REDIS_COMMAND_DURATION_SECONDS, names::LABEL_COMMAND => command)
            .record(started.elapsed().as_secs_f64());
        match outcome {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(source)) => Err(StoreFault::Redis { command, source }),
            Err(_elapsed) => Err(StoreFault::Timeout {
                command,
                timeout: self.timeout,
            }),
        }
    }
}
