//! The warm pool (issue 18): sandboxes started ahead of any chat, per agent, which CreateSandbox
//! claims instead of starting a container; and the refill that keeps `pool_size` of them waiting
//! without ever taking the engine from a cold create.
//!
//! The pool of one process lives in memory ([`WarmPool`]): taking a pooled sandbox out of its
//! queue is the only claim lock needed, since every pooled sandbox was started (or adopted at
//! start) by this process. The runtime keeps what must survive a crash (see
//! `PoolRuntime::recover_pool`).

mod telemetry;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use sandboxd_domain::AgentId;
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;

use crate::error::UseCaseError;
use crate::lease::Ports;
use crate::ports::{PooledSandbox, RuntimeError};
use crate::profiles::Profiles;

/// First wait after a failed start of a profile's pooled sandbox; doubled per failure.
const BACKOFF_START: Duration = Duration::from_secs(1);
/// Longest wait between attempts for a profile whose pooled sandboxes keep failing.
const BACKOFF_MAX: Duration = Duration::from_secs(120);
/// How often a pass also settles the pool on the host (the first pass always does): a listing
/// of the engine's pooled containers, not worth making on every claim's refill.
const RECOVER_EVERY: Duration = Duration::from_secs(30);

/// The pooled sandboxes of this process that wait for a claim, per agent. Clones share them.
#[derive(Debug, Clone, Default)]
pub struct WarmPool {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    waiting: Mutex<HashMap<AgentId, VecDeque<PooledSandbox>>>,
    /// Woken on every take, so the refill starts at once rather than at its next tick.
    wanted: Notify,
    /// Pooled sandboxes taken and not yet claimed, put back or given up: while any is, the
    /// refill's engine work would take the CPU from a claim.
    claiming: std::sync::atomic::AtomicUsize,
}

impl WarmPool {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// How many of `agent_id`'s pooled sandboxes wait now.
    #[must_use]
    pub fn ready(&self, agent_id: &AgentId) -> usize {
        self.waiting().get(agent_id).map_or(0, VecDeque::len)
    }

    /// Waits until a claim has taken a pooled sandbox (the refill's wake-up).
    pub async fn wanted(&self) {
        self.inner.wanted.notified().await;
    }

    /// How many taken pooled sandboxes are being claimed now.
    #[must_use]
    pub fn claims_in_flight(&self) -> usize {
        self.inner.claiming.load(Ordering::SeqCst)
    }

    /// The oldest waiting pooled sandbox of `agent_id`, now this caller's alone. Dropped
    /// unused (a refused or abandoned create), it goes back in line.
    pub(crate) fn take(&self, agent_id: &AgentId) -> Option<Taken> {
        let mut waiting = self.waiting();
        let queue = waiting.get_mut(agent_id)?;
        let pooled = queue.pop_front()?;
        telemetry::set_pool_ready(agent_id, queue.len());
        drop(waiting);
        self.inner.claiming.fetch_add(1, Ordering::SeqCst);
        self.inner.wanted.notify_one();
        Some(Taken {
            pool: self.clone(),
            pooled: Some(pooled),
        })
    }

    /// Puts a pooled sandbox (started, adopted, or taken and not used) back in line.
    pub(crate) fn put(&self, pooled: PooledSandbox) {
        let mut waiting = self.waiting();
        let agent_id = pooled.agent_id.clone();
        let queue = waiting.entry(agent_id.clone()).or_default();
        queue.push_back(pooled);
        telemetry::set_pool_ready(&agent_id, queue.len());
    }

    /// Every waiting pooled sandbox, taken out (at shutdown, or to discard a removed profile's).
    pub(crate) fn drain_all(&self) -> Vec<PooledSandbox> {
        let mut waiting = self.waiting();
        let drained: Vec<_> = waiting
            .drain()
            .flat_map(|(agent_id, queue)| {
                telemetry::set_pool_ready(&agent_id, 0);
                queue
            })
            .collect();
        drained
    }

    fn total(&self) -> usize {
        self.waiting().values().map(VecDeque::len).sum()
    }

    fn waiting(&self) -> MutexGuard<'_, HashMap<AgentId, VecDeque<PooledSandbox>>> {
        // A panic while holding this lock leaves plain queues behind: still consistent.
        self.inner
            .waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A pooled sandbox taken out of the pool: used with [`Taken::into_inner`], or put back when
/// dropped, so a create that is refused or abandoned before its claim loses no pooled sandbox.
#[derive(Debug)]
pub(crate) struct Taken {
    pool: WarmPool,
    pooled: Option<PooledSandbox>,
}

impl Taken {
    /// The pooled sandbox, from now on the caller's to claim or discard, and the mark that its
    /// claim is in flight (held until the claim ends, dropped with an abandoned one).
    pub(crate) fn into_inner(mut self) -> (PooledSandbox, ClaimInFlight) {
        let in_flight = ClaimInFlight(self.pool.clone());
        // Always `Some`: only `into_inner` and `drop` take it, and each runs once.
        let pooled = self
            .pooled
            .take()
            .unwrap_or_else(|| unreachable!("taken twice"));
        (pooled, in_flight)
    }
}

impl Drop for Taken {
    fn drop(&mut self) {
        if let Some(pooled) = self.pooled.take() {
            self.pool.inner.claiming.fetch_sub(1, Ordering::SeqCst);
            self.pool.put(pooled);
        }
    }
}

/// A claim in flight; counted in [`WarmPool::claims_in_flight`] until dropped.
#[derive(Debug)]
pub(crate) struct ClaimInFlight(WarmPool);

impl Drop for ClaimInFlight {
    fn drop(&mut self) {
        self.0.inner.claiming.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What one refill pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RefillReport {
    /// Pooled sandboxes started and put in the pool.
    pub started: u64,
    /// Starts that failed (the profile then backs off).
    pub failed: u64,
    /// Waiting pooled sandboxes found at the first pass and taken back into the pool.
    pub adopted: u64,
    /// Pooled sandboxes removed: found at the first pass beyond a profile's `pool_size` or for a
    /// profile without a pool, plus what the runtime's recovery released.
    pub released: u64,
}

/// Why a refill pass stopped early. The pass is retried at the next tick either way.
#[derive(Debug, thiserror::Error)]
pub enum RefillError {
    #[error("the pool's recovery failed")]
    Recovery(#[source] RuntimeError),
    #[error("the active sandboxes could not be counted")]
    Count(#[source] crate::ports::RepositoryError),
}

/// Keeps each pooled profile's `pool_size` sandboxes waiting. One pass: recover (adopting the
/// waiting ones the first time), then start the missing ones one at a time, each only with an
/// engine slot that is free now (a cold create never waits behind the refill), never beyond the
/// deployment's `max_sandboxes` counting the waiting ones, and backing off a profile whose
/// starts fail.
#[derive(Debug)]
pub struct RefillPool {
    ports: Ports,
    profiles: Profiles,
    pool: WarmPool,
    /// The create bound's engine slots, shared with CreateSandbox (`None`: unbounded).
    engine_slots: Option<Arc<Semaphore>>,
    /// The deployment's `max_sandboxes`.
    max_sandboxes: Option<u32>,
    /// Whether the waiting pooled sandboxes of an earlier process were taken over.
    adopted: AtomicBool,
    /// Per agent: failures in a row and when to try again.
    backoff: Mutex<HashMap<AgentId, (u32, Instant)>>,
    /// When the pool was last settled on the host.
    recovered_at: Mutex<Option<Instant>>,
}

impl RefillPool {
    pub(crate) fn new(
        ports: Ports,
        profiles: Profiles,
        pool: WarmPool,
        engine_slots: Option<Arc<Semaphore>>,
        max_sandboxes: Option<u32>,
    ) -> Self {
        Self {
            ports,
            profiles,
            pool,
            engine_slots,
            max_sandboxes,
            adopted: AtomicBool::new(false),
            backoff: Mutex::new(HashMap::new()),
            recovered_at: Mutex::new(None),
        }
    }

    /// Whether any profile has a pool and the runtime can pool: otherwise the refill has nothing
    /// to do and need not run.
    #[must_use]
    pub fn is_enabled(&self) -> bool {
        self.ports.pool.is_some() && self.profiles.iter().any(|(_, p)| p.pool_size > 0)
    }

    /// The pool this refill keeps full (CreateSandbox takes from the same one).
    #[must_use]
    pub fn pool(&self) -> &WarmPool {
        &self.pool
    }

    /// One pass (see the type's docs).
    ///
    /// # Errors
    /// `Recovery` when the runtime could not settle the pool (the engine is down); `Count` when
    /// the deployment's sandboxes could not be counted for its `max_sandboxes`.
    pub async fn execute(&self) -> Result<RefillReport, RefillError> {
        let mut report = RefillReport::default();
        if self.recovery_due() {
            self.recover(&mut report).await?;
        }
        self.fill(&mut report).await?;
        Ok(report)
    }

    fn recovery_due(&self) -> bool {
        let last = *self
            .recovered_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        last.is_none_or(|at| at.elapsed() >= RECOVER_EVERY)
    }

    /// Settles the pool on the host; the first time, takes over what was left waiting.
    async fn recover(&self, report: &mut RefillReport) -> Result<(), RefillError> {
        let Some(runtime) = &self.ports.pool else {
            return Ok(());
        };
        let recovery = runtime
            .recover_pool()
            .await
            .inspect_err(|e| telemetry::log_pool_recovery_failed(e.metric_label()))
            .map_err(RefillError::Recovery)?;
        *self
            .recovered_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now());
        report.released += recovery.released;
        telemetry::count_pool_released(recovery.released);
        if !self.adopted.swap(true, Ordering::SeqCst) {
            let (adopted, discarded) = self.adopt(recovery.waiting.clone()).await;
            report.adopted = adopted;
            report.released += discarded;
            telemetry::log_pool_recovered(
                &recovery,
                usize::try_from(adopted).unwrap_or(usize::MAX),
                usize::try_from(discarded).unwrap_or(usize::MAX),
            );
        } else if recovery.released > 0 {
            telemetry::log_pool_recovered(&recovery, 0, 0);
        }
        Ok(())
    }

    /// Starts the missing pooled sandboxes, one at a time.
    async fn fill(&self, report: &mut RefillReport) -> Result<(), RefillError> {
        let Some(runtime) = &self.ports.pool else {
            return Ok(());
        };
        for (agent_id, profile) in self.profiles.iter() {
            while self.pool.ready(agent_id) < profile.pool_size as usize {
                if !self.room_for_one().await? || self.backing_off(agent_id) {
                    break;
                }
                // Only a slot free now: the refill never queues before a cold create.
                let _slot = match &self.engine_slots {
                    Some(slots) => match Arc::clone(slots).try_acquire_owned() {
                        Ok(permit) => Some(permit),
                        Err(_) => return Ok(()),
                    },
                    None => None,
                };
                match runtime.start_pooled(agent_id, profile).await {
                    Ok(pooled) => {
                        telemetry::count_pool_start(agent_id, true);
                        self.succeeded(agent_id);
                        self.pool.put(pooled);
                        report.started += 1;
                    }
                    Err(error) => {
                        telemetry::count_pool_start(agent_id, false);
                        let retry_in = self.failed(agent_id);
                        telemetry::log_pool_start_failed(
                            agent_id,
                            error.metric_label(),
                            &error,
                            retry_in,
                        );
                        report.failed += 1;
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    /// Removes every waiting pooled sandbox of this process (at shutdown: they serve nobody, and
    /// a restart starts its own). Failures are logged; the next start's recovery removes them.
    pub async fn discard_all(&self) {
        for pooled in self.pool.drain_all() {
            self.discard(pooled).await;
        }
    }

    /// Removes one waiting pooled sandbox; a failure is logged (the next recovery removes it).
    async fn discard(&self, pooled: PooledSandbox) {
        let Some(runtime) = &self.ports.pool else {
            return;
        };
        if let Err(error) = runtime.discard_pooled(pooled.clone()).await {
            telemetry::log_pool_discard_failed(&pooled, error.metric_label());
        }
    }

    /// Takes over the waiting pooled sandboxes an earlier process left, up to each profile's
    /// `pool_size`; discards the rest. Returns (adopted, discarded).
    async fn adopt(&self, waiting: Vec<PooledSandbox>) -> (u64, u64) {
        let (mut adopted, mut discarded) = (0, 0);
        for pooled in waiting {
            let wanted = self
                .profiles
                .get(&pooled.agent_id)
                .map_or(0, |profile| profile.pool_size as usize);
            if self.pool.ready(&pooled.agent_id) < wanted {
                self.pool.put(pooled);
                adopted += 1;
            } else {
                self.discard(pooled).await;
                discarded += 1;
            }
        }
        (adopted, discarded)
    }

    /// Whether one more pooled sandbox fits under the deployment's `max_sandboxes`, counting
    /// the waiting ones: a full deployment does not also hold a pool.
    async fn room_for_one(&self) -> Result<bool, RefillError> {
        let Some(limit) = self.max_sandboxes else {
            return Ok(true);
        };
        let active = self
            .ports
            .repository
            .count_active()
            .await
            .map_err(RefillError::Count)?;
        Ok(active + (self.pool.total() as u64) < u64::from(limit))
    }

    fn backing_off(&self, agent_id: &AgentId) -> bool {
        self.backoffs()
            .get(agent_id)
            .is_some_and(|(_, until)| Instant::now() < *until)
    }

    /// Records a failure and returns how long the agent's pool now waits.
    fn failed(&self, agent_id: &AgentId) -> Duration {
        let mut backoffs = self.backoffs();
        let failures = backoffs
            .get(agent_id)
            .map_or(0, |(n, _)| *n)
            .saturating_add(1);
        let wait = BACKOFF_START
            .saturating_mul(1 << failures.saturating_sub(1).min(16))
            .min(BACKOFF_MAX);
        backoffs.insert(agent_id.clone(), (failures, Instant::now() + wait));
        wait
    }

    fn succeeded(&self, agent_id: &AgentId) {
        self.backoffs().remove(agent_id);
    }

    fn backoffs(&self) -> MutexGuard<'_, HashMap<AgentId, (u32, Instant)>> {
        self.backoff
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
