//! ExtendSandbox: push a live session's expiry to now + ttl (bounded by max_ttl) under its lease.

use std::time::Duration;

use sandboxd_domain::{ChatId, SandboxSession};
use tracing::Instrument;

use crate::error::{ErrorKind, PortError, from_port_errors, use_case_error};
use crate::lease::{Ports, with_lease};
use crate::telemetry::{self, metric};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtendSandboxCommand {
    pub chat_id: ChatId,
    /// `None` means the configured session TTL.
    pub ttl: Option<Duration>,
}

#[derive(Debug, thiserror::Error)]
pub enum ExtendSandboxError {
    #[error("ttl must be positive and at most {max:?}")]
    InvalidTtl { max: Duration },
    #[error("chat {0} has no sandbox")]
    NotFound(ChatId),
    /// Expired sessions are replaced by CreateSandbox, not revived.
    #[error("the sandbox of chat {0} has expired")]
    Expired(ChatId),
    #[error(transparent)]
    Port(PortError),
}

from_port_errors!(ExtendSandboxError);
use_case_error!(ExtendSandboxError);

impl ExtendSandboxError {
    #[must_use]
    pub const fn kind(&self) -> ErrorKind {
        match self {
            Self::InvalidTtl { .. } => ErrorKind::InvalidArgument { field: "ttl" },
            Self::NotFound(_) => ErrorKind::NotFound,
            Self::Expired(_) => ErrorKind::FailedPrecondition,
            Self::Port(error) => error.kind(),
        }
    }

    #[must_use]
    pub const fn metric_label(&self) -> &'static str {
        match self {
            Self::InvalidTtl { .. } => "invalid",
            Self::NotFound(_) => "not_found",
            Self::Expired(_) => "expired",
            Self::Port(error) => error.metric_label(),
        }
    }

    /// The `result` label: the expected refusals by name, every port failure as `error`.
    const fn result_label(&self) -> &'static str {
        match self {
            Self::Port(_) => "error",
            other => other.metric_label(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ExtendSandbox {
    ports: Ports,
    default_ttl: Duration,
    max_ttl: Duration,
}

impl ExtendSandbox {
    #[must_use]
    pub fn new(ports: Ports, default_ttl: Duration, max_ttl: Duration) -> Self {
        Self {
            ports,
            default_ttl,
            max_ttl,
        }
    }

    /// # Errors
    /// `InvalidTtl` (nothing touched), `NotFound`, `Expired`, `Port`.
    pub async fn execute(
        &self,
        command: ExtendSandboxCommand,
    ) -> Result<SandboxSession, ExtendSandboxError> {
        let chat_id = command.chat_id;
        let ttl = command.ttl.unwrap_or(self.default_ttl);
        let span = telemetry::extend_span(&chat_id, ttl.as_millis());
        let outcome = async {
            if ttl.is_zero() || ttl > self.max_ttl {
                return Err(ExtendSandboxError::InvalidTtl { max: self.max_ttl });
            }
            with_lease(&*self.ports.locker, &chat_id, async |lease| {
                let session = self
                    .ports
                    .repository
                    .get_current_by_chat_id(&chat_id)
                    .await?
                    .ok_or(ExtendSandboxError::NotFound(chat_id))?;
                let now = self.ports.clock.now();
                if !session.is_live_at(now) {
                    return Err(ExtendSandboxError::Expired(chat_id));
                }
                self.ports
                    .repository
                    .extend(lease, &session.session_id, now + ttl)
                    .await?
                    .ok_or(ExtendSandboxError::NotFound(chat_id))
            })
            .await
        }
        .instrument(span.clone())
        .await;
        let _entered = span.enter();
        match &outcome {
            Ok(session) => {
                telemetry::record_session(&span, session);
                span.record(
                    telemetry::span::EXPIRES_AT,
                    tracing::field::display(session.expires_at),
                );
                telemetry::record_result(&span, "extended");
                telemetry::count_result(metric::EXTEND_TOTAL, "extended");
                telemetry::log_extended(session);
            }
            Err(error) => {
                telemetry::record_result(&span, error.result_label());
                telemetry::count_result(metric::EXTEND_TOTAL, error.result_label());
                if matches!(error, ExtendSandboxError::Port(_)) {
                    telemetry::record_error(&span, error.metric_label(), error);
                }
                telemetry::log_extend_failed(&chat_id, error.metric_label());
            }
        }
        outcome
    }
}
