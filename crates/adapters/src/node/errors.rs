//! [`RuntimeError`] across the node API: the serving node puts the variant in a
//! `google.rpc.ErrorInfo` (domain [`ERROR_DOMAIN`]), the client restores the same variant from
//! it, so `Vanished`, `NotReady`, `VolumeDenied` ... keep their meaning across the hop. A
//! volume refusal travels as its reason's code ([`VolumeRefusal::code`]), never as prose.
//!
//! The status code itself follows the error's kind (the server's one mapping); only the
//! ErrorInfo is read back. A status without it did not come from the engine: the transport, a
//! node that is shutting down or refuses the token.

use std::collections::HashMap;
use std::time::Duration;

use sandboxd_usecase::ports::{RuntimeError, VolumeRefusal};
use tonic::{Code, Status};
use tonic_types::StatusExt;

/// `ErrorInfo.domain` of the node API's runtime errors.
pub const ERROR_DOMAIN: &str = "sandboxd.node";

pub const REASON_VOLUME_INVALID: &str = "VOLUME_INVALID";
pub const REASON_VOLUME_DENIED: &str = "VOLUME_DENIED";
pub const REASON_IMAGE_NOT_FOUND: &str = "IMAGE_NOT_FOUND";
pub const REASON_VANISHED: &str = "VANISHED";
pub const REASON_NOT_READY: &str = "NOT_READY";
pub const REASON_UNAVAILABLE: &str = "UNAVAILABLE";
pub const REASON_OTHER: &str = "OTHER";

/// Metadata key of the [`VolumeRefusal::code`] of `VOLUME_INVALID` and `VOLUME_DENIED`.
pub const META_REASON: &str = "reason";
/// Metadata key of the image of `IMAGE_NOT_FOUND`.
pub const META_IMAGE: &str = "image";
/// Metadata key of the readiness timeout of `NOT_READY`, in whole milliseconds.
pub const META_TIMEOUT_MS: &str = "timeout_ms";

/// The ErrorInfo reason and metadata of `error`.
#[must_use]
pub fn error_info(error: &RuntimeError) -> (&'static str, HashMap<String, String>) {
    let one = |key: &str, value: String| HashMap::from([(key.to_owned(), value)]);
    match error {
        RuntimeError::VolumeInvalid(refusal) => (
            REASON_VOLUME_INVALID,
            one(META_REASON, refusal.code().to_owned()),
        ),
        RuntimeError::VolumeDenied(refusal) => (
            REASON_VOLUME_DENIED,
            one(META_REASON, refusal.code().to_owned()),
        ),
        RuntimeError::ImageNotFound(image) => {
            (REASON_IMAGE_NOT_FOUND, one(META_IMAGE, image.clone()))
        }
        RuntimeError::Vanished => (REASON_VANISHED, HashMap::new()),
        RuntimeError::NotReady(timeout) => (
            REASON_NOT_READY,
            one(META_TIMEOUT_MS, timeout.as_millis().to_string()),
        ),
        RuntimeError::Unavailable(_) => (REASON_UNAVAILABLE, HashMap::new()),
        RuntimeError::Other(_) => (REASON_OTHER, HashMap::new()),
    }
}

/// A node's answer that is not one of the engine's own errors, or an engine error whose cause
/// stayed on the serving node (it logs it there; causes never travel).
#[derive(Debug, thiserror::Error)]
pub enum NodeCallError {
    /// The node answered this status.
    #[error("node {node} answered {code:?}: {message}")]
    Answered {
        node: String,
        code: Code,
        message: String,
    },
    /// The call did not reach the node, or its answer did not come back.
    #[error("calling node {node} failed")]
    Transport {
        node: String,
        #[source]
        source: Status,
    },
    /// The node did not answer in time.
    #[error("node {node} did not answer within {timeout:?}")]
    TimedOut { node: String, timeout: Duration },
    /// The node's answer does not decode.
    #[error("node {node} sent a malformed answer")]
    Malformed {
        node: String,
        #[source]
        source: super::wire::WireError,
    },
}

/// The [`RuntimeError`] a failed call to `node` stands for: the variant named by the node API's
/// ErrorInfo; without one, `Unavailable` for UNAVAILABLE or a transport failure, `Other` for
/// anything else (a refused token, an unknown agent, a malformed request).
#[must_use]
pub fn runtime_error(node: &str, status: Status) -> RuntimeError {
    let info = status
        .get_details_error_info()
        .filter(|info| info.domain == ERROR_DOMAIN);
    let Some(info) = info else {
        // A status the transport made carries its cause; one the peer sent does not.
        let from_transport = std::error::Error::source(&status).is_some();
        let unavailable = from_transport || status.code() == Code::Unavailable;
        let failure = if from_transport {
            NodeCallError::Transport {
                node: node.to_owned(),
                source: status,
            }
        } else {
            answered(node, &status)
        };
        return if unavailable {
            RuntimeError::Unavailable(Box::new(failure))
        } else {
            RuntimeError::Other(Box::new(failure))
        };
    };
    let meta = |key: &str| info.metadata.get(key).map(String::as_str);
    // A code this node does not know (a newer serving node) keeps the variant, so the client
    // still gets the right status, with a generic reason.
    let refusal = |unknown: VolumeRefusal| {
        meta(META_REASON)
            .and_then(VolumeRefusal::from_code)
            .unwrap_or(unknown)
    };
    match info.reason.as_str() {
        REASON_VOLUME_INVALID => {
            RuntimeError::VolumeInvalid(refusal(VolumeRefusal::UnusableOnServingNode))
        }
        REASON_VOLUME_DENIED => {
            RuntimeError::VolumeDenied(refusal(VolumeRefusal::DeniedByServingNode))
        }
        REASON_IMAGE_NOT_FOUND => {
            RuntimeError::ImageNotFound(meta(META_IMAGE).unwrap_or_default().to_owned())
        }
        REASON_VANISHED => RuntimeError::Vanished,
        REASON_NOT_READY => RuntimeError::NotReady(Duration::from_millis(
            meta(META_TIMEOUT_MS)
                .and_then(|raw| raw.parse().ok())
                .unwrap_or_default(),
        )),
        REASON_UNAVAILABLE => RuntimeError::Unavailable(Box::new(answered(node, &status))),
        // OTHER, and a reason of a newer node this one does not know.
        _ => RuntimeError::Other(Box::new(answered(node, &status))),
    }
}

fn answered(node: &str, status: &Status) -> NodeCallError {
    NodeCallError::Answered {
        node: node.to_owned(),
        code: status.code(),
        message: status.message().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use sandboxd_usecase::UseCaseError;
    use tonic_types::ErrorDetails;

    use super::*;

    /// What the serving node sends for `error` (the code is irrelevant to the decoding).
    fn sent(error: &RuntimeError) -> Status {
        let (reason, metadata) = error_info(error);
        Status::with_error_details(
            Code::Internal,
            "x",
            ErrorDetails::with_error_info(reason, ERROR_DOMAIN, metadata),
        )
    }

    #[test]
    fn every_variant_comes_back_as_itself() {
        let cases = [
            RuntimeError::VolumeInvalid(VolumeRefusal::NotADirectory),
            RuntimeError::VolumeDenied(VolumeRefusal::ProtectedPath),
            RuntimeError::ImageNotFound("img:local".to_owned()),
            RuntimeError::Vanished,
            RuntimeError::NotReady(Duration::from_millis(1500)),
            RuntimeError::Unavailable("engine down".into()),
            RuntimeError::Other("engine failed".into()),
        ];
        for error in &cases {
            let back = runtime_error("n2", sent(error));
            assert_eq!(back.to_string(), error.to_string(), "{error:?} -> {back:?}");
            assert_eq!(std::mem::discriminant(&back), std::mem::discriminant(error));
        }
    }

    #[test]
    fn every_volume_refusal_comes_back_as_itself() {
        for refusal in VolumeRefusal::ALL {
            assert!(matches!(
                runtime_error("n2", sent(&RuntimeError::VolumeDenied(refusal))),
                RuntimeError::VolumeDenied(back) if back == refusal
            ));
            assert!(matches!(
                runtime_error("n2", sent(&RuntimeError::VolumeInvalid(refusal))),
                RuntimeError::VolumeInvalid(back) if back == refusal
            ));
        }
    }

    #[test]
    fn the_refusal_travels_as_its_code() {
        let (reason, metadata) = error_info(&RuntimeError::VolumeDenied(
            VolumeRefusal::OutsideAllowedRoots,
        ));
        assert_eq!(reason, REASON_VOLUME_DENIED);
        assert_eq!(
            metadata.get(META_REASON).map(String::as_str),
            Some("outside_allowed_roots")
        );
    }

    #[test]
    fn an_unknown_or_missing_code_keeps_the_variant_with_a_generic_reason() {
        let from_newer_node = |reason: &str, metadata: HashMap<String, String>| {
            runtime_error(
                "n2",
                Status::with_error_details(
                    Code::Internal,
                    "x",
                    ErrorDetails::with_error_info(reason, ERROR_DOMAIN, metadata),
                ),
            )
        };
        let unknown = || HashMap::from([(META_REASON.to_owned(), "a_newer_reason".to_owned())]);
        let denied = from_newer_node(REASON_VOLUME_DENIED, unknown());
        assert!(
            matches!(
                denied,
                RuntimeError::VolumeDenied(VolumeRefusal::DeniedByServingNode)
            ),
            "{denied:?}"
        );
        assert_eq!(
            denied.client_message(),
            "volume_host_path is not allowed: is refused by the serving node's volume policy"
        );
        let invalid = from_newer_node(REASON_VOLUME_INVALID, unknown());
        assert!(
            matches!(
                invalid,
                RuntimeError::VolumeInvalid(VolumeRefusal::UnusableOnServingNode)
            ),
            "{invalid:?}"
        );
        assert_eq!(
            invalid.client_message(),
            "volume_host_path is not usable: is not usable on the serving node"
        );
        assert!(matches!(
            from_newer_node(REASON_VOLUME_DENIED, HashMap::new()),
            RuntimeError::VolumeDenied(VolumeRefusal::DeniedByServingNode)
        ));
    }

    #[test]
    fn a_status_without_the_node_detail_is_unavailable_or_other_by_code() {
        assert!(matches!(
            runtime_error("n2", Status::unavailable("the server is shutting down")),
            RuntimeError::Unavailable(_)
        ));
        let refused = runtime_error("n2", Status::unauthenticated("bad token"));
        assert!(matches!(refused, RuntimeError::Other(_)), "{refused:?}");
        let foreign = Status::with_error_details(
            Code::Aborted,
            "x",
            ErrorDetails::with_error_info(REASON_VANISHED, "elsewhere", HashMap::new()),
        );
        assert!(matches!(
            runtime_error("n2", foreign),
            RuntimeError::Other(_)
        ));
    }
}
