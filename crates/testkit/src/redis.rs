//! A throwaway `redis-server`: loopback only, on a free port, no persistence.
//!
//! Dropping the handle kills and reaps the server, also when a test panics or the bench is
//! interrupted. If the whole process is killed, `setpriv --pdeathsig KILL` (when installed) makes
//! the kernel kill the server with it: the signal follows the spawning thread, which lives as long
//! as the test or the bench's runtime. Nothing is persisted (`--save ''`, `--appendonly no`).
//! [`RedisServer::stop`] and [`RedisServer::restart`] stand for an outage and its end.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Error, Result};

const REDIS_SERVER: &str = "redis-server";
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
    /// Appended to the launch arguments, overriding the defaults ([`Self::restart_with_aof`]).
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

    async fn start_with_dir(dir: Option<PathBuf>) -> Result<Self> {
        let mut last_error = Error::Failed(format!("{REDIS_SERVER} did not start"));
        for _ in 0..PORT_ATTEMPTS {
            let mut server = Self {
                child: None,
                port: free_port()?,
                dir: dir.clone(),
                extra_args: Vec::new(),
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
        let mut command = if Path::new("/usr/bin/setpriv").exists() {
            let mut command = Command::new("/usr/bin/setpriv");
            command.args(["--pdeathsig", "KILL", REDIS_SERVER]);
            command
        } else {
            Command::new(REDIS_SERVER)
        };
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
            if let Ok(mut con) = self.connection().await {
                let pong: Result<String, _> = ::redis::cmd("PING").query_async(&mut con).await;
                if pong.is_ok() {
                    return Ok(());
                }
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
