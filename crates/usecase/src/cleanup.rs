//! CleanupExpiredSandboxes: one pass over the expiry index, re-checking every session under its
//! chat's lease; independent chats are handled concurrently, and one failure never stops the pass.
//! A running sandbox that expired gets its profile's `on_idle` (removed, paused or hibernated);
//! a suspended one past its retention, and any past its hard cap, is removed.

mod telemetry;

use std::time::Duration;

use futures::StreamExt;
use sandboxd_domain::{EventNote, EventReason, EventType, OnIdle, SandboxSession, SandboxState};
use tracing::{Instrument, Span};

use crate::error::{ErrorKind, PortError, UseCaseError};
use crate::lease::{Ports, with_lease};
use crate::lifecycle::Transitions;
use crate::ports::{Change, RepositoryError};
use crate::profiles::Profiles;
use telemetry::metric;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CleanupOptions {
    /// Sessions handled at once (stops of different chats run in parallel). At least 1.
    pub concurrency: usize,
    /// Most expired sessions taken from the index per pass; the next pass takes the rest.
    pub batch_size: usize,
}

impl Default for CleanupOptions {
    fn default() -> Self {
        Self {
            concurrency: 8,
            batch_size: 1000,
        }
    }
}

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CleanupReport {
    /// Sessions whose container was stopped and record deleted, in expiry order.
    pub cleaned: Vec<SandboxSession>,
    /// Sessions paused or hibernated because they went idle, as stored after it.
    pub suspended: Vec<SandboxSession>,
    pub error_count: usize,
    /// Of `error_count`, the failures because Redis or the engine did not answer.
    pub unavailable_count: usize,
    /// Listed sessions that needed nothing: gone, superseded, or live again.
    pub skipped_count: usize,
}

enum SessionOutcome {
    Cleaned(SandboxSession),
    Suspended(SandboxSession),
    Skipped,
    Failed { unavailable: bool },
}

/// What a pass does with one expired session.
enum Action {
    Remove(EventReason),
    Suspend(SandboxState),
}

impl Action {
    /// The hard cap removes in any state; a suspended session past its retention is removed; a
    /// running one gets its profile's `on_idle`.
    fn for_session(session: &SandboxSession, on_idle: OnIdle) -> Self {
        if session.hits_max_lifetime() {
            return Self::Remove(EventReason::MaxLifetime);
        }
        match (session.state, on_idle) {
            (SandboxState::Paused | SandboxState::Hibernated, _) => {
                Self::Remove(EventReason::Retention)
            }
            (SandboxState::Running, OnIdle::Delete) => Self::Remove(EventReason::Idle),
            (SandboxState::Running, OnIdle::Pause) => Self::Suspend(SandboxState::Paused),
            (SandboxState::Running, OnIdle::Hibernate) => Self::Suspend(SandboxState::Hibernated),
        }
    }
}

#[derive(Debug, Clone)]
pub struct CleanupExpiredSandboxes {
    ports: Ports,
    options: CleanupOptions,
    transitions: Transitions,
}

impl CleanupExpiredSandboxes {
    /// `profiles` give each session's `on_idle` and retention (a session whose profile is gone
    /// is removed); `ttl` is the session TTL.
    #[must_use]
    pub fn new(ports: Ports, profiles: Profiles, ttl: Duration, options: CleanupOptions) -> Self {
        Self {
            transitions: Transitions::new(ports.clone(), profiles, ttl),
            ports,
            options,
        }
    }

    /// # Errors
    /// Only when listing the expired sessions fails; per-session failures are counted in the
    /// report.
    pub async fn execute(&self) -> Result<CleanupReport, PortError> {
        let span = telemetry::cleanup_pass_span();
        self.run_pass(&span).instrument(span.clone()).await
    }

    async fn run_pass(&self, span: &Span) -> Result<CleanupReport, PortError> {
        let now = self.ports.clock.now();
        let expired = match self
            .ports
            .repository
            .list_expired(now, self.options.batch_size)
            .await
        {
            Ok(expired) => expired,
            Err(error) => {
                let error = PortError::from(error);
                telemetry::record_result(span, "error");
                telemetry::count_cleanup_error(
                    error.metric_label(),
                    Some(metric::REASON_LIST_EXPIRED),
                );
                telemetry::record_error(span, error.metric_label(), &error);
                return Err(error);
            }
        };
        span.record(telemetry::span::EXPIRED_COUNT, expired.len());
        let mut outcomes: Vec<(usize, SessionOutcome)> =
            futures::stream::iter(expired.into_iter().enumerate())
                .map(|(index, session)| async move { (index, self.clean_one(span, session).await) })
                .buffer_unordered(self.options.concurrency.max(1))
                .collect()
                .await;
        outcomes.sort_by_key(|(index, _)| *index);
        let mut report = CleanupReport::default();
        for (_, outcome) in outcomes {
            match outcome {
                SessionOutcome::Cleaned(session) => report.cleaned.push(session),
                SessionOutcome::Suspended(session) => report.suspended.push(session),
                SessionOutcome::Skipped => report.skipped_count += 1,
                SessionOutcome::Failed { unavailable } => {
                    report.error_count += 1;
                    report.unavailable_count += usize::from(unavailable);
                }
            }
        }
        span.record(telemetry::span::CLEANED_COUNT, report.cleaned.len());
        span.record(telemetry::span::SUSPENDED_COUNT, report.suspended.len());
        self.transitions.refresh_state_counts().await;
        span.record(telemetry::span::ERROR_COUNT, report.error_count);
        span.record(telemetry::span::SKIPPED_COUNT, report.skipped_count);
        let result = if report.error_count == 0 {
            "completed"
        } else {
            "completed_with_errors"
        };
        telemetry::record_result(span, result);
        Ok(report)
    }

    /// Cleans one listed session in its own span, turning every failure into a counted outcome.
    async fn clean_one(&self, pass_span: &Span, listed: SandboxSession) -> SessionOutcome {
        let span = telemetry::cleanup_one_span(pass_span, &listed);
        let outcome = self
            .clean_under_lease(&listed)
            .instrument(span.clone())
            .await;
        let _entered = span.enter();
        match outcome {
            Ok(Some(done @ SessionOutcome::Cleaned(_))) => {
                telemetry::record_result(&span, "cleaned");
                telemetry::count_result(metric::CLEANUP_TOTAL, "cleaned");
                if let SessionOutcome::Cleaned(cleaned) = &done {
                    telemetry::log_cleaned(cleaned);
                }
                done
            }
            Ok(Some(done)) => {
                let result = match &done {
                    SessionOutcome::Suspended(s) if s.state == SandboxState::Hibernated => {
                        "hibernated"
                    }
                    _ => "paused",
                };
                telemetry::record_result(&span, result);
                telemetry::count_result(metric::PAUSE_TOTAL, result);
                done
            }
            Ok(None) => {
                telemetry::record_result(&span, "skipped");
                SessionOutcome::Skipped
            }
            Err(error) => {
                telemetry::record_result(&span, "error");
                telemetry::record_error(&span, error.metric_label(), &error);
                telemetry::count_cleanup_error(error.metric_label(), None);
                let unavailable = error.kind() == ErrorKind::Unavailable;
                telemetry::log_clean_failed(&listed, error.metric_label(), unavailable);
                SessionOutcome::Failed { unavailable }
            }
        }
    }

    /// Re-reads the chat under its lease: only a session that is still the chat's current one and
    /// still expired is acted on. `Ok(None)` means skipped (also when a touch landed after the
    /// decision: the fenced write refuses, and the touch wins).
    async fn clean_under_lease(
        &self,
        listed: &SandboxSession,
    ) -> Result<Option<SessionOutcome>, PortError> {
        with_lease(&*self.ports.locker, &listed.chat_id, async |lease| {
            let current = self
                .ports
                .repository
                .get_current_by_chat_id(&listed.chat_id)
                .await?;
            let now = self.ports.clock.now();
            let Some(current) = current.filter(|c| c.session_id == listed.session_id) else {
                // Beyond the reference flow: a superseded session would be listed on every pass forever.
                let note = EventNote::new(EventType::Expired, EventReason::Replaced, now);
                self.ports
                    .delete_session(lease, listed, &Change::new(note))
                    .await?;
                telemetry::log_stale_index_removed(listed);
                return Ok(None);
            };
            if current.is_live_at(now) {
                return Ok(None);
            }
            // A sandbox on a lost node (fleet mode) cannot be paused or stopped: it is deleted,
            // its container's removal left to its node's reconcile.
            let on_idle = if self
                .ports
                .engines
                .directory()
                .is_lost(current.node_id.as_ref())
            {
                OnIdle::Delete
            } else {
                self.transitions
                    .profiles
                    .get(&current.agent_id)
                    .map_or(OnIdle::Delete, |profile| profile.on_idle)
            };
            match Action::for_session(&current, on_idle) {
                Action::Suspend(target) => {
                    match self
                        .transitions
                        .suspend(lease, &current, target, EventReason::Idle)
                        .await
                    {
                        Ok(suspended) => Ok(suspended.map(SessionOutcome::Suspended)),
                        // A touch won: the session is live again.
                        Err(PortError::Repository(RepositoryError::Changed)) => Ok(None),
                        Err(error) => Err(error),
                    }
                }
                Action::Remove(reason) => {
                    // The container first, as in the reference flow: a removal that fails keeps
                    // the session for the next pass. The delete is fenced on the expiry this was
                    // decided by; a touch cannot land on an expired session, so only replicas'
                    // clocks apart can make it refuse, and then the session stays for
                    // reconcile, which finds its container gone.
                    let engine = self.ports.engines.removing(current.node_id.as_ref());
                    match engine.await? {
                        Some(engine) if current.state == SandboxState::Running => {
                            engine.remove_gracefully(&current.container_id).await?;
                        }
                        // Frozen or stopped: nothing would handle a graceful stop.
                        Some(engine) => engine.force_remove(&current.container_id).await?,
                        None => {}
                    }
                    let note = EventNote::new(EventType::Expired, reason, now);
                    match self
                        .ports
                        .delete_session(lease, &current, &Change::fenced(note, &current))
                        .await
                    {
                        Ok(()) => Ok(Some(SessionOutcome::Cleaned(current))),
                        Err(RepositoryError::Changed) => Ok(None),
                        Err(error) => Err(error.into()),
                    }
                }
            }
        })
        .await
    }
}
