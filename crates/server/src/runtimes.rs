//! The start-time check that every agent profile's OCI runtime (`runtime = "runsc"`) is one the
//! engine has: a profile the engine cannot honour stops sandboxd with a message naming it,
//! instead of failing every create of that agent with an engine error.
//!
//! An engine that does not answer at start keeps today's behaviour: sandboxd starts, reports
//! NOT_SERVING, and checks once the engine answers; a failed check then stops it the same way
//! (after a drain). Profiles that name no runtime need no check and cost no engine call.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use sandboxd_usecase::ports::SandboxRuntime;
use sandboxd_usecase::{Profiles, UnregisteredRuntime};
use tokio_util::sync::CancellationToken;

use crate::health::{CHECK_INTERVAL, HealthPublisher};
use crate::names::{RUNTIMES_CHECK_DEFERRED, RUNTIMES_CHECK_FAILED, RUNTIMES_CHECKED};

/// How long the check at start waits for the engine before it defers: `engine_timeout` (30 s by
/// default) would hold the start far longer than a health check waits for the same engine.
const START_CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// A profile names a runtime the engine does not have.
#[derive(Debug, thiserror::Error)]
#[error(
    "{0}; register it with the engine (Docker: `runtimes` in /etc/docker/daemon.json, then \
     reload dockerd; scripts/up does this for runsc) or remove the setting"
)]
// Not a `source`: the message already carries it, and `{:#}` would print it twice.
pub(crate) struct RuntimeCheckError(UnregisteredRuntime);

/// Where the check stands once the server is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RuntimeCheck {
    /// Every profile's runtime is registered, or no profile names one.
    Passed,
    /// The engine did not answer at start: readiness waits for [`check_when_engine_answers`].
    Deferred,
}

/// The check at start, bounded by [`START_CHECK_TIMEOUT`].
///
/// # Errors
/// When the engine answered and lacks a profile's runtime.
pub(crate) async fn check_at_start(
    runtime: &dyn SandboxRuntime,
    profiles: &Profiles,
) -> Result<RuntimeCheck, RuntimeCheckError> {
    if !names_a_runtime(profiles) {
        return Ok(RuntimeCheck::Passed);
    }
    match tokio::time::timeout(START_CHECK_TIMEOUT, runtime.runtimes()).await {
        Ok(Ok(registered)) => passed(profiles, &registered).map(|()| RuntimeCheck::Passed),
        Ok(Err(error)) => {
            tracing::warn!(
                name: RUNTIMES_CHECK_DEFERRED,
                error = %sandboxd_usecase::telemetry::ErrorChain(&error),
                message = RUNTIMES_CHECK_DEFERRED,
            );
            Ok(RuntimeCheck::Deferred)
        }
        Err(_elapsed) => {
            tracing::warn!(
                name: RUNTIMES_CHECK_DEFERRED,
                error = "the engine did not answer in time",
                message = RUNTIMES_CHECK_DEFERRED,
            );
            Ok(RuntimeCheck::Deferred)
        }
    }
}

/// The deferred check: asks the engine every [`CHECK_INTERVAL`] until it answers, then lets
/// readiness follow the backends again. Returns `Ok` once passed or when `stop` is cancelled.
///
/// # Errors
/// When the engine answered and lacks a profile's runtime.
pub(crate) async fn check_when_engine_answers(
    runtime: Arc<dyn SandboxRuntime>,
    profiles: Profiles,
    publisher: HealthPublisher,
    stop: CancellationToken,
) -> Result<(), RuntimeCheckError> {
    loop {
        match tokio::time::timeout(CHECK_INTERVAL, runtime.runtimes()).await {
            Ok(Ok(registered)) => {
                passed(&profiles, &registered)?;
                publisher.set_runtimes_checked().await;
                return Ok(());
            }
            // Health reports the engine as down meanwhile; the next tick asks again.
            Ok(Err(error)) => tracing::debug!(
                name: RUNTIMES_CHECK_FAILED,
                message = RUNTIMES_CHECK_FAILED,
                %error,
            ),
            Err(_elapsed) => {}
        }
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            () = tokio::time::sleep(CHECK_INTERVAL) => {}
        }
    }
}

fn names_a_runtime(profiles: &Profiles) -> bool {
    profiles
        .iter()
        .any(|(_, profile)| profile.runtime.is_some())
}

fn passed(profiles: &Profiles, registered: &BTreeSet<String>) -> Result<(), RuntimeCheckError> {
    profiles
        .check_runtimes(registered)
        .map_err(RuntimeCheckError)?;
    tracing::info!(
        name: RUNTIMES_CHECKED,
        registered = ?registered,
        message = RUNTIMES_CHECKED,
    );
    Ok(())
}
