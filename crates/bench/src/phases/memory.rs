//! The memory phase: sandboxd's RSS with many sessions in its Redis, walked by ListSandboxes.

use std::time::Instant;

use anyhow::{Result, bail};
use futures::{StreamExt, TryStreamExt};
use sandboxd_adapters::redis::{RedisConfig, RedisStore};
use sandboxd_api::v1::ListSandboxesRequest;
use sandboxd_testkit::process::{Memory, SandboxdProcess};
use sandboxd_usecase::ports::{LifecycleLocker, SessionRepository};
use tonic::transport::Channel;

use super::{Ctx, LIST_PAGE, WRITE_CONCURRENCY, created_note, fake_session, mib, progress};
use crate::report::Report;
use crate::service::Client;
use crate::stats::ms;

/// sandboxd's memory after the container work, then with `rss_sessions` sessions written
/// straight into its Redis (fenced saves under leases, no containers) and walked by
/// ListSandboxes.
pub(super) async fn memory(
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
                repository.save(&lease, &session, &created_note()).await?;
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
                state: 0,
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
