//! The measurements, in the order one run takes them. Floor and sandboxd samples of the same
//! figure are interleaved (one of each per iteration), so load from anything else on this shared
//! machine hits both series alike and the ratios stay meaningful.
//!
//! One module per phase; this one runs them in order and holds what they share: the row names,
//! the volumes, the processes and the report helpers.

mod cleanup;
mod containers;
mod fleet;
mod lifecycle;
mod memory;
mod micro;
mod pool;
mod runtimes;
mod targets;
mod throughput;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use sandboxd_domain::{
    AgentId, ChatId, ContainerId, Endpoint, EventNote, EventReason, EventType, SandboxSession,
    SandboxState, SessionId, VolumePath,
};
use sandboxd_testkit::process::SandboxdProcess;
use sandboxd_testkit::{AppConfig, RedisServer};
use tonic::transport::Channel;

use crate::engine::Engine;
use crate::procs;
use crate::report::Report;
use crate::service;
use crate::{Args, Phase, Plan, Scope};

/// The instance every phase but cleanup measures.
const MAIN: &str = "main";
/// The sandboxd instances a run starts (their names suffix the run's key prefix).
pub(crate) const INSTANCES: [&str; 5] =
    [MAIN, "c1", "c8", pool::POOL_INSTANCE, fleet::FLEET_INSTANCE];
/// sandboxd's default `cleanup_concurrency`.
const DEFAULT_CLEANUP_CONCURRENCY: usize = 8;
/// Creates in flight while preparing the cleanup sessions (not timed).
const PREPARE_CONCURRENCY: usize = 8;
/// Lease/save tasks in flight while writing the memory figure's sessions (not timed).
const WRITE_CONCURRENCY: usize = 32;
const SERVING_TIMEOUT: Duration = Duration::from_secs(30);
const MIB: f64 = 1024.0 * 1024.0;

// Row names, shared by the rows, their floors and the targets.
const FLOOR_CREATE: &str = "floor engine create+start+ready";
const FLOOR_CREATE_CALL: &str = "floor   create call";
const FLOOR_START_CALL: &str = "floor   start call";
const FLOOR_INSPECT_CALL: &str = "floor   inspect call";
const FLOOR_READY: &str = "floor   ready after inspect";
const FLOOR_REMOVE: &str = "floor engine forced removal";
const FLOOR_PING: &str = "floor redis PING";
const FLOOR_SAVE: &str = "floor redis fenced save (Lua)";
const FLOOR_LOCKED_SAVE: &str = "floor redis lock+save+release";
const FLOOR_GRPC: &str = "floor gRPC health Check";
const FLOOR_GRPC_REDIS: &str = "floor gRPC Check + redis PING";
// The round trip sandboxd's reuse makes (the read-and-touch Lua script, matching agent and
// volume, through the same adapter), from the bench: splits reuse's distance to its floor into
// Redis's share and sandboxd's.
const FLOOR_READ: &str = "floor redis read-and-touch (Lua)";
const FLOOR_GRPC_READ: &str = "floor gRPC Check + read-and-touch";
const COLD: &str = "sandboxd CreateSandbox cold";
const DELETE: &str = "sandboxd DeleteSandbox";
const REUSE: &str = "sandboxd CreateSandbox reuse";
const GET: &str = "sandboxd GetSandbox";
const FLOOR_PAUSE: &str = "floor engine pause";
const FLOOR_UNPAUSE: &str = "floor engine unpause";
const PAUSE: &str = "sandboxd PauseSandbox";
const RESUME: &str = "sandboxd ResumeSandbox";
// The round trip TouchSandbox makes (the touch Lua script on the same session, through the same
// adapter), from the bench.
const FLOOR_TOUCH_WRITE: &str = "floor redis touch (Lua)";
const FLOOR_GRPC_TOUCH: &str = "floor gRPC Check + touch";
const TOUCH: &str = "sandboxd TouchSandbox";
const FLOOR_GRPC_LOADED: &str = "floor gRPC health Check, loaded";
const REUSE_LOADED: &str = "sandboxd CreateSandbox reuse, loaded";
const LIST_PAGE: &str = "sandboxd ListSandboxes page of 1000";
const FLOOR_GRPC_RATE: &str = "floor gRPC health Check rate";
const REUSE_RATE: &str = "sandboxd CreateSandbox reuse rate";

fn floor_stop_rate(concurrency: usize) -> String {
    format!("floor engine stop+remove rate @{concurrency}")
}
fn cleanup_rate(concurrency: usize) -> String {
    format!("sandboxd cleanup pass rate @{concurrency}")
}
fn floor_stop_pass(concurrency: usize) -> String {
    format!("floor engine stop+remove all @{concurrency}")
}
fn cleanup_pass(concurrency: usize) -> String {
    format!("sandboxd cleanup pass @{concurrency}")
}

/// Fresh volume directories under one root that every sandboxd instance allows.
#[derive(Debug)]
struct Volumes {
    root: PathBuf,
    next: usize,
}

impl Volumes {
    fn new(scope: &Scope) -> Result<Self> {
        let root = scope.dir.path().join("volumes");
        std::fs::create_dir(&root)?;
        Ok(Self { root, next: 0 })
    }

    fn next(&mut self) -> Result<PathBuf> {
        let dir = self.root.join(format!("v{}", self.next));
        self.next += 1;
        std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(dir)
    }
}

/// Everything the phases share.
struct Ctx<'a> {
    args: &'a Args,
    plan: &'a Plan,
    scope: &'a Scope,
    binary: PathBuf,
    engine: Engine,
    redis: RedisServer,
    volumes: Volumes,
}

impl Ctx<'_> {
    fn settings(&self, ttl: &str, concurrency: usize) -> AppConfig {
        procs::instance_config(&self.args.image, ttl, concurrency)
    }

    /// Starts the instance `instance` (its name suffixes the run's key prefix) and waits until it
    /// is SERVING.
    async fn start(
        &self,
        instance: &str,
        config: &AppConfig,
    ) -> Result<(SandboxdProcess, Channel)> {
        let process = procs::start_sandboxd(
            &self.binary,
            self.scope.dir.path(),
            &self.scope.instance_prefix(instance),
            config,
            &self.redis.url(),
            &self.volumes.root,
        )
        .await?;
        let channel = service::connect(&process.endpoint()).await?;
        service::wait_serving(&channel, SERVING_TIMEOUT)
            .await
            .with_context(|| format!("log: {}", process.log_path.display()))?;
        Ok((process, channel))
    }
}

fn progress(message: &str) {
    eprintln!("sandboxd-bench: {message}");
}

/// The whole run; fills `report`.
pub(crate) async fn run(
    args: &Args,
    plan: &Plan,
    scope: &Scope,
    report: &mut Report,
) -> Result<()> {
    let binary = procs::find_sandboxd(args.sandboxd.as_deref())?;
    progress(&format!("sandboxd binary {}", binary.display()));
    let engine = Engine::connect(&scope.run_id, &args.image).await?;
    let redis = RedisServer::start_in(scope.dir.path()).await?;
    let volumes = Volumes::new(scope)?;
    let mut ctx = Ctx {
        args,
        plan,
        scope,
        binary,
        engine,
        redis,
        volumes,
    };
    describe_run(&ctx, report);

    let mut settings = ctx.settings("30m", DEFAULT_CLEANUP_CONCURRENCY);
    if plan.runs(Phase::Runtimes) {
        // Only then: sandboxd refuses to start with a profile whose runtime the engine lacks.
        runtimes::require_runsc(&ctx).await?;
        settings = runtimes::with_gvisor_agent(settings);
    }
    let (main, channel) = ctx.start(MAIN, &settings).await?;
    if plan.runs(Phase::Containers) {
        containers::containers(&mut ctx, &channel, report).await?;
    }
    if plan.runs(Phase::Runtimes) {
        runtimes::runtimes(&mut ctx, &channel, report).await?;
    }
    if plan.runs(Phase::Micro) {
        micro::micro(&mut ctx, &channel, report).await?;
    }
    if plan.runs(Phase::Lifecycle) {
        lifecycle::lifecycle(&mut ctx, &channel, report).await?;
    }
    if plan.runs(Phase::Throughput) {
        throughput::throughput(&mut ctx, &main, report).await?;
    }
    if plan.runs(Phase::Memory) {
        memory::memory(&ctx, &main, &channel, report).await?;
    }
    drop(channel);
    main.stop(procs::STOP_TIMEOUT).await?;

    if plan.runs(Phase::Pool) {
        pool::pool(&mut ctx, report).await?;
    }

    if plan.runs(Phase::Fleet) {
        fleet::fleet(&mut ctx, report).await?;
    }

    if plan.runs(Phase::Cleanup) {
        for concurrency in [1, DEFAULT_CLEANUP_CONCURRENCY] {
            cleanup::cleanup(&mut ctx, concurrency, report).await?;
        }
    }
    ctx.redis.stop();
    targets::targets(plan, report);
    Ok(())
}

fn describe_run(ctx: &Ctx<'_>, report: &mut Report) {
    let plan = ctx.plan;
    let run = &mut report.run;
    let mut put = |key: &str, value: serde_json::Value| {
        run.insert(key.to_owned(), value);
    };
    put("smoke", ctx.args.smoke.into());
    put("iterations", plan.iterations.into());
    put("lifecycle_iterations", plan.lifecycle_iterations.into());
    put("micro_iterations", plan.micro_iterations.into());
    put("cleanup_sessions", plan.cleanup_sessions.into());
    put("throughput_secs", plan.throughput.as_secs_f64().into());
    put("clients", plan.clients.into());
    put("rss_sessions", plan.rss_sessions.into());
    let phases: Vec<String> = plan
        .phases
        .iter()
        .filter_map(|p| clap::ValueEnum::to_possible_value(p).map(|v| v.get_name().to_owned()))
        .collect();
    put(
        "phases",
        if phases.is_empty() {
            "all".into()
        } else {
            phases.into()
        },
    );
    put("sandboxd", ctx.binary.display().to_string().into());
    put("image", ctx.args.image.clone().into());
    put(
        "cores",
        std::thread::available_parallelism()
            .map(std::num::NonZeroUsize::get)
            .unwrap_or(0)
            .into(),
    );
    put(
        "unix_time",
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
            .into(),
    );
}

type Series = Vec<Duration>;

fn new_chat() -> String {
    uuid::Uuid::new_v4().hyphenated().to_string()
}

/// A session as sandboxd would store it, without a container (the memory figure needs none).
fn fake_session(index: usize, root: &Path) -> Result<SandboxSession> {
    let now = time::OffsetDateTime::now_utc();
    let volume = root.join(format!("fake-{index}"));
    Ok(SandboxSession {
        node_id: None,
        session_id: SessionId::new_random(),
        chat_id: ChatId::from_uuid(uuid::Uuid::new_v4()),
        agent_id: AgentId::parse("default")?,
        volume_host_path: VolumePath::parse(
            volume
                .to_str()
                .ok_or_else(|| anyhow!("non-UTF-8 temp dir"))?,
        )?,
        container_id: ContainerId::parse(&format!("{index:064x}"))?,
        endpoint: Some(Endpoint::parse("127.0.0.1", 40_000)?),
        created_at: now,
        expires_at: now + Duration::from_secs(3600),
        state: SandboxState::Running,
        last_active_at: now,
        max_expires_at: None,
        idle_timeout: None,
    })
}

/// The event a bench's direct store write records, as a create would.
fn created_note() -> EventNote {
    EventNote::new(
        EventType::Created,
        EventReason::Requested,
        time::OffsetDateTime::now_utc(),
    )
}

/// Checks that a floor's touch recorded activity at `now` (the store keeps milliseconds): a touch
/// that matched nothing is a cheaper round trip than the one the floor stands for.
fn ensure_touched(session: Option<SandboxSession>, now: time::OffsetDateTime) -> Result<()> {
    let session = session.ok_or_else(|| anyhow!("the floor's touched session is gone"))?;
    let millis = |at: time::OffsetDateTime| at.unix_timestamp_nanos().div_euclid(1_000_000);
    if millis(session.last_active_at) != millis(now) {
        bail!(
            "the floor's touch at {now} recorded no activity (last active {})",
            session.last_active_at
        );
    }
    Ok(())
}

fn mib(bytes: u64) -> f64 {
    #[allow(clippy::cast_precision_loss)]
    let bytes = bytes as f64;
    bytes / MIB
}

fn rate(count: usize, elapsed: Duration) -> f64 {
    #[allow(clippy::cast_precision_loss)]
    let count = count as f64;
    count / elapsed.as_secs_f64()
}
