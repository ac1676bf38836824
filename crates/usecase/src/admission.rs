//! Admission of new sandboxes: the quotas (`max_sandboxes` of the deployment and of a profile),
//! checked by an atomic reservation in the store before the engine starts anything, and the
//! bound on engine creates in flight in this process.

mod telemetry;

use std::sync::Arc;
use std::time::Duration;

use sandboxd_domain::{AgentId, AgentProfile, SessionId};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::lease::Ports;
use crate::ports::{Limits, QuotaLimit, RepositoryError, Reservation};

/// What a deployment admits; the default admits everything and costs no round trip.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AdmissionPolicy {
    /// `max_sandboxes` of the deployment (every replica sharing the store).
    pub max_sandboxes: Option<u32>,
    /// Engine creates in flight in this process.
    pub max_concurrent_creates: Option<usize>,
    /// How long a create waits for an engine slot before it is refused.
    pub wait: Duration,
    /// How long an unreleased reservation holds its slot (a create is bounded well below it).
    pub reservation_ttl: Duration,
}

/// Why admission refused a create.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the deployment's max_sandboxes ({0}) is reached")]
    Deployment(u32),
    #[error("agents.{agent_id}.max_sandboxes ({limit}) is reached")]
    Agent { agent_id: AgentId, limit: u32 },
    #[error("{in_flight} engine creates are in flight; none finished within {waited:?}")]
    EngineBusy { in_flight: usize, waited: Duration },
}

impl Refusal {
    /// The setting that refused: what a client's `QuotaFailure` names.
    #[must_use]
    pub fn setting(&self) -> String {
        match self {
            Self::Deployment(_) => "max_sandboxes".to_owned(),
            Self::Agent { agent_id, .. } => format!("agents.{agent_id}.max_sandboxes"),
            Self::EngineBusy { .. } => "max_concurrent_creates".to_owned(),
        }
    }

    pub(crate) const fn metric_label(&self) -> &'static str {
        match self {
            Self::Deployment(_) | Self::Agent { .. } => "quota_exceeded",
            Self::EngineBusy { .. } => "engine_busy",
        }
    }
}

/// The admission of one process: the policy and its engine slots. Clones share the slots.
#[derive(Debug, Clone)]
pub(crate) struct Admission {
    policy: AdmissionPolicy,
    engine_slots: Option<Arc<Semaphore>>,
}

/// A slot taken: given back with [`Admission::release`] (the reservation) and on drop (the
/// engine slot).
#[derive(Debug)]
pub(crate) struct Admitted {
    reservation: Option<Reservation>,
    _engine_slot: Option<OwnedSemaphorePermit>,
}

impl Admission {
    pub(crate) fn new(policy: AdmissionPolicy) -> Self {
        Self {
            engine_slots: policy
                .max_concurrent_creates
                .map(|slots| Arc::new(Semaphore::new(slots))),
            policy,
        }
    }

    /// Reserves a slot for the session `session_id` of `agent_id` (replacing `replacing`, which
    /// does not count), then, when `needs_engine` (a cold create; a pool claim starts nothing),
    /// waits for an engine slot. Nothing is reserved without a limit.
    ///
    /// # Errors
    /// `Ok(Err(refusal))` for a full quota or no engine slot in time (nothing is left reserved);
    /// the store's errors.
    pub(crate) async fn admit(
        &self,
        ports: &Ports,
        session_id: SessionId,
        agent_id: &AgentId,
        profile: &AgentProfile,
        replacing: Option<SessionId>,
        needs_engine: bool,
    ) -> Result<Result<Admitted, Refusal>, RepositoryError> {
        let limits = Limits {
            deployment: self.policy.max_sandboxes,
            agent: profile.max_sandboxes,
        };
        let reservation = if limits == Limits::default() {
            None
        } else {
            let now = ports.clock.now();
            let reservation = Reservation {
                session_id,
                agent_id: agent_id.clone(),
                expires_at: now + self.policy.reservation_ttl,
                replacing,
            };
            match ports.repository.reserve(&reservation, limits, now).await? {
                Ok(()) => Some(reservation),
                Err(QuotaLimit::Deployment(limit)) => return Ok(Err(Refusal::Deployment(limit))),
                Err(QuotaLimit::Agent(limit)) => {
                    return Ok(Err(Refusal::Agent {
                        agent_id: agent_id.clone(),
                        limit,
                    }));
                }
            }
        };
        let engine_slot = match self.engine_slots.as_ref().filter(|_| needs_engine) {
            None => None,
            Some(slots) => {
                match tokio::time::timeout(self.policy.wait, Arc::clone(slots).acquire_owned())
                    .await
                {
                    Ok(Ok(permit)) => Some(permit),
                    // Timed out, or (never: the semaphore is not closed) closed.
                    _ => {
                        let admitted = Admitted {
                            reservation,
                            _engine_slot: None,
                        };
                        self.release(ports, admitted).await;
                        return Ok(Err(Refusal::EngineBusy {
                            in_flight: self.policy.max_concurrent_creates.unwrap_or(0),
                            waited: self.policy.wait,
                        }));
                    }
                }
            }
        };
        Ok(Ok(Admitted {
            reservation,
            _engine_slot: engine_slot,
        }))
    }

    /// The engine slots cold creates wait for (`None` when unbounded), for the pool's refill,
    /// which only takes one that is free.
    pub(crate) fn engine_slots(&self) -> Option<Arc<Semaphore>> {
        self.engine_slots.clone()
    }

    /// The deployment's `max_sandboxes`.
    pub(crate) const fn max_sandboxes(&self) -> Option<u32> {
        self.policy.max_sandboxes
    }

    /// Gives the slots back once the create saved its session (which counts itself from then
    /// on) or failed. A release that fails is logged; the reservation frees itself at its
    /// expiry.
    pub(crate) async fn release(&self, ports: &Ports, admitted: Admitted) {
        if let Some(reservation) = &admitted.reservation
            && let Err(error) = ports.repository.release(reservation).await
        {
            telemetry::log_reservation_release_failed(
                &reservation.session_id,
                crate::error::UseCaseError::metric_label(&error),
            );
        }
    }
}
