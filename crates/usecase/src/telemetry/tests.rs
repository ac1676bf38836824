//! Unit tests of the shared telemetry helpers, and the check each use case's `telemetry`
//! submodule runs on its spans: the span macros spell field names as identifiers, so each span
//! is held to declare the constants the use cases record through and tests read by.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use sandboxd_domain::ChatId;

use super::*;

/// What every use-case span declares (`usecase_span!`).
pub(crate) const ERROR_FIELDS: &[&str] = &[
    span::RESULT,
    span::ERROR_TYPE,
    span::EXCEPTION_MESSAGE,
    span::OTEL_STATUS_CODE,
];

/// What a span about one session declares besides (`session_span!`).
pub(crate) const SESSION_FIELDS: &[&str] = &[
    span::SESSION_ID,
    span::CONTAINER_ID,
    span::SESSION_AGENT_ID,
    span::SESSION_VOLUME_HOST_PATH,
    span::ENDPOINT_IP,
    span::ENDPOINT_PORT,
];

pub(crate) fn chat_id() -> ChatId {
    ChatId::parse("0b0e4a8e-54f1-4f7e-9c1e-3b7b5f2f6a10").unwrap()
}

/// Builds a span with a subscriber installed (without one a span has no metadata) and asserts
/// its name and that it declares every one of `fields`.
pub(crate) fn assert_declares(make: impl FnOnce() -> Span, name: &str, fields: &[&[&str]]) {
    tracing::subscriber::with_default(tracing_subscriber::registry(), || {
        let made = make();
        let metadata = made.metadata().expect("a subscriber is installed");
        assert_eq!(metadata.name(), name);
        for field in fields.iter().copied().flatten() {
            assert!(
                metadata.fields().field(field).is_some(),
                "{name} declares {field}"
            );
        }
    });
}

mod error_chain {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn an_error_chain_shows_every_cause_in_order() {
        let error = Outer(std::io::Error::other("root cause"));
        assert_eq!(ErrorChain(&error).to_string(), "outer: root cause");
    }
}
