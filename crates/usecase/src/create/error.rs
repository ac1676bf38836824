//! CreateSandbox's failures: its own refusals, and the ports' through one variant.

use sandboxd_domain::{AgentId, ChatId, ConflictReason, SessionId};

use crate::admission::Refusal;
use crate::error::{ErrorKind, PortError, UseCaseError};
use crate::lifecycle::LifecycleError;
use crate::ports::{LockError, RepositoryError, RuntimeError};

#[derive(Debug, thiserror::Error)]
pub enum CreateSandboxError {
    /// No profile is configured for the requested agent id; nothing was read or changed.
    #[error("no agent profile {0} is configured")]
    UnknownAgent(AgentId),
    /// The chat's live sandbox was started with another agent or volume.
    #[error("chat {chat_id} has a live sandbox with a different {reason}")]
    Conflict {
        chat_id: ChatId,
        session_id: SessionId,
        reason: ConflictReason,
    },
    /// The new container started but the session could not be saved; the container was stopped
    /// (unless `compensation` says that failed too).
    #[error("saving the new session failed")]
    SaveFailed {
        #[source]
        save: RepositoryError,
        compensation: Option<RuntimeError>,
    },
    /// Admission refused the new sandbox (a full quota, or no engine slot in time); nothing was
    /// started.
    #[error("the sandbox was not admitted")]
    Refused(#[from] Refusal),
    /// Resuming the chat's paused or hibernated sandbox failed.
    #[error("resuming the sandbox failed")]
    Resume(#[source] LifecycleError),
    /// This node takes no new sandbox now (drained), or in fleet mode no CreateSandbox at all
    /// (unable to renew its registration); nothing was read or changed.
    #[error("{0}")]
    NodeRefuses(&'static str),
    /// A port failed; its kind, label and message are the port error's.
    #[error(transparent)]
    Port(#[from] PortError),
}

// A port call's own error becomes `Port` through `?`.
impl From<LockError> for CreateSandboxError {
    fn from(error: LockError) -> Self {
        Self::Port(error.into())
    }
}

impl From<RepositoryError> for CreateSandboxError {
    fn from(error: RepositoryError) -> Self {
        Self::Port(error.into())
    }
}

impl From<RuntimeError> for CreateSandboxError {
    fn from(error: RuntimeError) -> Self {
        Self::Port(error.into())
    }
}

impl UseCaseError for CreateSandboxError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::UnknownAgent(_) => ErrorKind::InvalidArgument { field: "agent_id" },
            Self::Conflict { reason, .. } => ErrorKind::Conflict { reason: *reason },
            Self::SaveFailed { save, .. } => save.kind(),
            Self::Port(error) => error.kind(),
            Self::Resume(error) => error.kind(),
            Self::Refused(Refusal::EngineBusy { .. }) => ErrorKind::Overloaded,
            Self::NodeRefuses(_) => ErrorKind::Unavailable,
            Self::Refused(_) => ErrorKind::ResourceExhausted,
        }
    }

    fn metric_label(&self) -> &'static str {
        match self {
            Self::UnknownAgent(_) => "unknown_agent",
            Self::Conflict { .. } => "conflict",
            Self::SaveFailed { save, .. } => save.metric_label(),
            Self::Port(error) => error.metric_label(),
            Self::Resume(error) => error.metric_label(),
            Self::Refused(refusal) => refusal.metric_label(),
            Self::NodeRefuses(_) => "node_refuses",
        }
    }

    fn client_message(&self) -> String {
        match self {
            Self::UnknownAgent(_) => "no agent profile with this id is configured".to_owned(),
            Self::Conflict { reason, .. } => {
                format!("the chat has a live sandbox with a different {reason}")
            }
            Self::SaveFailed { save, .. } => save.client_message(),
            Self::Port(error) => error.client_message(),
            Self::Resume(error) => error.client_message(),
            Self::Refused(refusal) => refusal.to_string(),
            Self::NodeRefuses(reason) => (*reason).to_owned(),
        }
    }

    fn result_label(&self) -> &'static str {
        match self {
            Self::Conflict { .. } => "conflict",
            Self::Refused(refusal) => refusal.metric_label(),
            _ => "error",
        }
    }

    fn quota_subject(&self) -> Option<String> {
        match self {
            Self::Refused(refusal) => Some(refusal.setting()),
            _ => None,
        }
    }
}
