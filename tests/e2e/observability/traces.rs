//! Spans received by a real OTLP/gRPC receiver on loopback: parenting across the caller's
//! traceparent, and a dead collector that must cost nothing.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span as OtlpSpan;
use sandboxd_api::v1;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Code, Request};

use sandboxd_testkit::{AppConfig, TestApp, new_chat_id, spawn_app_with};

/// A minimal OTLP/gRPC collector: keeps every span it is sent.
#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<OtlpSpan>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            for scope in resource.scope_spans {
                spans.extend(scope.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Receiver {
    async fn start() -> (Self, SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let receiver = Self::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(receiver.clone()))
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = stopped.await;
                }),
        );
        (receiver, addr, stop)
    }

    async fn wait_for(&self, name: &str, trace_id: &[u8]) -> Vec<OtlpSpan> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let spans: Vec<OtlpSpan> = self
                .spans
                .lock()
                .unwrap()
                .iter()
                .filter(|span| span.trace_id == trace_id)
                .cloned()
                .collect();
            if spans.iter().any(|span| span.name == name) || Instant::now() > deadline {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn attribute(span: &OtlpSpan, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|value| value.value.as_ref())
        .map(|value| match value {
            AnyValue::StringValue(s) => s.clone(),
            AnyValue::IntValue(i) => i.to_string(),
            AnyValue::BoolValue(b) => b.to_string(),
            AnyValue::DoubleValue(d) => d.to_string(),
            other => format!("{other:?}"),
        })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

#[tokio::test]
async fn the_callers_traceparent_parents_the_server_span_and_the_use_case_span() {
    let (receiver, collector, stop_collector) = Receiver::start().await;
    let mut app = spawn_app_with(AppConfig {
        env: vec![
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(),
                format!("http://{collector}"),
            ),
            ("OTEL_SERVICE_NAME".to_owned(), "sandboxd-e2e".to_owned()),
            // Export each batch quickly so the test need not wait for the default 5 s.
            ("OTEL_BSP_SCHEDULE_DELAY".to_owned(), "200".to_owned()),
        ],
        ..AppConfig::default()
    })
    .await;

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let chat_id = new_chat_id();
    let volume = app.new_volume("traced");
    let mut request = Request::new(v1::CreateSandboxRequest {
        chat_id: chat_id.clone(),
        agent_id: "default".to_owned(),
        volume_host_path: volume.clone(),
    });
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-{caller_span}-01").parse().unwrap(),
    );
    let created = app
        .api
        .clone()
        .create_sandbox(request)
        .await
        .unwrap()
        .into_inner();
    let session = created.sandbox.unwrap();

    let spans = receiver
        .wait_for("usecase.create_sandbox", &unhex(trace_id))
        .await;
    let server = spans
        .iter()
        .find(|span| span.name == "grpc.request")
        .unwrap_or_else(|| panic!("no server span in {spans:#?}\n{}", app.log()));
    assert_eq!(hex(&server.parent_span_id), caller_span);
    assert_eq!(server.kind, 2, "SPAN_KIND_SERVER");
    assert_eq!(
        attribute(server, "rpc.method").as_deref(),
        Some("CreateSandbox")
    );
    assert_eq!(
        attribute(server, "rpc.grpc.status_code").as_deref(),
        Some("0")
    );
    let usecase = spans
        .iter()
        .find(|span| span.name == "usecase.create_sandbox")
        .unwrap_or_else(|| panic!("no use-case span in {spans:#?}"));
    assert_eq!(usecase.parent_span_id, server.span_id);
    for (key, value) in [
        ("chat.id", chat_id.as_str()),
        ("agent.id", "default"),
        ("volume.host_path", volume.as_str()),
        ("session.id", session.session_id.as_str()),
        ("container.id", session.container_id.as_str()),
        ("sandbox.result", "created"),
    ] {
        assert_eq!(
            attribute(usecase, key).as_deref(),
            Some(value),
            "{key} in {usecase:#?}"
        );
    }
    println!(
        "received spans: {:#?}",
        spans
            .iter()
            .map(|s| (s.name.clone(), hex(&s.span_id), hex(&s.parent_span_id)))
            .collect::<Vec<_>>()
    );

    app.sigterm();
    assert!(app.wait_for_exit(Duration::from_secs(10)).await.success());
    let _ = stop_collector.send(());
}

fn p50(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// p50 of 50 GetSandbox calls on each app, alternating call by call so that machine noise (other
/// tests, other processes) hits both series alike.
async fn fifty_interleaved_calls(first: &TestApp, second: &TestApp) -> (Duration, Duration) {
    let mut clients = [first.new_client().await, second.new_client().await];
    let mut samples = [Vec::with_capacity(50), Vec::with_capacity(50)];
    for _ in 0..50 {
        for (api, series) in clients.iter_mut().zip(samples.iter_mut()) {
            let started = Instant::now();
            let status = api
                .get_sandbox(v1::GetSandboxRequest {
                    chat_id: new_chat_id(),
                })
                .await
                .unwrap_err();
            assert_eq!(status.code(), Code::NotFound);
            series.push(started.elapsed());
        }
    }
    let [a, b] = samples;
    (p50(a), p50(b))
}

#[tokio::test]
async fn a_dead_collector_costs_requests_nothing_and_exit_stays_clean() {
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let plain = spawn_app_with(AppConfig::default()).await;
    let mut exporting = spawn_app_with(AppConfig {
        env: vec![
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(),
                format!("http://127.0.0.1:{closed_port}"),
            ),
            ("OTEL_BSP_SCHEDULE_DELAY".to_owned(), "100".to_owned()),
        ],
        ..AppConfig::default()
    })
    .await;
    // Warm both connections, then measure call by call alternately.
    fifty_interleaved_calls(&plain, &exporting).await;
    let (without, with) = fifty_interleaved_calls(&plain, &exporting).await;
    println!("p50 without a collector configured: {without:?}, with a dead one: {with:?}");
    // A collector that blocked requests would cost its connect timeout (seconds) per export;
    // the bound leaves room for scheduling noise on a loaded 2-core machine, not for that.
    assert!(
        with < without * 3 + Duration::from_millis(20),
        "p50 {with:?} with a dead collector vs {without:?} without"
    );

    let stopping = Instant::now();
    exporting.sigterm();
    let status = exporting.wait_for_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "{status:?}\n{}", exporting.log());
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "exit took {:?}",
        stopping.elapsed()
    );
}
