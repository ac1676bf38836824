//! The cleanup phase: a pass over many expired sessions against the raw engine stopping as many
//! containers at the same concurrency.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Result, anyhow, bail};
use futures::{StreamExt, TryStreamExt};
use sandboxd_api::v1::{
    CleanupExpiredSandboxesRequest, CreateSandboxRequest, CreateSandboxResult, Sandbox,
};

use super::{
    Ctx, PREPARE_CONCURRENCY, cleanup_pass, cleanup_rate, floor_stop_pass, floor_stop_rate, mib,
    new_chat, progress, rate,
};
use crate::procs;
use crate::report::Report;
use crate::service::{self, Client};

/// A cleanup pass over `cleanup_sessions` expired sessions on an instance with this
/// `cleanup_concurrency`, then the raw engine stopping as many containers at the same
/// concurrency.
pub(super) async fn cleanup(
    ctx: &mut Ctx<'_>,
    concurrency: usize,
    report: &mut Report,
) -> Result<()> {
    let m = ctx.plan.cleanup_sessions;
    progress(&format!(
        "cleanup @{concurrency}: creating {m} sandboxes (2 s TTL)"
    ));
    let settings = ctx.settings("2s", concurrency);
    let (instance, channel) = ctx.start(&format!("c{concurrency}"), &settings).await?;
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
    instance.stop(procs::STOP_TIMEOUT).await?;

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
