//! Error kinds shared by every use case: what the service layer maps to a status code.

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
    /// Retryable contention: the chat's lock was busy, or the lease was lost mid-operation.
    Aborted,
    /// Redis or Docker did not answer.
    Unavailable,
    /// Anything else; the cause is logged, never sent.
    Internal,
}

impl LockError {
    #[must_use]
    pub const fn kind(&self) -> ErrorKind {
        match self {
            Self::Busy { .. } => ErrorKind::Aborted,
            Self::Unavailable(_) => ErrorKind::Unavailable,
            Self::Other(_) => ErrorKind::Internal,
        }
    }
}

impl RepositoryError {
    #[must_use]
    pub const fn kind(&self) -> ErrorKind {
        match self {
            Self::LeaseLost => ErrorKind::Aborted,
            Self::InvalidPageToken => ErrorKind::InvalidArgument {
                field: "page_token",
            },
            Self::Unavailable(_) => ErrorKind::Unavailable,
            Self::Other(_) => ErrorKind::Internal,
        }
    }
}

impl RuntimeError {
    #[must_use]
    pub const fn kind(&self) -> ErrorKind {
        match self {
            Self::UnknownAgent(_) => ErrorKind::InvalidArgument { field: "agent_id" },
            Self::VolumeInvalid(_) => ErrorKind::InvalidArgument {
                field: "volume_host_path",
            },
            Self::VolumeDenied(_) => ErrorKind::PermissionDenied {
                field: "volume_host_path",
            },
            // The sandbox could not come up now; a retry may succeed once the engine recovers.
            Self::NotReady(_) | Self::Unavailable(_) => ErrorKind::Unavailable,
            Self::ImageNotFound(_) | Self::Other(_) => ErrorKind::Internal,
        }
    }
}

/// What every use-case error offers the service layer: its kind, and its cause for the log.
pub trait UseCaseError: std::error::Error + Send + Sync + 'static {
    fn kind(&self) -> ErrorKind;
}

/// Implements [`UseCaseError`] with the error's own `kind()`.
macro_rules! use_case_error {
    ($($name:ty),* $(,)?) => {$(
        impl $crate::error::UseCaseError for $name {
            fn kind(&self) -> $crate::error::ErrorKind {
                Self::kind(self)
            }
        }
    )*};
}
pub(crate) use use_case_error;

/// A failure of one of the ports, as every use case can meet it.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Repository(#[from] RepositoryError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

impl PortError {
    #[must_use]
    pub const fn kind(&self) -> ErrorKind {
        match self {
            Self::Lock(e) => e.kind(),
            Self::Repository(e) => e.kind(),
            Self::Runtime(e) => e.kind(),
        }
    }

    #[must_use]
    pub const fn metric_label(&self) -> &'static str {
        match self {
            Self::Lock(e) => e.metric_label(),
            Self::Repository(e) => e.metric_label(),
            Self::Runtime(e) => e.metric_label(),
        }
    }
}

/// Lets `?` lift any port error into a use-case error that has a `Port(PortError)` variant.
macro_rules! from_port_errors {
    ($target:ty) => {
        impl From<$crate::ports::LockError> for $target {
            fn from(error: $crate::ports::LockError) -> Self {
                Self::Port(error.into())
            }
        }
        impl From<$crate::ports::RepositoryError> for $target {
            fn from(error: $crate::ports::RepositoryError) -> Self {
                Self::Port(error.into())
            }
        }
        impl From<$crate::ports::RuntimeError> for $target {
            fn from(error: $crate::ports::RuntimeError) -> Self {
                Self::Port(error.into())
            }
        }
    };
}
pub(crate) use from_port_errors;

/// Declares a use-case error that can only be a port failure, with its `kind()`, its
/// `metric_label()` and the `From` impls `?` needs.
macro_rules! port_only_error {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, thiserror::Error)]
        pub enum $name {
            #[error(transparent)]
            Port($crate::error::PortError),
        }

        $crate::error::from_port_errors!($name);
        $crate::error::use_case_error!($name);

        impl $name {
            #[must_use]
            pub const fn kind(&self) -> $crate::error::ErrorKind {
                match self {
                    Self::Port(error) => error.kind(),
                }
            }

            #[must_use]
            pub const fn metric_label(&self) -> &'static str {
                match self {
                    Self::Port(error) => error.metric_label(),
                }
            }
        }
    };
}
pub(crate) use port_only_error;
