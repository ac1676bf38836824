//! Process-wide telemetry setup: the tracing subscriber (text or JSON lines, level from
//! `RUST_LOG`), the OpenTelemetry layer with OTLP export when `OTEL_EXPORTER_OTLP_ENDPOINT` is
//! set, and the Prometheus recorder behind the `metrics` facade with HELP text on every metric.
//!
//! Every metric, span and field name the server itself emits is in [`names`]; every log event
//! name, this file's included, is in `crate::names`.

use std::io::IsTerminal;
use std::time::Duration;

use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::filter::{FilterFn, LevelFilter};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

use crate::config::LogFormat;

/// Names of the server's own metrics, spans and span fields.
pub mod names {
    /// Histogram of one SandboxService call, from request headers to response headers.
    pub const GRPC_REQUEST_DURATION_SECONDS: &str = "sandbox_grpc_request_duration_seconds";
    /// Label: the RPC's method name (`CreateSandbox`), `unknown` for a path the API lacks.
    pub const LABEL_METHOD: &str = "method";
    /// Label: the gRPC status code name (`OK`, `ALREADY_EXISTS`, ...).
    pub const LABEL_CODE: &str = "code";
    /// `method` of a call to a path the service does not define (keeps the label bounded).
    pub const METHOD_UNKNOWN: &str = "unknown";

    /// The server span every SandboxService call runs in, parent of the use-case span.
    pub const SPAN_GRPC_REQUEST: &str = "grpc.request";
    // Its attributes (OpenTelemetry RPC semantic conventions), for readers and tests; the span
    // macro in `rpc_telemetry` spells them as identifiers.
    pub const RPC_SYSTEM: &str = "rpc.system";
    pub const RPC_SERVICE: &str = "rpc.service";
    pub const RPC_METHOD: &str = "rpc.method";
    pub const RPC_GRPC_STATUS_CODE: &str = "rpc.grpc.status_code";
    pub const OTEL_KIND: &str = "otel.kind";
    pub const OTEL_STATUS_CODE: &str = "otel.status_code";

    /// `service.name` when `OTEL_SERVICE_NAME` is unset.
    pub const DEFAULT_SERVICE_NAME: &str = "sandboxd";
    /// The instrumentation scope of every span we export.
    pub const TRACER_NAME: &str = "sandboxd";

    /// HELP text of the server's metrics.
    pub const DESCRIPTIONS: &[(&str, &str)] = &[(
        GRPC_REQUEST_DURATION_SECONDS,
        "SandboxService call latency in seconds by method and gRPC status code.",
    )];
}

/// Bucket bounds of every `*_seconds` histogram: Redis round trips are tens of microseconds,
/// container creation a few hundred milliseconds, a stop with its grace period a few seconds.
pub const DURATION_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// How long exit waits for the last spans to reach the collector: a dead collector must not
/// hold the process after SIGTERM.
const TRACE_FLUSH_TIMEOUT: Duration = Duration::from_millis(1500);

/// Keeps the OpenTelemetry provider alive; [`TracingGuard::shutdown`] flushes it at exit.
#[derive(Debug, Default)]
pub struct TracingGuard {
    provider: Option<SdkTracerProvider>,
}

impl TracingGuard {
    /// Flushes batched spans and stops the exporter, bounded by [`TRACE_FLUSH_TIMEOUT`].
    pub async fn shutdown(self) {
        let Some(provider) = self.provider else {
            return;
        };
        // The SDK's shutdown blocks its caller; keep it off the async workers, which must
        // still drive the exporter's connection meanwhile.
        let flush = tokio::task::spawn_blocking(move || {
            provider.shutdown_with_timeout(TRACE_FLUSH_TIMEOUT)
        });
        match tokio::time::timeout(TRACE_FLUSH_TIMEOUT + Duration::from_millis(500), flush).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(error))) => tracing::warn!(
                name: crate::names::TRACE_EXPORT_SHUTDOWN_FAILED,
                message = crate::names::TRACE_EXPORT_SHUTDOWN_FAILED,
                error = %error,
            ),
            Ok(Err(join_error)) => {
                tracing::warn!(
                    name: crate::names::TRACE_EXPORT_SHUTDOWN_FAILED,
                    message = crate::names::TRACE_EXPORT_SHUTDOWN_FAILED,
                    error = %join_error,
                );
            }
            Err(_elapsed) => tracing::warn!(
                name: crate::names::TRACE_EXPORT_SHUTDOWN_TIMED_OUT,
                message = crate::names::TRACE_EXPORT_SHUTDOWN_TIMED_OUT,
            ),
        }
    }
}

/// Installs the global tracing subscriber; `RUST_LOG` overrides the default `info` level of the
/// log lines. With `OTEL_EXPORTER_OTLP_ENDPOINT` set, spans at info and above are also exported
/// over OTLP/gRPC in batches (whatever `RUST_LOG` says: traces and log verbosity are separate).
///
/// Must run inside the Tokio runtime: the OTLP client is bound to it.
///
/// # Errors
/// When a global subscriber is already installed or the exporter cannot be built.
pub fn init_tracing(format: LogFormat, log_spans: bool) -> anyhow::Result<TracingGuard> {
    // A W3C `traceparent` in request metadata becomes the parent of the server span.
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());

    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stdout);
    let fmt = match format {
        // Colour codes only for a person at a terminal: tests and log shippers parse the lines.
        LogFormat::Text => fmt.with_ansi(std::io::stdout().is_terminal()).boxed(),
        // One object per line, the event's fields at the top level, and the span it happened
        // in (name and fields: the RPC, the chat) so a line stands on its own.
        LogFormat::Json => fmt
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
    };

    let provider = otlp_endpoint().map(|_| build_provider()).transpose()?;
    let otel = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer(names::TRACER_NAME))
            .with_filter(LevelFilter::INFO)
    });
    tracing_subscriber::registry()
        .with(fmt.with_filter(filter).with_filter(log_filter(log_spans)))
        .with(otel)
        .try_init()
        .map_err(|e| anyhow::anyhow!("installing the tracing subscriber: {e}"))?;
    if let Some(endpoint) = otlp_endpoint() {
        tracing::info!(
            name: crate::names::TRACE_EXPORT_ENABLED,
            message = crate::names::TRACE_EXPORT_ENABLED,
            endpoint = %endpoint,
            service_name = %service_name(),
        );
    }
    Ok(TracingGuard { provider })
}

/// What the log layer sees besides events. Without spans it never formats their fields: each
/// span field recorded would otherwise be rendered into text at once, for every call, whether or
/// not a line is ever printed in that span (measured: most of sandboxd's own time per reuse).
fn log_filter(log_spans: bool) -> FilterFn<impl Fn(&tracing::Metadata<'_>) -> bool> {
    FilterFn::new(move |metadata: &tracing::Metadata<'_>| log_spans || metadata.is_event())
}

/// `OTEL_EXPORTER_OTLP_ENDPOINT` (or the traces-specific variable), when set and not empty.
fn otlp_endpoint() -> Option<String> {
    [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .into_iter()
    .filter_map(|name| std::env::var(name).ok())
    .find(|value| !value.trim().is_empty())
}

fn service_name() -> String {
    std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|name| !name.trim().is_empty())
        .unwrap_or_else(|| names::DEFAULT_SERVICE_NAME.to_owned())
}

/// A batch processor over the OTLP/gRPC exporter: spans are queued and sent from the SDK's own
/// thread, so a missing or slow collector costs a request nothing (a full queue drops spans).
/// The exporter reads the endpoint, timeout and headers from the standard `OTEL_*` variables.
fn build_provider() -> anyhow::Result<SdkTracerProvider> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()
        .map_err(|e| anyhow::anyhow!("building the OTLP span exporter: {e}"))?;
    // The builder reads the other OTEL_RESOURCE_ATTRIBUTES; our default name replaces the SDK's
    // `unknown_service`, and OTEL_SERVICE_NAME still wins.
    let resource = Resource::builder()
        .with_service_name(service_name())
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// The recorder configuration: explicit buckets for every `*_seconds` histogram.
///
/// # Errors
/// Never with the constant buckets; the builder's signature allows it.
pub fn prometheus_builder() -> Result<PrometheusBuilder, BuildError> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), DURATION_BUCKETS)
}

/// Installs the global Prometheus recorder, describes every metric (so each has HELP text) and
/// returns the handle `/metrics` renders.
///
/// # Errors
/// When a global recorder is already installed.
pub fn init_metrics() -> anyhow::Result<PrometheusHandle> {
    let handle = prometheus_builder()?.install_recorder()?;
    describe_metrics();
    Ok(handle)
}

/// HELP text for the use cases', the adapters' and the server's metrics. Descriptions go to the
/// installed global recorder, so call this after installing it.
pub fn describe_metrics() {
    use sandboxd_usecase::telemetry::metric;
    for &(name, help) in metric::DESCRIPTIONS {
        if name == metric::ACTIVE_COUNT {
            metrics::describe_gauge!(name, help);
        } else {
            metrics::describe_counter!(name, help);
        }
    }
    for &(name, help) in sandboxd_adapters::redis::names::DESCRIPTIONS
        .iter()
        .chain(sandboxd_adapters::docker::names::DESCRIPTIONS)
        .chain(names::DESCRIPTIONS)
    {
        metrics::describe_histogram!(name, help);
    }
    for &(name, help) in sandboxd_adapters::egress::names::DESCRIPTIONS {
        metrics::describe_counter!(name, help);
    }
}
