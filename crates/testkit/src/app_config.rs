//! What a test may change in a spawned `sandboxd`'s configuration, and how it is rendered into
//! the TOML file and the command line the process starts with.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::docker::sandbox_image;
use crate::process::Launch;

/// A fresh canonical chat id.
#[must_use]
pub fn new_chat_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// What a test (or the bench) may change in the server's configuration; [`Default`] is a fast,
/// quiet server with two busybox profiles, `default` and `other`, and the cleanup loop off (tests
/// drive the CleanupExpiredSandboxes RPC themselves).
#[derive(Debug, Clone)]
pub struct AppConfig {
    pub session_ttl: String,
    pub max_ttl: String,
    pub lock_ttl: String,
    pub lock_wait: String,
    /// `"0s"` disables the background loop.
    pub cleanup_interval: String,
    pub drain_timeout: String,
    pub stop_grace: String,
    /// The body of the built-in `default` and `other` profiles ([`Self::busybox_profile`]).
    pub profile: String,
    /// Appended to the bodies of the built-in profiles (e.g. a short `ready_timeout`, which a
    /// short `reconcile_grace` must exceed).
    pub profile_extra: String,
    /// Extra `[agents.<id>]` tables: (agent id, the table's TOML body).
    pub extra_agents: Vec<(String, String)>,
    /// Appended verbatim to the top level of the config file (before the agent tables).
    pub extra_toml: String,
    /// Extra environment of the process (`RUST_LOG` defaults to `info`; every inherited
    /// `SANDBOXD_*` variable is removed so the caller's shell cannot change the test).
    pub env: Vec<(String, String)>,
    /// Extra command-line flags.
    pub args: Vec<String>,
    /// A bearer token every RPC then needs: [`spawn_app_with`] writes it to a file in the scratch
    /// directory and names that file in `auth_token_file`.
    pub auth_token: Option<String>,
    /// Replaces the URL of the app's own `redis-server` (a Sentinel, TLS or ACL setup the test
    /// runs itself); the own server still runs, unused.
    pub redis_url: Option<String>,
    /// Whether [`spawn_app_with`] waits for SERVING; `false` for a server meant to stay
    /// NOT_SERVING (a Redis it must refuse).
    pub wait_for_serving: bool,
    /// Whether profiles may pool: the static waiter is built ([`crate::pool::waiter_binary`])
    /// and named in `pool_waiter`. The pool's root is always the app's own scratch directory.
    pub pool_waiter: bool,
    /// The address sandboxd listens on and publishes endpoints on (loopback by default; a fleet
    /// node's own address inside its network namespace).
    pub listen_ip: String,
}

impl Default for AppConfig {
    fn default() -> Self {
        Self {
            session_ttl: "30m".to_owned(),
            max_ttl: "24h".to_owned(),
            lock_ttl: "10s".to_owned(),
            lock_wait: "5s".to_owned(),
            cleanup_interval: "0s".to_owned(),
            drain_timeout: "20s".to_owned(),
            stop_grace: "1s".to_owned(),
            profile: Self::busybox_profile(),
            profile_extra: String::new(),
            extra_agents: Vec::new(),
            extra_toml: String::new(),
            env: Vec::new(),
            args: Vec::new(),
            auth_token: None,
            redis_url: None,
            wait_for_serving: true,
            pool_waiter: false,
            listen_ip: "127.0.0.1".to_owned(),
        }
    }
}

impl AppConfig {
    /// Adds an `[agents.<agent_id>]` table with `body` (TOML lines).
    #[must_use]
    pub fn with_agent(mut self, agent_id: &str, body: &str) -> Self {
        self.extra_agents
            .push((agent_id.to_owned(), body.to_owned()));
        self
    }

    /// The body of a busybox profile publishing 8080 with the HTTP ready probe, light limits.
    #[must_use]
    pub fn busybox_profile() -> String {
        format!(
            "image = {}\nport = 8080\nready_probe = \"http\"\nmemory = \"64m\"\ncpus = 0.5\npids_limit = 64\n",
            toml_string(&sandbox_image())
        )
    }

    /// The config file: listeners on port 0 on loopback, `redis_url`, `prefix` as the key prefix
    /// and label namespace, `volume_root` as the only allowed volume root, `pool_root` as the
    /// warm pool's directory.
    #[must_use]
    pub fn render(
        &self,
        redis_url: &str,
        prefix: &str,
        volume_root: &Path,
        pool_root: &Path,
    ) -> String {
        let mut toml = String::new();
        let listen = format!("{}:0", self.listen_ip);
        let settings = [
            ("grpc_addr", listen.as_str()),
            ("http_addr", listen.as_str()),
            ("redis_url", redis_url),
            ("key_prefix", prefix),
            ("session_ttl", &self.session_ttl),
            ("max_ttl", &self.max_ttl),
            ("lock_ttl", &self.lock_ttl),
            ("lock_wait", &self.lock_wait),
            ("cleanup_interval", &self.cleanup_interval),
            ("drain_timeout", &self.drain_timeout),
            ("stop_grace", &self.stop_grace),
            ("publish_host_ip", self.listen_ip.as_str()),
        ];
        for (key, value) in settings {
            let _ = writeln!(toml, "{key} = {}", toml_string(value));
        }
        let root = toml_string(&volume_root.display().to_string());
        let _ = writeln!(toml, "allowed_volume_roots = [{root}]");
        let _ = writeln!(
            toml,
            "pool_root = {}",
            toml_string(&pool_root.display().to_string())
        );
        if self.pool_waiter {
            let waiter = crate::pool::waiter_binary();
            let _ = writeln!(
                toml,
                "pool_waiter = {}",
                toml_string(&waiter.display().to_string())
            );
        }
        toml.push_str(&self.extra_toml);
        toml.push('\n');
        let profile = format!("{}{}\n", self.profile, self.profile_extra);
        for (agent_id, body) in [
            ("default".to_owned(), profile.clone()),
            ("other".to_owned(), profile),
        ]
        .iter()
        .chain(&self.extra_agents)
        {
            let _ = writeln!(toml, "\n[agents.{agent_id}]\n{body}");
        }
        toml
    }

    /// How to start sandboxd with this configuration, its config file already written.
    #[must_use]
    pub fn launch(&self, binary: PathBuf, config_path: PathBuf, log_path: PathBuf) -> Launch {
        let mut env = vec![(
            "RUST_LOG".to_owned(),
            "info,sandboxd_adapters=debug".to_owned(),
        )];
        env.extend(self.env.iter().cloned());
        Launch {
            binary,
            config_path,
            args: self.args.clone(),
            env,
            log_path,
        }
    }
}

/// A TOML basic string: JSON string escapes are valid TOML.
#[must_use]
pub fn toml_string(value: &str) -> String {
    serde_json::Value::from(value).to_string()
}
