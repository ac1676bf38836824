//! ReconcileSandboxes: one pass that makes the engine and the store agree again after crashes,
//! lost writes or manual changes (docs/design.md §6). Every container no listed session owns is
//! judged under its chat's lease, so an in-flight create (which holds the lease) is never taken
//! for an orphan: a live container whose chat has no session is adopted (its session rebuilt
//! from its labels), one whose chat has another session is a stray and removed, a dead one is
//! removed. Sessions whose container is gone or stopped are deleted. Only a container whose
//! labels name no chat, which no lease can cover, waits out the age grace.
//!
//! Crash safety of CreateSandbox rests on its order: the container is created (labelled with
//! its whole session) before the session is saved, and the old container is stopped before the
//! old session is deleted. A process killed at any point therefore leaves at worst a container
//! without a session (adopted here) or a session without a running container (deleted here).

mod telemetry;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use sandboxd_domain::{
    ContainerId, EventNote, EventReason, EventType, NodeId, SandboxSession, SandboxState, Timestamp,
};
use tracing::{Instrument, Span};

use crate::error::{PortError, UseCaseError};
use crate::lease::{Ports, with_lease};
use crate::ports::{Change, ContainerState, ListQuery, ManagedContainer};
use crate::repair::{adopt, remove_dead, remove_strays};
use telemetry::metric;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReconcileOptions {
    /// Backstop for what no lease covers: a container whose labels name no chat is removed
    /// only once older than this.
    pub grace: Duration,
    /// An adopted session lives at least this long from the adoption, so a client that lost
    /// track during the store's outage can still reach (and extend) it.
    pub adoption_grace: Duration,
    /// Page size used to walk every session.
    pub page_size: usize,
    /// Whether a profile pools: each pass then also settles the warm pool on the host
    /// (`PoolRuntime::recover_pool`), so a slot a crash left mounted goes with the pass that
    /// removes its container, not only with the refill's next recovery.
    pub settle_pool: bool,
}

impl Default for ReconcileOptions {
    fn default() -> Self {
        Self {
            grace: Duration::from_secs(60),
            adoption_grace: Duration::from_secs(10 * 60),
            settle_pool: false,
            page_size: 500,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Containers removed: dead or unlabelled ones no session owns, and strays of chats whose
    /// session names another container.
    pub removed_containers: Vec<ContainerId>,
    /// Sessions deleted because their container is gone or stopped.
    pub removed_sessions: Vec<SandboxSession>,
    /// Sessions rebuilt from a live container's labels because their chat had none.
    pub adopted: Vec<SandboxSession>,
    /// Sessions whose container's state had drifted from theirs, after the repair.
    pub repaired: Vec<SandboxSession>,
    pub error_count: usize,
}

/// What a session's container state calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Repair {
    /// The container is gone, or a running session's container exited: the session goes.
    RemoveSession,
    /// The engine is brought back to the session's state (the session wins).
    Pause,
    Unpause,
    Stop,
    /// A paused session's container stopped: the session records what the engine did, since
    /// starting it again would need a resume.
    RecordHibernated,
}

impl Repair {
    fn needed(session: SandboxState, engine: ContainerState) -> Option<Self> {
        match (session, engine) {
            (SandboxState::Running, ContainerState::Running)
            | (SandboxState::Paused, ContainerState::Paused)
            | (SandboxState::Hibernated, ContainerState::Stopped) => None,
            (_, ContainerState::Gone) | (SandboxState::Running, ContainerState::Stopped) => {
                Some(Self::RemoveSession)
            }
            (SandboxState::Running, ContainerState::Paused) => Some(Self::Unpause),
            (SandboxState::Paused, ContainerState::Running) => Some(Self::Pause),
            (SandboxState::Paused, ContainerState::Stopped) => Some(Self::RecordHibernated),
            (SandboxState::Hibernated, ContainerState::Running | ContainerState::Paused) => {
                Some(Self::Stop)
            }
        }
    }

    const fn as_str(self) -> &'static str {
        match self {
            Self::RemoveSession => "remove_session",
            Self::Pause => "pause",
            Self::Unpause => "unpause",
            Self::Stop => "stop",
            Self::RecordHibernated => "record_hibernated",
        }
    }
}

/// What judging one unowned container under its chat's lease did.
enum Judged {
    /// Owned after all (a create finished meanwhile), or already gone.
    Nothing,
    Removed,
    Adopted(Box<SandboxSession>),
}

#[derive(Debug, Clone)]
pub struct ReconcileSandboxes {
    ports: Ports,
    options: ReconcileOptions,
    /// One pass at a time per process: the background loop's pass and an admin RPC's would
    /// otherwise compete for the same chats' leases (failing each other with `lock_busy`) to do
    /// the same repairs. Clones share it.
    one_pass: Arc<futures::lock::Mutex<()>>,
}

impl ReconcileSandboxes {
    #[must_use]
    pub fn new(ports: Ports, options: ReconcileOptions) -> Self {
        Self {
            ports,
            options,
            one_pass: Arc::new(futures::lock::Mutex::new(())),
        }
    }

    /// # Errors
    /// When the containers or the sessions cannot be listed; single repairs that fail are
    /// counted in the report and retried by the next pass.
    pub async fn execute(&self) -> Result<ReconcileReport, PortError> {
        // Waiting here is bounded by the running pass; the next one then sees its repairs.
        let _one_pass = self.one_pass.lock().await;
        let span = telemetry::reconcile_span();
        let outcome = self.run_pass(&span).instrument(span.clone()).await;
        let _entered = span.enter();
        match &outcome {
            Ok(report) => {
                span.record(
                    telemetry::span::REMOVED_CONTAINERS,
                    report.removed_containers.len(),
                );
                span.record(
                    telemetry::span::REMOVED_SESSIONS,
                    report.removed_sessions.len(),
                );
                span.record(telemetry::span::ADOPTED_SESSIONS, report.adopted.len());
                span.record(telemetry::span::REPAIRED_SESSIONS, report.repaired.len());
                span.record(telemetry::span::ERROR_COUNT, report.error_count);
                let result = if report.error_count == 0 {
                    "completed"
                } else {
                    "completed_with_errors"
                };
                telemetry::record_result(&span, result);
            }
            Err(error) => {
                telemetry::record_result(&span, "error");
                telemetry::record_error(&span, error.metric_label(), error);
                // Counted, not logged: the caller handles it (the server's loop logs an outage
                // once, not on every tick while Redis or Docker is down).
                telemetry::count_reconcile_error(error.metric_label());
            }
        }
        outcome
    }

    async fn run_pass(&self, span: &Span) -> Result<ReconcileReport, PortError> {
        // The cutoff (for containers naming no chat) is taken before listing, so anything
        // created during the pass is younger.
        let cutoff = self.ports.clock.now() - self.options.grace;
        // Sessions first, then containers: delete and cleanup remove the container before the
        // session, so a container listed after the sessions is either owned by a listed session,
        // created after the session listing (its session is found under the lease), or a true
        // orphan. Listed the other way round, every delete finishing between the two
        // listings made its (already removed) container look like an orphan, and the pass
        // reported and counted removing it.
        let sessions = self.all_sessions().await?;
        let containers = self.ports.engines.list_local().await?;
        span.record(telemetry::span::CONTAINER_COUNT, containers.len());
        span.record(telemetry::span::SESSION_COUNT, sessions.len());
        // Keyed by node and engine id: engine ids are only unique per engine.
        let directory = self.ports.engines.directory();
        let by_container: HashMap<(&NodeId, &ContainerId), &ManagedContainer> = containers
            .iter()
            .map(|c| ((directory.node_of(c.node_id.as_ref()), &c.container_id), c))
            .collect();
        let owned: HashMap<(&NodeId, &ContainerId), &SandboxSession> = sessions
            .iter()
            .map(|s| ((directory.node_of(s.node_id.as_ref()), &s.container_id), s))
            .collect();

        let mut report = ReconcileReport::default();
        for container in containers.iter().filter(|c| {
            !owned.contains_key(&(directory.node_of(c.node_id.as_ref()), &c.container_id))
        }) {
            let judged = match container.labels.chat_id {
                Some(_) => self.judge_under_lease(container).await,
                // No chat, no lease: only age tells an in-flight create from an orphan.
                None if older_than(container.labels.created_at, cutoff) => {
                    remove_dead(&**self.ports.engines.local(), container)
                        .await
                        .map(|()| Judged::Removed)
                        .map_err(PortError::from)
                }
                None => Ok(Judged::Nothing),
            };
            match judged {
                Ok(Judged::Nothing) => {}
                Ok(Judged::Removed) => report
                    .removed_containers
                    .push(container.container_id.clone()),
                Ok(Judged::Adopted(session)) => report.adopted.push(*session),
                Err(error) => self.count_failure(&mut report, &error),
            }
        }
        // Another node's sessions are its own reconcile's (fleet mode): its containers are not
        // listed here, so they would all look gone.
        for session in sessions
            .iter()
            .filter(|s| directory.is_local(s.node_id.as_ref()))
        {
            let engine = by_container
                .get(&(
                    directory.node_of(session.node_id.as_ref()),
                    &session.container_id,
                ))
                .map_or(ContainerState::Gone, |c| c.state);
            match Repair::needed(session.state, engine) {
                None => {}
                Some(Repair::RemoveSession) => match self.remove_orphan_session(session).await {
                    Ok(true) => report.removed_sessions.push(session.clone()),
                    Ok(false) => {}
                    Err(error) => self.count_failure(&mut report, &error),
                },
                Some(_) => match self.repair_drift(session).await {
                    Ok(Some(repaired)) => report.repaired.push(repaired),
                    Ok(None) => {}
                    Err(error) => self.count_failure(&mut report, &error),
                },
            }
        }
        if self.options.settle_pool {
            // Waiting pooled sandboxes are the refill's to take back; only leftovers go here.
            if let Some(pool) = &self.ports.pool {
                match pool.recover_pool().await {
                    Ok(recovery) => telemetry::count_pool_released(recovery.released),
                    Err(error) => self.count_failure(&mut report, &PortError::from(error)),
                }
            }
        }
        if let Ok(active) = self.ports.repository.count_active().await {
            telemetry::set_active_count(active);
        }
        if let Ok(counts) = self.ports.repository.count_by_state().await {
            telemetry::set_state_counts(&counts);
        }
        Ok(report)
    }

    fn count_failure(&self, report: &mut ReconcileReport, error: &PortError) {
        report.error_count += 1;
        telemetry::count_reconcile_error(error.metric_label());
        telemetry::log_reconcile_failed(error.metric_label());
    }

    async fn all_sessions(&self) -> Result<Vec<SandboxSession>, PortError> {
        let mut sessions = Vec::new();
        let mut page_token = None;
        loop {
            let query = ListQuery {
                agent_id: None,
                state: None,
                page_size: self.options.page_size,
                page_token,
            };
            let page = self.ports.repository.list(&query).await?;
            sessions.extend(page.sessions);
            match page.next_page_token {
                Some(next) => page_token = Some(next),
                None => return Ok(sessions),
            }
        }
    }

    /// Judges a container no listed session owned, under its chat's lease: while the lease is
    /// held no create of the chat is in flight, so what the store says now is the truth.
    async fn judge_under_lease(&self, container: &ManagedContainer) -> Result<Judged, PortError> {
        let Some(chat_id) = container.labels.chat_id else {
            return Ok(Judged::Nothing);
        };
        with_lease(&*self.ports.locker, &chat_id, async |lease| {
            let state = self
                .ports
                .engines
                .local()
                .inspect(&container.container_id)
                .await?;
            if state == ContainerState::Gone {
                return Ok(Judged::Nothing);
            }
            let current = self
                .ports
                .repository
                .get_current_by_chat_id(&chat_id)
                .await?;
            match current {
                // The container was listed by this node's engine: the session owns it when it
                // names it on this node.
                Some(session)
                    if session.container_id == container.container_id
                        && self
                            .ports
                            .engines
                            .directory()
                            .is_local(session.node_id.as_ref()) =>
                {
                    Ok(Judged::Nothing)
                }
                Some(_) => {
                    let stray = vec![container.clone()];
                    remove_strays(&self.ports, &chat_id, stray).await?;
                    Ok(Judged::Removed)
                }
                None => match container.session().filter(|_| state.is_alive()) {
                    // Listed in another state than it is in now (a killed create's start that
                    // completed since): the listed session would carry that state and no
                    // endpoint. The next pass lists it as it is, and adopts that.
                    Some(_) if state != container.state => Ok(Judged::Nothing),
                    Some(labelled) => {
                        let adopted =
                            adopt(&self.ports, lease, labelled, self.options.adoption_grace)
                                .await?;
                        Ok(Judged::Adopted(Box::new(adopted)))
                    }
                    None => {
                        remove_dead(&**self.ports.engines.local(), container).await?;
                        Ok(Judged::Removed)
                    }
                },
            }
        })
        .await
    }

    /// Brings a session's container back in line with the session (or, for a paused session
    /// whose container stopped, the session in line with the engine), under the chat's lease and
    /// only if the stored session and the container's state still call for it.
    async fn repair_drift(
        &self,
        session: &SandboxSession,
    ) -> Result<Option<SandboxSession>, PortError> {
        let repaired = with_lease(&*self.ports.locker, &session.chat_id, async |lease| {
            let Some(stored) = self
                .ports
                .repository
                .get_by_session_id(&session.session_id)
                .await?
                .filter(|stored| same_sandbox(stored, session))
            else {
                return Ok(None);
            };
            // This node's session (only those are judged here): this node's engine.
            let runtime = self.ports.engines.local();
            let engine = runtime.inspect(&stored.container_id).await?;
            let note = EventNote::new(
                EventType::Reconciled,
                EventReason::Drift,
                self.ports.clock.now(),
            );
            let repair = match Repair::needed(stored.state, engine) {
                None | Some(Repair::RemoveSession) => return Ok(None),
                Some(repair) => repair,
            };
            let after = match repair {
                Repair::Pause => runtime.pause(&stored.container_id).await.map(|()| stored),
                Repair::Unpause => runtime.unpause(&stored.container_id).await.map(|()| stored),
                Repair::Stop => runtime.stop(&stored.container_id).await.map(|()| stored),
                Repair::RecordHibernated | Repair::RemoveSession => {
                    let hibernated = SandboxSession {
                        state: SandboxState::Hibernated,
                        endpoint: None,
                        ..stored
                    };
                    let updated = self
                        .ports
                        .repository
                        .update(lease, &hibernated, &Change::new(note))
                        .await?;
                    telemetry::log_drift_repaired(&hibernated, engine.as_str(), repair.as_str());
                    return Ok::<_, PortError>(updated);
                }
            }?;
            // The session is unchanged; the event tells watchers the engine was corrected.
            self.ports.repository.append_event(&after, &note).await?;
            telemetry::log_drift_repaired(&after, engine.as_str(), repair.as_str());
            Ok(Some(after))
        })
        .await?;
        if repaired.is_some() {
            telemetry::count_result(metric::RECONCILE_TOTAL, metric::REPAIR_DRIFT);
        }
        Ok(repaired)
    }

    /// Deletes a session whose container is gone or stopped (removing what is left of the
    /// container), if under the lease it is still the same stored session.
    async fn remove_orphan_session(&self, session: &SandboxSession) -> Result<bool, PortError> {
        let removed = with_lease(&*self.ports.locker, &session.chat_id, async |lease| {
            let stored = self
                .ports
                .repository
                .get_by_session_id(&session.session_id)
                .await?;
            if !stored
                .as_ref()
                .is_some_and(|stored| same_sandbox(stored, session))
            {
                return Ok(false);
            }
            // This node's session (only those are judged here): this node's engine.
            self.ports
                .engines
                .local()
                .force_remove(&session.container_id)
                .await?;
            let note = EventNote::new(
                EventType::Reconciled,
                EventReason::ContainerGone,
                self.ports.clock.now(),
            );
            self.ports
                .delete_session(lease, session, &Change::new(note))
                .await?;
            Ok::<_, PortError>(true)
        })
        .await?;
        if removed {
            telemetry::count_result(metric::RECONCILE_TOTAL, metric::REPAIR_SESSION_REMOVED);
            telemetry::log_orphan_session_removed(session);
        }
        Ok(removed)
    }
}

/// The stored session is still the listed one in what a repair judges by: the same container
/// in the same state (a touch since, which moves only its activity and expiry, changes nothing).
fn same_sandbox(stored: &SandboxSession, listed: &SandboxSession) -> bool {
    stored.node_id == listed.node_id
        && stored.container_id == listed.container_id
        && stored.state == listed.state
}

/// A container without a readable creation time is treated as old: it cannot be ours in flight,
/// since every container this service creates carries the label.
fn older_than(created_at: Option<Timestamp>, cutoff: Timestamp) -> bool {
    created_at.is_none_or(|at| at <= cutoff)
}
