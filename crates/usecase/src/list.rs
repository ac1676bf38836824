//! ListSandboxes: one page of sessions, optionally of one agent, with a stable page token.

mod telemetry;

use tracing::Instrument;

use crate::error::PortError;
use crate::lease::Ports;
use crate::ports::{ListQuery, SessionPage};
use telemetry::metric;

#[derive(Debug, Clone)]
pub struct ListSandboxes {
    ports: Ports,
}

impl ListSandboxes {
    #[must_use]
    pub fn new(ports: Ports) -> Self {
        Self { ports }
    }

    /// # Errors
    /// An invalid page token (`InvalidArgument` on `page_token`) or a store failure.
    pub async fn execute(&self, query: ListQuery) -> Result<SessionPage, PortError> {
        let span =
            telemetry::list_span(query.agent_id.as_ref().map(|a| a.as_str()), query.page_size);
        let outcome = self
            .ports
            .repository
            .list(&query)
            .instrument(span.clone())
            .await
            .map_err(PortError::from);
        if let Ok(page) = &outcome {
            span.record(telemetry::span::RETURNED_COUNT, page.sessions.len());
        }
        telemetry::finish(&span, metric::LIST_TOTAL, outcome.as_ref().map(|_| "ok"));
        outcome
    }
}
