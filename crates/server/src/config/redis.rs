//! The `redis` section: the session store, the key namespace shared with container labels, and
//! the chat locks' lease.

use std::path::PathBuf;
use std::time::Duration;

use sandboxd_adapters::redis::RedisConfig;
use sandboxd_domain::de_duration;
use serde::Deserialize;

use super::ConfigError;
use super::flags::Setting;
use super::server::read_pem_certificates;

/// Longest key prefix accepted: it also prefixes every container label key.
const MAX_KEY_PREFIX_LEN: usize = 63;

/// How sandboxd reaches Redis and names what it keeps there (and on the engine).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct RedisSettings {
    /// The session store; may carry a password, so it is never logged as is. A
    /// `redis+sentinel://` URL names sentinels and a master name: sandboxd follows failovers.
    pub redis_url: String,
    /// Bound of every Redis call and connection attempt: past it the call is UNAVAILABLE.
    #[serde(deserialize_with = "de_duration")]
    pub redis_command_timeout: Duration,
    /// PEM CA bundle a `rediss://` server's certificate must chain to; unset: the system roots.
    pub redis_ca_file: Option<PathBuf>,
    /// Redis key prefix and container label namespace: two deployments can share Redis and
    /// Docker. Checked here, once, against the stricter of the two uses (label keys).
    pub key_prefix: String,
    /// Lease length of a chat's lock (renewed while held).
    #[serde(deserialize_with = "de_duration")]
    pub lock_ttl: Duration,
    /// How long a request waits for a chat's lock before ABORTED.
    #[serde(deserialize_with = "de_duration")]
    pub lock_wait: Duration,
}

impl Default for RedisSettings {
    fn default() -> Self {
        Self {
            redis_url: "redis://127.0.0.1:6379".to_owned(),
            redis_command_timeout: Duration::from_secs(2),
            redis_ca_file: None,
            key_prefix: "sandboxd".to_owned(),
            lock_ttl: Duration::from_secs(10),
            lock_wait: Duration::from_secs(5),
        }
    }
}

pub(crate) const SETTINGS: &[Setting] = &[
    Setting::new(
        "redis_url",
        "URL",
        "redis://127.0.0.1:6379",
        "Redis URL of the session store (redis://, rediss://, unix://, redis+sentinel://)",
    ),
    Setting::new(
        "redis_command_timeout",
        "DURATION",
        "2s",
        "Bound of every Redis call and connection attempt",
    ),
    Setting::unset(
        "redis_ca_file",
        "FILE",
        "none, system roots",
        "PEM CA bundle a rediss:// server's certificate must chain to",
    ),
    Setting::new(
        "key_prefix",
        "PREFIX",
        "sandboxd",
        "Redis key prefix and container label namespace",
    ),
    Setting::new(
        "lock_ttl",
        "DURATION",
        "10s",
        "Lease length of a chat's lock",
    ),
    Setting::new(
        "lock_wait",
        "DURATION",
        "5s",
        "Wait for a chat's lock before ABORTED",
    ),
];

impl RedisSettings {
    /// Checks the section's own settings, then what the Redis adapters require of their
    /// configuration (the lease's minimum), which [`RedisConfig::validate`] states.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the first bad setting of the section.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if ![
            "redis://",
            "rediss://",
            "unix://",
            "redis+unix://",
            "redis+sentinel://",
        ]
        .iter()
        .any(|scheme| self.redis_url.starts_with(scheme))
        {
            return Err(ConfigError::invalid(
                "redis_url",
                "must start with redis://, rediss://, unix://, redis+unix:// or redis+sentinel://",
            ));
        }
        validate_key_prefix(&self.key_prefix)?;
        if self.lock_wait.is_zero() {
            return Err(ConfigError::invalid("lock_wait", "must be positive"));
        }
        if let Some(ca) = &self.redis_ca_file {
            read_pem_certificates("redis_ca_file", ca)?;
        }
        self.redis_config().validate().map_err(|e| {
            // The adapters name their own fields; say which setting of this file it is.
            let setting = match e.setting {
                "url" => "redis_url",
                "command_timeout" => "redis_command_timeout",
                "ca_file" => "redis_ca_file",
                other => other,
            };
            ConfigError::invalid(setting, e.reason)
        })
    }

    /// The Redis adapters' configuration.
    #[must_use]
    pub(crate) fn redis_config(&self) -> RedisConfig {
        RedisConfig {
            url: self.redis_url.clone(),
            ca_file: self.redis_ca_file.clone(),
            command_timeout: self.redis_command_timeout,
            key_prefix: self.key_prefix.clone(),
            lock_ttl: self.lock_ttl,
            lock_wait: self.lock_wait,
            ..RedisConfig::default()
        }
    }

    /// `redis_url` with any password replaced, for logs.
    #[must_use]
    pub(crate) fn redis_url_redacted(&self) -> String {
        redact_url_password(&self.redis_url)
    }
}

/// Keys and label keys are reverse-DNS-like: keep the namespace to characters safe in both.
fn validate_key_prefix(prefix: &str) -> Result<(), ConfigError> {
    let allowed =
        |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_');
    match prefix.bytes().next() {
        None => Err(ConfigError::invalid("key_prefix", "must not be empty")),
        Some(_) if prefix.len() > MAX_KEY_PREFIX_LEN => Err(ConfigError::invalid(
            "key_prefix",
            format!("must be at most {MAX_KEY_PREFIX_LEN} bytes"),
        )),
        Some(first) if first.is_ascii_alphanumeric() && prefix.bytes().all(allowed) => Ok(()),
        Some(_) => Err(ConfigError::invalid(
            "key_prefix",
            "may contain only [a-z0-9._-] and must start with a letter or digit",
        )),
    }
}

/// Replaces the password of `scheme://user:password@host` with `***`.
fn redact_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:***@{host}"),
        None => format!("{scheme}://***@{host}"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn passwords_are_redacted_from_the_url() {
        assert_eq!(
            redact_url_password("redis://u:secret@h:1/0"),
            "redis://u:***@h:1/0"
        );
        assert_eq!(redact_url_password("redis://:secret@h"), "redis://:***@h");
        assert_eq!(redact_url_password("redis://h:6379"), "redis://h:6379");
    }

    #[test]
    fn key_prefixes_must_suit_keys_and_labels() {
        for bad in ["", "Sbx", "-sbx", "sbx prefix", &"a".repeat(64)] {
            let error = validate_key_prefix(bad).unwrap_err().to_string();
            assert!(error.contains("key_prefix"), "{bad:?}: {error}");
        }
        for good in ["sandboxd", "sbx-1.blue_2", &"a".repeat(63)] {
            validate_key_prefix(good).unwrap();
        }
    }

    #[test]
    fn the_adapters_lease_minimum_is_named() {
        let short = RedisSettings {
            lock_ttl: Duration::from_millis(10),
            ..RedisSettings::default()
        };
        let message = short.validate().unwrap_err().to_string();
        assert!(message.contains("lock_ttl"), "{message}");
        RedisSettings::default().validate().unwrap();
    }

    #[test]
    fn sentinel_urls_are_checked_without_repeating_them() {
        let good = RedisSettings {
            redis_url: "redis+sentinel://app:secret@127.0.0.1:26379,127.0.0.1:26380/main".into(),
            ..RedisSettings::default()
        };
        good.validate().unwrap();
        let no_master = RedisSettings {
            redis_url: "redis+sentinel://app:secret@127.0.0.1:26379".into(),
            ..RedisSettings::default()
        };
        let message = no_master.validate().unwrap_err().to_string();
        assert!(message.contains("redis_url"), "{message}");
        assert!(message.contains("master name"), "{message}");
        assert!(!message.contains("secret"), "{message}");
    }

    #[test]
    fn the_ca_file_needs_a_tls_url_and_a_zero_timeout_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        std::fs::write(&ca, certified.cert.pem()).unwrap();
        let plain = RedisSettings {
            redis_ca_file: Some(ca.clone()),
            ..RedisSettings::default()
        };
        let message = plain.validate().unwrap_err().to_string();
        assert!(message.contains("redis_ca_file"), "{message}");
        RedisSettings {
            redis_url: "rediss://127.0.0.1:6380".into(),
            redis_ca_file: Some(ca),
            ..RedisSettings::default()
        }
        .validate()
        .unwrap();
        let zero = RedisSettings {
            redis_command_timeout: Duration::ZERO,
            ..RedisSettings::default()
        };
        let message = zero.validate().unwrap_err().to_string();
        assert!(message.contains("redis_command_timeout"), "{message}");
    }
}
