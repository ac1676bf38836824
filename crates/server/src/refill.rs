//! The warm pool's refill loop: a `RefillPool` pass at start, again as soon as a create claims a
//! pooled sandbox, and at least every [`REFILL_EVERY`] (to retry after failures and backoffs);
//! at shutdown the waiting pooled sandboxes are removed (they serve no chat, and the next start
//! fills its own pool).

use std::sync::Arc;
use std::time::Duration;

use sandboxd_usecase::RefillPool;
use sandboxd_usecase::telemetry::ErrorChain;
use tokio_util::sync::CancellationToken;

use crate::background::{Background, OutageLog};
use crate::names;

/// The longest wait between two passes when no claim wakes the loop.
const REFILL_EVERY: Duration = Duration::from_secs(1);
/// After a claim wakes the loop, the pass waits until no claim came for this long and none is
/// in flight: a burst of claims is served before the refill's engine work takes the CPU from it.
const QUIET_AFTER_CLAIMS: Duration = Duration::from_millis(25);
/// The longest the refill defers to claims in flight (an abandoned one cannot hold it forever).
const CLAIMS_WAIT_MAX: Duration = Duration::from_secs(2);

/// Registers the refill loop, when a profile pools and the runtime can.
pub(crate) fn register(background: &mut Background, refill: &Arc<RefillPool>) {
    if refill.is_enabled() {
        let refill = Arc::clone(refill);
        background.task(names::LOOP_REFILL, |stop| run_refill_loop(refill, stop));
    }
}

async fn run_refill_loop(refill: Arc<RefillPool>, stop: CancellationToken) {
    let mut outages = OutageLog::new(names::LOOP_REFILL);
    loop {
        // A pass may start many sandboxes one after another: a shutdown does not wait for it (an
        // abandoned start removes its container; recovery removes its slot).
        let pass = tokio::select! {
            () = stop.cancelled() => break,
            pass = refill.execute() => pass,
        };
        outages.record(
            pass.map(drop)
                .map_err(|error| ErrorChain(&error).to_string()),
        );
        tokio::select! {
            () = stop.cancelled() => break,
            () = refill.pool().wanted() => {
                let deadline = tokio::time::Instant::now() + CLAIMS_WAIT_MAX;
                loop {
                    let quiet = tokio::time::timeout(QUIET_AFTER_CLAIMS, refill.pool().wanted())
                        .await
                        .is_err();
                    if (quiet && refill.pool().claims_in_flight() == 0)
                        || tokio::time::Instant::now() >= deadline
                    {
                        break;
                    }
                }
            }
            () = tokio::time::sleep(REFILL_EVERY) => {}
        }
    }
    refill.discard_all().await;
}
