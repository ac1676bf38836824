//! One tower layer around the gRPC router that gives every SandboxService call its server span
//! (`grpc.request`, parent of the use-case span, child of a W3C `traceparent` sent by the
//! client) and its latency histogram sample (`method`, `code`).
//!
//! A layer rather than code in each handler: the handlers (and any added later) stay pure
//! translation, and the auth interceptor's UNAUTHENTICATED is measured like any other outcome.
//! Health and reflection pass through untouched: probes every few seconds would drown the
//! traces and say nothing about the service.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use http::HeaderMap;
use opentelemetry::propagation::Extractor;
use tonic::Code;
use tracing::Instrument as _;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::telemetry::names;

/// The RPCs of `sandbox.v1.SandboxService`, the `method` label values; any other method name is
/// labelled `unknown` so a client cannot grow the label set. A test holds this list equal to the
/// service descriptor, so an RPC added to the proto fails it until it is listed here.
const METHODS: &[&str] = &[
    "CreateSandbox",
    "GetSandbox",
    "ListSandboxes",
    "ExtendSandbox",
    "DeleteSandbox",
    "CleanupExpiredSandboxes",
    "ReconcileSandboxes",
    "PauseSandbox",
    "ResumeSandbox",
    "TouchSandbox",
    "WatchSandboxes",
    "ListNodes",
    "DrainNode",
];

#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RpcTelemetryLayer;

impl<S> tower::Layer<S> for RpcTelemetryLayer {
    type Service = RpcTelemetry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcTelemetry { inner }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct RpcTelemetry<S> {
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, RB> tower::Service<http::Request<B>> for RpcTelemetry<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let Some(method) = sandbox_method(request.uri().path()) else {
            return Box::pin(self.inner.call(request));
        };
        let span = request_span(method);
        let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.extract(&HeaderExtractor(request.headers()))
        });
        // Without a traceparent the extracted context is empty and the span starts a new trace;
        // without the OpenTelemetry layer (no exporter) setting a parent is a no-op error.
        let _ = span.set_parent(parent);

        let started = Instant::now();
        let response = {
            // The handler future is created inside the span too (interceptors run here).
            let _entered = span.enter();
            self.inner.call(request)
        };
        let recorded_span = span.clone();
        Box::pin(
            async move {
                let outcome = response.await;
                let code = match &outcome {
                    Ok(response) => status_code(response.headers()),
                    Err(_) => Code::Unknown,
                };
                record(&recorded_span, method, code, started);
                outcome
            }
            .instrument(span),
        )
    }
}

/// The server span of one call, with the OpenTelemetry RPC attributes.
fn request_span(method: &'static str) -> tracing::Span {
    tracing::info_span!(
        names::SPAN_GRPC_REQUEST,
        rpc.system = "grpc",
        rpc.service = sandboxd_api::SERVICE_NAME,
        rpc.method = method,
        rpc.grpc.status_code = Empty,
        otel.kind = "server",
        otel.status_code = Empty,
    )
}

/// The method name of a SandboxService path (`/sandbox.v1.SandboxService/CreateSandbox`), or
/// `None` for other services.
fn sandbox_method(path: &str) -> Option<&'static str> {
    let method = path
        .strip_prefix('/')?
        .strip_prefix(sandboxd_api::SERVICE_NAME)?
        .strip_prefix('/')?;
    Some(
        METHODS
            .iter()
            .copied()
            .find(|known| *known == method)
            .unwrap_or(names::METHOD_UNKNOWN),
    )
}

/// A unary error is a trailers-only response with `grpc-status` in the headers; a success
/// sends its `OK` in the trailers, which this layer does not wait for.
fn status_code(headers: &HeaderMap) -> Code {
    headers
        .get("grpc-status")
        .map_or(Code::Ok, |value| Code::from_bytes(value.as_bytes()))
}

fn record(span: &tracing::Span, method: &'static str, code: Code, started: Instant) {
    span.record(names::RPC_GRPC_STATUS_CODE, code as i32);
    if is_server_error(code) {
        span.record(names::OTEL_STATUS_CODE, "ERROR");
    }
    metrics::histogram!(
        names::GRPC_REQUEST_DURATION_SECONDS,
        names::LABEL_METHOD => method,
        names::LABEL_CODE => code_name(code),
    )
    .record(started.elapsed().as_secs_f64());
}

/// The server-side error codes of the OpenTelemetry gRPC conventions; the others are the
/// client's doing (invalid argument, not found, ...) and leave the span status unset.
const fn is_server_error(code: Code) -> bool {
    matches!(
        code,
        Code::Unknown
            | Code::DeadlineExceeded
            | Code::Unimplemented
            | Code::Internal
            | Code::Unavailable
            | Code::DataLoss
    )
}

/// The canonical upper-case name of a status code, as gRPC documents and grpcurl prints them.
#[must_use]
pub(crate) const fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Reads propagation headers (`traceparent`, `tracestate`) from the request's gRPC metadata.
struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sandbox_service_paths_are_measured_and_unknown_methods_are_bounded() {
        assert_eq!(
            sandbox_method("/sandbox.v1.SandboxService/CreateSandbox"),
            Some("CreateSandbox")
        );
        assert_eq!(
            sandbox_method("/sandbox.v1.SandboxService/DropTables"),
            Some("unknown")
        );
        assert_eq!(sandbox_method("/grpc.health.v1.Health/Check"), None);
        assert_eq!(sandbox_method("/sandbox.v1.SandboxServiceX/Get"), None);
    }

    /// The RPC names of the service as the API crate's descriptor set declares them.
    fn descriptor_methods() -> Vec<String> {
        use prost::Message as _;
        let set = prost_types::FileDescriptorSet::decode(sandboxd_api::FILE_DESCRIPTOR_SET)
            .unwrap_or_default();
        set.file
            .iter()
            .flat_map(|file| {
                file.service
                    .iter()
                    .filter(|service| {
                        format!("{}.{}", file.package(), service.name())
                            == sandboxd_api::SERVICE_NAME
                    })
                    .flat_map(|service| service.method.iter().map(|m| m.name().to_owned()))
            })
            .collect()
    }

    #[test]
    fn the_measured_rpcs_are_exactly_those_of_the_service_descriptor() {
        let mut declared = descriptor_methods();
        declared.sort();
        let mut measured: Vec<String> = METHODS.iter().map(|m| (*m).to_owned()).collect();
        measured.sort();
        assert!(!declared.is_empty(), "the descriptor set names the service");
        assert_eq!(
            measured,
            declared,
            "METHODS must list every RPC of {}",
            sandboxd_api::SERVICE_NAME
        );
    }

    #[test]
    fn the_request_span_declares_the_attributes_its_constants_name() {
        let subscriber = tracing_subscriber::registry();
        tracing::subscriber::with_default(subscriber, || {
            let span = request_span("CreateSandbox");
            let metadata = span
                .metadata()
                .unwrap_or_else(|| unreachable!("subscriber set"));
            assert_eq!(metadata.name(), names::SPAN_GRPC_REQUEST);
            for field in [
                names::RPC_SYSTEM,
                names::RPC_SERVICE,
                names::RPC_METHOD,
                names::RPC_GRPC_STATUS_CODE,
                names::OTEL_KIND,
                names::OTEL_STATUS_CODE,
            ] {
                assert!(metadata.fields().field(field).is_some(), "{field}");
            }
        });
    }

    #[test]
    fn status_comes_from_a_trailers_only_response() {
        let mut headers = HeaderMap::new();
        assert_eq!(status_code(&headers), Code::Ok);
        headers.insert("grpc-status", http::HeaderValue::from_static("16"));
        assert_eq!(status_code(&headers), Code::Unauthenticated);
        assert_eq!(code_name(Code::AlreadyExists), "ALREADY_EXISTS");
    }
}
