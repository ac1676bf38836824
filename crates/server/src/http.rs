//! The operations HTTP port: `/metrics` (Prometheus text), `/healthz` (the process answers) and
//! `/readyz` (Redis and Docker answer and the server is not draining).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::health::Readiness;

#[derive(Debug, Clone)]
struct HttpState {
    metrics: PrometheusHandle,
    readiness: Arc<Readiness>,
}

pub(crate) fn router(metrics: PrometheusHandle, readiness: Arc<Readiness>) -> Router {
    Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(HttpState { metrics, readiness })
}

async fn render_metrics(State(state): State<HttpState>) -> String {
    // Histogram buckets are only compacted on upkeep; without the exporter's own HTTP listener
    // nobody else runs it.
    state.metrics.run_upkeep();
    state.metrics.render()
}

async fn readyz(State(state): State<HttpState>) -> (StatusCode, &'static str) {
    if state.readiness.is_ready() {
        (StatusCode::OK, "ready\n")
    } else if state.readiness.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "backends unavailable\n")
    }
}
