//! What every use-case error offers the service layer: its [`ErrorKind`] (which the server maps to
//! a gRPC code in one place), its metric label, and the message a client may see.

use sandboxd_domain::ConflictReason;

use crate::ports::{LockError, RepositoryError, RuntimeError};

/// The few cases a client must tell apart; the server maps each to one gRPC code in one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A request field is malformed or refers to something unknown (e.g. an agent profile).
    InvalidArgument {
        field: &'static str,
    },
    /// A request field is well-formed but refused by policy (a volume outside the roots).
    PermissionDenied {
        field: &'static str,
    },
    /// The chat's live sandbox differs from the request.
    Conflict {
        reason: ConflictReason,
    },
    NotFound,
    /// The request cannot apply to the current state (extending an expired sandbox).
    FailedPrecondition,
    /// A position (an event cursor) that no longer exists: older than the retention.
    OutOfRange,
    /// A quota (`max_sandboxes`) is full; [`UseCaseError::quota_subject`] names it.
    ResourceExhausted,
    /// This process is at its bound of engine work in flight; retry after a short delay.
    Overloaded,
    /// Retryable contention: the chat's lock was busy, or the lease was lost mid-operation.
    Aborted,
    /// Redis or Docker did not answer.
    Unavailable,
    /// Anything else; the cause is logged, never sent.
    Internal,
}

/// Implemented by every error a use case or port returns, beside the enum's definition.
pub trait UseCaseError: std::error::Error + Send + Sync + 'static {
    fn kind(&self) -> ErrorKind;

    /// Low-cardinality label for metrics (`error_type`) and logs.
    fn metric_label(&self) -> &'static str;

    /// What a client is told, built from this error's kind and own fields; never from a
    /// cause's `Display` (a cause may carry addresses, paths or credentials). For
    /// `InvalidArgument` it describes the field's problem; the server prefixes the field.
    fn client_message(&self) -> String;

    /// The `result` label of the use case's counter and span: expected refusals are named
    /// (`not_found`, `expired`, ...), and their span records no error; failures are `error`.
    fn result_label(&self) -> &'static str {
        "error"
    }

    /// For `ResourceExhausted`: the setting whose limit was reached (`max_sandboxes`,
    /// `agents.<id>.max_sandboxes`), which the status's `QuotaFailure` names.
    fn quota_subject(&self) -> Option<String> {
        None
    }
}

/// The fixed client message of the kinds whose detail stays inside.
pub(crate) const fn generic_message(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Aborted => "the chat is busy with another operation; retry",
        ErrorKind::Unavailable => "a backing service (Redis or Docker) is unavailable; retry later",
        _ => "internal error",
    }
}

/// A failure of one of the ports, as every use case can meet it; the whole error type of the use
/// cases that have no refusals of their own (delete, list, cleanup, reconcile), and the `Port`
/// variant of every other use case's error, so the delegation below is written once.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Repository(#[from] RepositoryError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

impl UseCaseError for PortError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::Lock(e) => e.kind(),
            Self::Repository(e) => e.kind(),
            Self::Runtime(e) => e.kind(),
        }
    }

    fn metric_label(&self) -> &'static str {
        match self {
            Self::Lock(e) => e.metric_label(),
            Self::Repository(e) => e.metric_label(),
            Self::Runtime(e) => e.metric_label(),
        }
    }

    fn client_message(&self) -> String {
        match self {
            Self::Lock(e) => e.client_message(),
            Self::Repository(e) => e.client_message(),
            Self::Runtime(e) => e.client_message(),
        }
    }
}
