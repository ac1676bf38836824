//! The `docker` section: the engine connection, where endpoints are published, how containers
//! stop, and the host directories volumes may come from. Its checks are the only ones of these
//! settings: the Docker adapter takes the resulting `DockerConfig` as valid.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use sandboxd_adapters::docker::DockerConfig;
use sandboxd_domain::{VolumePath, de_duration};
use serde::{Deserialize, Deserializer};

use super::ConfigError;
use super::flags::Setting;

/// The Docker runtime's settings (the label namespace is `redis.key_prefix`, the profiles are
/// `agents`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct DockerSettings {
    /// Docker engine address; unset uses `DOCKER_HOST`, else the local socket.
    pub docker_host: Option<String>,
    /// Host IP sandbox endpoints are published on.
    pub publish_host_ip: IpAddr,
    /// Graceful container stop before SIGKILL.
    #[serde(deserialize_with = "de_duration")]
    pub stop_grace: Duration,
    /// Bound on every Docker engine call; must exceed `stop_grace`, which a stop call waits out.
    #[serde(deserialize_with = "de_duration")]
    pub engine_timeout: Duration,
    /// Roots `volume_host_path` must lie under; empty refuses every volume. Relative roots are
    /// resolved against the directory of the file that set them (see [`Self::resolve_relative_roots`]).
    #[serde(deserialize_with = "de_path_list")]
    pub allowed_volume_roots: Vec<PathBuf>,
    /// The warm pool's directory on the host (slots, claim channels, claim records); it must
    /// outlive a restart of sandboxd. Used only when a profile has a `pool_size`.
    pub pool_root: PathBuf,
    /// The static `sandboxd-pool-waiter` binary bind-mounted into pooled sandboxes; required
    /// when a profile has a `pool_size`.
    pub pool_waiter: Option<PathBuf>,
}

impl Default for DockerSettings {
    fn default() -> Self {
        Self {
            docker_host: None,
            publish_host_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            stop_grace: Duration::from_secs(2),
            engine_timeout: Duration::from_secs(30),
            allowed_volume_roots: Vec::new(),
            pool_root: PathBuf::from(sandboxd_adapters::docker::config::DEFAULT_POOL_ROOT),
            pool_waiter: None,
        }
    }
}

pub(crate) const SETTINGS: &[Setting] = &[
    Setting::unset(
        "docker_host",
        "URL",
        "the local socket",
        "Docker engine address",
    )
    .env_fallback("DOCKER_HOST"),
    Setting::new(
        "publish_host_ip",
        "IP",
        "127.0.0.1",
        "Host IP sandbox endpoints are published on",
    ),
    Setting::new(
        "stop_grace",
        "DURATION",
        "2s",
        "Graceful container stop before SIGKILL",
    ),
    Setting::new(
        "engine_timeout",
        "DURATION",
        "30s",
        "Bound on every Docker engine call",
    ),
    Setting::unset(
        "allowed_volume_roots",
        "PATHS",
        "none, every volume refused",
        "Comma-separated roots volumes must lie under",
    ),
    Setting::new(
        "pool_root",
        "PATH",
        sandboxd_adapters::docker::config::DEFAULT_POOL_ROOT,
        "Warm pool directory: slots, claim channels, claim records",
    ),
    Setting::unset(
        "pool_waiter",
        "PATH",
        "none, pools refused",
        "Static sandboxd-pool-waiter binary for pooled sandboxes",
    ),
];

impl DockerSettings {
    /// # Errors
    /// [`ConfigError::Invalid`] naming the first bad setting of the section.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if let Some(host) = &self.docker_host
            && !["unix://", "tcp://", "http://"]
                .iter()
                .any(|scheme| host.starts_with(scheme))
        {
            return Err(ConfigError::invalid(
                "docker_host",
                "must start with unix://, tcp:// or http://",
            ));
        }
        if self.engine_timeout <= self.stop_grace {
            return Err(ConfigError::invalid(
                "engine_timeout",
                "must be longer than stop_grace",
            ));
        }
        // The engine takes the grace as whole seconds in an i32.
        if self.stop_grace > Duration::from_secs(i32::MAX.unsigned_abs().into()) {
            return Err(ConfigError::invalid("stop_grace", "is too long"));
        }
        if !self.pool_root.is_absolute() {
            return Err(ConfigError::invalid(
                "pool_root",
                "must be an absolute path",
            ));
        }
        if let Some(waiter) = &self.pool_waiter
            && !waiter.is_absolute()
        {
            return Err(ConfigError::invalid(
                "pool_waiter",
                "must be an absolute path",
            ));
        }
        for (index, root) in self.allowed_volume_roots.iter().enumerate() {
            let setting = format!("allowed_volume_roots[{index}]");
            let text = root
                .to_str()
                .ok_or_else(|| ConfigError::invalid(&setting, "must be UTF-8"))?;
            VolumePath::parse(text).map_err(|e| ConfigError::invalid(&setting, e.to_string()))?;
        }
        Ok(())
    }

    /// Resolves relative volume roots against the directory of the file that set them, or the
    /// working directory when they came from the environment or a flag.
    pub(crate) fn resolve_relative_roots(&mut self, figment: &Figment) {
        let base = figment
            .find_metadata("allowed_volume_roots")
            .and_then(|metadata| metadata.source.as_ref())
            .and_then(|source| source.file_path())
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_default();
        // A relative config path (`deploy/x.toml`) has a relative parent: anchor it to the cwd.
        let base = std::path::absolute(&base).unwrap_or(base);
        for root in &mut self.allowed_volume_roots {
            if root.is_relative() {
                *root = normalise_lexically(&base.join(&*root));
            }
        }
    }

    /// The Docker runtime's configuration, from this section, the label namespace and the
    /// (validated) profiles.
    pub(crate) fn docker_config(&self, key_prefix: &str) -> DockerConfig {
        DockerConfig {
            docker_host: self.docker_host.clone(),
            key_prefix: key_prefix.to_owned(),
            publish_host_ip: self.publish_host_ip,
            stop_grace: self.stop_grace,
            engine_timeout: self.engine_timeout,
            allowed_volume_roots: self.allowed_volume_roots.clone(),
            pool: sandboxd_adapters::docker::PoolConfig {
                root: self.pool_root.clone(),
                waiter: self.pool_waiter.clone(),
            },
        }
    }

    /// When a profile pools: the waiter must be set and be a static executable (it runs inside
    /// images that may have no dynamic loader).
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming `pool_waiter`.
    pub(crate) fn validate_pool_waiter(
        &self,
        pooled_agent: Option<&str>,
    ) -> Result<(), ConfigError> {
        let Some(agent) = pooled_agent else {
            return Ok(());
        };
        let waiter = self.pool_waiter.as_ref().ok_or_else(|| {
            ConfigError::invalid(
                "pool_waiter",
                format!("must be set: agents.{agent}.pool_size keeps a warm pool"),
            )
        })?;
        sandboxd_adapters::pool::check_waiter(waiter)
            .map_err(|reason| ConfigError::invalid("pool_waiter", reason))
    }
}

/// `a/b/../c` → `a/c` without touching the filesystem (the root may not exist yet).
fn normalise_lexically(path: &Path) -> PathBuf {
    let mut normalised = PathBuf::new();
    for component in path.components() {
        match component {
            Component::ParentDir => {
                normalised.pop();
            }
            Component::CurDir => {}
            other => normalised.push(other.as_os_str()),
        }
    }
    normalised
}

/// A list of paths as a TOML array, or one comma-separated string (environment, flags).
fn de_path_list<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<PathBuf>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        List(Vec<PathBuf>),
        Text(String),
    }
    Ok(match Raw::deserialize(deserializer)? {
        Raw::List(paths) => paths,
        Raw::Text(text) => text
            .split(',')
            .map(str::trim)
            .filter(|part| !part.is_empty())
            .map(PathBuf::from)
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn docker_settings_are_named_when_refused() {
        let bad: Vec<(DockerSettings, &str)> = vec![
            (
                DockerSettings {
                    docker_host: Some("/var/run/docker.sock".into()),
                    ..DockerSettings::default()
                },
                "docker_host",
            ),
            (
                DockerSettings {
                    stop_grace: Duration::from_secs(60),
                    ..DockerSettings::default()
                },
                "engine_timeout",
            ),
            (
                DockerSettings {
                    engine_timeout: Duration::ZERO,
                    stop_grace: Duration::ZERO,
                    ..DockerSettings::default()
                },
                "engine_timeout",
            ),
            (
                DockerSettings {
                    stop_grace: Duration::from_secs(1 << 40),
                    engine_timeout: Duration::from_secs(1 << 41),
                    ..DockerSettings::default()
                },
                "stop_grace",
            ),
            (
                DockerSettings {
                    allowed_volume_roots: vec![PathBuf::from("/srv"), PathBuf::from("srv")],
                    ..DockerSettings::default()
                },
                "allowed_volume_roots[1]",
            ),
        ];
        for (settings, setting) in bad {
            let message = settings.validate().unwrap_err().to_string();
            assert!(message.contains(&format!("`{setting}`")), "{message}");
        }
        DockerSettings::default().validate().unwrap();
    }

    #[test]
    fn relative_paths_are_normalised_lexically() {
        assert_eq!(
            normalise_lexically(Path::new("/etc/sandboxd/../var/./volumes")),
            PathBuf::from("/etc/var/volumes")
        );
    }
}
