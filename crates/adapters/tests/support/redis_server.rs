//! A throwaway `redis-server` for one test: loopback only, on a free port, no persistence.
//!
//! Dropping the handle kills and reaps the server, also when the test panics. If the test binary
//! itself is killed, `setpriv --pdeathsig KILL` makes the kernel kill the server with it (the
//! signal follows the spawning thread, which lives as long as the test). No files are written:
//! `--save ''`, `--appendonly no`, and the working directory is the system temp dir.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sandboxd_adapters::redis::RedisConfig;

pub type TestResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const REDIS_SERVER: &str = "redis-server";
const START_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
}

impl RedisServer {
    /// Starts a server on a free port (retrying another port if one was taken in between).
    pub async fn start() -> TestResult<Self> {
        let mut last_error = None;
        for _ in 0..5 {
            let port = free_port()?;
            match Self::start_on(port).await {
                Ok(server) => return Ok(server),
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.unwrap_or_else(|| "redis-server did not start".into()))
    }

    /// Starts a server on `port` and waits until it answers PING.
    pub async fn start_on(port: u16) -> TestResult<Self> {
        let mut server = Self {
            child: Some(spawn(port)?),
            port,
        };
        server.wait_ready().await?;
        Ok(server)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (like a crash: nothing is flushed) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a fresh (empty) server on the same port after [`Self::stop`].
    pub async fn restart(&mut self) -> TestResult {
        self.stop();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            self.child = Some(spawn(self.port)?);
            match self.wait_ready().await {
                Ok(()) => return Ok(()),
                // The old socket may linger for a moment: try again.
                Err(error) if Instant::now() < deadline => {
                    self.stop();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    let _ = error;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// A plain connection for assertions on the raw data.
    pub async fn connection(&self) -> TestResult<redis::aio::MultiplexedConnection> {
        let client = redis::Client::open(self.url())?;
        Ok(client.get_multiplexed_async_connection().await?)
    }

    /// Adapter settings for this server with a random key prefix (tests never share keys) and
    /// short timeouts so failures show quickly.
    pub fn config(&self) -> RedisConfig {
        RedisConfig {
            url: self.url(),
            key_prefix: random_prefix(),
            command_timeout: Duration::from_millis(500),
            lock_ttl: Duration::from_secs(2),
            lock_wait: Duration::from_millis(300),
            ..RedisConfig::default()
        }
    }

    async fn wait_ready(&mut self) -> TestResult {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                self.child = None;
                return Err(format!("redis-server on port {} exited: {status}", self.port).into());
            }
            if let Ok(mut con) = self.connection().await {
                let pong: Result<String, _> = redis::cmd("PING").query_async(&mut con).await;
                if pong.is_ok() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                self.stop();
                return Err(format!("redis-server on port {} never answered", self.port).into());
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

pub fn random_prefix() -> String {
    format!("test-{}", uuid::Uuid::new_v4().simple())
}

fn free_port() -> TestResult<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn spawn(port: u16) -> TestResult<Child> {
    let args = [
        "--port".to_owned(),
        port.to_string(),
        "--bind".to_owned(),
        "127.0.0.1".to_owned(),
        "--save".to_owned(),
        String::new(),
        "--appendonly".to_owned(),
        "no".to_owned(),
        "--daemonize".to_owned(),
        "no".to_owned(),
        "--dir".to_owned(),
        std::env::temp_dir().display().to_string(),
        "--loglevel".to_owned(),
        "warning".to_owned(),
    ];
    let mut command = if Path::new("/usr/bin/setpriv").exists() {
        let mut command = Command::new("setpriv");
        command.args(["--pdeathsig", "KILL", REDIS_SERVER]);
        command
    } else {
        Command::new(REDIS_SERVER)
    };
    let child = command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|error| format!("cannot run {REDIS_SERVER} (install redis-server): {error}"))?;
    Ok(child)
}
