//! The throughput phase: closed-loop reuse from many clients against the same load of health
//! Checks, with the CPU time each process spent per call.

use std::time::Duration;

use anyhow::{Result, anyhow};
use futures::future::BoxFuture;
use futures::{StreamExt, TryStreamExt};
use sandboxd_api::v1::{CreateSandboxRequest, CreateSandboxResult};
use sandboxd_testkit::process::SandboxdProcess;
use tonic::transport::Channel;

use super::{
    Ctx, FLOOR_GRPC_LOADED, FLOOR_GRPC_RATE, REUSE_LOADED, REUSE_RATE, new_chat, progress,
};
use crate::procs;
use crate::report::Report;
use crate::service::{self, Client, Health};

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
pub(super) async fn throughput(
    ctx: &mut Ctx<'_>,
    main: &SandboxdProcess,
    report: &mut Report,
) -> Result<()> {
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
        sandboxd: main.pid().to_string(),
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
