//! Readiness: a background loop pings Redis and Docker, re-checks the egress packet-filter rules
//! (reinstalling them when they drifted), and publishes the result to the gRPC health service
//! (overall `""` and `sandbox.v1.SandboxService`) and to `/readyz`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sandboxd_adapters::egress::EgressFirewall;
use sandboxd_usecase::Ports;
use sandboxd_usecase::telemetry::ErrorChain;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::names;

/// How often the backends are pinged.
pub(crate) const CHECK_INTERVAL: Duration = Duration::from_secs(2);
/// A ping slower than this counts as a failure: health must answer quickly, not hang with Redis.
const PING_TIMEOUT: Duration = Duration::from_secs(2);
/// Bound on one egress check, a reinstall included (two listings and one restore).
const EGRESS_CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// What `/readyz` and the health service report, shared between the checker and shutdown.
#[derive(Debug, Default)]
pub(crate) struct Readiness {
    backends_up: AtomicBool,
    /// The profiles' runtimes are still to be checked against the engine (it did not answer at
    /// start): not ready, whatever the pings say, until the check passed.
    runtimes_unchecked: AtomicBool,
    draining: AtomicBool,
}

impl Readiness {
    /// Readiness that also waits for the deferred runtime check.
    #[must_use]
    pub(crate) fn awaiting_runtime_check() -> Self {
        let readiness = Self::default();
        readiness.runtimes_unchecked.store(true, Ordering::SeqCst);
        readiness
    }

    #[must_use]
    pub(crate) fn is_ready(&self) -> bool {
        self.backends_up.load(Ordering::SeqCst)
            && !self.runtimes_unchecked.load(Ordering::SeqCst)
            && !self.draining.load(Ordering::SeqCst)
    }

    #[must_use]
    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }
}

/// Publishes readiness to the gRPC health service.
#[derive(Debug, Clone)]
pub(crate) struct HealthPublisher {
    reporter: HealthReporter,
    readiness: Arc<Readiness>,
}

impl HealthPublisher {
    /// Starts NOT_SERVING: nothing is known about the backends until the first check.
    pub(crate) async fn new(reporter: HealthReporter, readiness: Arc<Readiness>) -> Self {
        let publisher = Self {
            reporter,
            readiness,
        };
        publisher.publish().await;
        publisher
    }

    async fn publish(&self) {
        let status = if self.readiness.is_ready() {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        for service in ["", sandboxd_api::SERVICE_NAME] {
            self.reporter.set_service_status(service, status).await;
        }
    }

    async fn set_backends_up(&self, up: bool) {
        let was_up = self.readiness.backends_up.swap(up, Ordering::SeqCst);
        if was_up != up {
            if up {
                tracing::info!(name: names::BACKENDS_UP, message = names::BACKENDS_UP);
            } else {
                tracing::warn!(name: names::BACKENDS_DOWN, message = names::BACKENDS_DOWN);
            }
        }
        self.publish().await;
    }

    /// The deferred runtime check passed: readiness follows the backends again.
    pub(crate) async fn set_runtimes_checked(&self) {
        self.readiness
            .runtimes_unchecked
            .store(false, Ordering::SeqCst);
        self.publish().await;
    }

    /// NOT_SERVING from now on, whatever the backends say.
    pub(crate) async fn set_draining(&self) {
        self.readiness.draining.store(true, Ordering::SeqCst);
        self.publish().await;
    }
}

/// Pings both backends and checks the egress rules every [`CHECK_INTERVAL`] until `stop` is
/// cancelled.
pub(crate) async fn run_checks(
    ports: Ports,
    egress: Option<Arc<EgressFirewall>>,
    publisher: HealthPublisher,
    stop: CancellationToken,
) {
    let mut active_count_known = false;
    // The last Redis failure logged at warn: a new reason (refused, certificate, auth) is logged
    // once, not every check.
    let mut last_redis_failure = None;
    let mut last_egress_failure = None;
    loop {
        let backends_up = check_backends(&ports, &mut last_redis_failure).await;
        // Checked whatever the backends say: running sandboxes depend on the rules.
        let egress_intact = match &egress {
            Some(firewall) => check_egress(firewall, &mut last_egress_failure).await,
            None => true,
        };
        let up = backends_up && egress_intact;
        if up && !active_count_known {
            active_count_known = init_active_count(&ports).await;
        }
        publisher.set_backends_up(up).await;
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(CHECK_INTERVAL) => {}
        }
    }
}

/// Sets `sandbox_active_count` from the store once it answers, so the gauge is right from the
/// start (sessions may survive a restart); the use cases keep it current after every write.
async fn init_active_count(ports: &Ports) -> bool {
    match ports.repository.count_active().await {
        Ok(count) => {
            sandboxd_usecase::telemetry::set_active_count(count);
            true
        }
        Err(error) => {
            tracing::debug!(
                name: names::ACTIVE_COUNT_UNAVAILABLE,
                message = names::ACTIVE_COUNT_UNAVAILABLE,
                error = %error,
            );
            false
        }
    }
}

/// Re-checks the egress rules (the firewall reinstalls and logs drift itself). A failure to check
/// or reinstall makes the service NOT_SERVING: new sandboxes must not start unenforced. Each new
/// reason is logged once.
async fn check_egress(firewall: &EgressFirewall, last_failure: &mut Option<String>) -> bool {
    let reason = match tokio::time::timeout(EGRESS_CHECK_TIMEOUT, firewall.check()).await {
        Ok(Ok(_)) => {
            *last_failure = None;
            return true;
        }
        Ok(Err(error)) => ErrorChain(&error).to_string(),
        Err(_elapsed) => format!("no answer within {EGRESS_CHECK_TIMEOUT:?}"),
    };
    if last_failure.as_ref() != Some(&reason) {
        tracing::error!(
            name: names::EGRESS_CHECK_FAILED,
            error = %reason,
            message = names::EGRESS_CHECK_FAILED,
        );
        *last_failure = Some(reason);
    }
    false
}

async fn check_backends(ports: &Ports, last_redis_failure: &mut Option<String>) -> bool {
    let pings = async { tokio::join!(ports.repository.ping(), ports.engines.local().ping()) };
    match tokio::time::timeout(PING_TIMEOUT, pings).await {
        Ok((Ok(()), Ok(()))) => {
            *last_redis_failure = None;
            true
        }
        Ok((redis, docker)) => {
            match redis {
                // The whole chain says why (refused, TLS certificate, WRONGPASS); Redis errors
                // carry no credentials, and the URL is never part of them.
                Err(error) => {
                    let reason = ErrorChain(&error).to_string();
                    if last_redis_failure.as_ref() != Some(&reason) {
                        tracing::warn!(
                            name: names::REDIS_UNREACHABLE,
                            message = names::REDIS_UNREACHABLE,
                            error = %reason,
                        );
                        *last_redis_failure = Some(reason);
                    }
                }
                Ok(()) => *last_redis_failure = None,
            }
            if let Err(error) = docker {
                tracing::debug!(
                    name: names::DOCKER_PING_FAILED,
                    message = names::DOCKER_PING_FAILED,
                    error = %error,
                );
            }
            false
        }
        Err(_elapsed) => false,
    }
}
