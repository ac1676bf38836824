//! Typed configuration of the Docker runtime: engine connection, label namespace, volume roots and
//! the agent profiles (`[agents.<agent_id>]`), with defaults, TOML-friendly parsing and validation.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

use sandboxd_domain::{AgentId, VolumePath};
use serde::{Deserialize, Deserializer};

/// Docker refuses memory limits below 6 MiB; catching it here names the setting.
const MIN_MEMORY_BYTES: u64 = 6 * 1024 * 1024;
/// Longest label namespace accepted: it prefixes every label key.
const MAX_KEY_PREFIX_LEN: usize = 63;

/// A configuration value that cannot work; `setting` is the dotted TOML key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid setting `{setting}`: {reason}")]
pub struct ConfigError {
    pub setting: String,
    pub reason: String,
}

impl ConfigError {
    fn new(setting: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            setting: setting.into(),
            reason: reason.into(),
        }
    }
}

/// Everything the Docker runtime needs; deserialisable from the server's TOML (durations as
/// humantime strings such as `"2s"`, memory as bytes or `"256m"`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DockerConfig {
    /// Engine address (`unix:///…`, `tcp://…`); `None` = `DOCKER_HOST`, else the local socket.
    pub docker_host: Option<String>,
    /// Label namespace (`{key_prefix}.managed-by`, …), so two deployments can share an engine.
    pub key_prefix: String,
    /// Host address endpoints are published on; loopback keeps sandboxes off the network.
    /// `0.0.0.0` publishes on every interface: endpoints then report `0.0.0.0` and the readiness
    /// probe uses loopback.
    pub publish_host_ip: IpAddr,
    /// Graceful-stop period before the engine kills the container (whole seconds on the wire).
    #[serde(deserialize_with = "de_duration")]
    pub stop_grace: Duration,
    /// Bound on every engine API call; must exceed `stop_grace`, which a stop call waits out.
    #[serde(deserialize_with = "de_duration")]
    pub engine_timeout: Duration,
    /// Host directories that volumes must lie under (after resolving symlinks); empty = refuse all.
    pub allowed_volume_roots: Vec<PathBuf>,
    /// Profiles by agent id; an id not listed here is refused before anything is created.
    #[serde(deserialize_with = "de_agents")]
    pub agents: BTreeMap<AgentId, AgentProfile>,
}

impl Default for DockerConfig {
    fn default() -> Self {
        Self {
            docker_host: None,
            key_prefix: "sandboxd".to_owned(),
            publish_host_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            stop_grace: Duration::from_secs(2),
            engine_timeout: Duration::from_secs(30),
            allowed_volume_roots: Vec::new(),
            agents: BTreeMap::new(),
        }
    }
}

impl DockerConfig {
    /// Checks every setting; the error names the first bad one.
    ///
    /// # Errors
    /// [`ConfigError`] naming the setting and why it is refused.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(host) = &self.docker_host
            && !["unix://", "tcp://", "http://"]
                .iter()
                .any(|scheme| host.starts_with(scheme))
        {
            return Err(ConfigError::new(
                "docker_host",
                "must start with unix://, tcp:// or http://",
            ));
        }
        validate_key_prefix(&self.key_prefix)?;
        if self.engine_timeout <= self.stop_grace {
            return Err(ConfigError::new(
                "engine_timeout",
                "must be longer than stop_grace",
            ));
        }
        if self.stop_grace > Duration::from_secs(i32::MAX as u64) {
            return Err(ConfigError::new("stop_grace", "is too long"));
        }
        for (index, root) in self.allowed_volume_roots.iter().enumerate() {
            let setting = format!("allowed_volume_roots[{index}]");
            let text = root
                .to_str()
                .ok_or_else(|| ConfigError::new(&setting, "must be UTF-8"))?;
            VolumePath::parse(text).map_err(|e| ConfigError::new(&setting, e.to_string()))?;
        }
        for (agent_id, profile) in &self.agents {
            profile.validate(&format!("agents.{agent_id}"))?;
        }
        Ok(())
    }
}

fn validate_key_prefix(prefix: &str) -> Result<(), ConfigError> {
    let setting = "key_prefix";
    let first = prefix
        .bytes()
        .next()
        .ok_or_else(|| ConfigError::new(setting, "must not be empty"))?;
    if prefix.len() > MAX_KEY_PREFIX_LEN {
        return Err(ConfigError::new(
            setting,
            format!("must be at most {MAX_KEY_PREFIX_LEN} bytes"),
        ));
    }
    // Label keys are reverse-DNS-like; keep the namespace to characters that are safe everywhere.
    let allowed =
        |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_');
    if !first.is_ascii_alphanumeric() || !prefix.bytes().all(allowed) {
        return Err(ConfigError::new(
            setting,
            "may contain only [a-z0-9._-] and must start with a letter or digit",
        ));
    }
    Ok(())
}

/// How `create` decides a sandbox's endpoint is serving.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadyProbe {
    /// `GET /` over HTTP/1.0 answered by any `HTTP/1.x NNN` status line.
    Http,
    /// A TCP connection that the published port does not close at once. Docker's userland proxy
    /// accepts before anything listens inside, then closes: a bare connect proves nothing.
    Tcp,
    /// Ready as soon as the container has started.
    None,
}

/// One `[agents.<agent_id>]` table: what container a chat of this agent gets.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentProfile {
    /// Image reference; must already be on the engine (nothing is ever pulled).
    pub image: String,
    /// Overrides the image's CMD; `None` keeps it.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// Container port (TCP) published as the session's endpoint; `None` = no endpoint.
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// `uid[:gid]` or a name known to the image; `None` keeps the image's user.
    #[serde(default)]
    pub user: Option<String>,
    /// Where the chat's volume appears inside the container.
    #[serde(default = "default_mount_target")]
    pub mount_target: String,
    /// Memory limit; `None` would let one chat take the host's memory, so a default applies.
    #[serde(default = "default_memory")]
    pub memory: ByteSize,
    /// CPU limit in cores (fractions allowed), sent as NanoCpus.
    #[serde(default = "default_cpus")]
    pub cpus: f64,
    /// Bound on processes and threads: a fork bomb stays inside its sandbox.
    #[serde(default = "default_pids_limit")]
    pub pids_limit: i64,
    /// Read-only root filesystem (a tmpfs is mounted on /tmp so programs still have scratch space).
    #[serde(default)]
    pub read_only_rootfs: bool,
    /// Alternative OCI runtime registered with the engine (e.g. `runsc`); `None` = engine default.
    #[serde(default)]
    pub runtime: Option<String>,
    /// Capabilities given back after dropping ALL (`NET_BIND_SERVICE` or `CAP_NET_BIND_SERVICE`).
    #[serde(default)]
    pub cap_add: Vec<String>,
    /// `None` = `http` when a port is published, `none` otherwise.
    #[serde(default)]
    pub ready_probe: Option<ReadyProbe>,
    /// How long `create` waits for the endpoint before removing the container.
    #[serde(default = "default_ready_timeout", deserialize_with = "de_duration")]
    pub ready_timeout: Duration,
}

fn default_mount_target() -> String {
    "/workspace".to_owned()
}
fn default_memory() -> ByteSize {
    ByteSize(512 * 1024 * 1024)
}
fn default_cpus() -> f64 {
    1.0
}
fn default_pids_limit() -> i64 {
    256
}
fn default_ready_timeout() -> Duration {
    Duration::from_secs(10)
}

impl AgentProfile {
    /// A profile for `image` with every other setting at its default.
    #[must_use]
    pub fn new(image: impl Into<String>) -> Self {
        Self {
            image: image.into(),
            command: None,
            port: None,
            env: BTreeMap::new(),
            user: None,
            mount_target: default_mount_target(),
            memory: default_memory(),
            cpus: default_cpus(),
            pids_limit: default_pids_limit(),
            read_only_rootfs: false,
            runtime: None,
            cap_add: Vec::new(),
            ready_probe: None,
            ready_timeout: default_ready_timeout(),
        }
    }

    /// The probe actually used, with the default resolved.
    #[must_use]
    pub fn effective_probe(&self) -> ReadyProbe {
        match (self.ready_probe, self.port) {
            (Some(probe), _) => probe,
            (None, Some(_)) => ReadyProbe::Http,
            (None, None) => ReadyProbe::None,
        }
    }

    /// `cap_add` in the engine's spelling (no `CAP_` prefix, upper case).
    #[must_use]
    pub fn normalised_cap_add(&self) -> Vec<String> {
        self.cap_add
            .iter()
            .map(|cap| {
                let upper = cap.to_ascii_uppercase();
                upper
                    .strip_prefix("CAP_")
                    .map(str::to_owned)
                    .unwrap_or(upper)
            })
            .collect()
    }

    /// NanoCpus as the engine wants them.
    #[must_use]
    #[allow(clippy::cast_possible_truncation)] // bounded by validate(): at most 1024 cores
    pub fn nano_cpus(&self) -> i64 {
        (self.cpus * 1e9).round() as i64
    }

    /// # Errors
    /// [`ConfigError`] with `scope.<field>` as the setting.
    pub fn validate(&self, scope: &str) -> Result<(), ConfigError> {
        let err = |field: &str, reason: &str| ConfigError::new(format!("{scope}.{field}"), reason);
        if self.image.trim().is_empty() || self.image.chars().any(char::is_whitespace) {
            return Err(err(
                "image",
                "must be a non-empty image reference without spaces",
            ));
        }
        if let Some(command) = &self.command
            && command.is_empty()
        {
            return Err(err(
                "command",
                "must not be empty (omit it to keep the image's CMD)",
            ));
        }
        if self.port == Some(0) {
            return Err(err("port", "must be 1-65535"));
        }
        for key in self.env.keys() {
            if key.is_empty() || key.contains('=') || key.chars().any(char::is_control) {
                return Err(err(
                    "env",
                    "keys must be non-empty without '=' or control characters",
                ));
            }
        }
        if self.env.values().any(|v| v.contains('\0')) {
            return Err(err("env", "values must not contain NUL"));
        }
        if let Some(user) = &self.user
            && (user.is_empty() || user.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            return Err(err(
                "user",
                "must be a non-empty user[:group] without spaces",
            ));
        }
        match VolumePath::parse(&self.mount_target) {
            Ok(target) if target.as_str() != "/" => {}
            Ok(_) => return Err(err("mount_target", "must not be /")),
            Err(e) => return Err(err("mount_target", &e.to_string())),
        }
        if self.memory.0 < MIN_MEMORY_BYTES {
            return Err(err("memory", "must be at least 6m (the engine's minimum)"));
        }
        if i64::try_from(self.memory.0).is_err() {
            return Err(err("memory", "is too large"));
        }
        if !(self.cpus.is_finite() && self.cpus >= 0.01 && self.cpus <= 1024.0) {
            return Err(err("cpus", "must be between 0.01 and 1024"));
        }
        if self.pids_limit < 1 {
            return Err(err("pids_limit", "must be at least 1"));
        }
        if let Some(runtime) = &self.runtime
            && (runtime.is_empty() || runtime.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            return Err(err("runtime", "must be a non-empty runtime name"));
        }
        for cap in self.normalised_cap_add() {
            if cap == "ALL" {
                // Adding ALL back would undo the hardening; name the capabilities instead.
                return Err(err("cap_add", "must name capabilities; ALL is refused"));
            }
            if cap.is_empty() || !cap.bytes().all(|b| b.is_ascii_uppercase() || b == b'_') {
                return Err(err("cap_add", "entries must look like NET_BIND_SERVICE"));
            }
        }
        if self.effective_probe() != ReadyProbe::None && self.port.is_none() {
            return Err(err("ready_probe", "http and tcp probes need a port"));
        }
        if self.ready_timeout.is_zero() {
            return Err(err("ready_timeout", "must be positive"));
        }
        Ok(())
    }
}

/// A byte count written either as an integer or as a Docker-style string: `"512m"`, `"1g"`,
/// `"64k"`, `"1048576b"` (binary multiples; `kb`/`kib` spellings are accepted too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// # Errors
    /// A message when `raw` is not a number with an optional `b`/`k`/`m`/`g` unit.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let text = raw.trim().to_ascii_lowercase();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (digits, unit) = text.split_at(split);
        let number: u64 = digits
            .parse()
            .map_err(|_| format!("{raw:?} is not a byte size"))?;
        let multiplier: u64 = match unit.trim() {
            "" | "b" => 1,
            "k" | "kb" | "kib" => 1 << 10,
            "m" | "mb" | "mib" => 1 << 20,
            "g" | "gb" | "gib" => 1 << 30,
            _ => return Err(format!("{raw:?} has an unknown unit (use b, k, m or g)")),
        };
        number
            .checked_mul(multiplier)
            .map(Self)
            .ok_or_else(|| format!("{raw:?} is too large"))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}b", self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bytes(u64),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Bytes(bytes) => Ok(Self(bytes)),
            Raw::Text(text) => Self::parse(&text).map_err(serde::de::Error::custom),
        }
    }
}

/// Durations as humantime strings (`"2s"`, `"500ms"`, `"1m"`).
fn de_duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    humantime::parse_duration(&text).map_err(serde::de::Error::custom)
}

/// Agent tables keyed by a validated [`AgentId`], so a bad table name fails at load time.
fn de_agents<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<AgentId, AgentProfile>, D::Error> {
    BTreeMap::<String, AgentProfile>::deserialize(deserializer)?
        .into_iter()
        .map(|(raw, profile)| {
            AgentId::parse(&raw)
                .map(|id| (id, profile))
                .map_err(|e| serde::de::Error::custom(format!("agent id {raw:?}: {e}")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn valid_profile() -> AgentProfile {
        let mut profile = AgentProfile::new("sandboxd/busybox:local");
        profile.port = Some(8080);
        profile
    }

    #[test]
    fn byte_sizes_accept_docker_style_units() {
        assert_eq!(ByteSize::parse("256m"), Ok(ByteSize(256 << 20)));
        assert_eq!(ByteSize::parse("1G"), Ok(ByteSize(1 << 30)));
        assert_eq!(ByteSize::parse("64kib"), Ok(ByteSize(64 << 10)));
        assert_eq!(ByteSize::parse("1048576"), Ok(ByteSize(1 << 20)));
        assert_eq!(ByteSize::parse("10b"), Ok(ByteSize(10)));
        for bad in ["", "m", "12x", "1.5g", "-1m", "99999999999999999999g"] {
            assert!(ByteSize::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_full_toml_config_deserialises_with_defaults_filled_in() {
        let config: DockerConfig = toml::from_str(
            r#"
            key_prefix = "sbx"
            stop_grace = "3s"
            allowed_volume_roots = ["/srv/chats"]

            [agents.default]
            image = "sandboxd/busybox:local"
            port = 8080
            memory = "256m"
            cpus = 0.5
            cap_add = ["CAP_NET_BIND_SERVICE"]
            ready_timeout = "1500ms"
            env = { LANG = "C.UTF-8" }

            [agents."py3.12"]
            image = "python:3.12"
            memory = 134217728
            command = ["sleep", "3600"]
            "#,
        )
        .unwrap();
        config.validate().unwrap();
        assert_eq!(config.key_prefix, "sbx");
        assert_eq!(config.stop_grace, Duration::from_secs(3));
        assert_eq!(config.publish_host_ip, IpAddr::V4(Ipv4Addr::LOCALHOST));
        let default = &config.agents[&AgentId::parse("default").unwrap()];
        assert_eq!(default.memory, ByteSize(256 << 20));
        assert_eq!(default.nano_cpus(), 500_000_000);
        assert_eq!(default.mount_target, "/workspace");
        assert_eq!(
            default.normalised_cap_add(),
            vec!["NET_BIND_SERVICE".to_owned()]
        );
        assert_eq!(default.ready_timeout, Duration::from_millis(1500));
        assert_eq!(default.effective_probe(), ReadyProbe::Http);
        let python = &config.agents[&AgentId::parse("py3.12").unwrap()];
        assert_eq!(python.memory, ByteSize(128 << 20));
        assert_eq!(python.effective_probe(), ReadyProbe::None);
        assert_eq!(python.pids_limit, 256);
    }

    #[test]
    fn unknown_keys_and_bad_agent_ids_fail_at_load() {
        assert!(toml::from_str::<DockerConfig>("nonsense = 1").is_err());
        assert!(toml::from_str::<DockerConfig>("[agents.Bad]\nimage = \"x\"").is_err());
        assert!(toml::from_str::<DockerConfig>("[agents.a]\nimage = \"x\"\nmemroy = 1").is_err());
        assert!(toml::from_str::<DockerConfig>("stop_grace = \"soon\"").is_err());
    }

    #[test]
    fn validation_names_the_offending_setting() {
        type Mutation = Box<dyn Fn(&mut AgentProfile)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (Box::new(|p| p.image = String::new()), "agents.a.image"),
            (Box::new(|p| p.command = Some(vec![])), "agents.a.command"),
            (Box::new(|p| p.port = Some(0)), "agents.a.port"),
            (
                Box::new(|p| p.mount_target = "workspace".into()),
                "agents.a.mount_target",
            ),
            (
                Box::new(|p| p.mount_target = "/".into()),
                "agents.a.mount_target",
            ),
            (Box::new(|p| p.memory = ByteSize(1024)), "agents.a.memory"),
            (Box::new(|p| p.cpus = 0.0), "agents.a.cpus"),
            (Box::new(|p| p.cpus = f64::NAN), "agents.a.cpus"),
            (Box::new(|p| p.pids_limit = 0), "agents.a.pids_limit"),
            (
                Box::new(|p| p.cap_add = vec!["ALL".into()]),
                "agents.a.cap_add",
            ),
            (
                Box::new(|p| p.cap_add = vec!["net admin".into()]),
                "agents.a.cap_add",
            ),
            (
                Box::new(|p| {
                    p.env
                        .insert("A=B".into(), "x".into())
                        .map(drop)
                        .unwrap_or(())
                }),
                "agents.a.env",
            ),
            (
                Box::new(|p| {
                    p.port = None;
                    p.ready_probe = Some(ReadyProbe::Http);
                }),
                "agents.a.ready_probe",
            ),
            (
                Box::new(|p| p.ready_timeout = Duration::ZERO),
                "agents.a.ready_timeout",
            ),
        ];
        for (mutate, setting) in cases {
            let mut profile = valid_profile();
            mutate(&mut profile);
            let error = profile.validate("agents.a").expect_err(setting);
            assert_eq!(error.setting, setting, "{error}");
        }
        valid_profile().validate("agents.a").unwrap();
        let mut no_port = valid_profile();
        no_port.port = None;
        no_port.ready_probe = Some(ReadyProbe::None);
        no_port.validate("agents.a").unwrap();
    }

    #[test]
    fn runtime_settings_are_validated() {
        let bad: Vec<(DockerConfig, &str)> = vec![
            (
                DockerConfig {
                    key_prefix: String::new(),
                    ..Default::default()
                },
                "key_prefix",
            ),
            (
                DockerConfig {
                    key_prefix: "Sbx".into(),
                    ..Default::default()
                },
                "key_prefix",
            ),
            (
                DockerConfig {
                    docker_host: Some("/var/run/docker.sock".into()),
                    ..Default::default()
                },
                "docker_host",
            ),
            (
                DockerConfig {
                    stop_grace: Duration::from_secs(60),
                    ..Default::default()
                },
                "engine_timeout",
            ),
            (
                DockerConfig {
                    allowed_volume_roots: vec![PathBuf::from("srv")],
                    ..Default::default()
                },
                "allowed_volume_roots[0]",
            ),
        ];
        for (config, setting) in bad {
            assert_eq!(config.validate().unwrap_err().setting, setting);
        }
        DockerConfig::default().validate().unwrap();
    }
}
