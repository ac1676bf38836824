//! The background reconcile loop: one `ReconcileSandboxes` pass right after start (in the
//! background, so readiness does not wait for it) and then every `reconcile_interval`, through the
//! shared loop of [`crate::background`].

use std::time::Duration;

use sandboxd_usecase::ReconcileSandboxes;
use tokio_util::sync::CancellationToken;

use crate::background::{FirstPass, run_periodic};
use crate::names;
use sandboxd_usecase::telemetry::ErrorChain;

pub(crate) async fn run_reconcile_loop(
    reconcile: ReconcileSandboxes,
    interval: Duration,
    stop: CancellationToken,
) {
    run_periodic(
        names::LOOP_RECONCILE,
        interval,
        FirstPass::AtStart,
        stop,
        || async {
            let report = reconcile
                .execute()
                .await
                .map_err(|error| ErrorChain(&error).to_string())?;
            if !report.removed_containers.is_empty() || !report.removed_sessions.is_empty() {
                tracing::info!(
                    name: names::RECONCILE_PASS_REPAIRED,
                    message = names::RECONCILE_PASS_REPAIRED,
                    removed_containers = report.removed_containers.len(),
                    removed_sessions = report.removed_sessions.len(),
                    error_count = report.error_count,
                );
            }
            Ok(())
        },
    )
    .await;
}
