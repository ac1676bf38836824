//! One spawned `sandboxd` process: started from a config file with its output in a log file (a
//! file, not a pipe: a busy server must never block on an undrained pipe), its addresses read from
//! the log, signals, exit, and its memory from `/proc`.
//!
//! The process is killed when the handle drops (an error, a panic, Ctrl-C of the bench) and, where
//! `setpriv` exists, also when the spawning thread dies (`--pdeathsig KILL`; setpriv execs, so the
//! pid is sandboxd's).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::{Error, Result};

/// How long a fresh process may take to log both listening addresses.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// What to start: the binary, its config file, extra flags and environment, and the log file.
#[derive(Debug, Clone)]
pub struct Launch {
    pub binary: PathBuf,
    pub config_path: PathBuf,
    /// Extra command-line flags after `--config FILE`.
    pub args: Vec<String>,
    /// Extra environment; every inherited `SANDBOXD_*` variable is removed first so the caller's
    /// shell cannot override the file.
    pub env: Vec<(String, String)>,
    /// Where stdout and stderr go (created, or truncated).
    pub log_path: PathBuf,
}

/// A running (or exited) `sandboxd` and the addresses it logged.
#[derive(Debug)]
pub struct SandboxdProcess {
    /// `None` once reaped.
    child: Option<Child>,
    pid: u32,
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub log_path: PathBuf,
    /// Print the log when dropped during a panic (tests); the bench points at the file instead.
    print_log_on_panic: bool,
}

impl SandboxdProcess {
    /// Starts the process and waits until it has logged `grpc_listening` and `http_listening`.
    ///
    /// # Errors
    /// When it cannot be spawned, exits during start or logs no addresses within
    /// [`START_TIMEOUT`]; the message carries the end of its log.
    pub async fn start(launch: &Launch) -> Result<Self> {
        let mut process = Self::spawn(launch)?;
        (process.grpc_addr, process.http_addr) = process.wait_for_addresses().await?;
        Ok(process)
    }

    /// Starts the process expecting it to refuse to start (a setting the engine cannot honour):
    /// waits for it to exit and returns its status and everything it printed.
    ///
    /// # Errors
    /// When it cannot be spawned, or still runs after [`START_TIMEOUT`] (it is then killed).
    pub async fn run_refused(launch: &Launch) -> Result<(ExitStatus, String)> {
        let mut process = Self::spawn(launch)?;
        process.quiet();
        match process.wait_for_exit(START_TIMEOUT).await {
            Ok(status) => Ok((status, process.log())),
            Err(error) => Err(Error::Failed(format!(
                "{error}: it started instead of refusing\n--- sandboxd log ---\n{}",
                process.log()
            ))),
        }
    }

    /// Spawns the process, its output into the log file; its addresses are not known yet.
    fn spawn(launch: &Launch) -> Result<Self> {
        let log = std::fs::File::create(&launch.log_path)?;
        let mut command = if Path::new("/usr/bin/setpriv").exists() {
            let mut command = Command::new("/usr/bin/setpriv");
            command.args(["--pdeathsig", "KILL"]).arg(&launch.binary);
            command
        } else {
            Command::new(&launch.binary)
        };
        command
            .arg("--config")
            .arg(&launch.config_path)
            .args(&launch.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("SANDBOXD_") {
                command.env_remove(name);
            }
        }
        command.envs(launch.env.iter().map(|(k, v)| (k, v)));
        let child = command.spawn().map_err(|error| {
            Error::Failed(format!("starting {}: {error}", launch.binary.display()))
        })?;
        Ok(Self {
            pid: child.id(),
            child: Some(child),
            grpc_addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            http_addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            log_path: launch.log_path.clone(),
            print_log_on_panic: true,
        })
    }

    /// Do not print the log when dropped during a panic.
    pub fn quiet(&mut self) {
        self.print_log_on_panic = false;
    }

    #[must_use]
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// `http://127.0.0.1:PORT` of the gRPC listener.
    #[must_use]
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.grpc_addr)
    }

    /// Everything the process has printed so far (stdout and stderr, interleaved by line).
    #[must_use]
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    async fn wait_for_addresses(&mut self) -> Result<(SocketAddr, SocketAddr)> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let log = self.log();
            if let (Some(grpc), Some(http)) = (
                logged_addr(&log, "grpc_listening"),
                logged_addr(&log, "http_listening"),
            ) {
                return Ok((grpc, http));
            }
            if let Some(status) = self.try_wait()? {
                return Err(Error::Failed(format!(
                    "sandboxd exited during start ({status})\n--- sandboxd log ---\n{}",
                    self.log()
                )));
            }
            if Instant::now() > deadline {
                return Err(Error::Failed(format!(
                    "sandboxd did not log its addresses within {START_TIMEOUT:?}\n\
                     --- sandboxd log ---\n{log}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Sends any signal (`TERM`, `KILL`, `STOP`, `CONT`, ...) through `kill(1)`: the workspace
    /// forbids the unsafe code libc would need.
    ///
    /// # Errors
    /// When the process was reaped already or `kill` fails.
    pub fn signal(&self, signal: &str) -> Result<()> {
        if self.child.is_none() {
            return Err(Error::Failed("sandboxd is not running".to_owned()));
        }
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid.to_string())
            .status()?;
        if status.success() {
            Ok(())
        } else {
            Err(Error::Failed(format!("kill -{signal} {} failed", self.pid)))
        }
    }

    fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        let Some(child) = self.child.as_mut() else {
            return Err(Error::Failed("sandboxd was reaped already".to_owned()));
        };
        let status = child.try_wait()?;
        if status.is_some() {
            self.child = None;
        }
        Ok(status)
    }

    /// Waits for the process to exit and returns its status.
    ///
    /// # Errors
    /// When it has not exited within `timeout` (it keeps running).
    pub async fn wait_for_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                return Err(Error::Failed(format!(
                    "sandboxd did not exit within {timeout:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM (drain, as in production), then SIGKILL if it has not exited within `timeout`.
    ///
    /// # Errors
    /// When it needed the SIGKILL.
    pub async fn stop(mut self, timeout: Duration) -> Result<()> {
        self.signal("TERM")?;
        match self.wait_for_exit(timeout).await {
            Ok(_) => Ok(()),
            Err(_) => {
                self.kill();
                Err(Error::Failed(format!(
                    "sandboxd did not exit within {timeout:?} of SIGTERM"
                )))
            }
        }
    }

    /// SIGKILL and reap, at once.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `VmHWM` and `VmRSS` of the process.
    ///
    /// # Errors
    /// When `/proc/<pid>/status` cannot be read or lacks them.
    pub fn memory(&self) -> Result<Memory> {
        let status = ProcStatus::read(self.pid)?;
        let field = |name: &str| {
            status
                .kib(name)
                .map(|kib| kib * 1024)
                .ok_or_else(|| Error::Failed(format!("no {name} in /proc/{}/status", self.pid)))
        };
        Ok(Memory {
            peak: field("VmHWM")?,
            current: field("VmRSS")?,
        })
    }
}

impl Drop for SandboxdProcess {
    fn drop(&mut self) {
        self.kill();
        if self.print_log_on_panic && std::thread::panicking() {
            // Shown with the failure (the test harness captures it otherwise).
            eprintln!(
                "--- sandboxd log ---\n{}--- end of sandboxd log ---",
                self.log()
            );
        }
    }
}

/// Resident set sizes of a process, in bytes.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    pub peak: u64,
    pub current: u64,
}

/// `/proc/<pid>/status` as read once.
#[derive(Debug, Clone)]
pub struct ProcStatus {
    text: String,
}

impl ProcStatus {
    /// # Errors
    /// When the process is gone.
    pub fn read(pid: u32) -> Result<Self> {
        Ok(Self {
            text: std::fs::read_to_string(format!("/proc/{pid}/status"))?,
        })
    }

    /// The first number of the line `{name}:` (`Threads`, or `VmRSS` and others in KiB).
    #[must_use]
    pub fn kib(&self, name: &str) -> Option<u64> {
        self.text
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|value| value.parse().ok())
    }
}

/// The address logged on the line with `event`: `event addr=1.2.3.4:5` (text) or
/// `"message":"event",...,"addr":"1.2.3.4:5"` (JSON).
#[must_use]
pub fn logged_addr(log: &str, event: &str) -> Option<SocketAddr> {
    let line = log.lines().find(|line| line.contains(event))?;
    let raw = if let Some((_, rest)) = line.split_once("\"addr\":\"") {
        rest.split('"').next()?
    } else {
        let (_, rest) = line.split_once("addr=")?;
        rest.split_whitespace().next()?
    };
    raw.parse().ok()
}
