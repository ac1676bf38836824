//! `spawn_app()`: one real `sandboxd` process per test, with its own `redis-server` on a free
//! port, its own key prefix (which is also its container label namespace) and its own volume
//! root. Everything is stopped and removed when the [`TestApp`] drops, also when the test panics,
//! and the processes die with the test binary if it is killed (`setpriv --pdeathsig KILL`).
//!
//! Tests run in parallel: nothing here is shared between two `TestApp`s except the Docker engine,
//! where each test only ever looks at (and removes) containers carrying its own label.
//!
//! A test binary killed outright (SIGKILL, a CI timeout) runs no destructor: its processes die by
//! pdeathsig, but its containers and temp dirs stay. Prefixes and temp dir names therefore carry
//! the test binary's pid, and the first `spawn_app()` of a later run removes what belongs to pids
//! that no longer exist ([`sweep_dead_runs`]).
#![allow(dead_code)]

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Once;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bollard::Docker;
use bollard::models::ContainerSummary;
use bollard::query_parameters::ListContainersOptionsBuilder;
use sandboxd_api::v1::sandbox_service_client::SandboxServiceClient;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// The value of `{prefix}.managed-by` on every container sandboxd creates.
pub const MANAGED_BY: &str = "sandboxd";
/// How long a fresh process may take to log its addresses and report SERVING.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The local sandbox image (busybox httpd on 8080) that `scripts/test` builds.
pub fn sandbox_image() -> String {
    std::env::var("SANDBOX_IMAGE").unwrap_or_else(|_| "sandboxd/busybox:local".to_owned())
}

/// A fresh canonical chat id.
pub fn new_chat_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// What a test may change in the server's configuration; [`Default`] is a fast, quiet server
/// with two busybox profiles, `default` and `other`, and the cleanup loop off (tests drive the
/// CleanupExpiredSandboxes RPC themselves).
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
    /// Extra `[agents.<id>]` tables: (agent id, the table's TOML body).
    pub extra_agents: Vec<(String, String)>,
    /// Appended verbatim to the top level of the config file (before the agent tables).
    pub extra_toml: String,
    /// Extra environment of the process (`RUST_LOG` defaults to `info`; every inherited
    /// `SANDBOXD_*` variable is removed so the caller's shell cannot change the test).
    pub env: Vec<(String, String)>,
    /// Extra command-line flags.
    pub args: Vec<String>,
    /// Appended to the bodies of the built-in `default` and `other` profiles (e.g. a short
    /// `ready_timeout`, which a short `reconcile_grace` must exceed).
    pub profile_extra: String,
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
            extra_agents: Vec::new(),
            extra_toml: String::new(),
            env: Vec::new(),
            args: Vec::new(),
            profile_extra: String::new(),
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
    pub fn busybox_profile() -> String {
        format!(
            "image = {}\nport = 8080\nready_probe = \"http\"\nmemory = \"64m\"\ncpus = 0.5\npids_limit = 64\n",
            toml_string(&sandbox_image())
        )
    }

    fn render(&self, redis_url: &str, prefix: &str, volume_root: &Path) -> String {
        let mut toml = String::new();
        let settings = [
            ("redis_url", redis_url),
            ("key_prefix", prefix),
            ("session_ttl", &self.session_ttl),
            ("max_ttl", &self.max_ttl),
            ("lock_ttl", &self.lock_ttl),
            ("lock_wait", &self.lock_wait),
            ("cleanup_interval", &self.cleanup_interval),
            ("drain_timeout", &self.drain_timeout),
            ("stop_grace", &self.stop_grace),
            ("publish_host_ip", "127.0.0.1"),
        ];
        for (key, value) in settings {
            let _ = writeln!(toml, "{key} = {}", toml_string(value));
        }
        let root = volume_root.to_str().expect("temp dir paths are UTF-8");
        let _ = writeln!(toml, "allowed_volume_roots = [{}]", toml_string(root));
        toml.push_str(&self.extra_toml);
        toml.push('\n');
        let profile = format!("{}{}\n", Self::busybox_profile(), self.profile_extra);
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
}

/// A TOML basic string: JSON string escapes are valid TOML.
fn toml_string(value: &str) -> String {
    serde_json::to_string(value).expect("strings serialise")
}

/// One running sandboxd with its own Redis, prefix and volume root.
///
/// Field order is drop order: the process is killed first (nothing creates containers after),
/// then its containers are removed, then Redis dies and the directories go.
pub struct TestApp {
    process: SandboxdProcess,
    containers: ContainerGuard,
    pub redis: RedisServer,
    /// Config file and scratch space; not mountable (outside `volume_root`).
    pub scratch: TempDir,
    /// The only allowed volume root; sandboxes mount directories made by [`TestApp::new_volume`].
    pub volume_root: TempDir,
    pub api: SandboxServiceClient<Channel>,
    pub health: HealthClient<Channel>,
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub prefix: String,
    pub docker: Docker,
    /// What the process was started with, so it can be restarted (or joined by a peer).
    config: AppConfig,
    config_path: PathBuf,
}

impl std::fmt::Debug for TestApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestApp")
            .field("grpc_addr", &self.grpc_addr)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// Spawns a server with the default [`AppConfig`].
pub async fn spawn_app() -> TestApp {
    spawn_app_with(AppConfig::default()).await
}

/// Spawns a server with `config` and waits until it reports SERVING.
pub async fn spawn_app_with(config: AppConfig) -> TestApp {
    static SWEEP: Once = Once::new();
    SWEEP.call_once(sweep_dead_runs);
    let redis = RedisServer::start().await;
    let pid = std::process::id();
    let prefix = format!(
        "e2e-{pid}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let containers = ContainerGuard {
        filter: format!("{prefix}.managed-by={MANAGED_BY}"),
    };
    let scratch = tempfile::Builder::new()
        .prefix(&format!("sandboxd-e2e-{pid}-"))
        .tempdir()
        .expect("creating a temp dir");
    let volume_root = tempfile::Builder::new()
        .prefix(&format!("sandboxd-e2e-{pid}-volumes-"))
        .tempdir()
        .expect("creating the volume root");
    let config_path = scratch.path().join("sandboxd.toml");
    std::fs::write(
        &config_path,
        config.render(&redis.url(), &prefix, volume_root.path()),
    )
    .expect("writing the config file");

    let mut process = SandboxdProcess::spawn(&config_path, &config);
    let (grpc_addr, http_addr) = process.wait_for_addresses().await;
    let channel = connect(grpc_addr, &process).await;
    let docker = Docker::connect_with_defaults()
        .expect("docker client")
        .negotiate_version()
        .await
        .expect("the Docker engine must be running (scripts/test starts it)");
    let app = TestApp {
        process,
        containers,
        redis,
        scratch,
        volume_root,
        api: SandboxServiceClient::new(channel.clone()),
        health: HealthClient::new(channel),
        grpc_addr,
        http_addr,
        prefix,
        docker,
        config,
        config_path,
    };
    app.wait_for_health(ServingStatus::Serving).await;
    app
}

impl TestApp {
    /// `http://127.0.0.1:PORT` of the gRPC listener, for clients that want a URL.
    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc_addr)
    }

    /// `http://127.0.0.1:PORT` of `/metrics`, `/healthz`, `/readyz`.
    pub fn http_base(&self) -> String {
        format!("http://{}", self.http_addr)
    }

    /// A fresh client on its own connection (the shared `api` is fine for most tests).
    /// The chat's sandbox through GetSandbox; panics (with the server log) when there is none.
    pub async fn live_sandbox(&self, chat_id: &str) -> sandboxd_api::v1::Sandbox {
        self.api
            .clone()
            .get_sandbox(sandboxd_api::v1::GetSandboxRequest {
                chat_id: chat_id.to_owned(),
            })
            .await
            .unwrap_or_else(|status| panic!("get {chat_id}: {status:?}\n{}", self.log()))
            .into_inner()
            .sandbox
            .unwrap_or_else(|| panic!("get {chat_id}: no sandbox in the response"))
    }

    pub async fn new_client(&self) -> SandboxServiceClient<Channel> {
        SandboxServiceClient::new(connect(self.grpc_addr, &self.process).await)
    }

    /// Makes a fresh directory under the volume root and returns its path as sent on the wire.
    pub fn new_volume(&self, name: &str) -> String {
        let dir = self.volume_root.path().join(name);
        std::fs::create_dir_all(&dir).expect("creating a volume dir");
        dir.to_str().expect("temp dir paths are UTF-8").to_owned()
    }

    /// Everything sandboxd has printed so far (stdout and stderr, interleaved by line).
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// The gRPC health status of `service` (`""` = the whole server).
    pub async fn health_status(&self, service: &str) -> Result<ServingStatus, tonic::Status> {
        let response = self
            .health
            .clone()
            .check(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await?;
        Ok(ServingStatus::try_from(response.into_inner().status).unwrap_or(ServingStatus::Unknown))
    }

    /// Polls until the overall health status is `wanted`; panics with the log after a while.
    pub async fn wait_for_health(&self, wanted: ServingStatus) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let status = self.health_status("").await;
            if matches!(status, Ok(s) if s == wanted) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "health never became {wanted:?} (last: {status:?})\n--- sandboxd log ---\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// A new connection to this test's Redis, for assertions on the raw data.
    pub async fn redis_connection(&self) -> redis::aio::MultiplexedConnection {
        self.redis.connection().await
    }

    /// Every Redis key under this test's prefix.
    pub async fn redis_keys(&self) -> BTreeSet<String> {
        let mut con = self.redis_connection().await;
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}:*", self.prefix))
            .query_async(&mut con)
            .await
            .expect("KEYS");
        keys.into_iter().collect()
    }

    /// `{prefix}:{suffix}`: a key of the data model.
    pub fn key(&self, suffix: &str) -> String {
        format!("{}:{suffix}", self.prefix)
    }

    /// This test's containers (running or not) as the engine lists them.
    pub async fn containers(&self) -> Vec<ContainerSummary> {
        let filters = HashMap::from([("label", vec![self.containers.filter.clone()])]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        self.docker
            .list_containers(Some(options))
            .await
            .expect("listing containers")
    }

    /// Ids of this test's containers.
    pub async fn container_ids(&self) -> BTreeSet<String> {
        self.containers()
            .await
            .into_iter()
            .filter_map(|c| c.id)
            .collect()
    }

    /// Whether the engine still knows a container with this id (in any state).
    pub async fn container_exists(&self, id: &str) -> bool {
        match self.docker.inspect_container(id, None).await {
            Ok(_) => true,
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => false,
            Err(error) => panic!("inspecting container {id}: {error}"),
        }
    }

    /// The label `{prefix}.{name}` of a container.
    pub fn label(&self, container: &ContainerSummary, name: &str) -> Option<String> {
        container
            .labels
            .as_ref()
            .and_then(|labels| labels.get(&format!("{}.{name}", self.prefix)).cloned())
    }

    /// The sandboxd process id (for `/proc/<pid>` figures).
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Sends any signal (`KILL`, `STOP`, `CONT`, ...) to sandboxd.
    pub fn signal(&self, signal: &str) {
        self.process.signal(signal);
    }

    /// SIGKILL, then waits until the process is gone: no drain, no cleanup, like a crash.
    pub async fn kill9(&mut self) {
        self.process.signal("KILL");
        self.process.wait_for_exit(Duration::from_secs(10)).await;
    }

    /// Starts sandboxd again with the same configuration (after [`Self::kill9`] or an exit) and
    /// waits until it is SERVING; the clients point at the new process.
    pub async fn restart(&mut self) {
        let mut process = SandboxdProcess::spawn(&self.config_path, &self.config);
        let (grpc_addr, http_addr) = process.wait_for_addresses().await;
        let channel = connect(grpc_addr, &process).await;
        self.process = process;
        self.api = SandboxServiceClient::new(channel.clone());
        self.health = HealthClient::new(channel);
        self.grpc_addr = grpc_addr;
        self.http_addr = http_addr;
        self.wait_for_health(ServingStatus::Serving).await;
    }

    /// A second sandboxd with the same configuration: same Redis, prefix, volume root and engine.
    /// Drop it before the [`TestApp`].
    pub async fn spawn_peer(&self) -> Peer {
        let mut process = SandboxdProcess::spawn(&self.config_path, &self.config);
        let (grpc_addr, http_addr) = process.wait_for_addresses().await;
        let channel = connect(grpc_addr, &process).await;
        let peer = Peer {
            api: SandboxServiceClient::new(channel.clone()),
            health: HealthClient::new(channel),
            grpc_addr,
            http_addr,
            process,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let status = peer
                .health
                .clone()
                .check(HealthCheckRequest::default())
                .await
                .map(|r| r.into_inner().status);
            if matches!(status, Ok(s) if s == ServingStatus::Serving as i32) {
                return peer;
            }
            assert!(
                Instant::now() < deadline,
                "peer never SERVING\n{}",
                peer.log()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Sends SIGTERM to sandboxd (graceful shutdown).
    pub fn sigterm(&self) {
        self.process.signal("TERM");
    }

    /// Waits for the process to exit and returns its status; panics with the log on timeout.
    pub async fn wait_for_exit(&mut self, timeout: Duration) -> ExitStatus {
        self.process.wait_for_exit(timeout).await
    }
}

/// Another sandboxd process sharing a [`TestApp`]'s Redis, prefix and engine.
pub struct Peer {
    process: SandboxdProcess,
    pub api: SandboxServiceClient<Channel>,
    pub health: HealthClient<Channel>,
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
}

impl Peer {
    pub fn log(&self) -> String {
        self.process.log()
    }

    pub fn signal(&self, signal: &str) {
        self.process.signal(signal);
    }
}

/// Connects a channel, failing with the server's log if it cannot.
async fn connect(addr: SocketAddr, process: &SandboxdProcess) -> Channel {
    let endpoint = Channel::from_shared(format!("http://{addr}"))
        .expect("a valid URI")
        .connect_timeout(Duration::from_secs(5));
    match endpoint.connect().await {
        Ok(channel) => channel,
        Err(error) => panic!(
            "connecting to sandboxd at {addr}: {error}\n--- sandboxd log ---\n{}",
            process.log()
        ),
    }
}

/// A minimal HTTP/1.0 GET over raw TCP (no HTTP client crate needed): status code and body.
pub async fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream =
        tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
            .await
            .map_err(|_| std::io::Error::other("connect timed out"))??;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut response))
        .await
        .map_err(|_| std::io::Error::other("read timed out"))??;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// The workspace root (this package's manifest directory).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The `sandboxd` binary under test: `SANDBOXD_BIN`, else `target/debug/sandboxd` (honouring
/// `CARGO_TARGET_DIR`). `cargo test` does not build other packages' binaries, so a stale binary
/// would silently test old code: refuse one older than the sources.
fn sandboxd_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("SANDBOXD_BIN") {
        let bin = PathBuf::from(bin);
        assert!(
            bin.is_file(),
            "SANDBOXD_BIN={} does not exist",
            bin.display()
        );
        return bin;
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|dir| {
            if dir.is_relative() {
                workspace_root().join(dir)
            } else {
                dir
            }
        })
        .unwrap_or_else(|| workspace_root().join("target"));
    let bin = target.join("debug").join("sandboxd");
    let built = std::fs::metadata(&bin).and_then(|m| m.modified());
    let Ok(built) = built else {
        panic!(
            "{} is missing: build it first with `cargo build -p sandboxd-server` \
             (scripts/test does), or point SANDBOXD_BIN at a sandboxd binary",
            bin.display()
        );
    };
    if let Some((source, changed)) = newest_source()
        && changed > built
    {
        panic!(
            "{} is older than {}: rebuild it with `cargo build -p sandboxd-server` \
             (or set SANDBOXD_BIN to test another binary)",
            bin.display(),
            source.display()
        );
    }
    bin
}

/// The most recently modified source file the binary is built from.
fn newest_source() -> Option<(PathBuf, SystemTime)> {
    let root = workspace_root();
    let mut dirs: Vec<PathBuf> = ["src", "proto", "crates"]
        .iter()
        .map(|d| root.join(d))
        .collect();
    let mut newest: Option<(PathBuf, SystemTime)> = None;
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            // Tests and examples of the crates are not part of the binary.
            if path.is_dir() {
                if !matches!(name.as_ref(), "tests" | "examples" | "benches" | "target") {
                    dirs.push(path);
                }
                continue;
            }
            if !(name.ends_with(".rs") || name.ends_with(".proto") || name == "Cargo.toml") {
                continue;
            }
            if let Ok(modified) = entry.metadata().and_then(|m| m.modified())
                && newest.as_ref().is_none_or(|(_, t)| modified > *t)
            {
                newest = Some((path, modified));
            }
        }
    }
    newest
}

/// The sandboxd child process and its captured output.
struct SandboxdProcess {
    child: Option<Child>,
    log: Arc<Mutex<String>>,
}

impl SandboxdProcess {
    fn spawn(config_path: &Path, config: &AppConfig) -> Self {
        let bin = sandboxd_bin();
        // pdeathsig: the kernel kills sandboxd when the spawning thread (the test's) dies, so a
        // killed test binary leaves no server behind. setpriv execs, so the pid is sandboxd's.
        let mut command = if Path::new("/usr/bin/setpriv").exists() {
            let mut command = Command::new("/usr/bin/setpriv");
            command.args(["--pdeathsig", "KILL"]).arg(&bin);
            command
        } else {
            Command::new(&bin)
        };
        command
            .arg("--config")
            .arg(config_path)
            .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
            .args(&config.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("SANDBOXD_") {
                command.env_remove(name);
            }
        }
        command.env("RUST_LOG", "info");
        for (name, value) in &config.env {
            command.env(name, value);
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|error| panic!("starting {}: {error}", bin.display()));
        let log = Arc::new(Mutex::new(String::new()));
        if let Some(stdout) = child.stdout.take() {
            capture(stdout, Arc::clone(&log));
        }
        if let Some(stderr) = child.stderr.take() {
            capture(stderr, Arc::clone(&log));
        }
        Self {
            child: Some(child),
            log,
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    fn log(&self) -> String {
        self.log.lock().map(|log| log.clone()).unwrap_or_default()
    }

    /// Waits for both `*_listening addr=...` lines (text or JSON logs).
    async fn wait_for_addresses(&mut self) -> (SocketAddr, SocketAddr) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let log = self.log();
            if let (Some(grpc), Some(http)) = (
                logged_addr(&log, "grpc_listening"),
                logged_addr(&log, "http_listening"),
            ) {
                return (grpc, http);
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                // Let the reader threads drain the last lines.
                tokio::time::sleep(Duration::from_millis(100)).await;
                panic!(
                    "sandboxd exited during start ({status})\n--- sandboxd log ---\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "sandboxd did not log its addresses within {START_TIMEOUT:?}\n--- sandboxd log ---\n{log}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn signal(&self, signal: &str) {
        let Some(child) = self.child.as_ref() else {
            panic!("sandboxd is not running");
        };
        // `kill(1)` rather than libc: the workspace forbids unsafe code.
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(child.id().to_string())
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    async fn wait_for_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.child.as_mut().expect("sandboxd was started");
            if let Some(status) = child.try_wait().expect("waiting for sandboxd") {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "sandboxd did not exit within {timeout:?}\n--- sandboxd log ---\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for SandboxdProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            // Shown with the failure (the test harness captures it otherwise).
            eprintln!(
                "--- sandboxd log ---\n{}--- end of sandboxd log ---",
                self.log()
            );
        }
    }
}

/// Copies `pipe` line by line into `log` on its own thread (ends when the process exits).
fn capture(pipe: impl Read + Send + 'static, log: Arc<Mutex<String>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if let Ok(mut log) = log.lock() {
                log.push_str(&line);
                log.push('\n');
            }
        }
    });
}

/// The address logged on the line with `event`: `event addr=1.2.3.4:5` (text) or
/// `"message":"event",...,"addr":"1.2.3.4:5"` (JSON).
fn logged_addr(log: &str, event: &str) -> Option<SocketAddr> {
    let line = log.lines().find(|line| line.contains(event))?;
    let raw = if let Some((_, rest)) = line.split_once("\"addr\":\"") {
        rest.split('"').next()?
    } else {
        let (_, rest) = line.split_once("addr=")?;
        rest.split_whitespace().next()?
    };
    raw.parse().ok()
}

/// Removes, on drop, every container carrying the test's managed-by label. Drop cannot await
/// and the test's runtime may be unwinding, so this uses the docker CLI synchronously.
struct ContainerGuard {
    filter: String,
}

impl Drop for ContainerGuard {
    fn drop(&mut self) {
        let listed = Command::new("docker")
            .args(["ps", "-aq", "--no-trunc", "--filter"])
            .arg(format!("label={}", self.filter))
            .output();
        let Ok(listed) = listed else {
            eprintln!("could not list containers with label {}", self.filter);
            return;
        };
        let ids: Vec<String> = String::from_utf8_lossy(&listed.stdout)
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        if ids.is_empty() {
            return;
        }
        let removed = Command::new("docker")
            .args(["rm", "-f", "-v"])
            .args(&ids)
            .stdout(Stdio::null())
            .status();
        if !matches!(removed, Ok(status) if status.success()) {
            eprintln!("could not remove containers {ids:?}");
        }
    }
}

/// A throwaway `redis-server`: loopback, a free port, no persistence, killed on drop.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
}

impl RedisServer {
    /// Starts a server on a free port (another port if the first was taken in between).
    pub async fn start() -> Self {
        let mut last_error = String::new();
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("finding a free port")
                .port();
            let mut server = Self {
                child: Some(spawn_redis(port)),
                port,
            };
            match server.wait_ready().await {
                Ok(()) => return server,
                Err(error) => last_error = error,
            }
        }
        panic!("redis-server did not start: {last_error}");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (SIGKILL: an outage, not a shutdown); its data is gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts an empty server on the same port again.
    pub async fn restart(&mut self) {
        self.stop();
        self.child = Some(spawn_redis(self.port));
        if let Err(error) = self.wait_ready().await {
            panic!("restarting redis: {error}");
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .expect("redis url")
            .get_multiplexed_async_connection()
            .await
            .expect("connecting to the test redis")
    }

    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(format!(
                    "redis-server on port {} exited: {status}",
                    self.port
                ));
            }
            if let Ok(client) = redis::Client::open(self.url())
                && let Ok(mut con) = client.get_multiplexed_async_connection().await
            {
                let pong: Result<String, _> = redis::cmd("PING").query_async(&mut con).await;
                if pong.is_ok() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(format!("redis-server on port {} never answered", self.port));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn spawn_redis(port: u16) -> Child {
    let mut command = if Path::new("/usr/bin/setpriv").exists() {
        let mut command = Command::new("/usr/bin/setpriv");
        command.args(["--pdeathsig", "KILL", "redis-server"]);
        command
    } else {
        Command::new("redis-server")
    };
    command
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
        .arg("--dir")
        .arg(std::env::temp_dir())
        .args(["--loglevel", "warning"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|error| panic!("cannot run redis-server (install redis-server): {error}"))
}

/// The pid in `e2e-{pid}-...` (a prefix) or `sandboxd-e2e-{pid}-...` (a temp dir name).
fn run_pid(name: &str) -> Option<u32> {
    let rest = name.split_once("e2e-")?.1;
    let (pid, _) = rest.split_once('-')?;
    pid.parse().ok()
}

fn is_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes containers and temp dirs left by e2e runs whose test binary no longer exists.
fn sweep_dead_runs() {
    let listed = Command::new("docker")
        .args(["ps", "-a", "--no-trunc", "--format", "{{.ID}}\t{{.Labels}}"])
        .output();
    if let Ok(listed) = listed {
        let stale: Vec<String> = String::from_utf8_lossy(&listed.stdout)
            .lines()
            .filter_map(|line| {
                let (id, labels) = line.split_once('\t')?;
                let dead = labels.split(',').any(|label| {
                    label.starts_with("e2e-")
                        && label.ends_with(&format!(".managed-by={MANAGED_BY}"))
                        && run_pid(label).is_some_and(|pid| !is_alive(pid))
                });
                dead.then(|| id.to_owned())
            })
            .collect();
        if !stale.is_empty() {
            eprintln!("removing {} containers of dead e2e runs", stale.len());
            let _ = Command::new("docker")
                .args(["rm", "-f", "-v"])
                .args(&stale)
                .stdout(Stdio::null())
                .status();
        }
    }
    if let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with("sandboxd-e2e-") && run_pid(&name).is_some_and(|pid| !is_alive(pid))
            {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}
