//! The processes the bench starts, through the test kit's launchers: a private `redis-server`
//! and `sandboxd` instances, each killed when its handle is dropped, so an error or Ctrl-C anywhere
//! in the run still stops them; a clean stop sends SIGTERM first so sandboxd drains as in
//! production. Also the bench's own choice of binary and its CPU figures.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use sandboxd_testkit::AppConfig;
use sandboxd_testkit::app_config::toml_string;
use sandboxd_testkit::process::SandboxdProcess;

/// How long a SIGTERMed sandboxd may drain before it is killed.
pub(crate) const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A sandboxd instance's configuration: listeners on port 0, no background cleanup, and a
/// `default` profile identical to the example config's (and to the floor container).
#[must_use]
pub(crate) fn instance_config(
    image: &str,
    session_ttl: &str,
    cleanup_concurrency: usize,
) -> AppConfig {
    AppConfig {
        session_ttl: session_ttl.to_owned(),
        stop_grace: "2s".to_owned(),
        extra_toml: format!("cleanup_concurrency = {cleanup_concurrency}\n"),
        profile: format!(
            "image = {}\nport = 8080\nready_probe = \"http\"\nmount_target = \"/workspace\"\n\
             memory = \"512m\"\ncpus = 1.0\npids_limit = 256\n",
            toml_string(image)
        ),
        ..AppConfig::default()
    }
}

/// Writes `{name}.toml` into `dir` and starts `binary` with it, its output in `{name}.log`
/// there, and waits for its addresses; `name` is also its key prefix.
pub(crate) async fn start_sandboxd(
    binary: &Path,
    dir: &Path,
    name: &str,
    config: &AppConfig,
    redis_url: &str,
    volume_root: &Path,
) -> Result<SandboxdProcess> {
    start_sandboxd_as(binary, dir, name, name, config, redis_url, volume_root).await
}

/// [`start_sandboxd`] with files named `{file}.*` and the key prefix `prefix`: several processes
/// of one deployment (the nodes of a fleet).
pub(crate) async fn start_sandboxd_as(
    binary: &Path,
    dir: &Path,
    file: &str,
    prefix: &str,
    config: &AppConfig,
    redis_url: &str,
    volume_root: &Path,
) -> Result<SandboxdProcess> {
    let config_path = dir.join(format!("{file}.toml"));
    let pool_root = dir.join(format!("{file}-pool"));
    std::fs::write(
        &config_path,
        config.render(redis_url, prefix, volume_root, &pool_root),
    )?;
    let launch = config.launch(
        binary.to_path_buf(),
        config_path,
        dir.join(format!("{file}.log")),
    );
    let mut process = SandboxdProcess::start(&launch).await?;
    process.quiet();
    Ok(process)
}

/// User + system CPU time a process has used so far (`/proc/<pid>/stat`, or `self`). Ticks are
/// assumed to be 1/100 s (`getconf CLK_TCK` on Linux); fine for runs of seconds.
pub(crate) fn cpu_time(pid: &str) -> Result<Duration> {
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

/// The sandboxd binary: `--sandboxd PATH`, else the sibling of this executable (same profile),
/// else the workspace's release build, else its debug build.
pub(crate) fn find_sandboxd(explicit: Option<&Path>) -> Result<PathBuf> {
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
