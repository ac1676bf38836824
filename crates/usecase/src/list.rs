//! ListSandboxes: one page of sessions, optionally of one agent, with a stable page token.

use tracing::Instrument;

use crate::error::port_only_error;
use crate::lease::Ports;
use crate::ports::{ListQuery, SessionPage};
use crate::telemetry::{self, metric};

port_only_error!(
    /// Why a listing failed: an invalid page token or a store failure.
    ListSandboxesError
);

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
    /// `Port`: an invalid page token (`InvalidArgument` on `page_token`) or a store failure.
    pub async fn execute(&self, query: ListQuery) -> Result<SessionPage, ListSandboxesError> {
        let span =
            telemetry::list_span(query.agent_id.as_ref().map(|a| a.as_str()), query.page_size);
        let outcome: Result<_, ListSandboxesError> =
            async { Ok(self.ports.repository.list(&query).await?) }
                .instrument(span.clone())
                .await;
        match &outcome {
            Ok(page) => {
                span.record(telemetry::span::RETURNED_COUNT, page.sessions.len());
                telemetry::record_result(&span, "ok");
                telemetry::count_result(metric::LIST_TOTAL, "ok");
            }
            Err(error) => {
                telemetry::record_result(&span, "error");
                telemetry::count_result(metric::LIST_TOTAL, "error");
                telemetry::record_error(&span, error.metric_label(), error);
                let _entered = span.enter();
                telemetry::log_list_failed(error.metric_label());
            }
        }
        outcome
    }
}
