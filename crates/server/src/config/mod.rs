//! The server's one typed configuration: defaults, then the TOML file given by `--config`, then
//! `SANDBOXD_*` environment variables, then command-line flags; validated before anything starts.
//!
//! The file stays flat (`grpc_addr = ...`, `[agents.<id>]` tables) while the configuration is made
//! of sections by owner: `server`, `redis`, `lifecycle`, `docker`, `telemetry`, `admission`,
//! `node` and `agents`, each in
//! its own module with its defaults, its checks and the [`flags::Setting`]s from which the flags,
//! the environment variable names and `--help` are derived. Each section is extracted from the
//! same merged layers; a key no section declares is refused here. The one relation between
//! sections (`reconcile_grace` against `lock_ttl` and the profiles' `ready_timeout`) is checked in
//! [`Config::validate`].
//!
//! Relative paths in `allowed_volume_roots` are resolved against the directory of the file that
//! set them (so `deploy/sandboxd.example.toml` can say `../var/volumes`), and against the working
//! directory when they come from the environment or a flag.

mod admission;
mod agents;
mod docker;
mod flags;
mod lifecycle;
mod node;
mod redis;
mod server;
mod telemetry;

use std::path::PathBuf;

use figment::providers::{Env, Format, Toml};
use figment::{Figment, Metadata, Provider};
use sandboxd_adapters::docker::DockerConfig;
use sandboxd_adapters::egress::EgressPlan;
use sandboxd_adapters::redis::RedisConfig;

pub use admission::AdmissionSettings;
pub use agents::AgentProfiles;
pub use docker::DockerSettings;
pub use flags::Cli;
use flags::{FLAGS_LAYER, Setting};
pub use lifecycle::LifecycleSettings;
pub use node::NodeSettings;
pub use redis::RedisSettings;
pub use server::{ServerSettings, TlsFiles};
pub use telemetry::{LogFormat, TelemetrySettings};

/// A setting that cannot work, named by its TOML key so the operator knows what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    /// A value that does not parse (or a key no section knows), named by its key and the layer
    /// it came from.
    #[error("invalid setting `{setting}` ({origin}): {reason}")]
    Parse {
        setting: String,
        origin: String,
        reason: String,
    },
    #[error("invalid setting `{setting}`: {reason}")]
    Invalid { setting: String, reason: String },
}

impl ConfigError {
    pub(crate) fn invalid(setting: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            setting: setting.into(),
            reason: reason.into(),
        }
    }
}

/// Everything `sandboxd` reads at start, by section; see `deploy/sandboxd.example.toml` for every
/// key.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Config {
    pub server: ServerSettings,
    pub redis: RedisSettings,
    pub lifecycle: LifecycleSettings,
    pub docker: DockerSettings,
    pub telemetry: TelemetrySettings,
    pub admission: AdmissionSettings,
    pub node: NodeSettings,
    pub agents: AgentProfiles,
}

/// Every flat setting of every section, in `--help` order.
pub(crate) fn settings() -> impl Iterator<Item = &'static Setting> {
    [
        server::SETTINGS,
        redis::SETTINGS,
        lifecycle::SETTINGS,
        docker::SETTINGS,
        telemetry::SETTINGS,
        admission::SETTINGS,
        node::SETTINGS,
    ]
    .into_iter()
    .flatten()
}

impl Config {
    /// Merges every layer for `cli` and validates the result.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first bad setting (or the unreadable file).
    pub fn load(cli: &Cli) -> Result<Self, ConfigError> {
        Self::load_with_env(cli, Env::prefixed("SANDBOXD_"), Env::raw())
    }

    /// [`Self::load`] with the environment providers given, so tests need not touch the process
    /// environment.
    fn load_with_env(cli: &Cli, sandboxd_env: Env, raw_env: Env) -> Result<Self, ConfigError> {
        let mut figment = Figment::new();
        if let Some(path) = &cli.config {
            if !path.is_file() {
                return Err(ConfigError::File {
                    path: path.clone(),
                    reason: "not found or not a file".to_owned(),
                });
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        // Foreign conventions (DOCKER_HOST) first; SANDBOXD_<KEY>, merged after them, wins.
        let fallbacks: Vec<&str> = settings().filter_map(|s| s.env_fallback).collect();
        let figment = figment
            .merge(raw_env.only(&fallbacks))
            .merge(sandboxd_env.ignore(&["CONFIG"]).split("__"))
            .merge(cli.clone());
        refuse_unknown_keys(&figment)?;
        let mut config = Self {
            server: figment.extract().map_err(parse_error)?,
            redis: figment.extract().map_err(parse_error)?,
            lifecycle: figment.extract().map_err(parse_error)?,
            docker: figment.extract().map_err(parse_error)?,
            telemetry: figment.extract().map_err(parse_error)?,
            admission: figment.extract().map_err(parse_error)?,
            node: figment.extract().map_err(parse_error)?,
            agents: AgentProfiles::extract(&figment)?,
        };
        config.docker.resolve_relative_roots(&figment);
        config.validate()?;
        Ok(config)
    }

    /// Each section's own checks, then the relation between sections.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the setting.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        self.server.validate()?;
        self.redis.validate()?;
        self.lifecycle.validate()?;
        self.docker.validate()?;
        self.node.validate(self.server.tls_cert_file.is_some())?;
        self.agents.validate()?;
        self.egress_plan()?;
        let pooled = self
            .agents
            .iter()
            .find(|(_, profile)| profile.pool_size > 0)
            .map(|(id, _)| id);
        self.docker.validate_pool_waiter(pooled)?;
        self.validate_reconcile_grace()
    }

    /// The egress networks of the profiles in this deployment (`key_prefix` names them). It
    /// relates two sections, so it is checked here: an IPv6 range in an allow list cannot be
    /// honoured (sandboxes get no IPv6 address) and is refused at start.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming `agents.<id>.egress_allow`.
    pub(crate) fn egress_plan(&self) -> Result<EgressPlan, ConfigError> {
        EgressPlan::new(&self.redis.key_prefix, self.agents.iter())
            .map_err(|e| ConfigError::invalid(e.setting, e.reason))
    }

    /// A create keeps its container without a session for at most about `lock_ttl` (the lease it
    /// runs under) plus the profile's `ready_timeout`; a shorter grace would let reconcile remove
    /// the container of a create still in flight.
    fn validate_reconcile_grace(&self) -> Result<(), ConfigError> {
        let floor = self.redis.lock_ttl + self.agents.slowest_ready_timeout();
        if self.lifecycle.reconcile_grace <= floor {
            return Err(ConfigError::invalid(
                "reconcile_grace",
                format!(
                    "must exceed lock_ttl + the longest agent ready_timeout ({})",
                    humantime::format_duration(floor)
                ),
            ));
        }
        Ok(())
    }

    /// The Docker runtime's part of the configuration (valid once [`Self::load`] accepted it).
    #[must_use]
    pub(crate) fn docker_config(&self) -> DockerConfig {
        self.docker.docker_config(&self.redis.key_prefix)
    }

    /// The Redis adapters' part of the configuration.
    #[must_use]
    pub(crate) fn redis_config(&self) -> RedisConfig {
        RedisConfig {
            // The log is written by the store's scripts; how long it keeps is a lifecycle matter.
            event_retention: self.lifecycle.event_retention,
            ..self.redis.redis_config()
        }
    }
}

/// The layers may only set keys a section declares: a typo must not be ignored silently.
fn refuse_unknown_keys(figment: &Figment) -> Result<(), ConfigError> {
    let layers = figment.data().map_err(parse_error)?;
    let unknown = layers
        .values()
        .flat_map(|dict| dict.keys())
        .find(|key| *key != agents::KEY && !settings().any(|setting| setting.key == *key));
    match unknown {
        Some(key) => Err(ConfigError::Parse {
            setting: key.clone(),
            origin: origin(figment.find_metadata(key), std::slice::from_ref(key)),
            reason: "unknown setting".to_owned(),
        }),
        None => Ok(()),
    }
}

/// Names the setting and its layer (file, environment variable or flag) of a value that did not
/// deserialise.
fn parse_error(error: figment::Error) -> ConfigError {
    ConfigError::Parse {
        setting: error.path.join("."),
        origin: origin(error.metadata.as_ref(), &error.path),
        reason: error.kind.to_string(),
    }
}

/// The layer a value at `path` came from, as the operator would look for it.
fn origin(metadata: Option<&Metadata>, path: &[String]) -> String {
    match metadata {
        Some(metadata) if metadata.name == FLAGS_LAYER => {
            format!("flag --{}", path.join(".").replace('_', "-"))
        }
        Some(metadata) if metadata.name.contains("environment") => {
            format!("environment SANDBOXD_{}", path.join("__").to_uppercase())
        }
        Some(metadata) => match metadata.source.as_ref() {
            Some(source) => format!("{source}"),
            None => metadata.name.to_string(),
        },
        None => "defaults".to_owned(),
    }
}

#[cfg(test)]
mod tests;
