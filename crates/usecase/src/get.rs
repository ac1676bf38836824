//! GetSandbox: the chat's current session, live or expired-but-not-yet-cleaned.

use sandboxd_domain::{ChatId, SandboxSession};
use tracing::Instrument;

use crate::error::{ErrorKind, PortError, from_port_errors, use_case_error};
use crate::lease::Ports;
use crate::telemetry::{self, metric};

#[derive(Debug, thiserror::Error)]
pub enum GetSandboxError {
    #[error("chat {0} has no sandbox")]
    NotFound(ChatId),
    #[error(transparent)]
    Port(PortError),
}

from_port_errors!(GetSandboxError);
use_case_error!(GetSandboxError);

impl GetSandboxError {
    #[must_use]
    pub const fn kind(&self) -> ErrorKind {
        match self {
            Self::NotFound(_) => ErrorKind::NotFound,
            Self::Port(error) => error.kind(),
        }
    }

    #[must_use]
    pub const fn metric_label(&self) -> &'static str {
        match self {
            Self::NotFound(_) => "not_found",
            Self::Port(error) => error.metric_label(),
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
        match &outcome {
            Ok(session) => {
                telemetry::record_session(&span, session);
                telemetry::record_result(&span, "found");
                telemetry::count_result(metric::GET_TOTAL, "found");
            }
            Err(GetSandboxError::NotFound(_)) => {
                telemetry::record_result(&span, "not_found");
                telemetry::count_result(metric::GET_TOTAL, "not_found");
            }
            Err(error) => {
                telemetry::record_result(&span, "error");
                telemetry::count_result(metric::GET_TOTAL, "error");
                telemetry::record_error(&span, error.metric_label(), error);
                let _entered = span.enter();
                telemetry::log_get_failed(&chat_id, error.metric_label());
            }
        }
        outcome
    }
}
