//! The `lifecycle` section: how long sessions live, and the background cleanup and reconcile
//! passes that end them.

use std::time::Duration;

use sandboxd_domain::de_duration;
use serde::Deserialize;

use super::ConfigError;
use super::flags::{Kind, Setting};

/// Session lifetimes and the background passes.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct LifecycleSettings {
    /// TTL of a new session.
    #[serde(deserialize_with = "de_duration")]
    pub session_ttl: Duration,
    /// Upper bound of ExtendSandbox's ttl.
    #[serde(deserialize_with = "de_duration")]
    pub max_ttl: Duration,
    /// Period of the background cleanup pass; zero disables the loop.
    #[serde(deserialize_with = "de_duration")]
    pub cleanup_interval: Duration,
    /// Stops of different chats in flight at once during a cleanup pass.
    pub cleanup_concurrency: usize,
    /// Period of the background reconcile pass (also run once at start); zero disables both.
    #[serde(deserialize_with = "de_duration")]
    pub reconcile_interval: Duration,
    /// Backstop where no lease decides: a container whose labels name no chat is removed only
    /// once older than this; must exceed `lock_ttl` plus every profile's `ready_timeout`
    /// (checked by `Config`).
    #[serde(deserialize_with = "de_duration")]
    pub reconcile_grace: Duration,
    /// Least lifetime of a session that reconcile rebuilt from its container's labels.
    #[serde(deserialize_with = "de_duration")]
    pub adoption_grace: Duration,
    /// How long lifecycle events stay readable by WatchSandboxes (trimmed by age).
    #[serde(deserialize_with = "de_duration")]
    pub event_retention: Duration,
}

impl Default for LifecycleSettings {
    fn default() -> Self {
        Self {
            session_ttl: Duration::from_secs(30 * 60),
            max_ttl: Duration::from_secs(24 * 60 * 60),
            cleanup_interval: Duration::from_secs(30),
            cleanup_concurrency: 8,
            // Orphans of a crashed process go within lock_ttl plus one interval.
            reconcile_interval: Duration::from_secs(15),
            reconcile_grace: Duration::from_secs(120),
            adoption_grace: Duration::from_secs(10 * 60),
            event_retention: Duration::from_secs(24 * 60 * 60),
        }
    }
}

pub(crate) const SETTINGS: &[Setting] = &[
    Setting::new("session_ttl", "DURATION", "30m", "TTL of a new session"),
    Setting::new("max_ttl", "DURATION", "24h", "Largest ExtendSandbox ttl"),
    Setting::new(
        "cleanup_interval",
        "DURATION",
        "30s",
        "Background cleanup period; 0s disables it",
    ),
    Setting::new(
        "cleanup_concurrency",
        "N",
        "8",
        "Container stops in flight in one cleanup pass",
    )
    .kind(Kind::Count),
    Setting::new(
        "reconcile_interval",
        "DURATION",
        "15s",
        "Background reconcile period, also run once at start; 0s disables it",
    ),
    Setting::new(
        "reconcile_grace",
        "DURATION",
        "2m",
        "Age below which reconcile leaves a container whose labels name no chat alone; must exceed lock_ttl + every ready_timeout",
    ),
    Setting::new(
        "adoption_grace",
        "DURATION",
        "10m",
        "Least lifetime of a session reconcile rebuilds from a live container's labels",
    ),
    Setting::new(
        "event_retention",
        "DURATION",
        "24h",
        "How long lifecycle events stay readable by WatchSandboxes; older cursors are OUT_OF_RANGE",
    ),
];

impl LifecycleSettings {
    /// # Errors
    /// [`ConfigError::Invalid`] naming the first bad setting of the section.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        for (setting, value) in [
            ("session_ttl", self.session_ttl),
            ("max_ttl", self.max_ttl),
            ("adoption_grace", self.adoption_grace),
        ] {
            if value.is_zero() {
                return Err(ConfigError::invalid(setting, "must be positive"));
            }
        }
        if self.event_retention < Duration::from_secs(1) {
            return Err(ConfigError::invalid(
                "event_retention",
                "must be at least 1s",
            ));
        }
        if self.max_ttl < self.session_ttl {
            return Err(ConfigError::invalid(
                "max_ttl",
                "must be at least session_ttl",
            ));
        }
        if self.cleanup_concurrency == 0 {
            return Err(ConfigError::invalid(
                "cleanup_concurrency",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}
