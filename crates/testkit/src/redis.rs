//! A throwaway `redis-server`: loopback only, on a free port, no persistence.
//!
//! Dropping the handle kills and reaps the server, also when a test panics or the bench is
//! interrupted. If the whole process is killed, `setpriv --pdeathsig KILL` (when installed) makes
//! the kernel kill the server with it: the signal follows the spawning thread, which lives as long
//! as the test or the bench's runtime. Nothing is persisted (`--save ''`, `--appendonly no`).
//! [`RedisServer::stop`] and [`RedisServer::restart`] stand for an outage and its end.
//!
//! [`RedisServer::start_with`] adds `redis-server` arguments (a TLS port, `--replicaof`, ACL
//! users); [`Sentinel`] is a `redis-sentinel` watching one primary, for failover tests.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Error, Result};

const REDIS_SERVER: &str = "redis-server";
const REDIS_SENTINEL: &str = "redis-sentinel";
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts on a fresh free port: another process may take the probed port before the server
/// binds it.
const PORT_ATTEMPTS: usize = 5;

/// A free loopback port (a small race until a child binds it: callers retry).
///
/// # Errors
/// When no port can be bound.
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// One running (or, after [`RedisServer::stop`], stopped) `redis-server`.
#[derive(Debug)]
pub struct RedisServer {
    /// `None` while stopped.
    child: Option<Child>,
    port: u16,
    /// Where the server's files and its log go (`redis-{port}.log`); `None`: the system temp dir
    /// and no log.
    dir: Option<PathBuf>,
    /// Appended to the command line (later arguments win in redis-server).
    extra_args: Vec<String>,
}

impl RedisServer {
    /// Starts a quiet server on a free port.
    ///
    /// # Errors
    /// When `redis-server` cannot be run or never answers PING.
    pub async fn start() -> Result<Self> {
        Self::start_with_dir(None).await
    }

    /// Starts a server on a free port with its files and log (`redis-{port}.log`) in `dir`.
    ///
    /// # Errors
    /// As [`Self::start`], and when the log file cannot be created.
    pub async fn start_in(dir: &Path) -> Result<Self> {
        Self::start_with_dir(Some(dir.to_path_buf())).await
    }

    /// Starts a server on a free port with its files and log in `dir` and `extra_args` appended
    /// (`--tls-port`, `--replicaof`, `--user`, ...). Readiness is a reply on the plain port, an
    /// error reply (NOAUTH) included.
    ///
    /// # Errors
    /// As [`Self::start_in`].
    pub async fn start_with(dir: &Path, extra_args: &[&str]) -> Result<Self> {
        Self::start_with_args(
            Some(dir.to_path_buf()),
            extra_args.iter().map(|arg| (*arg).to_owned()).collect(),
        )
        .await
    }

    async fn start_with_dir(dir: Option<PathBuf>) -> Result<Self> {
        Self::start_with_args(dir, Vec::new()).await
    }

    async fn start_with_args(dir: Option<PathBuf>, extra_args: Vec<String>) -> Result<Self> {
        let mut last_error = Error::Failed(format!("{REDIS_SERVER} did not start"));
        for _ in 0..PORT_ATTEMPTS {
            let mut server = Self {
                child: None,
                port: free_port()?,
                dir: dir.clone(),
                extra_args: extra_args.clone(),
            };
            match server.launch().await {
                Ok(()) => return Ok(server),
                Err(error) => last_error = error,
            }
        }
        Err(last_error)
    }

    /// Starts a server on `port` and waits until it answers PING.
    ///
    /// # Errors
    /// As [`Self::start`].
    pub async fn start_on(port: u16) -> Result<Self> {
        let mut server = Self {
            child: None,
            port,
            dir: None,
            extra_args: Vec::new(),
        };
        server.launch().await?;
        Ok(server)
    }

    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    #[must_use]
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The server's process id (for CPU figures); `None` while stopped.
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the server (SIGKILL: an outage, not a shutdown; its data is gone) and reaps it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a fresh (empty) server on the same port, retrying while the old socket lingers.
    ///
    /// # Errors
    /// When the server does not answer within the start timeout.
    pub async fn restart(&mut self) -> Result<()> {
        self.stop();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match self.launch().await {
                Ok(()) => return Ok(()),
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// A plain connection, for assertions on the raw data.
    ///
    /// # Errors
    /// When the server does not accept a connection.
    pub async fn connection(&self) -> Result<::redis::aio::MultiplexedConnection> {
        let client = ::redis::Client::open(self.url())?;
        Ok(client.get_multiplexed_async_connection().await?)
    }

    /// Spawns the process and waits for PING; on failure the process is gone again.
    async fn launch(&mut self) -> Result<()> {
        self.child = Some(self.spawn()?);
        let outcome = self.wait_ready().await;
        if outcome.is_err() {
            self.stop();
        }
        outcome
    }

    fn spawn(&self) -> Result<Child> {
        let mut command = dying_with_parent(REDIS_SERVER);
        let dir = self.dir.clone().unwrap_or_else(std::env::temp_dir);
        command
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .args(["--protected-mode", "yes"])
            .arg("--dir")
            .arg(&dir)
            .args(&self.extra_args)
            .stdin(Stdio::null());
        if self.dir.is_some() {
            let log = File::create(dir.join(format!("redis-{}.log", self.port)))?;
            command.stdout(log.try_clone()?).stderr(log);
        } else {
            command
                .args(["--loglevel", "warning"])
                .stdout(Stdio::null())
                .stderr(Stdio::null());
        }
        command.spawn().map_err(|error| {
            Error::Failed(format!(
                "cannot run {REDIS_SERVER} (install redis-server): {error}"
            ))
        })
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                self.child = None;
                return Err(Error::Failed(format!(
                    "{REDIS_SERVER} on port {} exited: {status}",
                    self.port
                )));
            }
            if answers_ping(self.port).await {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::Failed(format!(
                    "{REDIS_SERVER} on port {} never answered PING",
                    self.port
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// `program` under `setpriv --pdeathsig KILL` when installed, so it dies with the test.
fn dying_with_parent(program: &str) -> Command {
    if Path::new("/usr/bin/setpriv").exists() {
        let mut command = Command::new("/usr/bin/setpriv");
        command.args(["--pdeathsig", "KILL", program]);
        command
    } else {
        Command::new(program)
    }
}

/// True when something on the port replies to PING, PONG or an error reply (a server whose
/// default user needs a password answers NOAUTH: it is up).
async fn answers_ping(port: u16) -> bool {
    let Ok(client) = ::redis::Client::open(format!("redis://127.0.0.1:{port}")) else {
        return false;
    };
    let Ok(mut con) = client.get_multiplexed_async_connection().await else {
        return false;
    };
    match ::redis::cmd("PING").query_async::<String>(&mut con).await {
        Ok(_) => true,
        Err(error) => error.kind() != ::redis::ErrorKind::Io && !error.is_io_error(),
    }
}

/// One running `redis-sentinel` on a free loopback port, monitoring one primary as
/// [`Sentinel::MASTER_NAME`]; killed and reaped on drop (and with the test, by pdeathsig).
#[derive(Debug)]
pub struct Sentinel {
    child: Child,
    port: u16,
}

impl Sentinel {
    /// The master name every test sentinel monitors.
    pub const MASTER_NAME: &'static str = "sandboxd-test";

    /// Starts a sentinel watching `127.0.0.1:primary_port` with quorum `quorum`: the primary is
    /// down after `down_after` without a reply, a failover is retried after `failover_timeout`.
    /// Its config (which sentinel rewrites) and log live in `dir`.
    ///
    /// # Errors
    /// When `redis-sentinel` cannot be run (install Debian's `redis-sentinel`) or never answers.
    pub async fn start(
        dir: &Path,
        primary_port: u16,
        quorum: u32,
        down_after: Duration,
        failover_timeout: Duration,
    ) -> Result<Self> {
        let mut last_error = Error::Failed(format!("{REDIS_SENTINEL} did not start"));
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port()?;
            let config = dir.join(format!("sentinel-{port}.conf"));
            let name = Self::MASTER_NAME;
            std::fs::write(
                &config,
                format!(
                    "port {port}\nbind 127.0.0.1\ndaemonize no\ndir {dir}\n\
                     sentinel monitor {name} 127.0.0.1 {primary_port} {quorum}\n\
                     sentinel down-after-milliseconds {name} {down}\n\
                     sentinel failover-timeout {name} {failover}\n\
                     sentinel parallel-syncs {name} 1\n",
                    dir = dir.display(),
                    down = down_after.as_millis(),
                    failover = failover_timeout.as_millis(),
                ),
            )?;
            let log = File::create(dir.join(format!("sentinel-{port}.log")))?;
            let child = dying_with_parent(REDIS_SENTINEL)
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .map_err(|error| {
                    Error::Failed(format!(
                        "cannot run {REDIS_SENTINEL} (install redis-sentinel): {error}"
                    ))
                })?;
            let mut sentinel = Self { child, port };
            match sentinel.wait_ready().await {
                Ok(()) => return Ok(sentinel),
                Err(error) => last_error = error,
            }
        }
        Err(last_error)
    }

    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `host:port` as a `redis+sentinel://` URL lists it.
    #[must_use]
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A connection to the sentinel, for `SENTINEL ...` queries.
    ///
    /// # Errors
    /// When the sentinel does not accept a connection.
    pub async fn connection(&self) -> Result<::redis::aio::MultiplexedConnection> {
        let client = ::redis::Client::open(format!("redis://127.0.0.1:{}", self.port))?;
        Ok(client.get_multiplexed_async_connection().await?)
    }

    /// The port of the primary this sentinel currently names.
    ///
    /// # Errors
    /// When the sentinel does not answer.
    pub async fn primary_port(&self) -> Result<u16> {
        let mut con = self.connection().await?;
        let (_host, port): (String, u16) = ::redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(Self::MASTER_NAME)
            .query_async(&mut con)
            .await?;
        Ok(port)
    }

    /// How many other sentinels and replicas this sentinel knows of: a failover needs both.
    ///
    /// # Errors
    /// When the sentinel does not answer.
    pub async fn known_peers(&self) -> Result<(usize, usize)> {
        let mut con = self.connection().await?;
        let sentinels: Vec<::redis::Value> = ::redis::cmd("SENTINEL")
            .arg("sentinels")
            .arg(Self::MASTER_NAME)
            .query_async(&mut con)
            .await?;
        let replicas: Vec<::redis::Value> = ::redis::cmd("SENTINEL")
            .arg("replicas")
            .arg(Self::MASTER_NAME)
            .query_async(&mut con)
            .await?;
        Ok((sentinels.len(), replicas.len()))
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Err(Error::Failed(format!(
                    "{REDIS_SENTINEL} on port {} exited: {status}",
                    self.port
                )));
            }
            if answers_ping(self.port).await {
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return Err(Error::Failed(format!(
                    "{REDIS_SENTINEL} on port {} never answered PING",
                    self.port
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Persistence, for crash tests: a server whose data survives its own SIGKILL.
impl RedisServer {
    /// Kills the server and starts it again on the same port with its files (and its log) in
    /// `dir` and AOF on with `appendfsync always`: every write acknowledged before a later
    /// SIGKILL ([`Self::restart`], which keeps these settings) is loaded again. An empty `dir`
    /// gives an empty server.
    ///
    /// # Errors
    /// As [`Self::restart`].
    pub async fn restart_with_aof(&mut self, dir: &Path) -> Result<()> {
        self.dir = Some(dir.to_path_buf());
        self.extra_args = ["--appendonly", "yes", "--appendfsync", "always"]
            .map(str::to_owned)
            .to_vec();
        self.restart().await
    }
}
