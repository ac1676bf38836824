//! Process-wide telemetry setup: the tracing subscriber (text or JSON lines, level from
//! `RUST_LOG`) and the Prometheus recorder behind the `metrics` facade.

use std::io::IsTerminal;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global tracing subscriber; `RUST_LOG` overrides the default `info` level.
///
/// # Errors
/// When a global subscriber is already installed.
pub fn init_tracing(format: LogFormat) -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout);
    let installed = match format {
        // Colour codes only for a person at a terminal: tests and log shippers parse the lines.
        LogFormat::Text => builder
            .with_ansi(std::io::stdout().is_terminal())
            .try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    installed.map_err(|e| anyhow::anyhow!("installing the tracing subscriber: {e}"))
}

/// Installs the global Prometheus recorder and returns the handle `/metrics` renders.
///
/// # Errors
/// When a global recorder is already installed.
pub fn init_metrics() -> anyhow::Result<PrometheusHandle> {
    Ok(PrometheusBuilder::new().install_recorder()?)
}
