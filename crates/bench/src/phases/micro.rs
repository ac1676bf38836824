//! The micro phase: Redis and gRPC floors, reuse and get latency, interleaved sample by sample.

use std::time::Instant;

use anyhow::Result;
use sandboxd_adapters::redis::{RedisConfig, RedisStore};
use sandboxd_api::v1::CreateSandboxResult;
use sandboxd_usecase::ports::{LifecycleLocker, SessionRepository, TouchMatch};
use tonic::transport::Channel;

use super::{
    Ctx, FLOOR_GRPC, FLOOR_GRPC_READ, FLOOR_GRPC_REDIS, FLOOR_LOCKED_SAVE, FLOOR_PING, FLOOR_READ,
    FLOOR_SAVE, GET, REUSE, Series, created_note, ensure_touched, fake_session, new_chat, progress,
};
use crate::report::Report;
use crate::service::{self, Client, Health};
use crate::stats::ms;

/// The cheap figures: Redis and gRPC floors, reuse and get, interleaved sample by sample.
pub(super) async fn micro(ctx: &mut Ctx<'_>, channel: &Channel, report: &mut Report) -> Result<()> {
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
    // What a reuse's read-and-touch matches: the request's agent and volume.
    let reuse_match = TouchMatch {
        agent_id: &floor_session.agent_id,
        volume_host_path: &floor_session.volume_host_path,
    };

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
        repository
            .save(&lease, &floor_session, &created_note())
            .await?;
        s.save.push(started.elapsed());
        locker.release(lease).await?;
        s.locked_save.push(locked_started.elapsed());

        let now = time::OffsetDateTime::now_utc();
        let started = Instant::now();
        let touched = repository
            .touch(&floor_session.chat_id, now, Some(reuse_match))
            .await?;
        let read = started.elapsed();
        ensure_touched(touched, now)?;
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
            "reuse p50 over Check + read-and-touch p50",
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
