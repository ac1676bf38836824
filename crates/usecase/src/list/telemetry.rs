//! ListSandboxes' span (its outcome is `telemetry::finish`'s).

use tracing::Span;
use tracing::field::Empty;

// The shared helpers and every name too: the parent module reaches all its telemetry through
// this one path.
pub(super) use crate::telemetry::*;

pub(super) fn list_span(agent_id: Option<&str>, page_size: usize) -> Span {
    usecase_span!(
        span::LIST,
        agent.id = agent_id,
        sandbox.page_size = page_size,
        sandbox.returned_count = Empty,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::tests::{ERROR_FIELDS, assert_declares};

    #[test]
    fn the_list_span_declares_the_fields_its_constants_name() {
        assert_declares(
            || list_span(Some("default"), 10),
            span::LIST,
            &[
                ERROR_FIELDS,
                &[span::AGENT_ID, span::PAGE_SIZE, span::RETURNED_COUNT],
            ],
        );
    }
}
