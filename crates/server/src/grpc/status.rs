//! The one place use-case error kinds become gRPC statuses with rich details (DESIGN.md's error
//! table). Internal causes are logged here, once, and never sent to clients.

use std::error::Error;
use std::fmt;
use std::time::Duration;

use sandboxd_usecase::{ErrorKind, UseCaseError};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// `ErrorInfo.domain` of every error this service describes.
pub const ERROR_DOMAIN: &str = "sandboxd";
/// `ErrorInfo.reason` of a create that meets a differing live sandbox.
pub const REASON_SANDBOX_CONFLICT: &str = "SANDBOX_CONFLICT";
/// `ResourceInfo.resource_type` of a missing sandbox.
pub const RESOURCE_TYPE_SANDBOX: &str = "sandbox.v1.Sandbox";
/// Retry hint for lock contention: about one typical create.
const ABORTED_RETRY_DELAY: Duration = Duration::from_secs(1);

/// What the mapping needs besides the error: which RPC failed and which chat it was about.
#[derive(Debug, Clone, Copy)]
pub struct StatusContext<'a> {
    pub rpc: &'static str,
    /// The chat the request named, for `ResourceInfo`; `None` for RPCs without one.
    pub chat_id: Option<&'a str>,
}

/// A request field that did not parse: INVALID_ARGUMENT with a `BadRequest` violation naming it.
pub fn invalid_field(field: &str, description: impl fmt::Display) -> Status {
    let description = description.to_string();
    Status::with_error_details(
        Code::InvalidArgument,
        format!("invalid {field}: {description}"),
        ErrorDetails::with_bad_request_violation(field, description),
    )
}

/// The `map_err` of every handler: a use-case error becomes its status in this RPC's context.
pub fn status_for<'a, E: UseCaseError>(
    rpc: &'static str,
    chat_id: Option<&'a str>,
) -> impl FnOnce(E) -> Status + 'a {
    move |error| to_status(error.kind(), &error, StatusContext { rpc, chat_id })
}

/// Maps a use-case error to its status by its [`ErrorKind`].
pub fn to_status(
    kind: ErrorKind,
    error: &(dyn Error + 'static),
    context: StatusContext<'_>,
) -> Status {
    let rpc = context.rpc;
    match kind {
        ErrorKind::InvalidArgument { field } => invalid_field(field, error),
        ErrorKind::PermissionDenied { field } => Status::with_error_details(
            Code::PermissionDenied,
            // The runtime's message already names the field and the policy that refused it.
            error.to_string(),
            ErrorDetails::with_bad_request_violation(field, error.to_string()),
        ),
        ErrorKind::Conflict { reason } => Status::with_error_details(
            Code::AlreadyExists,
            format!("the chat has a live sandbox with a different {reason}"),
            ErrorDetails::with_error_info(
                REASON_SANDBOX_CONFLICT,
                ERROR_DOMAIN,
                [("fields".to_owned(), reason.as_str().to_owned())],
            ),
        ),
        ErrorKind::NotFound => Status::with_error_details(
            Code::NotFound,
            error.to_string(),
            ErrorDetails::with_resource_info(
                RESOURCE_TYPE_SANDBOX,
                context
                    .chat_id
                    .map(|chat| format!("chats/{chat}/sandbox"))
                    .unwrap_or_default(),
                "",
                "the chat has no sandbox",
            ),
        ),
        ErrorKind::FailedPrecondition => Status::failed_precondition(error.to_string()),
        ErrorKind::Aborted => Status::with_error_details(
            Code::Aborted,
            "the chat is busy with another operation; retry",
            ErrorDetails::with_retry_info(Some(ABORTED_RETRY_DELAY)),
        ),
        ErrorKind::Unavailable => {
            tracing::warn!(rpc, error = %ErrorChain(error), "rpc_unavailable");
            Status::unavailable("a backing service (Redis or Docker) is unavailable; retry later")
        }
        ErrorKind::Internal => {
            tracing::error!(rpc, error = %ErrorChain(error), "rpc_internal_error");
            Status::internal("internal error")
        }
    }
}

/// Displays an error with its whole `source()` chain, for the one log line of its cause.
#[derive(Debug)]
pub struct ErrorChain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use sandboxd_domain::ConflictReason;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    fn ctx() -> StatusContext<'static> {
        StatusContext {
            rpc: "Test",
            chat_id: Some("c"),
        }
    }

    #[test]
    fn conflict_carries_error_info_with_the_fields() {
        let error = Outer(std::io::Error::other("x"));
        let status = to_status(
            ErrorKind::Conflict {
                reason: ConflictReason::AgentIdAndVolumeHostPath,
            },
            &error,
            ctx(),
        );
        assert_eq!(status.code(), Code::AlreadyExists);
        let info = status.get_details_error_info().unwrap();
        assert_eq!(info.reason, REASON_SANDBOX_CONFLICT);
        assert_eq!(info.domain, ERROR_DOMAIN);
        assert_eq!(
            info.metadata.get("fields").map(String::as_str),
            Some("agent_id,volume_host_path")
        );
    }

    #[test]
    fn every_kind_has_its_code_and_internal_causes_stay_inside() {
        let error = Outer(std::io::Error::other("secret cause"));
        let cases = [
            (
                ErrorKind::InvalidArgument { field: "ttl" },
                Code::InvalidArgument,
            ),
            (
                ErrorKind::PermissionDenied {
                    field: "volume_host_path",
                },
                Code::PermissionDenied,
            ),
            (ErrorKind::NotFound, Code::NotFound),
            (ErrorKind::FailedPrecondition, Code::FailedPrecondition),
            (ErrorKind::Aborted, Code::Aborted),
            (ErrorKind::Unavailable, Code::Unavailable),
            (ErrorKind::Internal, Code::Internal),
        ];
        for (kind, code) in cases {
            let status = to_status(kind, &error, ctx());
            assert_eq!(status.code(), code, "{kind:?}");
            assert!(!status.message().contains("secret"), "{kind:?}");
        }
        let status = to_status(ErrorKind::InvalidArgument { field: "ttl" }, &error, ctx());
        assert_eq!(
            status.get_details_bad_request().unwrap().field_violations[0].field,
            "ttl"
        );
        let status = to_status(ErrorKind::Aborted, &error, ctx());
        assert!(status.get_details_retry_info().is_some());
        let status = to_status(ErrorKind::NotFound, &error, ctx());
        assert_eq!(
            status.get_details_resource_info().unwrap().resource_type,
            RESOURCE_TYPE_SANDBOX
        );
        assert_eq!(ErrorChain(&error).to_string(), "outer: secret cause");
    }
}
