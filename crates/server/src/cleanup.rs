//! The background cleanup loop: one `CleanupExpiredSandboxes` pass every `cleanup_interval`,
//! selecting against the shutdown token between passes (a running pass is allowed to finish).

use std::time::Duration;

use sandboxd_usecase::CleanupExpiredSandboxes;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::grpc::status::ErrorChain;

pub async fn run_cleanup_loop(
    cleanup: CleanupExpiredSandboxes,
    interval: Duration,
    stop: CancellationToken,
) {
    // First pass after one period, not at start: startup stays quick and predictable.
    let mut ticks = tokio::time::interval_at(Instant::now() + interval, interval);
    // A pass longer than the period delays the next one instead of running them back to back.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        // The pass logs and counts each session's outcome itself; only a failed pass is left.
        if let Err(error) = cleanup.execute().await {
            tracing::warn!(error = %ErrorChain(&error), "cleanup_pass_failed");
        }
    }
}
