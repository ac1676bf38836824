//! The pool phase (issue 18): CreateSandbox served from the warm pool against a cold create of
//! the same profile, sample by sample; a burst of `POOL_SIZE` concurrent creates on a full pool;
//! and the pool's refill rate after that burst against the raw engine's sequential create+start
//! rate, all in one run on one instance (`pool`) with its own pooled and cold agents.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use sandboxd_api::v1::CreateSandboxResult;
use sandboxd_testkit::AppConfig;
use sandboxd_testkit::process::SandboxdProcess;
use tonic::transport::Channel;

use super::{Ctx, Series, new_chat, progress, rate};
use crate::report::Report;
use crate::service::{self, Client};

/// The instance the phase starts (its name suffixes the run's key prefix).
pub(crate) const POOL_INSTANCE: &str = "pool";
/// The pool of the pooled agent: the burst's size.
const POOL_SIZE: usize = 32;
const POOLED_AGENT: &str = "pooled";
/// The same profile without a pool.
const COLD_AGENT: &str = "cold";
/// Longest wait for the pool to be full before a measurement.
const FILL_TIMEOUT: Duration = Duration::from_secs(120);

pub(super) const POOLED: &str = "sandboxd CreateSandbox from the pool";
pub(super) const POOL_COLD: &str = "sandboxd CreateSandbox cold, same profile";
pub(super) const POOL_BURST: &str = "sandboxd CreateSandbox from the pool, burst of 32";
pub(super) const FLOOR_CREATE_START_RATE: &str = "floor engine create+start rate, sequential";
pub(super) const POOL_REFILL_RATE: &str = "sandboxd pool refill rate";
pub(super) const COLD_OVER_POOLED: &str = "cold p50 / pooled p50";

/// The instance's configuration: the run's `default` profile as `pooled` (with `pool_size`)
/// and as `cold`, and the static waiter.
fn pool_config(base: &AppConfig) -> AppConfig {
    AppConfig {
        pool_waiter: true,
        ..base.clone()
    }
    .with_agent(
        POOLED_AGENT,
        &format!("{}pool_size = {POOL_SIZE}\n", base.profile),
    )
    .with_agent(COLD_AGENT, &base.profile)
}

pub(super) async fn pool(ctx: &mut Ctx<'_>, report: &mut Report) -> Result<()> {
    progress(&format!(
        "pool: {} rounds of pooled and cold CreateSandbox, a burst of {POOL_SIZE}, the refill \
         against {POOL_SIZE} sequential engine create+starts",
        ctx.plan.iterations
    ));
    let config = pool_config(&ctx.settings("30m", 8));
    let (process, channel) = ctx.start(POOL_INSTANCE, &config).await?;
    let measured = measure(ctx, &process, &channel, report).await;
    drop(channel);
    let stopped = process.stop(crate::procs::STOP_TIMEOUT).await;
    // The slots root stays mounted after the instance stops: unmount it before the temp dir goes.
    sandboxd_testkit::pool::unmount_all_under(ctx.scope.dir.path());
    measured.and(stopped.map_err(anyhow::Error::from))
}

async fn measure(
    ctx: &mut Ctx<'_>,
    process: &SandboxdProcess,
    channel: &Channel,
    report: &mut Report,
) -> Result<()> {
    let metrics = process.http_addr.to_string();
    let mut client = Client::new(channel.clone());
    wait_full(&metrics).await?;
    let claimed_before = claims(&metrics, "claimed").await;

    let (mut pooled, mut cold) = (Series::new(), Series::new());
    for iteration in 0..ctx.plan.iterations {
        // Alternating which goes first cancels the effect of what ran just before.
        let order = if iteration % 2 == 0 {
            [POOLED_AGENT, COLD_AGENT]
        } else {
            [COLD_AGENT, POOLED_AGENT]
        };
        for agent in order {
            wait_ready(&metrics, 1).await?;
            let (elapsed, chat) = timed_create(ctx, &mut client, agent).await?;
            service::delete(&mut client, &chat).await?;
            if agent == POOLED_AGENT {
                pooled.push(elapsed);
            } else {
                cold.push(elapsed);
            }
        }
    }
    let claimed = claims(&metrics, "claimed").await - claimed_before;
    #[allow(clippy::cast_precision_loss)]
    if claimed < ctx.plan.iterations as f64 {
        bail!(
            "only {claimed} of {} pooled creates were served from the pool",
            ctx.plan.iterations
        );
    }
    report.latency(POOL_COLD, None, &cold);
    report.latency(POOLED, Some(POOL_COLD), &pooled);
    if let (Some(p), Some(c)) = (report.summary(POOLED), report.summary(POOL_COLD)) {
        report.scalar(
            COLD_OVER_POOLED,
            c.p50.as_secs_f64() / p.p50.as_secs_f64(),
            "x",
            None,
        );
    }

    // The burst, on a full pool; then the refill back to full, then the engine's own rate.
    let volumes = (0..POOL_SIZE)
        .map(|_| ctx.volumes.next())
        .collect::<Result<Vec<_>>>()?;
    wait_full(&metrics).await?;
    let burst = futures::future::join_all(volumes.into_iter().map(|volume| {
        let mut client = Client::new(channel.clone());
        async move {
            let chat = new_chat();
            let mut request = service::create_request(&chat, &volume)?;
            request.agent_id = POOLED_AGENT.to_owned();
            let started = Instant::now();
            service::create(&mut client, request, CreateSandboxResult::Created).await?;
            Ok::<_, anyhow::Error>((started.elapsed(), chat))
        }
    }))
    .await
    .into_iter()
    .collect::<Result<Vec<_>>>()?;
    let refill_started = Instant::now();
    wait_full(&metrics).await?;
    let refill = refill_started.elapsed();
    report.latency(
        POOL_BURST,
        None,
        &burst
            .iter()
            .map(|(elapsed, _)| *elapsed)
            .collect::<Vec<_>>(),
    );

    let mut floor_ids = Vec::with_capacity(POOL_SIZE);
    let mut floor_total = Duration::ZERO;
    for _ in 0..POOL_SIZE {
        let (id, timings) = ctx.engine.create_ready(&ctx.volumes.next()?).await?;
        floor_total += timings.create + timings.start;
        floor_ids.push(id);
    }
    for id in floor_ids {
        ctx.engine.remove_forced(&id).await?;
    }
    for (_, chat) in &burst {
        service::delete(&mut client, chat).await?;
    }
    let floor_rate = rate(POOL_SIZE, floor_total);
    report.scalar(FLOOR_CREATE_START_RATE, floor_rate, "/s", None);
    report.scalar(
        POOL_REFILL_RATE,
        rate(POOL_SIZE, refill),
        "/s",
        Some(FLOOR_CREATE_START_RATE),
    );
    Ok(())
}

/// One CreateSandbox of `agent` for a new chat whose volume holds a marker page; the endpoint is
/// checked to serve it (the chat's volume is visible) after the timed call.
async fn timed_create(
    ctx: &mut Ctx<'_>,
    client: &mut Client,
    agent: &str,
) -> Result<(Duration, String)> {
    let chat = new_chat();
    let volume = ctx.volumes.next()?;
    std::fs::write(volume.join("index.html"), &chat)?;
    let mut request = service::create_request(&chat, &volume)?;
    request.agent_id = agent.to_owned();
    let started = Instant::now();
    let sandbox = service::create(client, request, CreateSandboxResult::Created).await?;
    let elapsed = started.elapsed();
    let endpoint = sandbox
        .endpoint
        .context("CreateSandbox returned no endpoint")?;
    let (status, body) =
        sandboxd_testkit::http_get(&format!("{}:{}", endpoint.ip, endpoint.port), "/").await?;
    if status != 200 || body != chat {
        bail!("the {agent} sandbox did not serve its chat's volume: {status} {body:?}");
    }
    Ok((elapsed, chat))
}

async fn ready(metrics: &str) -> f64 {
    sandboxd_testkit::metric_samples(metrics, "sandbox_pool_ready")
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|(labels, _)| labels.contains(POOLED_AGENT))
        .map(|(_, value)| value)
        .sum()
}

async fn claims(metrics: &str, result: &str) -> f64 {
    sandboxd_testkit::metric_samples(metrics, "sandbox_pool_claims_total")
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|(labels, _)| labels.contains(&format!("result=\"{result}\"")))
        .map(|(_, value)| value)
        .sum()
}

async fn wait_full(metrics: &str) -> Result<()> {
    wait_ready(metrics, POOL_SIZE).await
}

/// Polls `/metrics` until at least `wanted` pooled sandboxes wait.
async fn wait_ready(metrics: &str, wanted: usize) -> Result<()> {
    let deadline = Instant::now() + FILL_TIMEOUT;
    #[allow(clippy::cast_precision_loss)]
    while ready(metrics).await < wanted as f64 {
        if Instant::now() > deadline {
            bail!("the pool did not reach {wanted} within {FILL_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}
