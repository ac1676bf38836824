//! The lifecycle phase: PauseSandbox and ResumeSandbox against the engine's own pause and unpause
//! of a container of the same profile, and TouchSandbox against a health Check plus the store
//! round trip it makes; each interleaved sample by sample.

use std::time::Instant;

use anyhow::Result;
use sandboxd_adapters::redis::{RedisConfig, RedisStore};
use sandboxd_api::v1::CreateSandboxResult;
use sandboxd_domain::ChatId;
use sandboxd_usecase::ports::SessionRepository;
use tonic::transport::Channel;

use super::{
    Ctx, FLOOR_GRPC_TOUCH, FLOOR_PAUSE, FLOOR_TOUCH_WRITE, FLOOR_UNPAUSE, MAIN, PAUSE, RESUME,
    Series, TOUCH, ensure_touched, new_chat, progress,
};
use crate::engine::Engine;
use crate::report::Report;
use crate::service::{self, Client, Health};
use crate::stats::ms;

/// Pause and resume against the engine's pause and unpause, then touch against its floor. The
/// floor container and the sandbox are removed on every path out, the first error reported (the
/// teardown sweep would remove them too; forced removal takes a paused container as well).
pub(super) async fn lifecycle(
    ctx: &mut Ctx<'_>,
    channel: &Channel,
    report: &mut Report,
) -> Result<()> {
    progress(&format!(
        "lifecycle: {} rounds of floor pause/unpause and PauseSandbox/ResumeSandbox, \
         {} samples of touch",
        ctx.plan.lifecycle_iterations, ctx.plan.micro_iterations
    ));
    let mut client = Client::new(channel.clone());
    let chat = new_chat();
    let request = service::create_request(&chat, &ctx.volumes.next()?)?;
    service::create(&mut client, request, CreateSandboxResult::Created).await?;
    let mut s = LifecycleSeries::default();
    let measured = match ctx.engine.create_ready(&ctx.volumes.next()?).await {
        Ok((floor_id, _)) => {
            let measured = measure(ctx, channel, &chat, &floor_id, &mut s).await;
            let removed = ctx.engine.remove_forced(&floor_id).await;
            measured.and(removed)
        }
        Err(error) => Err(error),
    };
    let deleted = service::delete(&mut client, &chat).await;
    measured.and(deleted)?;

    report.latency(FLOOR_PAUSE, None, &s.floor_pause);
    report.latency(FLOOR_UNPAUSE, None, &s.floor_unpause);
    report.latency(PAUSE, Some(FLOOR_PAUSE), &s.pause);
    report.latency(RESUME, Some(FLOOR_UNPAUSE), &s.resume);
    report.latency(FLOOR_TOUCH_WRITE, None, &s.touch_write);
    report.latency(FLOOR_GRPC_TOUCH, None, &s.grpc_touch);
    report.latency(TOUCH, Some(FLOOR_GRPC_TOUCH), &s.touch);
    for (name, row, floor) in [
        ("PauseSandbox p50 - engine pause p50", PAUSE, FLOOR_PAUSE),
        (
            "ResumeSandbox p50 - engine unpause p50",
            RESUME,
            FLOOR_UNPAUSE,
        ),
        ("touch p50 over Check + touch p50", TOUCH, FLOOR_GRPC_TOUCH),
    ] {
        if let (Some(row), Some(floor)) = (report.summary(row), report.summary(floor)) {
            report.scalar(name, (ms(row.p50) - ms(floor.p50)) * 1e3, "µs", None);
        }
    }
    Ok(())
}

#[derive(Default)]
struct LifecycleSeries {
    floor_pause: Series,
    floor_unpause: Series,
    pause: Series,
    resume: Series,
    touch_write: Series,
    grpc_touch: Series,
    touch: Series,
}

/// The samples, on the running sandbox of `chat` and the running floor container `floor_id`;
/// both are running again when this returns `Ok`.
async fn measure(
    ctx: &Ctx<'_>,
    channel: &Channel,
    chat: &str,
    floor_id: &str,
    s: &mut LifecycleSeries,
) -> Result<()> {
    let mut client = Client::new(channel.clone());
    let engine = &ctx.engine;
    // Warm-up, not recorded: the engine's first freeze of each container.
    let mut warm_up = LifecycleSeries::default();
    pause_round(engine, &mut client, chat, floor_id, true, &mut warm_up).await?;
    for iteration in 0..ctx.plan.lifecycle_iterations {
        pause_round(engine, &mut client, chat, floor_id, iteration % 2 == 0, s).await?;
    }

    // TouchSandbox makes one round trip: the touch script on the chat's session. The floor makes
    // the same one on the same session (sandboxd's own key prefix), from the bench.
    let store = RedisStore::connect(RedisConfig {
        url: ctx.redis.url(),
        key_prefix: ctx.scope.instance_prefix(MAIN),
        ..RedisConfig::default()
    })
    .await?;
    let repository = store.repository();
    let chat_id = ChatId::parse(chat)?;
    let mut health = Health::new(channel.clone());
    for _ in 0..ctx.plan.micro_iterations {
        let started = Instant::now();
        service::health_check(&mut health).await?;
        let check = started.elapsed();

        let now = time::OffsetDateTime::now_utc();
        let started = Instant::now();
        let touched = repository.touch(&chat_id, now, None).await?;
        let write = started.elapsed();
        ensure_touched(touched, now)?;
        s.touch_write.push(write);
        s.grpc_touch.push(check + write);

        let started = Instant::now();
        service::touch(&mut client, chat).await?;
        s.touch.push(started.elapsed());
    }
    Ok(())
}

/// Pause and unpause of the floor container and PauseSandbox and ResumeSandbox, one of each.
/// Alternating which side goes first (as the containers phase does) cancels any effect of the
/// order: each side's call is timed as often next to a running container as next to a paused one.
async fn pause_round(
    engine: &Engine,
    client: &mut Client,
    chat: &str,
    floor_id: &str,
    floor_first: bool,
    s: &mut LifecycleSeries,
) -> Result<()> {
    if floor_first {
        timed(&mut s.floor_pause, engine.pause(floor_id)).await?;
        timed(&mut s.pause, service::pause(client, chat)).await?;
        timed(&mut s.floor_unpause, engine.unpause(floor_id)).await?;
        timed(&mut s.resume, service::resume(client, chat)).await?;
    } else {
        timed(&mut s.pause, service::pause(client, chat)).await?;
        timed(&mut s.floor_pause, engine.pause(floor_id)).await?;
        timed(&mut s.resume, service::resume(client, chat)).await?;
        timed(&mut s.floor_unpause, engine.unpause(floor_id)).await?;
    }
    Ok(())
}

/// Awaits `call` (which does nothing until then) and records how long it took.
async fn timed(series: &mut Series, call: impl Future<Output = Result<()>>) -> Result<()> {
    let started = Instant::now();
    call.await?;
    series.push(started.elapsed());
    Ok(())
}
