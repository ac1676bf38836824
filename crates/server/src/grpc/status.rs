//! The one place use-case error kinds become gRPC statuses with rich details (`docs/design.md`,
//! "Errors"). Internal causes are logged here, once, and never sent to clients: the message is
//! the error's `client_message`, built from its kind and fields.

use std::fmt;
use std::time::Duration;

use sandboxd_usecase::telemetry::ErrorChain;
use sandboxd_usecase::{ErrorKind, UseCaseError};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::names;

/// `ErrorInfo.domain` of every error this service describes.
pub(crate) const ERROR_DOMAIN: &str = "sandboxd";
/// `ErrorInfo.reason` of a create that meets a differing live sandbox.
pub(crate) const REASON_SANDBOX_CONFLICT: &str = "SANDBOX_CONFLICT";
/// `ResourceInfo.resource_type` of a missing sandbox.
pub(crate) const RESOURCE_TYPE_SANDBOX: &str = "sandbox.v1.Sandbox";
/// Retry hint for lock contention: about one typical create.
const ABORTED_RETRY_DELAY: Duration = Duration::from_secs(1);
/// The retry delay suggested when engine creates are at their bound: about one create's time.
const OVERLOADED_RETRY_DELAY: Duration = Duration::from_millis(500);

/// What the mapping needs besides the error: which RPC failed and which chat it was about.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StatusContext<'a> {
    pub rpc: &'static str,
    /// The chat the request named, for `ResourceInfo`; `None` for RPCs without one.
    pub chat_id: Option<&'a str>,
}

/// A request field that did not parse: INVALID_ARGUMENT with a `BadRequest` violation naming it.
pub(crate) fn invalid_field(field: &str, description: impl fmt::Display) -> Status {
    let description = description.to_string();
    Status::with_error_details(
        Code::InvalidArgument,
        format!("invalid {field}: {description}"),
        ErrorDetails::with_bad_request_violation(field, description),
    )
}

/// The `map_err` of every handler: a use-case error becomes its status in this RPC's context.
pub(crate) fn status_for<'a, E: UseCaseError>(
    rpc: &'static str,
    chat_id: Option<&'a str>,
) -> impl FnOnce(E) -> Status + 'a {
    move |error| to_status(&error, StatusContext { rpc, chat_id })
}

/// Maps a use-case error to its status by its [`ErrorKind`].
pub(crate) fn to_status(error: &dyn UseCaseError, context: StatusContext<'_>) -> Status {
    let rpc = context.rpc;
    let message = error.client_message();
    match error.kind() {
        ErrorKind::InvalidArgument { field } => invalid_field(field, message),
        ErrorKind::PermissionDenied { field } => Status::with_error_details(
            Code::PermissionDenied,
            // The message already names the field and the policy that refused it.
            message.clone(),
            ErrorDetails::with_bad_request_violation(field, message),
        ),
        ErrorKind::Conflict { reason } => Status::with_error_details(
            Code::AlreadyExists,
            message,
            ErrorDetails::with_error_info(
                REASON_SANDBOX_CONFLICT,
                ERROR_DOMAIN,
                [("fields".to_owned(), reason.as_str().to_owned())],
            ),
        ),
        ErrorKind::NotFound => Status::with_error_details(
            Code::NotFound,
            message,
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
        ErrorKind::FailedPrecondition => Status::with_error_details(
            Code::FailedPrecondition,
            message.clone(),
            ErrorDetails::with_precondition_failure_violation(
                "SANDBOX_STATE",
                context
                    .chat_id
                    .map(|chat| format!("chats/{chat}/sandbox"))
                    .unwrap_or_default(),
                message,
            ),
        ),
        ErrorKind::OutOfRange => Status::out_of_range(message),
        ErrorKind::ResourceExhausted => Status::with_error_details(
            Code::ResourceExhausted,
            message.clone(),
            ErrorDetails::with_quota_failure_violation(
                error.quota_subject().unwrap_or_default(),
                message,
            ),
        ),
        ErrorKind::Overloaded => Status::with_error_details(
            Code::Unavailable,
            message,
            ErrorDetails::with_retry_info(Some(OVERLOADED_RETRY_DELAY)),
        ),
        ErrorKind::Aborted => Status::with_error_details(
            Code::Aborted,
            message,
            ErrorDetails::with_retry_info(Some(ABORTED_RETRY_DELAY)),
        ),
        ErrorKind::Unavailable => {
            tracing::warn!(
                name: names::RPC_UNAVAILABLE,
                message = names::RPC_UNAVAILABLE,
                rpc,
                error = %ErrorChain(error),
            );
            Status::unavailable(message)
        }
        ErrorKind::Internal => {
            tracing::error!(
                name: names::RPC_INTERNAL_ERROR,
                message = names::RPC_INTERNAL_ERROR,
                rpc,
                error = %ErrorChain(error),
            );
            Status::internal(message)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::time::Duration;

    use super::*;
    use sandboxd_domain::{ChatId, ConflictReason, SandboxState, SessionId};
    use sandboxd_usecase::ports::{LockError, RepositoryError, RuntimeError, VolumeRefusal};
    use sandboxd_usecase::{
        CreateSandboxError, ExtendSandboxError, GetSandboxError, LifecycleError, PortError,
        Refusal, WatchError,
    };

    fn ctx() -> StatusContext<'static> {
        StatusContext {
            rpc: "Test",
            chat_id: Some("c"),
        }
    }

    fn chat() -> ChatId {
        ChatId::parse("0b0e4a8e-54f1-4f7e-9c1e-3b7b5f2f6a10").unwrap()
    }

    #[test]
    fn conflict_carries_error_info_with_the_fields() {
        let error = CreateSandboxError::Conflict {
            chat_id: chat(),
            session_id: SessionId::new_random(),
            reason: ConflictReason::AgentIdAndVolumeHostPath,
        };
        let status = to_status(&error, ctx());
        assert_eq!(status.code(), Code::AlreadyExists);
        assert_eq!(
            status.message(),
            "the chat has a live sandbox with a different agent_id,volume_host_path"
        );
        let info = status.get_details_error_info().unwrap();
        assert_eq!(info.reason, REASON_SANDBOX_CONFLICT);
        assert_eq!(info.domain, ERROR_DOMAIN);
        assert_eq!(
            info.metadata.get("fields").map(String::as_str),
            Some("agent_id,volume_host_path")
        );
    }

    #[test]
    fn every_kind_has_its_code_and_causes_stay_inside() {
        let secret = || -> sandboxd_usecase::ports::BoxError { "secret cause at 10.0.0.7".into() };
        let cases: Vec<(Box<dyn UseCaseError>, Code)> = vec![
            (
                Box::new(ExtendSandboxError::InvalidTtl {
                    max: Duration::from_secs(60),
                }),
                Code::InvalidArgument,
            ),
            (
                Box::new(PortError::from(RuntimeError::VolumeDenied(
                    VolumeRefusal::OutsideAllowedRoots,
                ))),
                Code::PermissionDenied,
            ),
            (Box::new(GetSandboxError::NotFound(chat())), Code::NotFound),
            (
                Box::new(ExtendSandboxError::Expired(chat())),
                Code::FailedPrecondition,
            ),
            (
                Box::new(PortError::from(LockError::Busy {
                    waited: Duration::from_secs(5),
                })),
                Code::Aborted,
            ),
            (
                Box::new(PortError::from(RepositoryError::Unavailable(secret()))),
                Code::Unavailable,
            ),
            (
                Box::new(PortError::from(RuntimeError::Other(secret()))),
                Code::Internal,
            ),
            (
                Box::new(CreateSandboxError::SaveFailed {
                    save: RepositoryError::Other(secret()),
                    compensation: Some(RuntimeError::Unavailable(secret())),
                }),
                Code::Internal,
            ),
            (
                Box::new(LifecycleError::WrongState {
                    chat_id: chat(),
                    state: SandboxState::Paused,
                }),
                Code::FailedPrecondition,
            ),
            (Box::new(WatchError::CursorExpired), Code::OutOfRange),
            (
                Box::new(CreateSandboxError::Refused(Refusal::Agent {
                    agent_id: sandboxd_domain::AgentId::parse("py").unwrap(),
                    limit: 3,
                })),
                Code::ResourceExhausted,
            ),
            (
                Box::new(CreateSandboxError::Refused(Refusal::EngineBusy {
                    in_flight: 4,
                    waited: Duration::from_secs(5),
                })),
                Code::Unavailable,
            ),
        ];
        for (error, code) in &cases {
            let status = to_status(error.as_ref(), ctx());
            assert_eq!(status.code(), *code, "{error:?}");
            assert!(
                status.message().ends_with(&error.client_message()),
                "{error:?}"
            );
            assert!(!status.message().contains("secret"), "{error:?}");
        }
        let status = to_status(cases[0].0.as_ref(), ctx());
        assert_eq!(
            status.message(),
            "invalid ttl: ttl must be positive and at most 60s"
        );
        assert_eq!(
            status.get_details_bad_request().unwrap().field_violations[0].field,
            "ttl"
        );
        let status = to_status(cases[1].0.as_ref(), ctx());
        assert_eq!(
            status.get_details_bad_request().unwrap().field_violations[0].field,
            "volume_host_path"
        );
        let status = to_status(cases[4].0.as_ref(), ctx());
        assert!(status.get_details_retry_info().is_some());
        let status = to_status(cases[2].0.as_ref(), ctx());
        assert_eq!(
            status.get_details_resource_info().unwrap().resource_type,
            RESOURCE_TYPE_SANDBOX
        );
        let status = to_status(cases[8].0.as_ref(), ctx());
        let failure = status.get_details_precondition_failure().unwrap();
        assert_eq!(failure.violations[0].r#type, "SANDBOX_STATE");
        assert!(status.message().contains("resume it first"), "{status:?}");
        let status = to_status(cases[9].0.as_ref(), ctx());
        assert!(status.message().contains("resync with ListSandboxes"));
        let status = to_status(cases[10].0.as_ref(), ctx());
        let quota = status.get_details_quota_failure().unwrap();
        assert_eq!(quota.violations[0].subject, "agents.py.max_sandboxes");
        assert_eq!(
            quota.violations[0].description,
            "agents.py.max_sandboxes (3) is reached"
        );
        let status = to_status(cases[11].0.as_ref(), ctx());
        assert!(status.get_details_retry_info().is_some(), "{status:?}");
    }
}
