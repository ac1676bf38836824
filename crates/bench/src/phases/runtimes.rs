//! The runtimes phase: cold CreateSandbox and DeleteSandbox of a profile under gVisor's `runsc`
//! against the engine creating, starting and removing the same runsc container, and the same for
//! runc beside it. One round of each of the four per iteration, so gVisor's cost and sandboxd's
//! share of it are read against runc's under the same load.

use std::time::Instant;

use anyhow::{Result, bail};
use sandboxd_api::v1::CreateSandboxResult;
use sandboxd_testkit::AppConfig;
use tonic::transport::Channel;

use super::{Ctx, Series, new_chat, progress};
use crate::report::Report;
use crate::service::{self, Client};

/// The OCI runtime measured against runc, as scripts/up registers it.
pub(super) const RUNSC: &str = "runsc";
/// The agent of the main instance whose profile is `default`'s under runsc.
const GVISOR_AGENT: &str = "gvisor";

const FLOOR_CREATE_RUNC: &str = "floor engine create+start+ready, runc";
const FLOOR_CREATE_RUNSC: &str = "floor engine create+start+ready, runsc";
const FLOOR_REMOVE_RUNC: &str = "floor engine forced removal, runc";
const FLOOR_REMOVE_RUNSC: &str = "floor engine forced removal, runsc";
const COLD_RUNC: &str = "sandboxd CreateSandbox cold, runc";
const COLD_RUNSC: &str = "sandboxd CreateSandbox cold, runsc";
const DELETE_RUNC: &str = "sandboxd DeleteSandbox, runc";
const DELETE_RUNSC: &str = "sandboxd DeleteSandbox, runsc";

/// Fails with what to do when the engine has no runsc: the main instance would refuse to start
/// with a `gvisor` profile anyway, with a less direct message.
pub(super) async fn require_runsc(ctx: &Ctx<'_>) -> Result<()> {
    let registered = ctx.engine.runtimes().await?;
    if !registered.contains(RUNSC) {
        bail!(
            "the runtimes phase needs the engine's runtime `{RUNSC}` (it has {registered:?}): \
             run scripts/test or scripts/up, which register it, or leave the phase out (--phases)"
        );
    }
    Ok(())
}

/// The main instance's configuration with a `gvisor` agent: the `default` profile under runsc.
pub(super) fn with_gvisor_agent(config: AppConfig) -> AppConfig {
    let profile = format!("{}runtime = \"{RUNSC}\"\n", config.profile);
    config.with_agent(GVISOR_AGENT, &profile)
}

/// One side of the comparison: which agent sandboxd creates for, which runtime the floor names.
#[derive(Clone, Copy)]
struct Side {
    agent: &'static str,
    runtime: Option<&'static str>,
}

const RUNC_SIDE: Side = Side {
    agent: "default",
    runtime: None,
};
const RUNSC_SIDE: Side = Side {
    agent: GVISOR_AGENT,
    runtime: Some(RUNSC),
};

#[derive(Default)]
struct SideSeries {
    floor_creates: Series,
    floor_removals: Series,
    colds: Series,
    deletes: Series,
}

/// Cold create and delete under runsc and under runc, each against its engine floor.
pub(super) async fn runtimes(
    ctx: &mut Ctx<'_>,
    channel: &Channel,
    report: &mut Report,
) -> Result<()> {
    progress(&format!(
        "runtimes: {} iterations of floor and sandboxd create/remove under runsc and runc",
        ctx.plan.iterations
    ));
    let mut client = Client::new(channel.clone());
    // Warm-up, not recorded: runsc's first start pages its binary in.
    for side in [RUNC_SIDE, RUNSC_SIDE] {
        let mut discard = SideSeries::default();
        floor_round(ctx, side, &mut discard).await?;
        sandboxd_round(ctx, &mut client, side, &mut discard).await?;
    }

    let mut runc = SideSeries::default();
    let mut runsc = SideSeries::default();
    for iteration in 0..ctx.plan.iterations {
        // Rotating which runtime and which side go first cancels the effect of what ran just
        // before (a removal the engine finishes in the background) on any one series.
        let floor_first = iteration % 2 == 0;
        let runsc_first = (iteration / 2) % 2 == 0;
        let order = if runsc_first {
            [(RUNSC_SIDE, &mut runsc), (RUNC_SIDE, &mut runc)]
        } else {
            [(RUNC_SIDE, &mut runc), (RUNSC_SIDE, &mut runsc)]
        };
        for (side, series) in order {
            if floor_first {
                floor_round(ctx, side, series).await?;
                sandboxd_round(ctx, &mut client, side, series).await?;
            } else {
                sandboxd_round(ctx, &mut client, side, series).await?;
                floor_round(ctx, side, series).await?;
            }
        }
    }
    report.latency(FLOOR_CREATE_RUNC, None, &runc.floor_creates);
    // Against runc's floor: what gVisor itself costs the engine.
    report.latency(
        FLOOR_CREATE_RUNSC,
        Some(FLOOR_CREATE_RUNC),
        &runsc.floor_creates,
    );
    report.latency(COLD_RUNC, Some(FLOOR_CREATE_RUNC), &runc.colds);
    report.latency(COLD_RUNSC, Some(FLOOR_CREATE_RUNSC), &runsc.colds);
    report.latency(FLOOR_REMOVE_RUNC, None, &runc.floor_removals);
    report.latency(
        FLOOR_REMOVE_RUNSC,
        Some(FLOOR_REMOVE_RUNC),
        &runsc.floor_removals,
    );
    report.latency(DELETE_RUNC, Some(FLOOR_REMOVE_RUNC), &runc.deletes);
    report.latency(DELETE_RUNSC, Some(FLOOR_REMOVE_RUNSC), &runsc.deletes);
    Ok(())
}

/// The engine floor under the side's runtime: create + start + ready, then forced removal.
async fn floor_round(ctx: &mut Ctx<'_>, side: Side, series: &mut SideSeries) -> Result<()> {
    let volume = ctx.volumes.next()?;
    let (id, timings) = ctx.engine.create_ready_under(&volume, side.runtime).await?;
    series.floor_creates.push(timings.total);
    let started = Instant::now();
    ctx.engine.remove_forced(&id).await?;
    series.floor_removals.push(started.elapsed());
    Ok(())
}

/// CreateSandbox for a new chat of the side's agent, then DeleteSandbox of it.
async fn sandboxd_round(
    ctx: &mut Ctx<'_>,
    client: &mut Client,
    side: Side,
    series: &mut SideSeries,
) -> Result<()> {
    let chat = new_chat();
    let mut request = service::create_request(&chat, &ctx.volumes.next()?)?;
    side.agent.clone_into(&mut request.agent_id);
    let started = Instant::now();
    service::create(client, request, CreateSandboxResult::Created).await?;
    series.colds.push(started.elapsed());
    let started = Instant::now();
    service::delete(client, &chat).await?;
    series.deletes.push(started.elapsed());
    Ok(())
}
