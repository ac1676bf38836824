//! The containers phase: cold CreateSandbox and DeleteSandbox against the engine's own
//! create+start+ready and forced removal, one round of each per iteration.

use std::time::Instant;

use anyhow::Result;
use sandboxd_api::v1::CreateSandboxResult;
use tonic::transport::Channel;

use super::{
    COLD, Ctx, DELETE, FLOOR_CREATE, FLOOR_CREATE_CALL, FLOOR_INSPECT_CALL, FLOOR_READY,
    FLOOR_REMOVE, FLOOR_START_CALL, Series, new_chat, progress,
};
use crate::report::Report;
use crate::service::{self, Client};

/// Cold create and delete against their engine floors, one round of each per iteration.
pub(super) async fn containers(
    ctx: &mut Ctx<'_>,
    channel: &Channel,
    report: &mut Report,
) -> Result<()> {
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
