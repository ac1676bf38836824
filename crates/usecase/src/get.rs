//! GetSandbox: the chat's current session, live or expired-but-not-yet-cleaned.

mod telemetry;

use sandboxd_domain::{ChatId, SandboxSession};
use tracing::Instrument;

use crate::error::{ErrorKind, PortError, UseCaseError};
use crate::lease::Ports;
use crate::ports::RepositoryError;
use telemetry::metric;

#[derive(Debug, thiserror::Error)]
pub enum GetSandboxError {
    #[error("chat {0} has no sandbox")]
    NotFound(ChatId),
    /// A port failed; its kind, label and message are the port error's.
    #[error(transparent)]
    Port(#[from] PortError),
}

// A port call's own error becomes `Port` through `?`.
impl From<RepositoryError> for GetSandboxError {
    fn from(error: RepositoryError) -> Self {
        Self::Port(error.into())
    }
}

impl UseCaseError for GetSandboxError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::NotFound(_) => ErrorKind::NotFound,
            Self::Port(error) => error.kind(),
        }
    }

    fn metric_label(&self) -> &'static str {
        match self {
            Self::NotFound(_) => "not_found",
            Self::Port(error) => error.metric_label(),
        }
    }

    fn client_message(&self) -> String {
        match self {
            Self::NotFound(chat_id) => format!("chat {chat_id} has no sandbox"),
            Self::Port(error) => error.client_message(),
        }
    }

    fn result_label(&self) -> &'static str {
        match self {
            Self::NotFound(_) => "not_found",
            Self::Port(_) => "error",
        }
    }
}

#[derive(Debug, Clone)]
pub struct GetSandbox {
    ports: Ports,
}

impl GetSandbox {
    #[must_use]
    pub fn new(ports: Ports) -> Self {
        Self { ports }
    }

    /// A read: one repository round trip, no lease (a concurrent writer's change is seen either
    /// wholly or not at all, since writes are atomic).
    ///
    /// # Errors
    /// `NotFound` when the chat has no session; `Port` when the store fails.
    pub async fn execute(&self, chat_id: ChatId) -> Result<SandboxSession, GetSandboxError> {
        let span = telemetry::get_span(&chat_id);
        let outcome = async {
            self.ports
                .repository
                .get_current_by_chat_id(&chat_id)
                .await?
                .ok_or(GetSandboxError::NotFound(chat_id))
        }
        .instrument(span.clone())
        .await;
        if let Ok(session) = &outcome {
            telemetry::record_session(&span, session);
        }
        telemetry::finish(&span, metric::GET_TOTAL, outcome.as_ref().map(|_| "found"));
        outcome
    }
}
