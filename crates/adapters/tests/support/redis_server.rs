//! The Redis adapter tests' view of the kit's `redis-server` launcher: the launcher itself is
//! `sandboxd_testkit::RedisServer`; this adds the adapter settings for one server.
#![allow(dead_code)]

use std::time::Duration;

use sandboxd_adapters::redis::RedisConfig;
pub(crate) use sandboxd_testkit::{RedisServer, TestResult};

/// Adapter settings for a test server.
pub(crate) trait AdapterConfig {
    /// This server with a random key prefix (tests never share keys) and short timeouts so
    /// failures show quickly.
    fn config(&self) -> RedisConfig;
}

impl AdapterConfig for RedisServer {
    fn config(&self) -> RedisConfig {
        RedisConfig {
            url: self.url(),
            key_prefix: random_prefix(),
            command_timeout: Duration::from_millis(500),
            lock_ttl: Duration::from_secs(2),
            lock_wait: Duration::from_millis(300),
            ..RedisConfig::default()
        }
    }
}

pub(crate) fn random_prefix() -> String {
    format!("test-{}", uuid::Uuid::new_v4().simple())
}
