//! Unit tests of the telemetry helpers: the error chain, and the span declarations held equal
//! to the name constants.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;

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

/// The span macros spell field names as identifiers; these checks hold them equal to the
/// constants the use cases record through and tests read by.
mod span_declarations {
    use super::*;

    const ERROR_FIELDS: &[&str] = &[
        span::RESULT,
        span::ERROR_TYPE,
        span::EXCEPTION_MESSAGE,
        span::OTEL_STATUS_CODE,
    ];
    const SESSION_FIELDS: &[&str] = &[
        span::SESSION_ID,
        span::CONTAINER_ID,
        span::SESSION_AGENT_ID,
        span::SESSION_VOLUME_HOST_PATH,
        span::ENDPOINT_IP,
        span::ENDPOINT_PORT,
    ];

    fn assert_declares(made: &Span, name: &str, fields: &[&[&str]]) {
        let metadata = made.metadata().expect("a subscriber is installed");
        assert_eq!(metadata.name(), name);
        for field in fields.iter().copied().flatten() {
            assert!(
                metadata.fields().field(field).is_some(),
                "{name} declares {field}"
            );
        }
    }

    #[test]
    fn every_use_case_span_declares_the_fields_its_constants_name() {
        let chat = ChatId::parse("0b0e4a8e-54f1-4f7e-9c1e-3b7b5f2f6a10").unwrap();
        tracing::subscriber::with_default(tracing_subscriber::registry(), || {
            assert_declares(
                &create_span(&chat, "default", "/srv/a"),
                span::CREATE,
                &[
                    ERROR_FIELDS,
                    SESSION_FIELDS,
                    &[
                        span::CHAT_ID,
                        span::AGENT_ID,
                        span::VOLUME_HOST_PATH,
                        span::CONFLICT_REASON,
                        span::PREVIOUS_SESSION_ID,
                        span::PREVIOUS_CONTAINER_ID,
                        span::PREVIOUS_AGENT_ID,
                        span::PREVIOUS_VOLUME_HOST_PATH,
                        span::NEW_SESSION_ID,
                        span::NEW_CONTAINER_ID,
                        span::NEW_AGENT_ID,
                        span::NEW_VOLUME_HOST_PATH,
                    ],
                ],
            );
            assert_declares(
                &delete_span(&chat),
                span::DELETE,
                &[ERROR_FIELDS, SESSION_FIELDS, &[span::CHAT_ID]],
            );
            assert_declares(
                &get_span(&chat),
                span::GET,
                &[ERROR_FIELDS, SESSION_FIELDS, &[span::CHAT_ID]],
            );
            assert_declares(
                &extend_span(&chat, 1000),
                span::EXTEND,
                &[
                    ERROR_FIELDS,
                    SESSION_FIELDS,
                    &[span::CHAT_ID, span::TTL_MS, span::EXPIRES_AT],
                ],
            );
            assert_declares(
                &list_span(Some("default"), 10),
                span::LIST,
                &[
                    ERROR_FIELDS,
                    &[span::AGENT_ID, span::PAGE_SIZE, span::RETURNED_COUNT],
                ],
            );
            let pass = cleanup_pass_span();
            assert_declares(
                &pass,
                span::CLEANUP_PASS,
                &[
                    ERROR_FIELDS,
                    &[
                        span::EXPIRED_COUNT,
                        span::CLEANED_COUNT,
                        span::ERROR_COUNT,
                        span::SKIPPED_COUNT,
                    ],
                ],
            );
            assert_declares(
                &reconcile_span(),
                span::RECONCILE,
                &[
                    ERROR_FIELDS,
                    &[
                        span::CONTAINER_COUNT,
                        span::SESSION_COUNT,
                        span::REMOVED_CONTAINERS,
                        span::REMOVED_SESSIONS,
                        span::ADOPTED_SESSIONS,
                        span::ERROR_COUNT,
                    ],
                ],
            );
        });
    }
}
