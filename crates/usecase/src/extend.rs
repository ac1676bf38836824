//! ExtendSandbox: push a live session's expiry to now + ttl (bounded by max_ttl) under its lease.

mod telemetry;

use std::time::Duration;

use sandboxd_domain::{ChatId, EventNote, EventReason, EventType, SandboxSession};
use tracing::Instrument;

use crate::error::{ErrorKind, PortError, UseCaseError};
use crate::lease::{Ports, with_lease};
use crate::ports::{Change, LockError, RepositoryError};
use telemetry::metric;

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
    /// The new expiry would pass the sandbox's hard cap (`max_lifetime`).
    #[error("ttl would pass the sandbox's max lifetime, at most {left:?} from now")]
    BeyondMaxLifetime { left: Duration },
    #[error("chat {0} has no sandbox")]
    NotFound(ChatId),
    /// Expired sessions are replaced by CreateSandbox, not revived.
    #[error("the sandbox of chat {0} has expired")]
    Expired(ChatId),
    /// A port failed; its kind, label and message are the port error's.
    #[error(transparent)]
    Port(#[from] PortError),
}

// A port call's own error becomes `Port` through `?`.
impl From<LockError> for ExtendSandboxError {
    fn from(error: LockError) -> Self {
        Self::Port(error.into())
    }
}

impl From<RepositoryError> for ExtendSandboxError {
    fn from(error: RepositoryError) -> Self {
        Self::Port(error.into())
    }
}

impl UseCaseError for ExtendSandboxError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::InvalidTtl { .. } | Self::BeyondMaxLifetime { .. } => {
                ErrorKind::InvalidArgument { field: "ttl" }
            }
            Self::NotFound(_) => ErrorKind::NotFound,
            Self::Expired(_) => ErrorKind::FailedPrecondition,
            Self::Port(error) => error.kind(),
        }
    }

    fn metric_label(&self) -> &'static str {
        match self {
            Self::InvalidTtl { .. }
            | Self::BeyondMaxLifetime { .. }
            | Self::NotFound(_)
            | Self::Expired(_) => self.result_label(),
            Self::Port(error) => error.metric_label(),
        }
    }

    fn client_message(&self) -> String {
        match self {
            Self::InvalidTtl { max } => format!("ttl must be positive and at most {max:?}"),
            Self::BeyondMaxLifetime { left } => format!(
                "ttl would pass the sandbox's max lifetime: at most {}s from now",
                left.as_secs()
            ),
            Self::NotFound(chat_id) => format!("chat {chat_id} has no sandbox"),
            Self::Expired(chat_id) => format!("the sandbox of chat {chat_id} has expired"),
            Self::Port(error) => error.client_message(),
        }
    }

    /// The expected refusals by name, every port failure as `error`.
    fn result_label(&self) -> &'static str {
        match self {
            Self::InvalidTtl { .. } | Self::BeyondMaxLifetime { .. } => "invalid",
            Self::NotFound(_) => "not_found",
            Self::Expired(_) => "expired",
            Self::Port(_) => "error",
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
    /// `InvalidTtl` (nothing touched), `NotFound`, `Expired`, `Port` (the lock or the store).
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
                let expires_at = now + ttl;
                if let Some(cap) = session.max_expires_at
                    && expires_at > cap
                {
                    let left = (cap - now).try_into().unwrap_or_default();
                    return Err(ExtendSandboxError::BeyondMaxLifetime { left });
                }
                // An extension is activity, in whatever state the sandbox is.
                let extended = SandboxSession {
                    expires_at,
                    last_active_at: now,
                    ..session
                };
                let note = EventNote::new(EventType::Extended, EventReason::Requested, now);
                self.ports
                    .repository
                    .update(lease, &extended, &Change::new(note))
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
                telemetry::log_extended(session);
            }
            Err(error) if error.result_label() != "error" => {
                telemetry::log_extend_refused(&chat_id, error.metric_label());
            }
            Err(_) => {}
        }
        telemetry::finish(
            &span,
            metric::EXTEND_TOTAL,
            outcome.as_ref().map(|_| "extended"),
        );
        outcome
    }
}
