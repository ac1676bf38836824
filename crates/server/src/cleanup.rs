//! The background cleanup loop: one `CleanupExpiredSandboxes` pass every `cleanup_interval`
//! (first after one period), through the shared loop of [`crate::background`].

use std::time::Duration;

use sandboxd_usecase::CleanupExpiredSandboxes;
use tokio_util::sync::CancellationToken;

use crate::background::{FirstPass, run_periodic};
use crate::grpc::status::ErrorChain;
use crate::names;

pub async fn run_cleanup_loop(
    cleanup: CleanupExpiredSandboxes,
    interval: Duration,
    stop: CancellationToken,
) {
    run_periodic(
        names::LOOP_CLEANUP,
        interval,
        FirstPass::AfterOnePeriod,
        stop,
        || async {
            // The pass logs and counts each session's outcome itself; only a failed pass is left.
            cleanup
                .execute()
                .await
                .map(|_report| ())
                .map_err(|error| ErrorChain(&error).to_string())
        },
    )
    .await;
}
