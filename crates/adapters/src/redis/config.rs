//! Settings of the Redis adapters, with sandboxd's defaults.

use std::path::PathBuf;
use std::time::Duration;

/// How to reach Redis and how the adapters use it.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]`, `rediss://...` (TLS), `unix://...`, or
    /// `redis+sentinel://[user:password@]host:port[,host:port...]/master_name[/db]`; may carry a
    /// password, so never logged whole.
    pub url: String,
    /// PEM CA certificates that `rediss://` servers must chain to, instead of the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Prefix of every key, so two deployments can share one Redis (validated by its owner).
    pub key_prefix: String,
    /// Upper bound of every Redis call (and of each connection attempt): a dead Redis turns into
    /// `Unavailable` after this long, never a hang.
    pub command_timeout: Duration,
    /// Lease length; leases are renewed every third of it while held.
    pub lock_ttl: Duration,
    /// How long `lock` waits for a busy chat before `Busy`.
    pub lock_wait: Duration,
    /// How long session keys outlive their `expires_at` (and at least how long they live after a
    /// write), so data abandoned by a dead cleanup loop cannot accumulate forever.
    pub key_grace: Duration,
    /// How long lifecycle events stay in the log (trimmed by time on every append).
    pub event_retention: Duration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".to_owned(),
            ca_file: None,
            key_prefix: "sandboxd".to_owned(),
            command_timeout: Duration::from_secs(2),
            lock_ttl: Duration::from_secs(10),
            lock_wait: Duration::from_secs(5),
            key_grace: Duration::from_secs(24 * 60 * 60),
            event_retention: Duration::from_secs(24 * 60 * 60),
        }
    }
}

impl std::fmt::Debug for RedisConfig {
    // The URL may hold a password: show only that one is configured.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &"<redacted>")
            .field("ca_file", &self.ca_file)
            .field("key_prefix", &self.key_prefix)
            .field("command_timeout", &self.command_timeout)
            .field("lock_ttl", &self.lock_ttl)
            .field("lock_wait", &self.lock_wait)
            .field("key_grace", &self.key_grace)
            .field("event_retention", &self.event_retention)
            .finish()
    }
}

/// A setting that cannot work, named so the operator can fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid redis setting {setting}: {reason}")]
pub struct InvalidRedisConfig {
    pub setting: &'static str,
    pub reason: &'static str,
}

impl RedisConfig {
    /// Shortest lease accepted: renewal runs every third of it, in whole milliseconds.
    pub const MIN_LOCK_TTL: Duration = Duration::from_millis(30);

    /// What the adapters themselves need of their settings. The key prefix is checked by its
    /// owner (sandboxd's configuration, which also uses it for container labels), not here.
    ///
    /// # Errors
    /// [`InvalidRedisConfig`] naming the first setting that cannot work.
    pub fn validate(&self) -> Result<(), InvalidRedisConfig> {
        let invalid = |setting, reason| Err(InvalidRedisConfig { setting, reason });
        if self.url.starts_with(super::sentinel::SCHEME)
            && let Err(error) = super::sentinel::SentinelTarget::parse(&self.url)
        {
            return invalid("url", error.reason());
        }
        if self.ca_file.is_some() && !self.url.starts_with("rediss://") {
            return invalid("ca_file", "is only used with a rediss:// url");
        }
        if self.command_timeout.is_zero() {
            return invalid("command_timeout", "must be positive");
        }
        if self.lock_ttl < Self::MIN_LOCK_TTL {
            return invalid("lock_ttl", "must be at least 30ms");
        }
        if self.key_grace < Duration::from_secs(1) {
            return invalid("key_grace", "must be at least 1s");
        }
        if self.event_retention < Duration::from_secs(1) {
            return invalid("event_retention", "must be at least 1s");
        }
        Ok(())
    }
}

/// Whole milliseconds, saturating, and at least 1 (Redis refuses a zero PX).
pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}
