//! The shared connection: one auto-reconnecting multiplexed connection, every call bounded by the
//! command timeout and timed into the command-duration histogram.

use std::future::Future;
use std::time::{Duration, Instant};

use redis::RedisResult;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::error::StoreFault;
use super::names;

/// Cheap to clone: clones share the one connection.
#[derive(Clone)]
pub(crate) struct RedisClient {
    manager: ConnectionManager,
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
    pub(crate) fn new(manager: ConnectionManager, timeout: Duration) -> Self {
        Self { manager, timeout }
    }

    /// A handle to pass into one call's future.
    pub(crate) fn connection(&self) -> ConnectionManager {
        self.manager.clone()
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
