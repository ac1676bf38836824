//! The background cleanup: one `CleanupExpiredSandboxes` pass every `cleanup_interval` (first
//! after one period), registered with [`crate::background::Background`].

use std::time::Duration;

use sandboxd_usecase::CleanupExpiredSandboxes;

use crate::background::{Background, FirstPass};
use crate::names;
use sandboxd_usecase::telemetry::ErrorChain;

pub(crate) fn register(
    background: &mut Background,
    cleanup: CleanupExpiredSandboxes,
    interval: Duration,
) {
    background.periodic(
        names::LOOP_CLEANUP,
        interval,
        FirstPass::AfterOnePeriod,
        move || {
            let cleanup = cleanup.clone();
            async move {
                // The pass logs and counts each session's outcome itself; left here are a failed
                // pass and one whose sessions all failed because Redis or the engine is away (the
                // pass logs those at debug level only, so the outage is logged once, here).
                let report = cleanup
                    .execute()
                    .await
                    .map_err(|error| ErrorChain(&error).to_string())?;
                if report.unavailable_count > 0 && report.cleaned.is_empty() {
                    return Err(format!(
                        "{} expired sandboxes could not be cleaned: a backend is unavailable",
                        report.unavailable_count
                    ));
                }
                Ok(())
            }
        },
    );
}
