//! The server's one typed configuration: defaults, then the TOML file given by `--config`, then
//! `SANDBOXD_*` environment variables, then command-line flags; validated before anything starts.
//!
//! Relative paths in `allowed_volume_roots` are resolved against the directory of the file that
//! set them (so `deploy/sandboxd.example.toml` can say `../var/volumes`), and against the working
//! directory when they come from the environment or a flag.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use sandboxd_adapters::docker::DockerConfig;
use sandboxd_adapters::redis::RedisConfig;
use sandboxd_domain::{AgentId, AgentProfile, VolumePath, de_duration};
use serde::{Deserialize, Deserializer, Serialize};

/// A setting that cannot work, named by its TOML key so the operator knows what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    /// A value that does not parse, named by its key and the layer it came from.
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
    fn invalid(setting: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            setting: setting.into(),
            reason: reason.into(),
        }
    }
}

/// How log lines are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Everything `sandboxd` reads at start; see `deploy/sandboxd.example.toml` for every key.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// gRPC listener; port 0 picks a free port (the bound address is logged).
    pub grpc_addr: SocketAddr,
    /// `/metrics`, `/healthz`, `/readyz` listener.
    pub http_addr: SocketAddr,
    /// The session store; may carry a password, so it is never logged as is.
    pub redis_url: String,
    /// Redis key prefix and container label namespace: two deployments can share Redis and Docker.
    pub key_prefix: String,
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
    /// Age below which reconcile leaves a container or session alone (a create may be in flight);
    /// must exceed `lock_ttl` plus every profile's `ready_timeout`.
    #[serde(deserialize_with = "de_duration")]
    pub reconcile_grace: Duration,
    /// Lease length of a chat's lock (renewed while held).
    #[serde(deserialize_with = "de_duration")]
    pub lock_ttl: Duration,
    /// How long a request waits for a chat's lock before ABORTED.
    #[serde(deserialize_with = "de_duration")]
    pub lock_wait: Duration,
    /// Roots `volume_host_path` must lie under; empty refuses every volume.
    #[serde(deserialize_with = "de_path_list")]
    pub allowed_volume_roots: Vec<PathBuf>,
    /// Docker engine address; unset uses the local socket.
    pub docker_host: Option<String>,
    /// Host IP sandbox endpoints are published on.
    pub publish_host_ip: IpAddr,
    /// Graceful container stop before SIGKILL.
    #[serde(deserialize_with = "de_duration")]
    pub stop_grace: Duration,
    /// Bound on every Docker engine call; must exceed `stop_grace`.
    #[serde(deserialize_with = "de_duration")]
    pub engine_timeout: Duration,
    /// On SIGTERM, how long in-flight calls and a running cleanup pass may take before exit.
    #[serde(deserialize_with = "de_duration")]
    pub drain_timeout: Duration,
    /// File holding the bearer token SandboxService calls must carry; unset = no auth.
    pub auth_token_file: Option<PathBuf>,
    /// PEM certificate chain of the gRPC port; with `tls_key_file`, the port speaks TLS only.
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of `tls_cert_file`.
    pub tls_key_file: Option<PathBuf>,
    /// PEM CA bundle client certificates must chain to; set = mutual TLS, clients without a
    /// certificate are refused in the handshake.
    pub tls_client_ca_file: Option<PathBuf>,
    pub log_format: LogFormat,
    /// Log lines also carry the fields of the spans they happen in (the RPC's and the use
    /// case's). Off by default: each event already names its chat, session and container, the
    /// spans go to the trace exporter, and formatting every span's fields for the log costs the
    /// hot path more than the rest of sandboxd's own work (README, "Benchmark").
    pub log_spans: bool,
    /// Agent profiles by agent id; an id not listed is refused with INVALID_ARGUMENT.
    pub agents: BTreeMap<String, AgentProfile>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            grpc_addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 50051)),
            http_addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 9090)),
            redis_url: "redis://127.0.0.1:6379".to_owned(),
            key_prefix: "sandboxd".to_owned(),
            session_ttl: Duration::from_secs(30 * 60),
            max_ttl: Duration::from_secs(24 * 60 * 60),
            cleanup_interval: Duration::from_secs(30),
            cleanup_concurrency: 8,
            reconcile_interval: Duration::from_secs(60),
            reconcile_grace: Duration::from_secs(120),
            lock_ttl: Duration::from_secs(10),
            lock_wait: Duration::from_secs(5),
            allowed_volume_roots: Vec::new(),
            docker_host: None,
            publish_host_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            stop_grace: Duration::from_secs(2),
            engine_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(20),
            auth_token_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            tls_client_ca_file: None,
            log_format: LogFormat::Text,
            log_spans: false,
            agents: BTreeMap::new(),
        }
    }
}

/// `sandboxd` command line: every setting as a flag; flags override the environment and the file.
#[derive(Debug, Clone, Default, Parser, Serialize)]
#[command(
    name = "sandboxd",
    version,
    about = "sandboxd: one Docker sandbox per AI-agent chat, behind a gRPC API",
    after_help = "Precedence: defaults < --config FILE < SANDBOXD_* environment < flags. \
Every flag is also a TOML key (e.g. --session-ttl = session_ttl) and an environment variable \
(SANDBOXD_SESSION_TTL); agent profiles are [agents.<agent_id>] tables in the file \
(or SANDBOXD_AGENTS__<ID>__<KEY>). Durations are humantime: 90s, 30m, 2h. \
See deploy/sandboxd.example.toml for every setting with its default."
)]
pub struct Cli {
    /// TOML configuration file
    #[arg(long, value_name = "FILE", env = "SANDBOXD_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// gRPC listen address; port 0 picks one [env: SANDBOXD_GRPC_ADDR] [default: 127.0.0.1:50051]
    #[arg(long, value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_addr: Option<String>,
    /// /metrics, /healthz, /readyz listen address [env: SANDBOXD_HTTP_ADDR] [default: 127.0.0.1:9090]
    #[arg(long, value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_addr: Option<String>,
    /// Redis URL of the session store [env: SANDBOXD_REDIS_URL] [default: redis://127.0.0.1:6379]
    #[arg(long, value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_url: Option<String>,
    /// Redis key prefix and container label namespace [env: SANDBOXD_KEY_PREFIX] [default: sandboxd]
    #[arg(long, value_name = "PREFIX")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_prefix: Option<String>,
    /// TTL of a new session [env: SANDBOXD_SESSION_TTL] [default: 30m]
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_ttl: Option<String>,
    /// Largest ExtendSandbox ttl [env: SANDBOXD_MAX_TTL] [default: 24h]
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_ttl: Option<String>,
    /// Background cleanup period; 0s disables it [env: SANDBOXD_CLEANUP_INTERVAL] [default: 30s]
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cleanup_interval: Option<String>,
    /// Container stops in flight in one cleanup pass [env: SANDBOXD_CLEANUP_CONCURRENCY] [default: 8]
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cleanup_concurrency: Option<usize>,
    /// Background reconcile period, also run once at start; 0s disables it [env: SANDBOXD_RECONCILE_INTERVAL] [default: 60s]
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reconcile_interval: Option<String>,
    /// Age below which reconcile leaves containers and sessions alone; must exceed lock_ttl + every ready_timeout [env: SANDBOXD_RECONCILE_GRACE] [default: 2m]
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reconcile_grace: Option<String>,
    /// Lease length of a chat's lock [env: SANDBOXD_LOCK_TTL] [default: 10s]
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lock_ttl: Option<String>,
    /// Wait for a chat's lock before ABORTED [env: SANDBOXD_LOCK_WAIT] [default: 5s]
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lock_wait: Option<String>,
    /// Comma-separated roots volumes must lie under [env: SANDBOXD_ALLOWED_VOLUME_ROOTS] [default: none, every volume refused]
    #[arg(long, value_name = "PATHS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_volume_roots: Option<String>,
    /// Docker engine address [env: DOCKER_HOST or SANDBOXD_DOCKER_HOST] [default: the local socket]
    #[arg(long, value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub docker_host: Option<String>,
    /// Host IP sandbox endpoints are published on [env: SANDBOXD_PUBLISH_HOST_IP] [default: 127.0.0.1]
    #[arg(long, value_name = "IP")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publish_host_ip: Option<String>,
    /// Graceful container stop before SIGKILL [env: SANDBOXD_STOP_GRACE] [default: 2s]
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_grace: Option<String>,
    /// Bound on every Docker engine call [env: SANDBOXD_ENGINE_TIMEOUT] [default: 30s]
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub engine_timeout: Option<String>,
    /// On SIGTERM, bound on finishing in-flight calls [env: SANDBOXD_DRAIN_TIMEOUT] [default: 20s]
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drain_timeout: Option<String>,
    /// File with the bearer token SandboxService calls need [env: SANDBOXD_AUTH_TOKEN_FILE] [default: none, no auth]
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_token_file: Option<String>,
    /// PEM certificate chain: the gRPC port speaks TLS (needs --tls-key-file) [env: SANDBOXD_TLS_CERT_FILE] [default: none, plaintext]
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert_file: Option<String>,
    /// PEM private key of the TLS certificate [env: SANDBOXD_TLS_KEY_FILE] [default: none]
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key_file: Option<String>,
    /// PEM CA bundle: clients must present a certificate it signed (mutual TLS) [env: SANDBOXD_TLS_CLIENT_CA_FILE] [default: none]
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_client_ca_file: Option<String>,
    /// Log line format; the level comes from RUST_LOG [env: SANDBOXD_LOG_FORMAT] [default: text]
    #[arg(long, value_name = "FORMAT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,
    /// Log lines also carry their spans' fields (RPC, use case): more context, more CPU per call [env: SANDBOXD_LOG_SPANS] [default: false]
    #[arg(long, value_name = "BOOL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_spans: Option<bool>,
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
        // DOCKER_HOST is the engine's own convention; SANDBOXD_DOCKER_HOST, merged after it, wins.
        let figment = figment
            .merge(raw_env.only(&["DOCKER_HOST"]))
            .merge(sandboxd_env.ignore(&["CONFIG"]).split("__"))
            .merge(Serialized::defaults(cli));
        let mut config: Self = figment.extract().map_err(parse_error)?;
        config.resolve_relative_roots(&figment);
        config.validate()?;
        Ok(config)
    }

    /// Resolves relative volume roots against the directory of the file that set them.
    fn resolve_relative_roots(&mut self, figment: &Figment) {
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

    /// Checks what serde cannot: ranges, relations between settings, names.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.grpc_addr.port() != 0 && self.grpc_addr == self.http_addr {
            return Err(ConfigError::invalid(
                "http_addr",
                "must differ from grpc_addr",
            ));
        }
        if !["redis://", "rediss://", "unix://", "redis+unix://"]
            .iter()
            .any(|scheme| self.redis_url.starts_with(scheme))
        {
            return Err(ConfigError::invalid(
                "redis_url",
                "must start with redis://, rediss://, unix:// or redis+unix://",
            ));
        }
        validate_key_prefix(&self.key_prefix)?;
        for (setting, value) in [
            ("session_ttl", self.session_ttl),
            ("max_ttl", self.max_ttl),
            ("lock_ttl", self.lock_ttl),
            ("lock_wait", self.lock_wait),
            ("engine_timeout", self.engine_timeout),
            ("drain_timeout", self.drain_timeout),
        ] {
            if value.is_zero() {
                return Err(ConfigError::invalid(setting, "must be positive"));
            }
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
        self.validate_reconcile_grace()?;
        if self.engine_timeout <= self.stop_grace {
            return Err(ConfigError::invalid(
                "engine_timeout",
                "must be longer than stop_grace",
            ));
        }
        for (index, root) in self.allowed_volume_roots.iter().enumerate() {
            let setting = format!("allowed_volume_roots[{index}]");
            let text = root
                .to_str()
                .ok_or_else(|| ConfigError::invalid(&setting, "must be UTF-8"))?;
            VolumePath::parse(text).map_err(|e| ConfigError::invalid(&setting, e.to_string()))?;
        }
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
        if let Some(path) = &self.auth_token_file
            && !path.is_file()
        {
            return Err(ConfigError::invalid(
                "auth_token_file",
                "not found or not a file",
            ));
        }
        self.validate_tls()?;
        if self.stop_grace > Duration::from_secs(i32::MAX as u64) {
            return Err(ConfigError::invalid("stop_grace", "is too long"));
        }
        for (name, profile) in &self.agents {
            profile
                .validate(&format!("agents.{name}"))
                .map_err(|e| ConfigError::invalid(e.setting, e.reason))?;
        }
        self.docker_config()?;
        self.redis_config()
            .validate()
            .map_err(|e| ConfigError::invalid(e.setting, e.reason))?;
        Ok(())
    }

    /// A create keeps its container without a session for at most about `lock_ttl` (the lease it
    /// runs under) plus the profile's `ready_timeout`; a shorter grace would let reconcile remove
    /// the container of a create still in flight.
    fn validate_reconcile_grace(&self) -> Result<(), ConfigError> {
        let slowest_ready = self
            .agents
            .values()
            .map(|profile| profile.ready_timeout)
            .max()
            .unwrap_or_default();
        let floor = self.lock_ttl + slowest_ready;
        if self.reconcile_grace <= floor {
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

    /// TLS files come as a set (certificate and key, optionally a client CA) and must parse as
    /// PEM now, not at the first handshake.
    fn validate_tls(&self) -> Result<(), ConfigError> {
        match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(cert), Some(key)) => {
                read_pem_certificates("tls_cert_file", cert)?;
                read_pem_private_key("tls_key_file", key)?;
            }
            (Some(_), None) => {
                return Err(ConfigError::invalid(
                    "tls_key_file",
                    "must be set with tls_cert_file",
                ));
            }
            (None, Some(_)) => {
                return Err(ConfigError::invalid(
                    "tls_cert_file",
                    "must be set with tls_key_file",
                ));
            }
            (None, None) => {}
        }
        if let Some(ca) = &self.tls_client_ca_file {
            if self.tls_cert_file.is_none() {
                return Err(ConfigError::invalid(
                    "tls_client_ca_file",
                    "needs tls_cert_file and tls_key_file (mutual TLS is TLS first)",
                ));
            }
            read_pem_certificates("tls_client_ca_file", ca)?;
        }
        Ok(())
    }

    /// The gRPC port's TLS files, read; `None` when TLS is off.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] when a file cannot be read (validated at load, so only when it
    /// changed since).
    pub fn tls_files(&self) -> Result<Option<TlsFiles>, ConfigError> {
        let (Some(cert), Some(key)) = (&self.tls_cert_file, &self.tls_key_file) else {
            return Ok(None);
        };
        let read = |setting: &str, path: &Path| {
            std::fs::read(path).map_err(|e| {
                ConfigError::invalid(setting, format!("reading {}: {e}", path.display()))
            })
        };
        Ok(Some(TlsFiles {
            cert_pem: read("tls_cert_file", cert)?,
            key_pem: read("tls_key_file", key)?,
            client_ca_pem: self
                .tls_client_ca_file
                .as_deref()
                .map(|ca| read("tls_client_ca_file", ca))
                .transpose()?,
        }))
    }

    /// The Docker runtime's part of the configuration.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] for an agent table whose name is not a valid agent id.
    pub fn docker_config(&self) -> Result<DockerConfig, ConfigError> {
        let mut agents = BTreeMap::new();
        for (name, profile) in &self.agents {
            let agent_id = AgentId::parse(name).map_err(|e| {
                ConfigError::invalid(format!("agents.{name}"), format!("agent id {e}"))
            })?;
            agents.insert(agent_id, profile.clone());
        }
        Ok(DockerConfig {
            docker_host: self.docker_host.clone(),
            key_prefix: self.key_prefix.clone(),
            publish_host_ip: self.publish_host_ip,
            stop_grace: self.stop_grace,
            engine_timeout: self.engine_timeout,
            allowed_volume_roots: self.allowed_volume_roots.clone(),
            agents,
        })
    }

    /// The Redis adapters' part of the configuration.
    #[must_use]
    pub fn redis_config(&self) -> RedisConfig {
        RedisConfig {
            url: self.redis_url.clone(),
            key_prefix: self.key_prefix.clone(),
            lock_ttl: self.lock_ttl,
            lock_wait: self.lock_wait,
            ..RedisConfig::default()
        }
    }

    /// The configured agent ids (validated by [`Self::validate`]).
    #[must_use]
    pub fn agent_ids(&self) -> Vec<AgentId> {
        self.agents
            .keys()
            .filter_map(|name| AgentId::parse(name).ok())
            .collect()
    }

    /// `redis_url` with any password replaced, for logs.
    #[must_use]
    pub fn redis_url_redacted(&self) -> String {
        redact_url_password(&self.redis_url)
    }
}

/// The PEM contents of the gRPC port's TLS settings.
#[derive(Clone)]
pub struct TlsFiles {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    pub client_ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for TlsFiles {
    // The key is a secret: never print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsFiles")
            .field("mutual", &self.client_ca_pem.is_some())
            .finish_non_exhaustive()
    }
}

/// At least one PEM `CERTIFICATE` block, every one well-formed.
fn read_pem_certificates(setting: &str, path: &Path) -> Result<(), ConfigError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject as _;
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|e| ConfigError::invalid(setting, format!("{}: {e}", path.display())))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ConfigError::invalid(setting, format!("{}: {e}", path.display())))?;
    if certificates.is_empty() {
        return Err(ConfigError::invalid(
            setting,
            format!("{}: no PEM certificate found", path.display()),
        ));
    }
    Ok(())
}

/// One PEM private key (PKCS#8, PKCS#1 or SEC1).
fn read_pem_private_key(setting: &str, path: &Path) -> Result<(), ConfigError> {
    use rustls_pki_types::PrivateKeyDer;
    use rustls_pki_types::pem::PemObject as _;
    PrivateKeyDer::from_pem_file(path)
        .map(drop)
        .map_err(|e| ConfigError::invalid(setting, format!("{}: {e}", path.display())))
}

/// Names the setting and its layer (file, environment variable or flag) of a value that did not
/// deserialise.
fn parse_error(error: figment::Error) -> ConfigError {
    let setting = error.path.join(".");
    let env_name = format!("SANDBOXD_{}", error.path.join("__").to_uppercase());
    let origin = match error.metadata.as_ref() {
        Some(metadata) if metadata.name.contains("environment") => {
            format!("environment {env_name}")
        }
        Some(metadata) if metadata.name.contains("Cli") => {
            format!("flag --{}", setting.replace('_', "-"))
        }
        Some(metadata) => match metadata.source.as_ref() {
            Some(source) => format!("{source}"),
            None => metadata.name.to_string(),
        },
        None => "defaults".to_owned(),
    };
    ConfigError::Parse {
        setting,
        origin,
        reason: error.kind.to_string(),
    }
}

fn validate_key_prefix(prefix: &str) -> Result<(), ConfigError> {
    let allowed =
        |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_');
    match prefix.bytes().next() {
        None => Err(ConfigError::invalid("key_prefix", "must not be empty")),
        Some(_) if prefix.len() > 63 => Err(ConfigError::invalid(
            "key_prefix",
            "must be at most 63 bytes",
        )),
        Some(first) if first.is_ascii_alphanumeric() && prefix.bytes().all(allowed) => Ok(()),
        Some(_) => Err(ConfigError::invalid(
            "key_prefix",
            "may contain only [a-z0-9._-] and must start with a letter or digit",
        )),
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
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::result_large_err)]
    use super::*;

    fn no_env() -> (Env, Env) {
        (
            Env::prefixed("SANDBOXD_TEST_UNSET_").only(&[]),
            Env::raw().only(&[]),
        )
    }

    fn load(cli: &Cli) -> Result<Config, ConfigError> {
        let (sandboxd, raw) = no_env();
        Config::load_with_env(cli, sandboxd, raw)
    }

    fn write(dir: &Path, body: &str) -> PathBuf {
        let path = dir.join("sandboxd.toml");
        std::fs::write(&path, body).unwrap();
        path
    }

    #[test]
    fn defaults_match_the_design_table() {
        let config = load(&Cli::default()).unwrap();
        assert_eq!(config.grpc_addr.to_string(), "127.0.0.1:50051");
        assert_eq!(config.http_addr.to_string(), "127.0.0.1:9090");
        assert_eq!(config.session_ttl, Duration::from_secs(1800));
        assert_eq!(config.max_ttl, Duration::from_secs(86400));
        assert_eq!(config.cleanup_interval, Duration::from_secs(30));
        assert_eq!(config.cleanup_concurrency, 8);
        assert_eq!(config.reconcile_interval, Duration::from_secs(60));
        assert_eq!(config.reconcile_grace, Duration::from_secs(120));
        assert_eq!(config.lock_ttl, Duration::from_secs(10));
        assert_eq!(config.lock_wait, Duration::from_secs(5));
        assert!(config.allowed_volume_roots.is_empty());
        assert_eq!(config.log_format, LogFormat::Text);
        assert!(!config.log_spans);
    }

    #[test]
    fn log_spans_is_a_boolean_from_file_env_or_flag() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "log_spans = true\n[agents.default]\nimage = \"x\"\n",
        );
        let cli = Cli {
            config: Some(path),
            ..Cli::default()
        };
        figment::Jail::expect_with(|jail| {
            assert!(Config::load(&cli).unwrap().log_spans);
            jail.set_env("SANDBOXD_LOG_SPANS", "false");
            assert!(!Config::load(&cli).unwrap().log_spans);
            let flagged = Cli::try_parse_from([
                "sandboxd",
                "--config",
                cli.config.as_ref().unwrap().to_str().unwrap(),
                "--log-spans",
                "true",
            ])
            .unwrap();
            assert!(Config::load(&flagged).unwrap().log_spans);
            jail.set_env("SANDBOXD_LOG_SPANS", "sometimes");
            let message = Config::load(&cli).unwrap_err().to_string();
            assert!(message.contains("`log_spans`"), "{message}");
            Ok(())
        });
    }

    #[test]
    fn file_then_env_then_flags_override_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "session_ttl = \"10m\"\nmax_ttl = \"1h\"\nkey_prefix = \"file\"\nallowed_volume_roots = [\"../vols\", \"/abs\"]\n[agents.default]\nimage = \"x\"\n",
        );
        let cli = Cli {
            config: Some(path),
            ..Cli::default()
        };
        let config = load(&cli).unwrap();
        assert_eq!(config.session_ttl, Duration::from_secs(600));
        assert_eq!(config.key_prefix, "file");
        assert_eq!(
            config.allowed_volume_roots[0],
            dir.path().parent().unwrap().join("vols")
        );
        assert_eq!(config.allowed_volume_roots[1], PathBuf::from("/abs"));
        assert_eq!(config.agent_ids(), vec![AgentId::parse("default").unwrap()]);

        figment::Jail::expect_with(|jail| {
            jail.set_env("SANDBOXD_KEY_PREFIX", "env");
            jail.set_env("SANDBOXD_AGENTS__PY__IMAGE", "python");
            jail.set_env("DOCKER_HOST", "unix:///run/other.sock");
            let config = Config::load(&cli).unwrap();
            assert_eq!(config.key_prefix, "env");
            assert_eq!(config.agents.len(), 2);
            assert_eq!(
                config.docker_host.as_deref(),
                Some("unix:///run/other.sock")
            );
            let flagged = Cli {
                key_prefix: Some("flag".into()),
                ..cli.clone()
            };
            assert_eq!(Config::load(&flagged).unwrap().key_prefix, "flag");
            jail.set_env("SANDBOXD_SESSION_TTL", "forever");
            let message = Config::load(&cli).unwrap_err().to_string();
            assert!(
                message.contains("`session_ttl`") && message.contains("SANDBOXD_SESSION_TTL"),
                "{message}"
            );
            Ok(())
        });

        let cli = Cli {
            key_prefix: Some("flag".into()),
            session_ttl: Some("90s".into()),
            ..cli
        };
        let config = load(&cli).unwrap();
        assert_eq!(config.key_prefix, "flag");
        assert_eq!(config.session_ttl, Duration::from_secs(90));
    }

    #[test]
    fn bad_settings_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            ("session_ttl = \"soon\"", "session_ttl"),
            ("grpc_addr = \"nowhere\"", "grpc_addr"),
            ("nonsense = 1", "nonsense"),
            ("max_ttl = \"1m\"", "max_ttl"),
            ("cleanup_concurrency = 0", "cleanup_concurrency"),
            ("key_prefix = \"Bad Prefix\"", "key_prefix"),
            ("redis_url = \"http://x\"", "redis_url"),
            (
                "allowed_volume_roots = [\"/a/../b\"]",
                "allowed_volume_roots[0]",
            ),
            ("stop_grace = \"1m\"", "engine_timeout"),
            ("[agents.Bad]\nimage = \"x\"", "agents.Bad"),
            ("lock_wait = \"0s\"", "lock_wait"),
            ("reconcile_grace = \"10s\"", "reconcile_grace"),
            (
                "reconcile_grace = \"30s\"\n[agents.slow]\nimage = \"x\"\nready_timeout = \"25s\"",
                "reconcile_grace",
            ),
            ("reconcile_interval = \"often\"", "reconcile_interval"),
        ];
        for (body, setting) in cases {
            let cli = Cli {
                config: Some(write(dir.path(), body)),
                ..Cli::default()
            };
            let message = load(&cli).unwrap_err().to_string();
            assert!(message.contains(setting), "{body:?}: {message}");
        }
        let cli = Cli {
            config: Some(dir.path().join("missing.toml")),
            ..Cli::default()
        };
        assert!(load(&cli).unwrap_err().to_string().contains("missing.toml"));
    }

    #[test]
    fn comma_separated_roots_and_redaction() {
        let cli = Cli {
            allowed_volume_roots: Some("/a, /b".into()),
            ..Cli::default()
        };
        let config = load(&cli).unwrap();
        assert_eq!(
            config.allowed_volume_roots,
            vec![PathBuf::from("/a"), PathBuf::from("/b")]
        );
        assert_eq!(
            redact_url_password("redis://u:secret@h:1/0"),
            "redis://u:***@h:1/0"
        );
        assert_eq!(redact_url_password("redis://:secret@h"), "redis://:***@h");
        assert_eq!(redact_url_password("redis://h:6379"), "redis://h:6379");
    }

    #[test]
    fn help_lists_every_setting_with_its_environment_variable() {
        use clap::CommandFactory;
        let help = Cli::command().render_long_help().to_string();
        for key in [
            "grpc_addr",
            "http_addr",
            "redis_url",
            "key_prefix",
            "session_ttl",
            "max_ttl",
            "cleanup_interval",
            "cleanup_concurrency",
            "reconcile_interval",
            "reconcile_grace",
            "lock_ttl",
            "lock_wait",
            "allowed_volume_roots",
            "docker_host",
            "publish_host_ip",
            "stop_grace",
            "engine_timeout",
            "drain_timeout",
            "auth_token_file",
            "tls_cert_file",
            "tls_key_file",
            "tls_client_ca_file",
            "log_format",
            "log_spans",
        ] {
            assert!(
                help.contains(&format!("--{}", key.replace('_', "-"))),
                "{key}"
            );
            let env = if key == "docker_host" {
                "DOCKER_HOST".to_owned()
            } else {
                format!("SANDBOXD_{}", key.to_uppercase())
            };
            assert!(help.contains(&env), "{env}");
        }
    }
}
