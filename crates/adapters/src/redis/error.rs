//! How Redis failures become the ports' errors: unreachable or not-yet-ready servers are
//! `Unavailable` (retry later), everything else is `Other`.

use std::time::Duration;

use redis::{ErrorKind, RedisError, ServerErrorKind};
use sandboxd_usecase::ports::{BoxError, LockError, RepositoryError};

/// Failures of a Redis call, before they are mapped to a port's error.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreFault {
    #[error("redis {command} did not answer within {timeout:?}")]
    Timeout {
        command: &'static str,
        timeout: Duration,
    },
    #[error("redis {command} failed")]
    Redis {
        command: &'static str,
        #[source]
        source: RedisError,
    },
    /// A reply this adapter cannot read: stored data or a script result of the wrong shape.
    #[error("redis {command} returned unreadable data: {reason}")]
    Corrupt {
        command: &'static str,
        reason: String,
    },
}

impl StoreFault {
    /// True when retrying later may succeed: no connection, no answer in time, or a server that
    /// is loading its dataset, read-only (a replica after failover) or busy with a script.
    pub(crate) fn is_unavailable(&self) -> bool {
        match self {
            Self::Timeout { .. } => true,
            Self::Redis { source, .. } => is_unavailable(source),
            Self::Corrupt { .. } => false,
        }
    }

    pub(crate) fn corrupt(command: &'static str, reason: impl Into<String>) -> Self {
        Self::Corrupt {
            command,
            reason: reason.into(),
        }
    }

    /// The fault as a port's error: its `Unavailable` variant while Redis is away or failing
    /// over, its `Other` variant otherwise.
    fn into_port_error<E>(self, unavailable: fn(BoxError) -> E, other: fn(BoxError) -> E) -> E {
        if self.is_unavailable() {
            unavailable(BoxError::from(self))
        } else {
            other(BoxError::from(self))
        }
    }
}

/// True for failures that say the server is unreachable or not (or no longer) the writable
/// primary: the Sentinel connection then asks where the primary is now.
pub(crate) fn is_unavailable(error: &RedisError) -> bool {
    error.is_io_error()
        || error.is_connection_refusal()
        || error.is_connection_dropped()
        || error.is_timeout()
        // During a failover the sentinels name no primary that answers as one (the old one is
        // dead, the new one not yet promoted): retry later, like a refused connection.
        || matches!(
            error.kind(),
            ErrorKind::MasterNameNotFoundBySentinel | ErrorKind::NoValidReplicasFoundBySentinel
        )
        || matches!(
            error.kind(),
            ErrorKind::Server(
                ServerErrorKind::BusyLoading
                    | ServerErrorKind::ReadOnly
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::ClusterDown
            )
        )
        || matches!(
            error.code(),
            Some("BUSY" | "LOADING" | "READONLY" | "MASTERDOWN")
        )
}

impl From<StoreFault> for RepositoryError {
    fn from(fault: StoreFault) -> Self {
        fault.into_port_error(Self::Unavailable, Self::Other)
    }
}

impl From<StoreFault> for LockError {
    fn from(fault: StoreFault) -> Self {
        fault.into_port_error(Self::Unavailable, Self::Other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redis_error(kind: ErrorKind) -> RedisError {
        RedisError::from((kind, "test"))
    }

    #[test]
    fn timeouts_and_io_errors_are_unavailable() {
        let timeout = StoreFault::Timeout {
            command: "ping",
            timeout: Duration::from_millis(5),
        };
        assert!(timeout.is_unavailable());
        let io = StoreFault::Redis {
            command: "ping",
            source: RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)),
        };
        assert!(io.is_unavailable());
        assert!(matches!(
            RepositoryError::from(io),
            RepositoryError::Unavailable(_)
        ));
    }

    #[test]
    fn loading_and_readonly_replies_are_unavailable() {
        for kind in [ServerErrorKind::BusyLoading, ServerErrorKind::ReadOnly] {
            let fault = StoreFault::Redis {
                command: "save",
                source: redis_error(ErrorKind::Server(kind)),
            };
            assert!(fault.is_unavailable(), "{kind:?}");
        }
    }

    #[test]
    fn no_primary_named_by_the_sentinels_is_unavailable() {
        let fault = StoreFault::Redis {
            command: "get",
            source: redis_error(ErrorKind::MasterNameNotFoundBySentinel),
        };
        assert!(fault.is_unavailable());
    }

    #[test]
    fn other_replies_and_corrupt_data_are_other() {
        let fault = StoreFault::Redis {
            command: "save",
            source: redis_error(ErrorKind::Server(ServerErrorKind::ResponseError)),
        };
        assert!(matches!(
            RepositoryError::from(fault),
            RepositoryError::Other(_)
        ));
        let corrupt = StoreFault::corrupt("get", "no chat_id");
        assert!(matches!(LockError::from(corrupt), LockError::Other(_)));
    }
}
