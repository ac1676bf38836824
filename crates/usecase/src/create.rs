//! CreateSandbox: reuse the chat's live sandbox, refuse a differing one, replace an expired one
//! (or one on a lost node), or start a new one — all under the chat's lease.

mod error;
mod telemetry;

use std::sync::Arc;
use std::time::Duration;

use sandboxd_domain::{
    AgentId, AgentProfile, ChatId, EventNote, EventReason, EventType, SandboxSession, SandboxState,
    SessionId, VolumePath,
};
use tracing::{Instrument, Span};

use crate::admission::{Admission, AdmissionPolicy};
use crate::error::UseCaseError;
use crate::fleet::NodeDirectory;
use crate::lease::{Ports, with_lease};
use crate::lifecycle::Transitions;
use crate::pool::{RefillPool, Taken, WarmPool};
use crate::ports::{
    Change, ClaimError, Lease, NewSandbox, RepositoryError, RuntimeError, StartedSandbox,
    TouchMatch,
};
use crate::profiles::Profiles;
use crate::repair::remove_strays;
pub use error::CreateSandboxError;
use telemetry::metric;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateSandboxCommand {
    pub chat_id: ChatId,
    pub agent_id: AgentId,
    pub volume_host_path: VolumePath,
}

/// How the returned session came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateResult {
    Created,
    Reused,
    Replaced,
    /// The chat's paused or hibernated sandbox runs again (the same session).
    Resumed,
}

impl CreateResult {
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Reused => "reused",
            Self::Replaced => "replaced",
            Self::Resumed => "resumed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateSandboxOutput {
    pub session: SandboxSession,
    pub result: CreateResult,
}

/// What an admitted create starts with.
struct NewStart {
    /// The new session's id, reserved under it.
    session_id: SessionId,
    /// A pooled sandbox to claim, when one was ready.
    pooled: Option<Taken>,
}

#[derive(Debug, Clone)]
pub struct CreateSandbox {
    ports: Ports,
    /// The agents a chat may ask for; any other id is refused before anything is read.
    profiles: Profiles,
    /// Lifetime of a new session whose profile has no idle timeout.
    ttl: Duration,
    /// Resuming a paused or hibernated sandbox.
    transitions: Transitions,
    /// Quotas and the engine-create bound, checked before anything starts.
    admission: Admission,
    /// Pooled sandboxes claimed instead of starting a container (empty unless a profile pools).
    pool: WarmPool,
}

impl CreateSandbox {
    #[must_use]
    pub fn new(ports: Ports, profiles: Profiles, ttl: Duration) -> Self {
        Self {
            transitions: Transitions::new(ports.clone(), profiles.clone(), ttl),
            ports,
            profiles,
            ttl,
            admission: Admission::new(AdmissionPolicy::default()),
            pool: WarmPool::new(),
        }
    }

    /// Whether this node takes new sandboxes (drained, or fenced in fleet mode).
    fn nodes(&self) -> &NodeDirectory {
        self.ports.engines.directory()
    }

    /// The refill that keeps this use case's warm pool full, sharing its engine slots (so it
    /// only ever uses one that no create is waiting for) and its deployment limit.
    #[must_use]
    pub fn refill_pool(&self) -> RefillPool {
        RefillPool::new(
            self.ports.clone(),
            self.profiles.clone(),
            self.pool.clone(),
            self.admission.engine_slots(),
            self.admission.max_sandboxes(),
        )
    }

    /// This use case with `policy`'s quotas and engine bound (the default admits everything).
    #[must_use]
    pub fn with_admission(mut self, policy: AdmissionPolicy) -> Self {
        self.admission = Admission::new(policy);
        self
    }

    /// # Errors
    /// `UnknownAgent` when no profile is configured for the agent id (nothing read or changed);
    /// `Conflict` when the chat's live sandbox differs; `SaveFailed` when the new session could
    /// not be stored; `Port` for port failures (including a refused volume).
    pub async fn execute(
        &self,
        command: CreateSandboxCommand,
    ) -> Result<CreateSandboxOutput, CreateSandboxError> {
        let span = telemetry::create_span(
            &command.chat_id,
            command.agent_id.as_str(),
            command.volume_host_path.as_str(),
        );
        let outcome = self.decide(&command, &span).instrument(span.clone()).await;
        match &outcome {
            // The conflict is counted with its reason where it is decided.
            Err(CreateSandboxError::Conflict { .. }) => {}
            outcome => telemetry::finish(
                &span,
                metric::CREATE_TOTAL,
                outcome.as_ref().map(|output| output.result.as_str()),
            ),
        }
        outcome
    }

    /// The reference flow (docs/design.md §6), preceded by a lock-free read-and-touch: when the
    /// chat's current session is live and running, reuse (counted as activity in the same
    /// script) or conflict is decided from that one atomic round trip, without a lease. This is
    /// safe because neither outcome changes anything but the activity, and every write is one
    /// atomic script, so the read sees a state that existed at one instant; the answer is the
    /// one the locked path would have given at that instant. A missing, expired or suspended
    /// session needs the lease, under which the same round trip is made again before deciding.
    async fn decide(
        &self,
        command: &CreateSandboxCommand,
        span: &Span,
    ) -> Result<CreateSandboxOutput, CreateSandboxError> {
        let profile = self
            .profiles
            .get(&command.agent_id)
            .ok_or_else(|| CreateSandboxError::UnknownAgent(command.agent_id.clone()))?;
        if let Some(reason) = self.nodes().fenced() {
            return Err(CreateSandboxError::NodeRefuses(reason));
        }
        // A session on a lost node (fleet mode) is replaced like an expired one; the removal of
        // its container is left to that node's reconcile when it comes back.
        let lost = |session: &SandboxSession| self.nodes().is_lost(session.node_id.as_ref());
        let touched = self.read_and_touch(command).await?;
        if let Some(session) = touched.filter(|s| {
            s.is_live_at(self.ports.clock.now())
                && !lost(s)
                && (s.state == SandboxState::Running
                    || s.conflict_with(&command.agent_id, &command.volume_host_path)
                        .is_some())
        }) {
            return Self::reuse_or_conflict(command, session, span);
        }
        with_lease(&*self.ports.locker, &command.chat_id, async |lease| {
            let current = self.read_and_touch(command).await?;
            let now = self.ports.clock.now();
            match current {
                Some(session)
                    if session.is_live_at(now)
                        && !lost(&session)
                        && session.state != SandboxState::Running
                        && session
                            .conflict_with(&command.agent_id, &command.volume_host_path)
                            .is_none() =>
                {
                    telemetry::record_session(span, &session);
                    let resumed = self
                        .transitions
                        .resume(lease, &session)
                        .await
                        .map_err(CreateSandboxError::Resume)?;
                    telemetry::record_session(span, &resumed);
                    Ok(CreateSandboxOutput {
                        session: resumed,
                        result: CreateResult::Resumed,
                    })
                }
                Some(session) if session.is_live_at(now) && !lost(&session) => {
                    Self::reuse_or_conflict(command, session, span)
                }
                expired_or_none => {
                    self.create_or_replace(lease, command, profile, expired_or_none, span)
                        .await
                }
            }
        })
        .await
    }

    /// The chat's current session, touched when it is running, live and of this agent and
    /// volume (a reuse is activity): one round trip.
    async fn read_and_touch(
        &self,
        command: &CreateSandboxCommand,
    ) -> Result<Option<SandboxSession>, RepositoryError> {
        let only_if = TouchMatch {
            agent_id: &command.agent_id,
            volume_host_path: &command.volume_host_path,
        };
        self.ports
            .repository
            .touch(&command.chat_id, self.ports.clock.now(), Some(only_if))
            .await
    }

    fn reuse_or_conflict(
        command: &CreateSandboxCommand,
        session: SandboxSession,
        span: &Span,
    ) -> Result<CreateSandboxOutput, CreateSandboxError> {
        telemetry::record_session(span, &session);
        if let Some(reason) = session.conflict_with(&command.agent_id, &command.volume_host_path) {
            telemetry::record_result(span, "conflict");
            span.record(telemetry::span::CONFLICT_REASON, reason.as_str());
            telemetry::count_conflict(reason.as_str());
            telemetry::log_conflict(&telemetry::ConflictLog {
                chat_id: &command.chat_id,
                session: &session,
                requested_agent_id: command.agent_id.as_str(),
                requested_volume_host_path: command.volume_host_path.as_str(),
                reason: reason.as_str(),
            });
            return Err(CreateSandboxError::Conflict {
                chat_id: command.chat_id,
                session_id: session.session_id,
                reason,
            });
        }
        telemetry::log_reused(&session);
        Ok(CreateSandboxOutput {
            session,
            result: CreateResult::Reused,
        })
    }

    async fn create_or_replace(
        &self,
        lease: &Lease,
        command: &CreateSandboxCommand,
        profile: &Arc<AgentProfile>,
        expired: Option<SandboxSession>,
        span: &Span,
    ) -> Result<CreateSandboxOutput, CreateSandboxError> {
        if let Some(reason) = self.nodes().refuses_new() {
            return Err(CreateSandboxError::NodeRefuses(reason));
        }
        // Beyond the reference flow: refuse a forbidden volume before anything changes, so a
        // bad request never stops the chat's expired sandbox.
        // Every node has the same policy; the node that runs the sandbox checks again.
        self.ports
            .engines
            .local()
            .validate(profile, &command.volume_host_path)
            .await?;
        let new_session_id = SessionId::new_random();
        // Taken first: a claim starts no container, so it needs no engine slot and does not
        // queue behind cold creates.
        // Only while this node would take the sandbox itself: a claim places it here, and a
        // draining or full fleet node must leave new sandboxes to the others.
        let pooled = if self.nodes().takes_new_locally() {
            self.pool.take(&command.agent_id)
        } else {
            None
        };
        if pooled.is_none() && profile.pool_size > 0 {
            telemetry::count_pool_claim(&command.agent_id, metric::CLAIM_EMPTY);
        }
        // Before anything changes: a refused create leaves even an expired sandbox in place.
        let admitted = self
            .admission
            .admit(
                &self.ports,
                new_session_id,
                &command.agent_id,
                profile,
                expired.as_ref().map(|old| old.session_id),
                pooled.is_none(),
            )
            .await
            .map_err(CreateSandboxError::from)
            .and_then(|admission| {
                admission
                    .inspect_err(|refusal| telemetry::log_refused(&command.chat_id, refusal))
                    .map_err(CreateSandboxError::from)
            });
        // A refused create drops `pooled`, which puts it back in line.
        let admitted = admitted?;
        let outcome = self
            .start_admitted(
                lease,
                command,
                profile,
                expired,
                NewStart {
                    session_id: new_session_id,
                    pooled,
                },
                span,
            )
            .await;
        self.admission.release(&self.ports, admitted).await;
        outcome
    }

    /// The rest of create-or-replace once admitted: replace, sweep, start, save.
    async fn start_admitted(
        &self,
        lease: &Lease,
        command: &CreateSandboxCommand,
        profile: &Arc<AgentProfile>,
        expired: Option<SandboxSession>,
        new: NewStart,
        span: &Span,
    ) -> Result<CreateSandboxOutput, CreateSandboxError> {
        let NewStart {
            session_id: new_session_id,
            pooled,
        } = new;
        // Listed before the replace stops the old container, so one listing serves both.
        let mut containers = self.ports.engines.list_chat(&command.chat_id).await?;
        let result = match &expired {
            Some(old) => {
                self.replace_expired(lease, old, new_session_id, span)
                    .await?;
                CreateResult::Replaced
            }
            None => CreateResult::Created,
        };
        if let Some(old) = &expired {
            // Removed just now by the replace: not a stray.
            let directory = self.nodes();
            let old_node = directory.node_of(old.node_id.as_ref());
            containers.retain(|c| {
                c.container_id != old.container_id
                    || directory.node_of(c.node_id.as_ref()) != old_node
            });
        }
        // Exactly one container per chat: whatever else carries the chat's label (a crashed
        // create's orphan, another replica's leftover) goes before the new one starts.
        remove_strays(&self.ports, &command.chat_id, containers).await?;
        let created_at = self.ports.clock.now();
        let expires_at =
            profile.expiry_after_activity(created_at, self.ttl, profile.max_expires_at(created_at));
        if result == CreateResult::Created {
            span.record(
                telemetry::span::SESSION_ID,
                tracing::field::display(&new_session_id),
            );
        }
        let mut spec = NewSandbox {
            session_id: new_session_id,
            chat_id: command.chat_id,
            agent_id: command.agent_id.clone(),
            profile: Arc::clone(profile),
            volume_host_path: command.volume_host_path.clone(),
            created_at,
            expires_at,
            node_id: None,
        };
        let started = self.start(&mut spec, pooled).await?;
        let new_session = spec.into_session(started);
        if result == CreateResult::Replaced {
            telemetry::record_new_session(span, &new_session);
        }
        let kind = match result {
            CreateResult::Replaced => EventType::Replaced,
            _ => EventType::Created,
        };
        let note = EventNote::new(kind, EventReason::Requested, created_at);
        self.save_created(lease, &new_session, &note).await?;
        telemetry::record_session(span, &new_session);
        telemetry::log_created(&new_session);
        Ok(CreateSandboxOutput {
            session: new_session,
            result,
        })
    }

    /// Starts the sandbox of `spec` and records its node there: claims `pooled` (this node's)
    /// when there is one, else (or when it turns out unusable) places a container.
    async fn start(
        &self,
        spec: &mut NewSandbox,
        pooled: Option<Taken>,
    ) -> Result<StartedSandbox, RuntimeError> {
        let (Some(pooled), Some(runtime)) = (pooled, &self.ports.pool) else {
            return self.ports.engines.place(spec).await;
        };
        let (pooled, _in_flight) = pooled.into_inner();
        let kept = pooled.clone();
        spec.node_id = self.ports.engines.local_node_id();
        match runtime.claim(pooled, spec).await {
            Ok(started) => {
                telemetry::count_pool_claim(&spec.agent_id, metric::CLAIM_CLAIMED);
                Ok(started)
            }
            Err(ClaimError::Lost(error)) => {
                telemetry::count_pool_claim(&spec.agent_id, metric::CLAIM_LOST);
                telemetry::log_pool_claim_lost(&spec.chat_id, &kept, &error);
                self.ports.engines.place(spec).await
            }
            Err(ClaimError::Failed(error)) => {
                telemetry::count_pool_claim(&spec.agent_id, metric::CLAIM_FAILED);
                Err(error)
            }
        }
    }

    async fn replace_expired(
        &self,
        lease: &Lease,
        old: &SandboxSession,
        new_session_id: SessionId,
        span: &Span,
    ) -> Result<(), CreateSandboxError> {
        telemetry::record_previous_session(span, old);
        span.record(
            telemetry::span::NEW_SESSION_ID,
            tracing::field::display(&new_session_id),
        );
        telemetry::log_replaced(old);
        if let Some(engine) = self.ports.engines.removing(old.node_id.as_ref()).await? {
            engine.remove_gracefully(&old.container_id).await?;
        }
        let note = EventNote::new(
            EventType::Expired,
            EventReason::Replaced,
            self.ports.clock.now(),
        );
        self.ports
            .delete_session(lease, old, &Change::new(note))
            .await?;
        Ok(())
    }

    /// Saves the new session; on failure stops the new container so nothing runs unrecorded, and
    /// surfaces the save error (carrying the stop error when that failed too).
    async fn save_created(
        &self,
        lease: &Lease,
        session: &SandboxSession,
        note: &EventNote,
    ) -> Result<(), CreateSandboxError> {
        let save = match self.ports.repository.save(lease, session, note).await {
            Ok(active) => {
                telemetry::set_active_count(active);
                return Ok(());
            }
            Err(save) => save,
        };
        let compensation = match self.ports.engines.of(session.node_id.as_ref()).await {
            Ok(engine) => engine.remove_gracefully(&session.container_id).await.err(),
            Err(error) => Some(error),
        };
        if let Some(stop_error) = &compensation {
            telemetry::log_compensation_failed(session, stop_error.metric_label());
        }
        // No write happened; the gauge is refreshed anyway, best effort.
        if let Ok(active) = self.ports.repository.count_active().await {
            telemetry::set_active_count(active);
        }
        Err(CreateSandboxError::SaveFailed { save, compensation })
    }
}
