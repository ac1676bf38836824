//! `spawn_app()`: one real `sandboxd` process per test, with its own `redis-server` on a free
//! port, its own key prefix (which is also its container label namespace) and its own volume
//! root. Everything is stopped and removed when the [`TestApp`] drops, also when the test panics,
//! and the processes die with the test binary if it is killed (pdeathsig).
//!
//! Tests run in parallel: nothing here is shared between two `TestApp`s except the Docker engine,
//! where each test only ever looks at (and removes) containers carrying its own label.
//!
//! A test binary killed outright (SIGKILL, a CI timeout) runs no destructor: its processes die by
//! pdeathsig, but its containers and temp dirs stay. Prefixes and temp dir names therefore carry
//! the test binary's pid, and the first `spawn_app()` of a later run removes what belongs to pids
//! that no longer exist ([`sweep_dead_runs`]).
//!
//! A harness for tests: it panics, with the server's log, where a test could not go on.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::Once;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::models::ContainerSummary;
use sandboxd_api::v1::sandbox_service_client::SandboxServiceClient;
use tempfile::TempDir;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::app_config::{AppConfig, toml_string};
use crate::binary::sandboxd_bin;
use crate::docker::{self, LabelGuard, MANAGED_BY};
use crate::pool::MountGuard;
use crate::process::{START_TIMEOUT, SandboxdProcess};
use crate::redis::RedisServer;

/// One running sandboxd with its own Redis, prefix and volume root.
///
/// Field order is drop order: the process is killed first (nothing creates containers after),
/// then its containers are removed, then Redis dies and the directories go.
pub struct TestApp {
    process: SandboxdProcess,
    containers: LabelGuard,
    /// After the containers (they hold propagated copies): the pool's mounts under `scratch`.
    _pool_mounts: MountGuard,
    pub redis: RedisServer,
    /// Config file, logs and scratch space; not mountable (outside `volume_root`).
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
pub async fn spawn_app_with(mut config: AppConfig) -> TestApp {
    static SWEEP: Once = Once::new();
    SWEEP.call_once(sweep_dead_runs);
    let redis = RedisServer::start().await.expect("starting redis-server");
    let pid = std::process::id();
    let prefix = format!(
        "e2e-{pid}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let containers = LabelGuard::new(docker::managed_filter(&prefix));
    let scratch = tempfile::Builder::new()
        .prefix(&format!("sandboxd-e2e-{pid}-"))
        .tempdir()
        .expect("creating a temp dir");
    let volume_root = tempfile::Builder::new()
        .prefix(&format!("sandboxd-e2e-{pid}-volumes-"))
        .tempdir()
        .expect("creating the volume root");
    if let Some(token) = &config.auth_token {
        let token_file = scratch.path().join("auth-token");
        std::fs::write(&token_file, format!("{token}\n")).expect("writing the token file");
        let _ = writeln!(
            config.extra_toml,
            "auth_token_file = {}",
            toml_string(&token_file.display().to_string())
        );
    }
    let config_path = scratch.path().join("sandboxd.toml");
    std::fs::write(
        &config_path,
        config.render(
            config.redis_url.as_deref().unwrap_or(&redis.url()),
            &prefix,
            volume_root.path(),
            &scratch.path().join("pool"),
        ),
    )
    .expect("writing the config file");
    let pool_mounts = MountGuard::new(scratch.path());

    let process = start_process(&config, &config_path, scratch.path()).await;
    let channel = connect(&process).await;
    let docker = docker::engine()
        .await
        .expect("the Docker engine must be running (scripts/test starts it)");
    let app = TestApp {
        grpc_addr: process.grpc_addr,
        http_addr: process.http_addr,
        process,
        containers,
        _pool_mounts: pool_mounts,
        redis,
        scratch,
        volume_root,
        api: SandboxServiceClient::new(channel.clone()),
        health: HealthClient::new(channel),
        prefix,
        docker,
        config,
        config_path,
    };
    if app.config.wait_for_serving {
        app.wait_for_health(ServingStatus::Serving).await;
    }
    app
}

/// Starts a server with `config` expecting it to refuse to start (a profile the engine cannot
/// honour): returns its exit status and everything it printed. Panics, with the log, when it
/// starts serving instead.
pub async fn start_refused(config: AppConfig) -> (ExitStatus, String) {
    let pid = std::process::id();
    let prefix = format!(
        "e2e-{pid}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    // A server that started after all must leave nothing behind either.
    let _containers = LabelGuard::new(docker::managed_filter(&prefix));
    let scratch = tempfile::Builder::new()
        .prefix(&format!("sandboxd-e2e-{pid}-"))
        .tempdir()
        .expect("creating a temp dir");
    let volume_root = scratch.path().join("volumes");
    std::fs::create_dir(&volume_root).expect("creating the volume root");
    // Nothing listens on port 1: Redis is connected lazily, and a refused start never gets there.
    let redis_url = config
        .redis_url
        .clone()
        .unwrap_or_else(|| "redis://127.0.0.1:1".to_owned());
    let config_path = scratch.path().join("sandboxd.toml");
    std::fs::write(
        &config_path,
        config.render(
            &redis_url,
            &prefix,
            &volume_root,
            &scratch.path().join("pool"),
        ),
    )
    .expect("writing the config file");
    let launch = config.launch(
        sandboxd_bin(),
        config_path,
        scratch.path().join("sandboxd.log"),
    );
    SandboxdProcess::run_refused(&launch)
        .await
        .unwrap_or_else(|error| panic!("{error}"))
}

/// Starts one more process of a test (the first, a restart or a peer), its log in `dir`.
async fn start_process(config: &AppConfig, config_path: &Path, dir: &Path) -> SandboxdProcess {
    static STARTED: AtomicUsize = AtomicUsize::new(0);
    let log_path = dir.join(format!(
        "sandboxd-{}.log",
        STARTED.fetch_add(1, Ordering::Relaxed)
    ));
    let launch = config.launch(sandboxd_bin(), config_path.to_path_buf(), log_path);
    SandboxdProcess::start(&launch)
        .await
        .unwrap_or_else(|error| panic!("{error}"))
}

impl TestApp {
    /// `http://127.0.0.1:PORT` of the gRPC listener, for clients that want a URL.
    #[must_use]
    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc_addr)
    }

    /// `http://127.0.0.1:PORT` of `/metrics`, `/healthz`, `/readyz`.
    #[must_use]
    pub fn http_base(&self) -> String {
        format!("http://{}", self.http_addr)
    }

    /// A fresh client on its own connection (the shared `api` is fine for most tests).
    pub async fn new_client(&self) -> SandboxServiceClient<Channel> {
        SandboxServiceClient::new(connect(&self.process).await)
    }

    /// Makes a fresh directory under the volume root and returns its path as sent on the wire.
    #[must_use]
    pub fn new_volume(&self, name: &str) -> String {
        let dir = self.volume_root.path().join(name);
        std::fs::create_dir_all(&dir).expect("creating a volume dir");
        dir.to_str().expect("temp dir paths are UTF-8").to_owned()
    }

    /// Everything sandboxd has printed so far (stdout and stderr, interleaved by line).
    #[must_use]
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// The gRPC health status of `service` (`""` = the whole server).
    ///
    /// # Errors
    /// The status of a failed Check.
    pub async fn health_status(&self, service: &str) -> Result<ServingStatus, tonic::Status> {
        health_status(&self.health, service).await
    }

    /// Polls until the overall health status is `wanted`; panics with the log after a while.
    pub async fn wait_for_health(&self, wanted: ServingStatus) {
        wait_for_health(&self.health, wanted, || self.log()).await;
    }

    /// Waits (up to 10 s) until the engine has a container of this test: a create started by
    /// another task is then in flight, its container waiting for readiness.
    pub async fn wait_for_a_container(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.container_ids().await.is_empty() {
            assert!(
                Instant::now() < deadline,
                "no container appeared\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A new connection to this test's Redis, for assertions on the raw data.
    pub async fn redis_connection(&self) -> redis::aio::MultiplexedConnection {
        self.redis
            .connection()
            .await
            .expect("connecting to the test redis")
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
    #[must_use]
    pub fn key(&self, suffix: &str) -> String {
        format!("{}:{suffix}", self.prefix)
    }

    /// This test's containers (running or not) as the engine lists them.
    pub async fn containers(&self) -> Vec<ContainerSummary> {
        docker::list_by_label(&self.docker, self.containers.filter())
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
        docker::container_exists(&self.docker, id)
            .await
            .unwrap_or_else(|error| panic!("inspecting container {id}: {error}"))
    }

    /// The engine's status of a container (`running`, `paused`, `exited`, ...) as `docker
    /// inspect` shows it; `None` once the engine does not know it.
    pub async fn container_status(&self, id: &str) -> Option<String> {
        docker::container_status(&self.docker, id)
            .await
            .unwrap_or_else(|error| panic!("inspecting container {id}: {error}"))
    }

    /// The label `{prefix}.{name}` of a container.
    #[must_use]
    pub fn label(&self, container: &ContainerSummary, name: &str) -> Option<String> {
        container
            .labels
            .as_ref()
            .and_then(|labels| labels.get(&format!("{}.{name}", self.prefix)).cloned())
    }

    /// The sandboxd process id (for `/proc/<pid>` figures).
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Sends any signal (`KILL`, `STOP`, `CONT`, ...) to sandboxd.
    pub fn signal(&self, signal: &str) {
        self.process
            .signal(signal)
            .unwrap_or_else(|error| panic!("{error}"));
    }

    /// SIGKILL, then waits until the process is gone: no drain, no cleanup, like a crash.
    pub async fn kill9(&mut self) {
        self.signal("KILL");
        self.wait_for_exit(Duration::from_secs(10)).await;
    }

    /// Starts sandboxd again with the same configuration (after [`Self::kill9`] or an exit) and
    /// waits until it is SERVING; the clients point at the new process.
    pub async fn restart(&mut self) {
        let process = start_process(&self.config, &self.config_path, self.scratch.path()).await;
        let channel = connect(&process).await;
        self.grpc_addr = process.grpc_addr;
        self.http_addr = process.http_addr;
        self.process = process;
        self.api = SandboxServiceClient::new(channel.clone());
        self.health = HealthClient::new(channel);
        self.wait_for_health(ServingStatus::Serving).await;
    }

    /// A second sandboxd with the same configuration: same Redis, prefix, volume root and engine.
    /// Drop it before the [`TestApp`].
    pub async fn spawn_peer(&self) -> Peer {
        let process = start_process(&self.config, &self.config_path, self.scratch.path()).await;
        let channel = connect(&process).await;
        let peer = Peer {
            api: SandboxServiceClient::new(channel.clone()),
            health: HealthClient::new(channel),
            grpc_addr: process.grpc_addr,
            http_addr: process.http_addr,
            process,
        };
        wait_for_health(&peer.health, ServingStatus::Serving, || peer.log()).await;
        peer
    }

    /// Sends SIGTERM to sandboxd (graceful shutdown).
    pub fn sigterm(&self) {
        self.signal("TERM");
    }

    /// Waits for the process to exit and returns its status; panics with the log on timeout.
    pub async fn wait_for_exit(&mut self, timeout: Duration) -> ExitStatus {
        match self.process.wait_for_exit(timeout).await {
            Ok(status) => status,
            Err(error) => panic!("{error}\n--- sandboxd log ---\n{}", self.log()),
        }
    }
}

/// Another sandboxd process sharing a [`TestApp`]'s Redis, prefix and engine.
#[derive(Debug)]
pub struct Peer {
    process: SandboxdProcess,
    pub api: SandboxServiceClient<Channel>,
    pub health: HealthClient<Channel>,
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
}

impl Peer {
    #[must_use]
    pub fn log(&self) -> String {
        self.process.log()
    }

    pub fn signal(&self, signal: &str) {
        self.process
            .signal(signal)
            .unwrap_or_else(|error| panic!("{error}"));
    }
}

async fn health_status(
    health: &HealthClient<Channel>,
    service: &str,
) -> Result<ServingStatus, tonic::Status> {
    let response = health
        .clone()
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await?;
    Ok(ServingStatus::try_from(response.into_inner().status).unwrap_or(ServingStatus::Unknown))
}

async fn wait_for_health(
    health: &HealthClient<Channel>,
    wanted: ServingStatus,
    log: impl Fn() -> String,
) {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let status = health_status(health, "").await;
        if matches!(status, Ok(s) if s == wanted) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "health never became {wanted:?} (last: {status:?})\n--- sandboxd log ---\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Connects a channel, failing with the server's log if it cannot.
async fn connect(process: &SandboxdProcess) -> Channel {
    let endpoint = Channel::from_shared(process.endpoint())
        .expect("a valid URI")
        .connect_timeout(Duration::from_secs(5));
    match endpoint.connect().await {
        Ok(channel) => channel,
        Err(error) => panic!(
            "connecting to sandboxd at {}: {error}\n--- sandboxd log ---\n{}",
            process.grpc_addr,
            process.log()
        ),
    }
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
pub fn sweep_dead_runs() {
    let suffix = format!(".managed-by={MANAGED_BY}");
    let dead_filters = docker::block_on_own_thread(move || async move {
        let docker = docker::engine().await.ok()?;
        let all = docker::list_by_label(&docker, "").await.ok()?;
        let networks = docker.list_networks(None).await.unwrap_or_default();
        // Rules without a container or network left (a run killed between the two) count too.
        let ruled = crate::egress::prefixes_with_rules()
            .await
            .unwrap_or_default()
            .into_iter()
            .map(|prefix| (format!("{prefix}.managed-by"), MANAGED_BY.to_owned()));
        let filters: BTreeSet<String> = all
            .into_iter()
            .flat_map(|container| container.labels.unwrap_or_default())
            .chain(
                networks
                    .into_iter()
                    .flat_map(|network| network.labels.unwrap_or_default()),
            )
            .chain(ruled)
            .map(|(key, value)| format!("{key}={value}"))
            .filter(|label| {
                label.starts_with("e2e-")
                    && label.ends_with(&suffix)
                    && run_pid(label).is_some_and(|pid| !is_alive(pid))
            })
            .collect();
        Some(filters.into_iter().collect::<Vec<_>>())
    })
    .flatten()
    .unwrap_or_default();
    if !dead_filters.is_empty() {
        eprintln!(
            "removing the containers of {} dead e2e runs",
            dead_filters.len()
        );
        docker::sweep_blocking(dead_filters);
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
