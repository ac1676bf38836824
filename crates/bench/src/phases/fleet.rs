//! The fleet phase (issue 19): the cost of the hop. Two fleet nodes of one deployment, `n1` and
//! `n2`, both on this machine's engine (reconcile off: each would take the other's containers
//! for its own); `n2` drained, so every sandbox lands on `n1`. PauseSandbox and ResumeSandbox of
//! the same sandbox through its owning node (the engine in process) and through the other node
//! (one call of the node API more), sample by sample.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use sandboxd_api::v1::{CreateSandboxResult, DrainNodeRequest};
use sandboxd_testkit::AppConfig;
use sandboxd_testkit::process::SandboxdProcess;
use tonic::transport::Channel;

use super::{Ctx, SERVING_TIMEOUT, Series, new_chat, progress};
use crate::procs;
use crate::report::Report;
use crate::service::{self, Client};
use crate::stats::ms;

/// The instance both nodes belong to (its name suffixes the run's key prefix).
pub(crate) const FLEET_INSTANCE: &str = "fleet";

pub(super) const PAUSE_OWNER: &str = "sandboxd PauseSandbox, owning node";
pub(super) const PAUSE_HOP: &str = "sandboxd PauseSandbox, through another node";
pub(super) const RESUME_OWNER: &str = "sandboxd ResumeSandbox, owning node";
pub(super) const RESUME_HOP: &str = "sandboxd ResumeSandbox, through another node";

/// Node `index`'s configuration: fleet mode on a free loopback port for its node API.
fn node_config(base: &AppConfig, index: usize) -> Result<AppConfig> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    Ok(AppConfig {
        extra_toml: format!(
            "{}node_id = \"n{index}\"\nnode_grpc_addr = \"127.0.0.1:{port}\"\nreconcile_interval = \"0s\"\n",
            base.extra_toml
        ),
        ..base.clone()
    })
}

pub(super) async fn fleet(ctx: &mut Ctx<'_>, report: &mut Report) -> Result<()> {
    progress(&format!(
        "fleet: {} rounds of PauseSandbox/ResumeSandbox through the owning node and through \
         another",
        ctx.plan.lifecycle_iterations
    ));
    let base = ctx.settings("30m", 8);
    let mut nodes: Vec<(SandboxdProcess, Channel)> = Vec::new();
    for index in 1..=2 {
        let process = procs::start_sandboxd_as(
            &ctx.binary,
            ctx.scope.dir.path(),
            &format!("{FLEET_INSTANCE}-n{index}"),
            &ctx.scope.instance_prefix(FLEET_INSTANCE),
            &node_config(&base, index)?,
            &ctx.redis.url(),
            &ctx.volumes.root,
        )
        .await?;
        let channel = service::connect(&process.endpoint()).await?;
        service::wait_serving(&channel, SERVING_TIMEOUT)
            .await
            .with_context(|| format!("log: {}", process.log_path.display()))?;
        nodes.push((process, channel));
    }
    let measured = measure(ctx, &nodes[0].1, &nodes[1].1, report).await;
    let mut stopped = Ok(());
    for (process, channel) in nodes {
        drop(channel);
        stopped = stopped.and(process.stop(procs::STOP_TIMEOUT).await);
    }
    measured.and(stopped.map_err(anyhow::Error::from))
}

async fn measure(
    ctx: &mut Ctx<'_>,
    owner: &Channel,
    other: &Channel,
    report: &mut Report,
) -> Result<()> {
    let (mut via_owner, mut via_other) = (Client::new(owner.clone()), Client::new(other.clone()));
    // Both nodes must have read the registry (a beat each) before placement sees n1 and the
    // drain of n2 can be set.
    let deadline = Instant::now() + SERVING_TIMEOUT;
    loop {
        let drained = via_owner
            .drain_node(DrainNodeRequest {
                node_id: "n2".to_owned(),
                draining: true,
            })
            .await;
        if drained.is_ok() {
            break;
        }
        if Instant::now() > deadline {
            bail!("node n2 never registered: {drained:?}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let chat = new_chat();
    let request = service::create_request(&chat, &ctx.volumes.next()?)?;
    // Placement reads the registry on the next beat: until then n2 may still be a candidate.
    let sandbox = loop {
        let sandbox = service::create(
            &mut via_owner,
            request.clone(),
            CreateSandboxResult::Created,
        )
        .await?;
        if sandbox.node_id == "n1" {
            break sandbox;
        }
        service::delete(&mut via_owner, &chat).await?;
        if Instant::now() > deadline {
            bail!("every create landed on the drained node n2");
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    let mut s = [Series::new(), Series::new(), Series::new(), Series::new()];
    // Warm-up (not recorded): each node's first call of the other, and the engine's first freeze.
    round(
        &mut via_owner,
        &mut via_other,
        &chat,
        true,
        &mut [Series::new(), Series::new(), Series::new(), Series::new()],
    )
    .await?;
    for iteration in 0..ctx.plan.lifecycle_iterations {
        round(
            &mut via_owner,
            &mut via_other,
            &chat,
            iteration % 2 == 0,
            &mut s,
        )
        .await?;
    }
    service::delete(&mut via_owner, &sandbox.chat_id).await?;
    let [pause_owner, pause_hop, resume_owner, resume_hop] = s;
    report.latency(PAUSE_OWNER, None, &pause_owner);
    report.latency(PAUSE_HOP, Some(PAUSE_OWNER), &pause_hop);
    report.latency(RESUME_OWNER, None, &resume_owner);
    report.latency(RESUME_HOP, Some(RESUME_OWNER), &resume_hop);
    for (name, row, floor) in [
        (
            "hop cost: PauseSandbox p50 difference",
            PAUSE_HOP,
            PAUSE_OWNER,
        ),
        (
            "hop cost: ResumeSandbox p50 difference",
            RESUME_HOP,
            RESUME_OWNER,
        ),
    ] {
        if let (Some(row), Some(floor)) = (report.summary(row), report.summary(floor)) {
            report.scalar(name, (ms(row.p50) - ms(floor.p50)) * 1e3, "µs", None);
        }
    }
    Ok(())
}

/// A pause and a resume through each node; which node goes first alternates.
async fn round(
    owner: &mut Client,
    other: &mut Client,
    chat: &str,
    owner_first: bool,
    s: &mut [Series; 4],
) -> Result<()> {
    let [pause_owner, pause_hop, resume_owner, resume_hop] = s;
    let one = async |client: &mut Client, pause: &mut Series, resume: &mut Series| {
        let started = Instant::now();
        service::pause(client, chat).await?;
        pause.push(started.elapsed());
        let started = Instant::now();
        service::resume(client, chat).await?;
        resume.push(started.elapsed());
        Ok::<(), anyhow::Error>(())
    };
    if owner_first {
        one(owner, pause_owner, resume_owner).await?;
        one(other, pause_hop, resume_hop).await?;
    } else {
        one(other, pause_hop, resume_hop).await?;
        one(owner, pause_owner, resume_owner).await?;
    }
    Ok(())
}
