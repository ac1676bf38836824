//! The measurements, in the order one run takes them. Floor and sandboxd samples of the same
//! figure are interleaved (one of each per iteration), so load from anything else on this shared
//! machine hits both series alike and the ratios stay meaningful.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use futures::future::BoxFuture;
use futures::{StreamExt, TryStreamExt};
use sandboxd_adapters::redis::{RedisConfig, RedisStore};
use sandboxd_api::v1::{
    CleanupExpiredSandboxesRequest, CreateSandboxRequest, CreateSandboxResult,
    ListSandboxesRequest, Sandbox,
};
use sandboxd_domain::{
    AgentId, ChatId, ContainerId, Endpoint, SandboxSession, SessionId, VolumePath,
};
use sandboxd_usecase::ports::{LifecycleLocker, SessionRepository};
use tonic::transport::Channel;

use crate::engine::Engine;
use crate::procs::{self, Memory, RedisProcess, SandboxdProcess, SandboxdSettings};
use crate::report::Report;
use crate::service::{self, Client, Health};
use crate::stats::ms;
use crate::{Args, Phase, Plan, Scope};

/// The sandboxd instances a run starts (their names suffix the run's key prefix).
pub const INSTANCES: [&str; 3] = ["main", "c1", "c8"];
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
// The read sandboxd's reuse makes (the session-by-chat Lua script, through the same adapter),
// from the bench: splits reuse's distance to its floor into Redis's share and sandboxd's.
const FLOOR_READ: &str = "floor redis session read (Lua)";
const FLOOR_GRPC_READ: &str = "floor gRPC Check + session read";
const COLD: &str = "sandboxd CreateSandbox cold";
const DELETE: &str = "sandboxd DeleteSandbox";
const REUSE: &str = "sandboxd CreateSandbox reuse";
const GET: &str = "sandboxd GetSandbox";
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
    redis: RedisProcess,
    volumes: Volumes,
}

impl Ctx<'_> {
    fn settings(&self, instance: &str, ttl: &'static str, concurrency: usize) -> SandboxdSettings {
        SandboxdSettings {
            redis_url: self.redis.url(),
            key_prefix: self.scope.instance_prefix(instance),
            session_ttl: ttl,
            cleanup_concurrency: concurrency,
            volume_root: self.volumes.root.clone(),
            image: self.args.image.clone(),
        }
    }

    async fn start(&self, settings: &SandboxdSettings) -> Result<(SandboxdProcess, Channel)> {
        let process = SandboxdProcess::start(&self.binary, self.scope.dir.path(), settings).await?;
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
pub async fn run(args: &Args, plan: &Plan, scope: &Scope, report: &mut Report) -> Result<()> {
    let binary = procs::find_sandboxd(args.sandboxd.as_deref())?;
    progress(&format!("sandboxd binary {}", binary.display()));
    let engine = Engine::connect(&scope.run_id, &args.image).await?;
    let redis = RedisProcess::start(scope.dir.path()).await?;
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

    let settings = ctx.settings("main", "30m", DEFAULT_CLEANUP_CONCURRENCY);
    let (main, channel) = ctx.start(&settings).await?;
    if plan.runs(Phase::Containers) {
        containers(&mut ctx, &channel, report).await?;
    }
    if plan.runs(Phase::Micro) {
        micro(&mut ctx, &channel, report).await?;
    }
    if plan.runs(Phase::Throughput) {
        throughput(&mut ctx, &main, report).await?;
    }
    if plan.runs(Phase::Memory) {
        memory(&ctx, &main, &channel, report).await?;
    }
    drop(channel);
    main.stop().await?;

    if plan.runs(Phase::Cleanup) {
        for concurrency in [1, DEFAULT_CLEANUP_CONCURRENCY] {
            cleanup(&mut ctx, concurrency, report).await?;
        }
    }
    ctx.redis.stop().await;
    targets(plan, report);
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

/// Cold create and delete against their engine floors, one round of each per iteration.
async fn containers(ctx: &mut Ctx<'_>, channel: &Channel, report: &mut Report) -> Result<()> {
    progress(&format!(
        "containers: {} iterations of floor create/remove and CreateSandbox/DeleteSandbox",
        ctx.plan.iterations
    ));
    let mut client = Client::new(channel.clone());
    // Warm-up, not recorded: first engine connection, page cache, sandboxd's lazy connections.
    let (id, _) = ctx.engine.create_ready(&ctx.volumes.next()?).await?;
    ctx.engine.remove_forced(&id).await?;
    let chat = new_chat();
    let request = service::create_request(&chat, &ctx.volumes.next()?)?;
    service::create(&mut client, request, CreateSandboxResult::Created).await?;
    service::delete(&mut client, &chat).await?;

    let n = ctx.plan.iterations;
    let mut s = ContainerSeries::default();
    for iteration in 0..n {
        // Alternating which goes first cancels any effect of what ran just before (the engine
        // finishing the previous removal in the background, a warmer cache) on either side.
        if iteration % 2 == 0 {
            floor_round(ctx, &mut s).await?;
            sandboxd_round(ctx, &mut client, &mut s).await?;
        } else {
            sandboxd_round(ctx, &mut client, &mut s).await?;
            floor_round(ctx, &mut s).await?;
        }
    }
    report.latency(FLOOR_CREATE, None, &s.floor);
    report.latency(FLOOR_CREATE_CALL, None, &s.parts_create);
    report.latency(FLOOR_START_CALL, None, &s.parts_start);
    report.latency(FLOOR_INSPECT_CALL, None, &s.parts_inspect);
    report.latency(FLOOR_READY, None, &s.parts_ready);
    report.latency(FLOOR_REMOVE, None, &s.removals);
    report.latency(COLD, Some(FLOOR_CREATE), &s.colds);
    report.latency(DELETE, Some(FLOOR_REMOVE), &s.deletes);
    Ok(())
}

type Series = Vec<Duration>;

#[derive(Default)]
struct ContainerSeries {
    floor: Series,
    parts_create: Series,
    parts_start: Series,
    parts_inspect: Series,
    parts_ready: Series,
    removals: Series,
    colds: Series,
    deletes: Series,
}

/// The engine floor: create + start + ready, then forced removal, of the same container.
async fn floor_round(ctx: &mut Ctx<'_>, s: &mut ContainerSeries) -> Result<()> {
    let (id, timings) = ctx.engine.create_ready(&ctx.volumes.next()?).await?;
    s.floor.push(timings.total);
    s.parts_create.push(timings.create);
    s.parts_start.push(timings.start);
    s.parts_inspect.push(timings.inspect);
    s.parts_ready.push(timings.ready);
    let started = Instant::now();
    ctx.engine.remove_forced(&id).await?;
    s.removals.push(started.elapsed());
    Ok(())
}

/// CreateSandbox for a new chat, then DeleteSandbox of it.
async fn sandboxd_round(
    ctx: &mut Ctx<'_>,
    client: &mut Client,
    s: &mut ContainerSeries,
) -> Result<()> {
    let chat = new_chat();
    let request = service::create_request(&chat, &ctx.volumes.next()?)?;
    let started = Instant::now();
    service::create(client, request, CreateSandboxResult::Created).await?;
    s.colds.push(started.elapsed());
    let started = Instant::now();
    service::delete(client, &chat).await?;
    s.deletes.push(started.elapsed());
    Ok(())
}

/// The cheap figures: Redis and gRPC floors, reuse and get, interleaved sample by sample.
async fn micro(ctx: &mut Ctx<'_>, channel: &Channel, report: &mut Report) -> Result<()> {
    let k = ctx.plan.micro_iterations;
    progress(&format!("micro: {k} samples of Redis, gRPC, reuse and get"));
    let store = RedisStore::connect(RedisConfig {
        url: ctx.redis.url(),
        key_prefix: ctx.scope.instance_prefix("floor"),
        ..RedisConfig::default()
    })
    .await?;
    let (repository, locker) = (store.repository(), store.locker());
    let mut ping_con = redis::Client::open(ctx.redis.url())?
        .get_multiplexed_async_connection()
        .await?;
    let floor_session = fake_session(0, &ctx.volumes.root)?;

    let mut client = Client::new(channel.clone());
    let mut health = Health::new(channel.clone());
    let chat = new_chat();
    let request = service::create_request(&chat, &ctx.volumes.next()?)?;
    service::create(&mut client, request.clone(), CreateSandboxResult::Created).await?;

    let mut s = MicroSeries::default();
    for _ in 0..k {
        let started = Instant::now();
        redis::cmd("PING")
            .query_async::<String>(&mut ping_con)
            .await?;
        let ping = started.elapsed();
        s.ping.push(ping);

        let locked_started = Instant::now();
        let lease = locker.lock(&floor_session.chat_id).await?;
        let started = Instant::now();
        repository.save(&lease, &floor_session).await?;
        s.save.push(started.elapsed());
        locker.release(lease).await?;
        s.locked_save.push(locked_started.elapsed());

        let started = Instant::now();
        repository
            .get_current_by_chat_id(&floor_session.chat_id)
            .await?
            .ok_or_else(|| anyhow!("the floor session is gone"))?;
        let read = started.elapsed();
        s.read.push(read);

        let started = Instant::now();
        service::health_check(&mut health).await?;
        let check = started.elapsed();
        s.grpc.push(check);
        s.grpc_redis.push(check + ping);
        s.grpc_read.push(check + read);

        let started = Instant::now();
        service::create(&mut client, request.clone(), CreateSandboxResult::Reused).await?;
        s.reuse.push(started.elapsed());

        let started = Instant::now();
        service::get(&mut client, &chat).await?;
        s.get.push(started.elapsed());
    }
    service::delete(&mut client, &chat).await?;
    report.latency(FLOOR_PING, None, &s.ping);
    report.latency(FLOOR_SAVE, None, &s.save);
    report.latency(FLOOR_LOCKED_SAVE, None, &s.locked_save);
    report.latency(FLOOR_GRPC, None, &s.grpc);
    report.latency(FLOOR_GRPC_REDIS, None, &s.grpc_redis);
    report.latency(FLOOR_READ, None, &s.read);
    report.latency(FLOOR_GRPC_READ, None, &s.grpc_read);
    report.latency(REUSE, Some(FLOOR_GRPC_REDIS), &s.reuse);
    report.latency(GET, Some(FLOOR_GRPC_REDIS), &s.get);
    if let (Some(reuse), Some(floor)) = (report.summary(REUSE), report.summary(FLOOR_GRPC_READ)) {
        report.scalar(
            "reuse p50 over Check + session read p50",
            (ms(reuse.p50) - ms(floor.p50)) * 1e3,
            "µs",
            None,
        );
    }
    Ok(())
}

#[derive(Default)]
struct MicroSeries {
    ping: Series,
    save: Series,
    locked_save: Series,
    grpc: Series,
    grpc_redis: Series,
    read: Series,
    grpc_read: Series,
    reuse: Series,
    get: Series,
}

/// One throughput client: its connection and the reuse request of its chat.
struct ReuseClient {
    client: Client,
    request: CreateSandboxRequest,
}

fn reuse_call(state: &mut ReuseClient) -> BoxFuture<'_, Result<()>> {
    Box::pin(async move {
        service::create(
            &mut state.client,
            state.request.clone(),
            CreateSandboxResult::Reused,
        )
        .await
        .map(drop)
    })
}

fn health_call(health: &mut Health) -> BoxFuture<'_, Result<()>> {
    Box::pin(service::health_check(health))
}

/// Closed-loop reuse from `clients` connections over a few live chats, and the same load of
/// health Checks as its gRPC floor.
async fn throughput(ctx: &mut Ctx<'_>, main: &SandboxdProcess, report: &mut Report) -> Result<()> {
    let plan = ctx.plan;
    progress(&format!(
        "throughput: {} clients for {:?}, health Check then CreateSandbox reuse",
        plan.clients, plan.throughput
    ));
    let endpoint = main.endpoint();
    let channels: Vec<Channel> = futures::stream::iter(0..plan.clients)
        .then(|_| service::connect(&endpoint))
        .try_collect()
        .await?;
    let mut setup = Client::new(
        channels
            .first()
            .cloned()
            .ok_or_else(|| anyhow!("no clients"))?,
    );
    let mut live = Vec::new();
    for _ in 0..plan.live_chats {
        let request = service::create_request(&new_chat(), &ctx.volumes.next()?)?;
        service::create(&mut setup, request.clone(), CreateSandboxResult::Created).await?;
        live.push(request);
    }

    // CPU time per call of each process is what the rate would be on an otherwise idle machine
    // (the bench, Redis and sandboxd share its cores with whatever else runs): record it too.
    let pids = CpuPids {
        sandboxd: main.pid.to_string(),
        redis: ctx
            .redis
            .pid()
            .map_or_else(|| "self".to_owned(), |p| p.to_string()),
    };
    let before = pids.sample()?;
    let (rate, latencies) = service::closed_loop(
        &channels,
        plan.throughput,
        |_, channel| Health::new(channel),
        health_call,
    )
    .await?;
    let health_cpu = pids.sample()?.per_call(&before, latencies.len());
    report.latency(FLOOR_GRPC_LOADED, None, &latencies);
    report.scalar(FLOOR_GRPC_RATE, rate, "calls/s", None);

    let before = pids.sample()?;
    let (rate, latencies) = service::closed_loop(
        &channels,
        plan.throughput,
        |index, channel| ReuseClient {
            client: Client::new(channel),
            request: live[index % live.len()].clone(),
        },
        reuse_call,
    )
    .await?;
    let reuse_cpu = pids.sample()?.per_call(&before, latencies.len());
    report.latency(REUSE_LOADED, Some(FLOOR_GRPC_LOADED), &latencies);
    report.scalar(REUSE_RATE, rate, "calls/s", Some(FLOOR_GRPC_RATE));
    let floor_cpu = "sandboxd CPU per health Check";
    report.scalar(floor_cpu, health_cpu.sandboxd, "µs", None);
    report.scalar(
        "sandboxd CPU per reuse call",
        reuse_cpu.sandboxd,
        "µs",
        Some(floor_cpu),
    );
    report.scalar("redis CPU per reuse call", reuse_cpu.redis, "µs", None);
    report.scalar(
        "bench client CPU per reuse call",
        reuse_cpu.client,
        "µs",
        None,
    );
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let total = reuse_cpu.sandboxd + reuse_cpu.redis + reuse_cpu.client;
    if total > 0.0 {
        #[allow(clippy::cast_precision_loss)]
        let bound = cores as f64 * 1e6 / total;
        report.scalar(
            &format!("reuse rate the CPU allows on {cores} idle cores"),
            bound,
            "calls/s",
            None,
        );
    }

    for request in &live {
        service::delete(&mut setup, &request.chat_id).await?;
    }
    Ok(())
}

/// The processes whose CPU time the throughput figures divide among calls.
struct CpuPids {
    sandboxd: String,
    redis: String,
}

/// CPU time used so far by sandboxd, Redis and the bench itself.
struct CpuSample {
    sandboxd: Duration,
    redis: Duration,
    client: Duration,
}

/// CPU µs per call of each process over one run.
struct CpuPerCall {
    sandboxd: f64,
    redis: f64,
    client: f64,
}

impl CpuPids {
    fn sample(&self) -> Result<CpuSample> {
        Ok(CpuSample {
            sandboxd: procs::cpu_time(&self.sandboxd)?,
            redis: procs::cpu_time(&self.redis)?,
            client: procs::cpu_time("self")?,
        })
    }
}

impl CpuSample {
    fn per_call(&self, before: &Self, calls: usize) -> CpuPerCall {
        #[allow(clippy::cast_precision_loss)]
        let calls = calls.max(1) as f64;
        let per = |after: Duration, before: Duration| {
            after.saturating_sub(before).as_secs_f64() * 1e6 / calls
        };
        CpuPerCall {
            sandboxd: per(self.sandboxd, before.sandboxd),
            redis: per(self.redis, before.redis),
            client: per(self.client, before.client),
        }
    }
}

/// sandboxd's memory after the container work, then with `rss_sessions` sessions written
/// straight into its Redis (fenced saves under leases, no containers) and walked by
/// ListSandboxes.
async fn memory(
    ctx: &Ctx<'_>,
    main: &SandboxdProcess,
    channel: &Channel,
    report: &mut Report,
) -> Result<()> {
    let before = main.memory()?;
    report.scalar(
        "sandboxd peak RSS after the above (VmHWM)",
        mib(before.peak),
        "MiB",
        None,
    );
    let n = ctx.plan.rss_sessions;
    progress(&format!(
        "memory: writing {n} sessions, then a ListSandboxes walk"
    ));
    let store = RedisStore::connect(RedisConfig {
        url: ctx.redis.url(),
        key_prefix: ctx.scope.instance_prefix("main"),
        ..RedisConfig::default()
    })
    .await?;
    let (repository, locker) = (store.repository(), store.locker());
    let root = &ctx.volumes.root;
    futures::stream::iter(0..n)
        .map(|index| {
            let (repository, locker) = (&repository, &locker);
            async move {
                let session = fake_session(index, root)?;
                let lease = locker.lock(&session.chat_id).await?;
                repository.save(&lease, &session).await?;
                locker.release(lease).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(WRITE_CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await?;

    let mut client = Client::new(channel.clone());
    let mut pages = Vec::new();
    let mut listed = 0;
    let mut page_token = String::new();
    let walk_started = Instant::now();
    loop {
        let started = Instant::now();
        let page = client
            .list_sandboxes(ListSandboxesRequest {
                agent_id: String::new(),
                page_size: 1000,
                page_token: page_token.clone(),
            })
            .await?
            .into_inner();
        pages.push(started.elapsed());
        listed += page.sandboxes.len();
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    let walk = walk_started.elapsed();
    if listed != n {
        bail!("ListSandboxes listed {listed} sessions, {n} were written");
    }
    let after: Memory = main.memory()?;
    report.latency(LIST_PAGE, None, &pages);
    report.scalar(
        &format!("sandboxd ListSandboxes walk over {n}"),
        ms(walk),
        "ms",
        None,
    );
    report.scalar(
        &format!("sandboxd RSS with {n} sessions, after the walk"),
        mib(after.current),
        "MiB",
        None,
    );
    report.scalar(
        &format!("sandboxd peak RSS with {n} sessions (VmHWM)"),
        mib(after.peak),
        "MiB",
        None,
    );
    Ok(())
}

/// A cleanup pass over `cleanup_sessions` expired sessions on an instance with this
/// `cleanup_concurrency`, then the raw engine stopping as many containers at the same
/// concurrency.
async fn cleanup(ctx: &mut Ctx<'_>, concurrency: usize, report: &mut Report) -> Result<()> {
    let m = ctx.plan.cleanup_sessions;
    progress(&format!(
        "cleanup @{concurrency}: creating {m} sandboxes (2 s TTL)"
    ));
    let settings = ctx.settings(&format!("c{concurrency}"), "2s", concurrency);
    let (instance, channel) = ctx.start(&settings).await?;
    let client = Client::new(channel.clone());
    let requests: Vec<CreateSandboxRequest> = (0..m)
        .map(|_| service::create_request(&new_chat(), &ctx.volumes.next()?))
        .collect::<Result<_>>()?;
    let created: Vec<Sandbox> = futures::stream::iter(requests)
        .map(|request| {
            let mut client = client.clone();
            async move { service::create(&mut client, request, CreateSandboxResult::Created).await }
        })
        .buffer_unordered(PREPARE_CONCURRENCY)
        .try_collect()
        .await?;
    let last_expiry = created
        .iter()
        .filter_map(|sandbox| sandbox.expires_at)
        .map(|t| {
            UNIX_EPOCH
                + Duration::new(
                    u64::try_from(t.seconds).unwrap_or(0),
                    u32::try_from(t.nanos).unwrap_or(0),
                )
        })
        .max()
        .ok_or_else(|| anyhow!("no expires_at in the created sandboxes"))?;
    if let Ok(wait) = last_expiry.duration_since(SystemTime::now()) {
        tokio::time::sleep(wait + Duration::from_millis(250)).await;
    }

    progress(&format!(
        "cleanup @{concurrency}: CleanupExpiredSandboxes over {m}"
    ));
    let mut client = client;
    let mut cleaned = 0;
    let started = Instant::now();
    // One pass takes up to 1000 sessions; more passes only when --cleanup-sessions is larger.
    while cleaned < m {
        let pass = client
            .cleanup_expired_sandboxes(CleanupExpiredSandboxesRequest {})
            .await?
            .into_inner();
        if pass.error_count > 0 {
            bail!("cleanup pass reported {} errors", pass.error_count);
        }
        if pass.cleaned.is_empty() {
            break;
        }
        cleaned += pass.cleaned.len();
    }
    let pass_time = started.elapsed();
    if cleaned != m {
        bail!("cleanup cleaned {cleaned} of {m} expired sessions");
    }
    let peak = instance.memory()?.peak;
    drop(channel);
    instance.stop().await?;

    progress(&format!(
        "cleanup @{concurrency}: raw engine, {m} containers"
    ));
    let volumes: Vec<PathBuf> = (0..m).map(|_| ctx.volumes.next()).collect::<Result<_>>()?;
    let engine = &ctx.engine;
    let ids: Vec<String> = futures::stream::iter(volumes.iter())
        .map(|volume| async move { engine.create_ready(volume).await.map(|(id, _)| id) })
        .buffer_unordered(PREPARE_CONCURRENCY)
        .try_collect()
        .await?;
    let started = Instant::now();
    let stops: Vec<Duration> = futures::stream::iter(ids.iter())
        .map(|id| async move {
            let started = Instant::now();
            engine.stop_and_remove(id).await.map(|()| started.elapsed())
        })
        .buffer_unordered(concurrency)
        .try_collect()
        .await?;
    let raw_time = started.elapsed();

    report.latency(
        &format!("floor engine stop+remove, one @{concurrency}"),
        None,
        &stops,
    );
    report.scalar(
        &floor_stop_pass(concurrency),
        raw_time.as_secs_f64(),
        "s",
        None,
    );
    report.scalar(
        &cleanup_pass(concurrency),
        pass_time.as_secs_f64(),
        "s",
        Some(&floor_stop_pass(concurrency)),
    );
    report.scalar(
        &floor_stop_rate(concurrency),
        rate(m, raw_time),
        "stops/s",
        None,
    );
    report.scalar(
        &cleanup_rate(concurrency),
        rate(m, pass_time),
        "stops/s",
        Some(&floor_stop_rate(concurrency)),
    );
    report.scalar(
        &format!("sandboxd peak RSS, cleanup instance @{concurrency}"),
        mib(peak),
        "MiB",
        None,
    );
    Ok(())
}

/// The targets, judged on this run's figures.
fn targets(plan: &Plan, report: &mut Report) {
    let p50 = |name: &str| report.summary(name).map(|s| ms(s.p50));
    let mut targets = Vec::new();
    let mut ratio_target = |target: &str, a: Option<f64>, b: Option<f64>, bound: f64| {
        let ratio = a.zip(b).map(|(a, b)| a / b);
        targets.push(crate::report::Target {
            target: target.to_owned(),
            measured: ratio.map_or_else(|| "-".to_owned(), |r| format!("{r:.3}x")),
            met: ratio.map(|r| r <= bound),
        });
    };
    ratio_target(
        "CreateSandbox cold p50 <= 1.05 x floor create+start+ready p50",
        p50(COLD),
        p50(FLOOR_CREATE),
        1.05,
    );
    ratio_target(
        "DeleteSandbox p50 <= 1.05 x floor forced removal p50",
        p50(DELETE),
        p50(FLOOR_REMOVE),
        1.05,
    );
    let reuse = p50(REUSE);
    targets.push(crate::report::Target {
        target: "CreateSandbox reuse p50 <= 0.5 ms".to_owned(),
        measured: reuse.map_or_else(|| "-".to_owned(), |v| format!("{v:.3} ms")),
        met: reuse.map(|v| v <= 0.5),
    });
    let rate = report.value(REUSE_RATE);
    targets.push(crate::report::Target {
        target: format!("reuse >= 5000 calls/s from {} clients", plan.clients),
        measured: rate.map_or_else(|| "-".to_owned(), |v| format!("{v:.0} calls/s")),
        met: rate.map(|v| v >= 5000.0),
    });
    let c = DEFAULT_CLEANUP_CONCURRENCY;
    let (ours, raw) = (
        report.value(&cleanup_rate(c)),
        report.value(&floor_stop_rate(c)),
    );
    let sequential = report.value(&cleanup_rate(1));
    targets.push(crate::report::Target {
        target: format!(
            "cleanup of {} @{c} >= 0.9 x raw engine rate @{c}, and faster than @1",
            plan.cleanup_sessions
        ),
        measured: match (ours, raw, sequential) {
            (Some(o), Some(r), Some(s)) => {
                format!("{:.3}x raw; {o:.1} vs {s:.1} stops/s sequential", o / r)
            }
            _ => "-".to_owned(),
        },
        met: match (ours, raw, sequential) {
            (Some(o), Some(r), Some(s)) => Some(o >= 0.9 * r && o > s),
            _ => None,
        },
    });
    let n = plan.rss_sessions;
    let rss = report.value(&format!("sandboxd peak RSS with {n} sessions (VmHWM)"));
    targets.push(crate::report::Target {
        target: format!("sandboxd RSS <= 50 MiB with {n} sessions (peak, VmHWM)"),
        measured: rss.map_or_else(|| "-".to_owned(), |v| format!("{v:.1} MiB")),
        met: rss.map(|v| v <= 50.0),
    });
    report.targets = targets;
}

fn new_chat() -> String {
    uuid::Uuid::new_v4().hyphenated().to_string()
}

/// A session as sandboxd would store it, without a container (the memory figure needs none).
fn fake_session(index: usize, root: &Path) -> Result<SandboxSession> {
    let now = time::OffsetDateTime::now_utc();
    let volume = root.join(format!("fake-{index}"));
    Ok(SandboxSession {
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
    })
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
