//! The background reconcile: one `ReconcileSandboxes` pass right after start (in the background,
//! so readiness does not wait for it) and then every `reconcile_interval`, registered with
//! [`crate::background::Background`].

use std::time::Duration;

use sandboxd_usecase::ReconcileSandboxes;

use crate::background::{Background, FirstPass};
use crate::names;
use sandboxd_usecase::telemetry::ErrorChain;

pub(crate) fn register(
    background: &mut Background,
    reconcile: ReconcileSandboxes,
    interval: Duration,
) {
    background.periodic(
        names::LOOP_RECONCILE,
        interval,
        FirstPass::AtStart,
        move || {
            let reconcile = reconcile.clone();
            async move {
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
            }
        },
    );
}
