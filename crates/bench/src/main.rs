//! `sandboxd-bench`: in one run, the floor of this machine (the engine creating, starting,
//! pausing, unpausing and removing the sandbox container directly through bollard; a Redis round
//! trip and a fenced Lua write) and sandboxd through gRPC (cold create, reuse, get, delete, pause,
//! resume, touch, cleanup passes, reuse throughput, memory; cold create and delete under gVisor's
//! runsc and runc), printed as min / p50 / p99 with each sandboxd figure's ratio to its floor.
//!
//! It starts its own `redis-server` and `sandboxd` processes, labels every container it causes,
//! and removes all of it at the end, also on error or Ctrl-C / SIGTERM.

mod engine;
mod phases;
mod procs;
mod report;
mod service;
mod stats;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use sandboxd_adapters::docker::LabelKeys;
use tokio::signal::unix::{SignalKind, signal};

use crate::report::Report;

/// Benchmark sandboxd against the engine and Redis floor of this machine.
#[derive(Debug, Clone, Parser)]
#[command(name = "sandboxd-bench", version)]
pub struct Args {
    /// Tiny run (2 iterations, 4 pause rounds, 4 cleanup sessions, 1 s throughput): checks the
    /// bench works.
    #[arg(long)]
    pub smoke: bool,
    /// Container iterations per figure (floor create/remove, cold create, delete) [default: 60]
    #[arg(long, value_name = "N")]
    pub iterations: Option<usize>,
    /// Rounds of pause and resume, each against the engine's pause and unpause [default: 200]
    #[arg(long, value_name = "N")]
    pub lifecycle_iterations: Option<usize>,
    /// Samples of the cheap figures (Redis, reuse, get, touch) [default: 2000]
    #[arg(long, value_name = "N")]
    pub micro_iterations: Option<usize>,
    /// Expired sessions per cleanup pass [default: 200]
    #[arg(long, value_name = "M")]
    pub cleanup_sessions: Option<usize>,
    /// Duration of each throughput run in seconds [default: 10]
    #[arg(long, value_name = "SECS")]
    pub throughput_secs: Option<f64>,
    /// Concurrent clients (one connection each) of the throughput runs
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub clients: usize,
    /// Sessions written into Redis for the memory figure [default: 10000]
    #[arg(long, value_name = "N")]
    pub rss_sessions: Option<usize>,
    /// The sandboxd binary [default: next to this binary, else target/release, else target/debug]
    #[arg(long, value_name = "PATH")]
    pub sandboxd: Option<PathBuf>,
    /// Also write the results as JSON to FILE
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Only these phases (comma-separated); the targets whose figures were not measured show "-"
    #[arg(long, value_enum, value_delimiter = ',', value_name = "PHASE")]
    pub phases: Vec<Phase>,
    /// Sandbox image (must exist locally; scripts/build-sandbox-image builds it)
    #[arg(long, env = "SANDBOX_IMAGE", default_value = "sandboxd/busybox:local")]
    pub image: String,
}

/// A part of the run, to re-measure one figure without the whole run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Phase {
    /// Engine floor create/remove, cold CreateSandbox and DeleteSandbox
    Containers,
    /// The same under gVisor's runsc and under runc, side by side (needs runsc registered)
    Runtimes,
    /// Redis and gRPC floors, reuse and get latency
    Micro,
    /// Pause and resume against the engine's pause and unpause; touch
    Lifecycle,
    /// Reuse and health Check rates from the concurrent clients
    Throughput,
    /// Peak RSS with sessions written into Redis
    Memory,
    /// Cleanup passes at concurrency 1 and the default, against the engine's stops
    Cleanup,
    /// CreateSandbox from the warm pool against a cold create of the same profile; a burst of
    /// 32; the refill rate against the engine's sequential create+start rate
    Pool,
    /// Fleet mode's hop: PauseSandbox and ResumeSandbox through the owning node and through
    /// another node of the same fleet
    Fleet,
}

/// The run's sizes, after `--smoke` and the defaults are applied.
#[derive(Debug, Clone)]
pub struct Plan {
    pub iterations: usize,
    pub lifecycle_iterations: usize,
    pub micro_iterations: usize,
    pub cleanup_sessions: usize,
    pub throughput: Duration,
    pub clients: usize,
    pub rss_sessions: usize,
    /// Live chats the throughput clients share (reuse needs no container per client).
    pub live_chats: usize,
    /// The phases to run; empty means all.
    pub phases: Vec<Phase>,
}

impl Plan {
    #[must_use]
    pub fn runs(&self, phase: Phase) -> bool {
        self.phases.is_empty() || self.phases.contains(&phase)
    }
}

impl Plan {
    fn from_args(args: &Args) -> Self {
        let pick = |value: Option<usize>, full: usize, smoke: usize| {
            value
                .unwrap_or(if args.smoke { smoke } else { full })
                .max(1)
        };
        Self {
            iterations: pick(args.iterations, 60, 2),
            lifecycle_iterations: pick(args.lifecycle_iterations, 200, 4),
            micro_iterations: pick(args.micro_iterations, 2000, 50),
            cleanup_sessions: pick(args.cleanup_sessions, 200, 4),
            throughput: Duration::from_secs_f64(
                args.throughput_secs
                    .unwrap_or(if args.smoke { 1.0 } else { 10.0 })
                    .clamp(0.1, 3600.0),
            ),
            clients: args.clients.max(1),
            rss_sessions: pick(args.rss_sessions, 10_000, 200),
            live_chats: 4,
            phases: args.phases.clone(),
        }
    }
}

/// Names and places of one run: everything it creates carries `prefix` or `run_id`.
#[derive(Debug)]
pub struct Scope {
    pub run_id: String,
    pub prefix: String,
    /// Volumes, configs, logs; removed on drop.
    pub dir: tempfile::TempDir,
}

impl Scope {
    fn new() -> Result<Self> {
        let run_id = uuid::Uuid::new_v4().simple().to_string();
        let prefix = format!("sbxbench-{}", run_id.get(..10).unwrap_or(&run_id));
        let dir = tempfile::Builder::new()
            .prefix("sandboxd-bench-")
            .tempdir()
            .context("creating the temp dir")?;
        Ok(Self {
            run_id,
            prefix,
            dir,
        })
    }

    /// The key prefix (and container label namespace) of one sandboxd instance.
    #[must_use]
    pub fn instance_prefix(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    /// Label filters matching every container this run may have caused.
    fn label_filters(&self) -> Vec<String> {
        let mut filters = vec![format!("{}={}", engine::RUN_LABEL, self.run_id)];
        for instance in phases::INSTANCES {
            filters.push(LabelKeys::new(&self.instance_prefix(instance)).managed_filter());
        }
        filters
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let plan = Plan::from_args(&args);
    let scope = match Scope::new() {
        Ok(scope) => scope,
        Err(error) => {
            eprintln!("sandboxd-bench: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!(
        "sandboxd-bench: run {} (prefix {}, temp {})",
        scope.run_id,
        scope.prefix,
        scope.dir.path().display()
    );
    let mut report = Report::default();
    // Dropping the run future (on a signal) drops the process handles, which kills them.
    let outcome = tokio::select! {
        result = phases::run(&args, &plan, &scope, &mut report) => result,
        name = interrupted() => Err(anyhow::anyhow!("interrupted by {name}")),
    };
    let teardown = teardown(&scope).await;
    let code = match (&outcome, &teardown) {
        (Ok(()), Ok(())) => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    };
    if let Err(error) = &outcome {
        eprintln!("sandboxd-bench: {error:#}");
    }
    if let Err(error) = &teardown {
        eprintln!("sandboxd-bench: teardown: {error:#}");
    }
    if outcome.is_ok() {
        println!("{}", report.table());
        if let Some(path) = &args.json {
            let written = serde_json::to_vec_pretty(&report.json())
                .map_err(anyhow::Error::from)
                .and_then(|bytes| std::fs::write(path, bytes).map_err(anyhow::Error::from));
            if let Err(error) = written {
                eprintln!("sandboxd-bench: writing {}: {error:#}", path.display());
                return ExitCode::FAILURE;
            }
            eprintln!("sandboxd-bench: JSON written to {}", path.display());
        }
    }
    code
}

/// SIGINT (Ctrl-C) or SIGTERM, by name.
async fn interrupted() -> &'static str {
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        // Without handlers the default action (exit) applies; never resolve here.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}

/// Removes every container of the run by label (settled: see `engine::sweep`). Then the pool's
/// mounts; the temp dir goes when `scope` drops.
async fn teardown(scope: &Scope) -> Result<()> {
    let docker = engine::client().await?;
    let filters = scope.label_filters();
    let removed = engine::sweep(&docker, &filters).await?;
    // The pool phase's slots (and any volume attached to one) are mounts under the temp dir:
    // unmounted before the directory is deleted, also after an interrupted run.
    sandboxd_testkit::pool::unmount_all_under(scope.dir.path());
    if removed > 0 {
        eprintln!("sandboxd-bench: teardown removed {removed} container(s)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn phases_select_parts_of_the_run_and_none_means_all() {
        let all = Plan::from_args(&Args::try_parse_from(["sandboxd-bench", "--smoke"]).unwrap());
        assert!(all.runs(Phase::Containers) && all.runs(Phase::Cleanup));
        assert!(
            all.runs(Phase::Lifecycle),
            "the smoke run includes the lifecycle phase"
        );
        assert!(
            all.runs(Phase::Runtimes),
            "the smoke run creates runsc sandboxes too"
        );

        let args = Args::try_parse_from(["sandboxd-bench", "--phases", "micro,cleanup"]).unwrap();
        let some = Plan::from_args(&args);
        assert!(some.runs(Phase::Micro) && some.runs(Phase::Cleanup));
        assert!(!some.runs(Phase::Containers));
        assert!(!some.runs(Phase::Throughput));
        assert!(!some.runs(Phase::Memory));
        assert!(!some.runs(Phase::Lifecycle));
        assert!(!some.runs(Phase::Runtimes));
        assert_eq!(some.iterations, 60, "the full run's sizes stay the default");

        assert!(Args::try_parse_from(["sandboxd-bench", "--phases", "everything"]).is_err());
    }
}
