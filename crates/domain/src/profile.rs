//! Agent profiles: what sandbox a chat of one agent gets (image, limits, readiness), independent of
//! the engine that runs it. Parsed from `[agents.<agent_id>]` tables and validated here, once; the
//! runtime adapter only translates a valid profile into its engine's terms.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::VolumePath;
use crate::egress::{Cidr, Egress};

/// Engines refuse memory limits below 6 MiB (Docker does); catching it here names the setting.
const MIN_MEMORY_BYTES: u64 = 6 * 1024 * 1024;

/// Most sandboxes one profile may keep waiting in its warm pool: each holds its memory and pids
/// while it waits, and refilling costs engine creates.
pub(crate) const MAX_POOL_SIZE: u32 = 64;

/// Environment variables every sandbox gets with its identity; a profile's `env` may not set them.
pub const IDENTITY_ENV: [&str; 3] = ["SANDBOX_CHAT_ID", "SANDBOX_SESSION_ID", "SANDBOX_AGENT_ID"];

/// A profile setting that cannot work; `setting` is the dotted key (`agents.<id>.<field>`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid setting `{setting}`: {reason}")]
pub struct InvalidProfile {
    pub setting: String,
    pub reason: String,
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
    /// Environment of the sandbox process.
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
    /// CPU limit in cores (fractions allowed).
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
    /// The sandbox expires this long after its last activity instead of `session_ttl` after its
    /// creation; `None` keeps the fixed lifetime.
    #[serde(default, deserialize_with = "de_optional_duration")]
    pub idle_timeout: Option<Duration>,
    /// A hard cap from creation that no activity or extension goes past; `None` = no cap.
    #[serde(default, deserialize_with = "de_optional_duration")]
    pub max_lifetime: Option<Duration>,
    /// What the cleanup does with a running sandbox that expired (idle or past its TTL).
    #[serde(default)]
    pub on_idle: OnIdle,
    /// A paused or hibernated sandbox is deleted this long after it went idle.
    #[serde(default = "default_paused_retention", deserialize_with = "de_duration")]
    pub paused_retention: Duration,
    /// Most sandboxes of this profile at once (in any state); `None` = only the deployment's
    /// limit applies.
    #[serde(default)]
    pub max_sandboxes: Option<u32>,
    /// Where the sandbox may connect to; `public` (the internet, nothing local) unless said.
    #[serde(default)]
    pub egress: Egress,
    /// The only ranges an `allow` sandbox reaches; required with `allow` and refused otherwise.
    #[serde(default)]
    pub egress_allow: Vec<Cidr>,
    /// Sandboxes kept started and waiting for a chat (the warm pool, issue 18); 0 = none, every
    /// create starts a sandbox cold. Only under the engine's default runtime or `runc`: under
    /// gVisor (`runsc`) neither the claim FIFO nor the volume's hot attach reaches the sandbox.
    #[serde(default)]
    pub pool_size: u32,
}

/// What happens to a running sandbox once it expires.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnIdle {
    /// Stopped and removed (the reference behaviour).
    #[default]
    Delete,
    /// Frozen by the engine: memory kept, no CPU; resumes in milliseconds.
    Pause,
    /// Stopped, the container kept: memory freed, its own filesystem kept; resume starts it.
    Hibernate,
}

impl OnIdle {
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Delete => "delete",
            Self::Pause => "pause",
            Self::Hibernate => "hibernate",
        }
    }
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
/// `paused_retention` when a profile does not say.
pub const DEFAULT_PAUSED_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);

fn default_paused_retention() -> Duration {
    DEFAULT_PAUSED_RETENTION
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
            idle_timeout: None,
            max_lifetime: None,
            on_idle: OnIdle::Delete,
            paused_retention: default_paused_retention(),
            max_sandboxes: None,
            egress: Egress::default(),
            egress_allow: Vec::new(),
            pool_size: 0,
        }
    }

    /// When a session of this profile created at `created_at`, or active at `active_at`, expires:
    /// `idle_timeout` after the activity (or `ttl`, the deployment's session TTL, after it when
    /// the profile has none), never past the hard cap `max_expires_at`.
    #[must_use]
    pub fn expiry_after_activity(
        &self,
        active_at: crate::Timestamp,
        ttl: Duration,
        max_expires_at: Option<crate::Timestamp>,
    ) -> crate::Timestamp {
        let due = active_at + self.idle_timeout.unwrap_or(ttl);
        max_expires_at.map_or(due, |cap| due.min(cap))
    }

    /// The hard cap of a session created at `created_at`; `None` without `max_lifetime`.
    #[must_use]
    pub fn max_expires_at(&self, created_at: crate::Timestamp) -> Option<crate::Timestamp> {
        self.max_lifetime.map(|cap| created_at + cap)
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

    /// `cap_add` in the canonical spelling (no `CAP_` prefix, upper case).
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

    /// `cpus` in billionths of a core (Docker's NanoCpus).
    #[must_use]
    #[allow(clippy::cast_possible_truncation)] // bounded by validate(): at most 1024 cores
    pub fn nano_cpus(&self) -> i64 {
        (self.cpus * 1e9).round() as i64
    }

    /// Checks every field; `scope` is the table's key (`agents.<id>`).
    ///
    /// # Errors
    /// [`InvalidProfile`] with `scope.<field>` as the setting.
    pub fn validate(&self, scope: &str) -> Result<(), InvalidProfile> {
        let err = |field: &str, reason: &str| InvalidProfile {
            setting: format!("{scope}.{field}"),
            reason: reason.to_owned(),
        };
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
        if let Some(reserved) = IDENTITY_ENV
            .iter()
            .find(|name| self.env.contains_key(**name))
        {
            return Err(err(
                "env",
                &format!("{reserved} is set by sandboxd for every sandbox"),
            ));
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
        if self.idle_timeout.is_some_and(|d| d.is_zero()) {
            return Err(err(
                "idle_timeout",
                "must be positive (omit it for no idle timeout)",
            ));
        }
        if self.max_lifetime.is_some_and(|d| d.is_zero()) {
            return Err(err(
                "max_lifetime",
                "must be positive (omit it for no hard cap)",
            ));
        }
        if self.paused_retention.is_zero() {
            return Err(err("paused_retention", "must be positive"));
        }
        if self.max_sandboxes == Some(0) {
            return Err(err(
                "max_sandboxes",
                "must be at least 1 (omit it for no per-profile limit)",
            ));
        }
        self.validate_pool_size(scope)?;
        match (self.egress, self.egress_allow.is_empty()) {
            (Egress::Allow, true) => {
                return Err(err(
                    "egress_allow",
                    "must list at least one CIDR with egress = \"allow\"",
                ));
            }
            (Egress::None | Egress::Public | Egress::Open, false) => {
                // A list that would be ignored is a mistake: say so instead of guessing.
                return Err(err(
                    "egress_allow",
                    "is only allowed with egress = \"allow\"",
                ));
            }
            _ => {}
        }
        Ok(())
    }
}

impl AgentProfile {
    /// `pool_size`: bounded, within `max_sandboxes`, and only under a runtime where the pool's
    /// mechanisms were seen to work (`runc`; see `docs/design.md`, "Warm pool").
    fn validate_pool_size(&self, scope: &str) -> Result<(), InvalidProfile> {
        let err = |reason: String| InvalidProfile {
            setting: format!("{scope}.pool_size"),
            reason,
        };
        if self.pool_size == 0 {
            return Ok(());
        }
        if self.pool_size > MAX_POOL_SIZE {
            return Err(err(format!("must be at most {MAX_POOL_SIZE}")));
        }
        if let Some(limit) = self.max_sandboxes
            && self.pool_size > limit
        {
            return Err(err(format!(
                "must not exceed max_sandboxes ({limit}): a pooled sandbox could never be claimed"
            )));
        }
        match self.runtime.as_deref() {
            None | Some("runc") => Ok(()),
            Some(runtime) => Err(err(format!(
                "needs the engine's default runtime or runc, not {runtime:?}: under gVisor \
                 (runsc) the claim and the volume's hot attach never reach the sandbox"
            ))),
        }
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

/// Durations as humantime strings (`"90s"`, `"500ms"`, `"2h"`): the one parser of every duration
/// setting, the profiles' and the server's.
///
/// # Errors
/// The deserializer's error when the value is not a string or not a humantime duration.
pub fn de_duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    humantime::parse_duration(&text).map_err(serde::de::Error::custom)
}

/// [`de_duration`] for a setting that may be left out.
///
/// # Errors
/// As [`de_duration`].
pub fn de_optional_duration<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Duration>, D::Error> {
    de_duration(deserializer).map(Some)
}

#[cfg(test)]
mod tests;
