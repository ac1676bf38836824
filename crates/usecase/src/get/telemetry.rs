//! GetSandbox's span (its outcome is `telemetry::finish`'s).

use sandboxd_domain::ChatId;
use tracing::Span;

// The shared helpers and every name too: the parent module reaches all its telemetry through
// this one path.
pub(super) use crate::telemetry::*;

pub(super) fn get_span(chat_id: &ChatId) -> Span {
    session_span!(span::GET, chat.id = %chat_id,)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::tests::{ERROR_FIELDS, SESSION_FIELDS, assert_declares, chat_id};

    #[test]
    fn the_get_span_declares_the_fields_its_constants_name() {
        assert_declares(
            || get_span(&chat_id()),
            span::GET,
            &[ERROR_FIELDS, SESSION_FIELDS, &[span::CHAT_ID]],
        );
    }
}
