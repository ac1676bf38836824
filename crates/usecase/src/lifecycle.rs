//! The session's states beyond create and delete: pause, hibernate and resume (an engine call,
//! then a fenced store write that appends its event, under the chat's lease), and touch (one
//! store round trip, no lease). Shared by PauseSandbox, ResumeSandbox, TouchSandbox, the
//! resuming CreateSandbox and the cleanup's idle transitions.
//!
//! Order: the engine first, then the store. A write that fails afterwards (the lease was lost, or
//! a touch moved a fenced expiry) is compensated by undoing the engine call, so the session
//! never names a state its container is not in for longer than the compensation; if that fails
//! too, reconcile repairs the drift.

mod telemetry;

use std::time::Duration;

use sandboxd_domain::{
    AgentId, ChatId, DEFAULT_PAUSED_RETENTION, EventNote, EventReason, EventType, SandboxSession,
    SandboxState, Timestamp,
};
use tracing::Instrument;

use crate::error::{ErrorKind, PortError, UseCaseError};
use crate::lease::{Ports, with_lease};
use crate::ports::{Change, Lease, LockError, RepositoryError, RuntimeError};
use crate::profiles::Profiles;
use telemetry::{metric, span};

/// Why a pause, resume or touch did not happen.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error("chat {0} has no sandbox")]
    NotFound(ChatId),
    #[error("the sandbox of chat {0} has expired")]
    Expired(ChatId),
    /// The operation does not apply in this state (pausing a hibernated sandbox, touching a
    /// paused one).
    #[error("the sandbox of chat {chat_id} is {state}")]
    WrongState {
        chat_id: ChatId,
        state: SandboxState,
    },
    /// A hibernated sandbox's profile is no longer configured: it cannot be started again.
    #[error("no agent profile {0} is configured to start the sandbox with")]
    UnknownAgent(AgentId),
    /// A port failed; its kind, label and message are the port error's.
    #[error(transparent)]
    Port(#[from] PortError),
}

// A port call's own error becomes `Port` through `?`.
impl From<LockError> for LifecycleError {
    fn from(error: LockError) -> Self {
        Self::Port(error.into())
    }
}

impl From<RepositoryError> for LifecycleError {
    fn from(error: RepositoryError) -> Self {
        Self::Port(error.into())
    }
}

impl From<RuntimeError> for LifecycleError {
    fn from(error: RuntimeError) -> Self {
        Self::Port(error.into())
    }
}

impl UseCaseError for LifecycleError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::NotFound(_) => ErrorKind::NotFound,
            Self::Expired(_) | Self::WrongState { .. } | Self::UnknownAgent(_) => {
                ErrorKind::FailedPrecondition
            }
            Self::Port(error) => error.kind(),
        }
    }

    fn metric_label(&self) -> &'static str {
        match self {
            Self::NotFound(_) | Self::Expired(_) | Self::WrongState { .. } => self.result_label(),
            Self::UnknownAgent(_) => "unknown_agent",
            Self::Port(error) => error.metric_label(),
        }
    }

    fn client_message(&self) -> String {
        match self {
            Self::NotFound(chat_id) => format!("chat {chat_id} has no sandbox"),
            Self::Expired(chat_id) => format!("the sandbox of chat {chat_id} has expired"),
            Self::WrongState {
                chat_id,
                state: SandboxState::Running,
            } => format!("the sandbox of chat {chat_id} is running"),
            Self::WrongState { chat_id, state } => {
                format!("the sandbox of chat {chat_id} is {state}; resume it first")
            }
            Self::UnknownAgent(_) => {
                "the sandbox's agent profile is no longer configured; delete it instead".to_owned()
            }
            Self::Port(error) => error.client_message(),
        }
    }

    fn result_label(&self) -> &'static str {
        match self {
            Self::NotFound(_) => "not_found",
            Self::Expired(_) => "expired",
            Self::WrongState { .. } => "wrong_state",
            _ => "error",
        }
    }
}

/// The transitions, shared by the use cases that make them.
#[derive(Debug, Clone)]
pub(crate) struct Transitions {
    pub(crate) ports: Ports,
    pub(crate) profiles: Profiles,
    /// The session TTL: the lifetime after activity of a profile without an idle timeout.
    pub(crate) ttl: Duration,
}

impl Transitions {
    pub(crate) fn new(ports: Ports, profiles: Profiles, ttl: Duration) -> Self {
        Self {
            ports,
            profiles,
            ttl,
        }
    }

    /// When a session active at `now` expires: its idle timeout (else the TTL) after `now`,
    /// never past its hard cap.
    fn expiry_after_activity(&self, session: &SandboxSession, now: Timestamp) -> Timestamp {
        let due = now + session.idle_timeout.unwrap_or(self.ttl);
        session.max_expires_at.map_or(due, |cap| due.min(cap))
    }

    /// How long a suspended session of this agent is kept (the default for a profile removed
    /// from the configuration).
    fn retention(&self, agent_id: &AgentId) -> Duration {
        self.profiles
            .get(agent_id)
            .map_or(DEFAULT_PAUSED_RETENTION, |profile| profile.paused_retention)
    }

    /// Thaws or starts a paused or hibernated `session` and records it running, active now.
    pub(crate) async fn resume(
        &self,
        lease: &Lease,
        session: &SandboxSession,
    ) -> Result<SandboxSession, LifecycleError> {
        let endpoint = match session.state {
            SandboxState::Running => session.endpoint,
            SandboxState::Paused => {
                let engine = self.ports.engines.of(session.node_id.as_ref()).await?;
                engine.unpause(&session.container_id).await?;
                session.endpoint
            }
            SandboxState::Hibernated => {
                let profile = self
                    .profiles
                    .get(&session.agent_id)
                    .ok_or_else(|| LifecycleError::UnknownAgent(session.agent_id.clone()))?;
                let engine = self.ports.engines.of(session.node_id.as_ref()).await?;
                engine.start(&session.container_id, profile).await?
            }
        };
        let now = self.ports.clock.now();
        let running = SandboxSession {
            state: SandboxState::Running,
            last_active_at: now,
            expires_at: self.expiry_after_activity(session, now),
            endpoint,
            ..session.clone()
        };
        let note = EventNote::new(EventType::Resumed, EventReason::Requested, now);
        match self.write(lease, &running, &Change::new(note)).await {
            Ok(Some(resumed)) => {
                telemetry::log_resumed(&resumed);
                Ok(resumed)
            }
            Ok(None) => {
                self.undo(session, SandboxState::Running).await;
                Err(LifecycleError::NotFound(session.chat_id))
            }
            Err(error) => {
                self.undo(session, SandboxState::Running).await;
                Err(error.into())
            }
        }
    }

    /// Pauses or hibernates the running `session`. `reason` says why; an idle transition is
    /// fenced on the expiry it was decided by (a touch since wins, `Changed`) and keeps the
    /// sandbox `paused_retention` from when it went idle, a requested one from now.
    ///
    /// # Errors
    /// The ports'; `Repository(Changed)` when a touch won. `Ok(None)`: the session is gone.
    pub(crate) async fn suspend(
        &self,
        lease: &Lease,
        session: &SandboxSession,
        target: SandboxState,
        reason: EventReason,
    ) -> Result<Option<SandboxSession>, PortError> {
        let engine = self.ports.engines.of(session.node_id.as_ref()).await?;
        let kind = match target {
            SandboxState::Hibernated => {
                engine.stop(&session.container_id).await?;
                EventType::Hibernated
            }
            _ => {
                engine.pause(&session.container_id).await?;
                EventType::Paused
            }
        };
        let now = self.ports.clock.now();
        let idle = reason != EventReason::Requested;
        let went_idle = if idle { session.expires_at } else { now };
        let kept_until = went_idle + self.retention(&session.agent_id);
        let suspended = SandboxSession {
            state: target,
            expires_at: session
                .max_expires_at
                .map_or(kept_until, |cap| kept_until.min(cap)),
            // A stopped container publishes nothing until it is started again.
            endpoint: if target == SandboxState::Hibernated {
                None
            } else {
                session.endpoint
            },
            ..session.clone()
        };
        let note = EventNote::new(kind, reason, now);
        let change = if idle {
            Change::fenced(note, session)
        } else {
            Change::new(note)
        };
        match self.write(lease, &suspended, &change).await {
            Ok(Some(stored)) => {
                telemetry::log_suspended(&stored, reason.as_str());
                Ok(Some(stored))
            }
            Ok(None) => {
                self.undo(session, target).await;
                Ok(None)
            }
            Err(error) => {
                self.undo(session, target).await;
                Err(error)
            }
        }
    }

    /// The fenced update; `None` when the session is gone.
    async fn write(
        &self,
        lease: &Lease,
        session: &SandboxSession,
        change: &Change,
    ) -> Result<Option<SandboxSession>, PortError> {
        // The per-state gauge is left to the passes: a count here would be one more round trip
        // on every pause and resume.
        Ok(self.ports.repository.update(lease, session, change).await?)
    }

    /// Puts the container back in the state `session` records after the engine call towards
    /// `attempted` could not be recorded. Best effort: reconcile repairs what this leaves.
    async fn undo(&self, session: &SandboxSession, attempted: SandboxState) {
        let runtime = match self.ports.engines.of(session.node_id.as_ref()).await {
            Ok(runtime) => runtime,
            Err(error) => {
                telemetry::log_compensation_failed(session, error.metric_label());
                return;
            }
        };
        let undone = match (session.state, attempted) {
            (SandboxState::Running, SandboxState::Paused) => {
                runtime.unpause(&session.container_id).await
            }
            (SandboxState::Running, SandboxState::Hibernated) => {
                match self.profiles.get(&session.agent_id) {
                    Some(profile) => runtime
                        .start(&session.container_id, profile)
                        .await
                        .map(drop),
                    None => Ok(()),
                }
            }
            (SandboxState::Paused, SandboxState::Running) => {
                runtime.pause(&session.container_id).await
            }
            (SandboxState::Hibernated, SandboxState::Running) => {
                runtime.stop(&session.container_id).await
            }
            _ => Ok(()),
        };
        if let Err(error) = undone {
            telemetry::log_compensation_failed(session, error.metric_label());
        }
    }

    /// The per-state gauge, best effort (a failed count leaves the last value).
    pub(crate) async fn refresh_state_counts(&self) {
        if let Ok(counts) = self.ports.repository.count_by_state().await {
            telemetry::set_state_counts(&counts);
        }
    }
}

/// PauseSandbox: freezes the chat's running sandbox.
#[derive(Debug, Clone)]
pub struct PauseSandbox {
    transitions: Transitions,
}

/// ResumeSandbox: thaws or starts the chat's paused or hibernated sandbox.
#[derive(Debug, Clone)]
pub struct ResumeSandbox {
    transitions: Transitions,
}

/// TouchSandbox: records activity, one store round trip.
#[derive(Debug, Clone)]
pub struct TouchSandbox {
    ports: Ports,
}

/// The chat's current live session under `lease`, or why there is none.
async fn live_session(ports: &Ports, chat_id: &ChatId) -> Result<SandboxSession, LifecycleError> {
    let session = ports
        .repository
        .get_current_by_chat_id(chat_id)
        .await?
        .ok_or(LifecycleError::NotFound(*chat_id))?;
    if session.is_live_at(ports.clock.now()) {
        Ok(session)
    } else {
        Err(LifecycleError::Expired(*chat_id))
    }
}

/// Ends a pause, resume or touch: span, counter, and a warning for a refusal.
fn finish(
    operation: &'static str,
    counter: &'static str,
    span: &tracing::Span,
    chat_id: &ChatId,
    outcome: Result<(&SandboxSession, &'static str), &LifecycleError>,
) {
    let _entered = span.enter();
    match outcome {
        Ok((session, _)) => {
            telemetry::record_session(span, session);
            span.record(span::STATE, session.state.as_str());
        }
        Err(error) if error.result_label() != "error" => {
            telemetry::log_lifecycle_refused(operation, chat_id, error.result_label());
        }
        Err(_) => {}
    }
    telemetry::finish(span, counter, outcome.map(|(_, result)| result));
}

impl PauseSandbox {
    #[must_use]
    pub fn new(ports: Ports, profiles: Profiles, ttl: Duration) -> Self {
        Self {
            transitions: Transitions::new(ports, profiles, ttl),
        }
    }

    /// # Errors
    /// `NotFound`, `Expired`, `WrongState` (hibernated), `Port`.
    pub async fn execute(&self, chat_id: ChatId) -> Result<SandboxSession, LifecycleError> {
        let span = telemetry::lifecycle_span(span::PAUSE, &chat_id);
        let ports = &self.transitions.ports;
        let outcome = with_lease(&*ports.locker, &chat_id, async |lease| {
            let session = live_session(ports, &chat_id).await?;
            match session.state {
                SandboxState::Paused => Ok((session, "already_paused")),
                SandboxState::Hibernated => Err(LifecycleError::WrongState {
                    chat_id,
                    state: session.state,
                }),
                SandboxState::Running => self
                    .transitions
                    .suspend(
                        lease,
                        &session,
                        SandboxState::Paused,
                        EventReason::Requested,
                    )
                    .await?
                    .map(|paused| (paused, "paused"))
                    .ok_or(LifecycleError::NotFound(chat_id)),
            }
        })
        .instrument(span.clone())
        .await;
        finish(
            "pause",
            metric::PAUSE_TOTAL,
            &span,
            &chat_id,
            outcome.as_ref().map(|(s, r)| (s, *r)),
        );
        outcome.map(|(session, _)| session)
    }
}

impl ResumeSandbox {
    #[must_use]
    pub fn new(ports: Ports, profiles: Profiles, ttl: Duration) -> Self {
        Self {
            transitions: Transitions::new(ports, profiles, ttl),
        }
    }

    /// # Errors
    /// `NotFound`, `Expired`, `UnknownAgent`, `Port`.
    pub async fn execute(&self, chat_id: ChatId) -> Result<SandboxSession, LifecycleError> {
        let span = telemetry::lifecycle_span(span::RESUME, &chat_id);
        let ports = &self.transitions.ports;
        let outcome = with_lease(&*ports.locker, &chat_id, async |lease| {
            let session = live_session(ports, &chat_id).await?;
            if session.state == SandboxState::Running {
                // Idempotent, and still activity.
                let now = ports.clock.now();
                let touched = ports
                    .repository
                    .touch(&chat_id, now, None)
                    .await?
                    .ok_or(LifecycleError::NotFound(chat_id))?;
                return Ok((touched, "already_running"));
            }
            let resumed = self.transitions.resume(lease, &session).await?;
            Ok((resumed, "resumed"))
        })
        .instrument(span.clone())
        .await;
        finish(
            "resume",
            metric::RESUME_TOTAL,
            &span,
            &chat_id,
            outcome.as_ref().map(|(s, r)| (s, *r)),
        );
        outcome.map(|(session, _)| session)
    }
}

impl TouchSandbox {
    #[must_use]
    pub fn new(ports: Ports) -> Self {
        Self { ports }
    }

    /// # Errors
    /// `NotFound`, `WrongState` (paused or hibernated: resume it), `Expired`, `Port` (the store).
    pub async fn execute(&self, chat_id: ChatId) -> Result<SandboxSession, LifecycleError> {
        let span = telemetry::lifecycle_span(span::TOUCH, &chat_id);
        let outcome = async {
            let now = self.ports.clock.now();
            let session = self
                .ports
                .repository
                .touch(&chat_id, now, None)
                .await?
                .ok_or(LifecycleError::NotFound(chat_id))?;
            if session.state != SandboxState::Running {
                return Err(LifecycleError::WrongState {
                    chat_id,
                    state: session.state,
                });
            }
            if !session.is_live_at(now) {
                return Err(LifecycleError::Expired(chat_id));
            }
            telemetry::log_touched(&session);
            Ok(session)
        }
        .instrument(span.clone())
        .await;
        finish(
            "touch",
            metric::TOUCH_TOTAL,
            &span,
            &chat_id,
            outcome.as_ref().map(|s| (s, "touched")),
        );
        outcome
    }
}
