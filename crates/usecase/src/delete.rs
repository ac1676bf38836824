//! DeleteSandbox: remove the chat's container, any stray container of the chat, and its session,
//! under its lease: when it answers, nothing of the chat runs.

mod telemetry;

use sandboxd_domain::{
    ChatId, ContainerId, EventNote, EventReason, EventType, SandboxSession, SessionId,
};
use tracing::Instrument;

use crate::error::{PortError, UseCaseError};
use crate::lease::{Ports, with_lease};
use crate::ports::Change;
use crate::repair::remove_strays;
use telemetry::metric;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeleteSandboxCommand {
    pub chat_id: ChatId,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteResult {
    Deleted,
    /// The chat had no session: a result, not an error (deleting is idempotent).
    NotFound,
}

impl DeleteResult {
    /// The `result` label of `sandbox_delete_total` and the span.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Deleted => "deleted",
            Self::NotFound => "not_found",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeleteSandboxOutput {
    pub chat_id: ChatId,
    pub result: DeleteResult,
    /// Set when `result` is `Deleted`.
    pub session_id: Option<SessionId>,
    pub container_id: Option<ContainerId>,
}

#[derive(Debug, Clone)]
pub struct DeleteSandbox {
    ports: Ports,
}

impl DeleteSandbox {
    #[must_use]
    pub fn new(ports: Ports) -> Self {
        Self { ports }
    }

    /// # Errors
    /// Lock, store and engine failures; the session is kept when the container could not be
    /// removed, so a retry finds it again.
    pub async fn execute(
        &self,
        command: DeleteSandboxCommand,
    ) -> Result<DeleteSandboxOutput, PortError> {
        let chat_id = command.chat_id;
        let span = telemetry::delete_span(&chat_id);
        // The session, once read, for the failure log.
        let mut read: Option<SandboxSession> = None;
        let outcome: Result<_, PortError> =
            with_lease(&*self.ports.locker, &chat_id, async |lease| {
                let Some(session) = self
                    .ports
                    .repository
                    .get_current_by_chat_id(&chat_id)
                    .await?
                else {
                    // Nothing of the chat may run once a delete answers, session or not.
                    let strays = self.ports.engines.list_chat(&chat_id).await?;
                    remove_strays(&self.ports, &chat_id, strays).await?;
                    telemetry::log_delete_not_found(&chat_id);
                    return Ok(DeleteSandboxOutput {
                        chat_id,
                        result: DeleteResult::NotFound,
                        session_id: None,
                        container_id: None,
                    });
                };
                let session = &*read.insert(session);
                telemetry::record_session(&span, session);
                if let Some(engine) = self
                    .ports
                    .engines
                    .removing(session.node_id.as_ref())
                    .await?
                {
                    engine.force_remove(&session.container_id).await?;
                }
                // Before the session goes: if this fails, a retry finds the session again.
                let strays = self.ports.engines.list_chat(&chat_id).await?;
                remove_strays(&self.ports, &chat_id, strays).await?;
                let note = EventNote::new(
                    EventType::Deleted,
                    EventReason::Requested,
                    self.ports.clock.now(),
                );
                self.ports
                    .delete_session(lease, session, &Change::new(note))
                    .await?;
                telemetry::log_deleted(session);
                Ok(DeleteSandboxOutput {
                    chat_id,
                    result: DeleteResult::Deleted,
                    session_id: Some(session.session_id),
                    container_id: Some(session.container_id.clone()),
                })
            })
            .instrument(span.clone())
            .await;
        telemetry::finish(
            &span,
            metric::DELETE_TOTAL,
            outcome.as_ref().map(|output| output.result.as_str()),
        );
        if let Err(error) = &outcome {
            let _entered = span.enter();
            telemetry::log_delete_failed(&chat_id, read.as_ref(), error.metric_label());
        }
        outcome
    }
}
