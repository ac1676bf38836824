//! The processes the bench starts: a private `redis-server` and `sandboxd` instances. Each is
//! killed when its handle is dropped (`kill_on_drop`), so an error or Ctrl-C anywhere in the run
//! still stops them; a clean stop sends SIGTERM first so sandboxd drains as in production.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use tokio::process::{Child, Command};

const START_TIMEOUT: Duration = Duration::from_secs(20);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A free loopback port (there is a small race until the child binds it; callers retry).
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding a probe port")?;
    Ok(listener.local_addr()?.port())
}

/// A `redis-server` on loopback with no persistence, its files in `dir`.
#[derive(Debug)]
pub struct RedisProcess {
    child: Child,
    pub port: u16,
}

impl RedisProcess {
    pub async fn start(dir: &Path) -> Result<Self> {
        let mut last_error = anyhow!("redis-server did not start");
        for _ in 0..5 {
            let port = free_port()?;
            match Self::start_on(dir, port).await {
                Ok(redis) => return Ok(redis),
                Err(error) => last_error = error,
            }
        }
        Err(last_error)
    }

    async fn start_on(dir: &Path, port: u16) -> Result<Self> {
        let log = std::fs::File::create(dir.join(format!("redis-{port}.log")))?;
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ])
            .arg("--dir")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("spawning redis-server (is it installed?)")?;
        let mut redis = Self { child, port };
        let client = redis::Client::open(redis.url())?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = redis.child.try_wait()? {
                bail!("redis-server exited at start ({status}) on port {port}");
            }
            if let Ok(mut con) = client.get_multiplexed_async_connection().await
                && redis::cmd("PING")
                    .query_async::<String>(&mut con)
                    .await
                    .is_ok()
            {
                return Ok(redis);
            }
            if Instant::now() > deadline {
                bail!("redis-server on port {port} did not answer PING");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[must_use]
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// What a sandboxd instance is configured with (the rest are its defaults).
#[derive(Debug, Clone)]
pub struct SandboxdSettings {
    pub redis_url: String,
    pub key_prefix: String,
    pub session_ttl: &'static str,
    pub cleanup_concurrency: usize,
    pub volume_root: PathBuf,
    pub image: String,
}

impl SandboxdSettings {
    /// The instance's TOML: listeners on port 0, no background cleanup, one `default` profile
    /// identical to the example config's (and to the floor container).
    fn toml(&self) -> String {
        format!(
            r#"grpc_addr = "127.0.0.1:0"
http_addr = "127.0.0.1:0"
redis_url = "{redis}"
key_prefix = "{prefix}"
session_ttl = "{ttl}"
cleanup_interval = "0s"
cleanup_concurrency = {concurrency}
allowed_volume_roots = [{root:?}]
stop_grace = "2s"

[agents.default]
image = "{image}"
port = 8080
ready_probe = "http"
mount_target = "/workspace"
memory = "512m"
cpus = 1.0
pids_limit = 256
"#,
            redis = self.redis_url,
            prefix = self.key_prefix,
            ttl = self.session_ttl,
            concurrency = self.cleanup_concurrency,
            root = self.volume_root.display().to_string(),
            image = self.image,
        )
    }
}

/// A running `sandboxd` and the addresses it logged.
#[derive(Debug)]
pub struct SandboxdProcess {
    child: Child,
    pub pid: u32,
    pub grpc_addr: SocketAddr,
    pub log_path: PathBuf,
}

impl SandboxdProcess {
    /// Writes the config into `dir`, starts `binary --config FILE` with its output in a log file
    /// there (a file, not a pipe: a busy server must never block on an undrained pipe), and waits
    /// for `grpc_listening addr=...`.
    pub async fn start(binary: &Path, dir: &Path, settings: &SandboxdSettings) -> Result<Self> {
        let name = &settings.key_prefix;
        let config_path = dir.join(format!("{name}.toml"));
        std::fs::write(&config_path, settings.toml())?;
        let log_path = dir.join(format!("{name}.log"));
        let log = std::fs::File::create(&log_path)?;
        let mut command = Command::new(binary);
        command
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        // SANDBOXD_* variables of the caller would override the file: the bench's config wins.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("SANDBOXD_") {
                command.env_remove(&key);
            }
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("spawning {}", binary.display()))?;
        let pid = child
            .id()
            .ok_or_else(|| anyhow!("sandboxd exited at once"))?;
        let deadline = Instant::now() + START_TIMEOUT;
        let grpc_addr = loop {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            if let Some(addr) = logged_addr(&text, "grpc_listening") {
                break addr;
            }
            if let Some(status) = child.try_wait()? {
                bail!(
                    "sandboxd exited at start ({status}); log:\n{}",
                    tail(&text, 20)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "sandboxd did not log grpc_listening; log:\n{}",
                    tail(&text, 20)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        Ok(Self {
            child,
            pid,
            grpc_addr,
            log_path,
        })
    }

    #[must_use]
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.grpc_addr)
    }

    /// `VmHWM` and `VmRSS` of the process in bytes.
    pub fn memory(&self) -> Result<Memory> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        let field = |name: &str| -> Result<u64> {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| rest.trim().strip_suffix("kB"))
                .and_then(|kb| kb.trim().parse::<u64>().ok())
                .map(|kb| kb * 1024)
                .ok_or_else(|| anyhow!("no {name} in /proc/{}/status", self.pid))
        };
        Ok(Memory {
            peak: field("VmHWM:")?,
            current: field("VmRSS:")?,
        })
    }

    /// SIGTERM (drain), then SIGKILL if it has not exited within [`STOP_TIMEOUT`].
    pub async fn stop(mut self) -> Result<()> {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        match tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await {
            Ok(status) => {
                status?;
                Ok(())
            }
            Err(_) => {
                self.child.start_kill()?;
                self.child.wait().await?;
                bail!("sandboxd did not exit within {STOP_TIMEOUT:?} of SIGTERM");
            }
        }
    }
}

/// Resident set sizes of a process.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    pub peak: u64,
    pub current: u64,
}

/// User + system CPU time a process has used so far (`/proc/<pid>/stat`, or `self`). Ticks are
/// assumed to be 1/100 s (`getconf CLK_TCK` on Linux); fine for runs of seconds.
pub fn cpu_time(pid: &str) -> Result<Duration> {
    const TICKS_PER_SEC: u64 = 100;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may contain spaces; the fields after its closing parenthesis do not.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| anyhow!("unexpected /proc/{pid}/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3 of proc(5); utime and stime are fields 14 and 15.
    let tick = |index: usize| -> Result<u64> {
        fields
            .get(index)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow!("no field {index} in /proc/{pid}/stat"))
    };
    let ticks = tick(11)? + tick(12)?;
    Ok(Duration::from_millis(ticks * 1000 / TICKS_PER_SEC))
}

/// The address in the first `{event} addr=HOST:PORT` line of a text log.
fn logged_addr(log: &str, event: &str) -> Option<SocketAddr> {
    let marker = format!("{event} addr=");
    log.lines().find_map(|line| {
        let rest = &line[line.find(&marker)? + marker.len()..];
        rest.split_whitespace().next()?.parse().ok()
    })
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The sandboxd binary: `--sandboxd PATH`, else the sibling of this executable (same profile),
/// else the workspace's release build, else its debug build.
pub fn find_sandboxd(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(path) = explicit {
        if path.is_file() {
            return Ok(path.to_path_buf());
        }
        bail!("--sandboxd {}: no such file", path.display());
    }
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        candidates.push(dir.join("sandboxd"));
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    candidates.push(workspace.join("target/release/sandboxd"));
    candidates.push(workspace.join("target/debug/sandboxd"));
    candidates
        .into_iter()
        .find(|path| path.is_file())
        .ok_or_else(|| {
            anyhow!(
                "no sandboxd binary found: build it (cargo build --release -p sandboxd-server) \
                 or pass --sandboxd PATH"
            )
        })
}
