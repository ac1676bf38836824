//! Observability and access of a real `sandboxd` process: `/metrics` read with a real Prometheus
//! text parser (and `promtool check metrics` when installed), spans received by a real OTLP/gRPC
//! receiver on loopback, JSON log lines, and bearer-token authentication of all six RPCs.

use std::collections::{BTreeMap, HashMap};
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
use sandboxd_api::v1::sandbox_service_client::SandboxServiceClient;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Channel;
use tonic::{Code, Request};

use sandboxd_testkit::{AppConfig, TestApp, http_get, new_chat_id, spawn_app, spawn_app_with};

// ---- /metrics ------------------------------------------------------------------------------

/// The official Python client's text-format parser (`python3-prometheus-client`, installed by
/// scripts/test): samples as JSON `[name, labels, value]` plus each family's HELP text.
/// (`prometheus-parse` 0.2 was tried first: it splits a quoted label value at its comma, and
/// our conflict reason `agent_id,volume_host_path` is one.)
const PARSER: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
samples, docs = [], {}
for family in text_string_to_metric_families(sys.stdin.read()):
    docs[family.name] = family.documentation
    for sample in family.samples:
        samples.append([sample.name, sample.labels, sample.value])
json.dump({"samples": samples, "docs": docs}, sys.stdout)
"#;

/// One scrape, parsed by a real Prometheus text parser, plus the raw text (for promtool).
struct Scrape {
    text: String,
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
    docs: HashMap<String, String>,
}

impl Scrape {
    async fn take(app: &TestApp) -> Self {
        use std::io::Write as _;
        let (status, text) = http_get(&app.http_addr.to_string(), "/metrics")
            .await
            .unwrap();
        assert_eq!(status, 200, "{text}");
        // The system interpreter: Debian's package installs the parser for it.
        let mut parser = std::process::Command::new("/usr/bin/python3")
            .args(["-c", PARSER])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("/usr/bin/python3 (scripts/test installs python3-prometheus-client)");
        parser
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let output = parser.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "the Prometheus parser rejected the scrape: {}\n{text}",
            String::from_utf8_lossy(&output.stderr)
        );
        #[derive(serde::Deserialize)]
        struct Parsed {
            samples: Vec<(String, BTreeMap<String, String>, f64)>,
            docs: HashMap<String, String>,
        }
        let parsed: Parsed = serde_json::from_slice(&output.stdout).unwrap();
        Self {
            text,
            samples: parsed.samples,
            docs: parsed.docs,
        }
    }

    /// Every sample named `sample` as (sorted labels, value).
    fn series(&self, sample: &str) -> BTreeMap<Vec<(String, String)>, f64> {
        self.samples
            .iter()
            .filter(|(name, _, _)| name == sample)
            .map(|(_, labels, value)| {
                let labels = labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                (labels, *value)
            })
            .collect()
    }

    /// The observation count of the histogram `metric` with exactly `labels`.
    fn histogram_count(&self, metric: &str, labels: &[(&str, &str)]) -> f64 {
        let wanted = sorted(labels);
        self.series(&format!("{metric}_count"))
            .get(&wanted)
            .copied()
            .unwrap_or(0.0)
    }
}

fn sorted(labels: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut labels: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    labels.sort();
    labels
}

fn series(entries: &[(&[(&str, &str)], f64)]) -> BTreeMap<Vec<(String, String)>, f64> {
    entries
        .iter()
        .map(|(labels, value)| (sorted(labels), *value))
        .collect()
}

async fn create(
    client: &mut SandboxServiceClient<Channel>,
    chat_id: &str,
    agent_id: &str,
    volume: &str,
) -> Result<v1::CreateSandboxResponse, tonic::Status> {
    client
        .create_sandbox(v1::CreateSandboxRequest {
            chat_id: chat_id.to_owned(),
            agent_id: agent_id.to_owned(),
            volume_host_path: volume.to_owned(),
        })
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn metrics_count_a_scripted_sequence_exactly() {
    // Sessions start with the long default TTL, so a slow machine cannot expire one early; the
    // expiry step shortens A and B with ExtendSandbox instead of waiting out a short TTL.
    let app = spawn_app().await;
    let mut api = app.api.clone();
    let (chat_a, chat_b, chat_c, chat_d) =
        (new_chat_id(), new_chat_id(), new_chat_id(), new_chat_id());
    let (vol1, vol2) = (app.new_volume("one"), app.new_volume("two"));

    // created, then at once (while A is live) reused and one conflict per reason.
    let first = create(&mut api, &chat_a, "default", &vol1).await.unwrap();
    assert_eq!(first.result(), v1::CreateSandboxResult::Created);
    let reused = create(&mut api, &chat_a, "default", &vol1).await.unwrap();
    assert_eq!(reused.result(), v1::CreateSandboxResult::Reused);
    for (agent, volume) in [("other", &vol1), ("default", &vol2), ("other", &vol2)] {
        let status = create(&mut api, &chat_a, agent, volume).await.unwrap_err();
        assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    }
    // Two more created; C deleted, D never existed.
    create(&mut api, &chat_b, "default", &vol1).await.unwrap();
    create(&mut api, &chat_c, "default", &vol2).await.unwrap();
    for (chat, expected) in [
        (&chat_c, v1::DeleteSandboxResult::Deleted),
        (&chat_d, v1::DeleteSandboxResult::NotFound),
    ] {
        let deleted = api
            .delete_sandbox(v1::DeleteSandboxRequest {
                chat_id: chat.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(deleted.result(), expected);
    }

    // Once A's and B's sessions expired: A is replaced (live again), B is cleaned, and a stale
    // expiry-index entry pointing at A's new, live session is skipped.
    for chat in [&chat_a, &chat_b] {
        api.extend_sandbox(v1::ExtendSandboxRequest {
            chat_id: chat.clone(),
            ttl: Some(prost_types::Duration {
                seconds: 0,
                nanos: 100_000_000,
            }),
        })
        .await
        .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let replaced = create(&mut api, &chat_a, "default", &vol1).await.unwrap();
    assert_eq!(replaced.result(), v1::CreateSandboxResult::Replaced);
    let live_session = replaced.sandbox.unwrap().session_id;
    let mut redis = app.redis_connection().await;
    let _: i64 = redis::cmd("ZADD")
        .arg(app.key("expiry"))
        .arg(1)
        .arg(&live_session)
        .query_async(&mut redis)
        .await
        .unwrap();
    let report = api
        .cleanup_expired_sandboxes(v1::CleanupExpiredSandboxesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(report.cleaned.len(), 1);
    assert_eq!(report.cleaned[0].chat_id, chat_b);
    assert_eq!(report.skipped_count, 1, "{report:?}");
    assert_eq!(report.error_count, 0);

    let scrape = Scrape::take(&app).await;
    assert_eq!(
        scrape.series("sandbox_create_total"),
        series(&[
            (&[("result", "created")], 3.0),
            (&[("result", "reused")], 1.0),
            (&[("result", "replaced")], 1.0),
            (&[("result", "conflict"), ("reason", "agent_id")], 1.0),
            (
                &[("result", "conflict"), ("reason", "volume_host_path")],
                1.0
            ),
            (
                &[
                    ("result", "conflict"),
                    ("reason", "agent_id,volume_host_path")
                ],
                1.0
            ),
        ]),
        "{}",
        scrape.text
    );
    assert_eq!(
        scrape.series("sandbox_delete_total"),
        series(&[
            (&[("result", "deleted")], 1.0),
            (&[("result", "not_found")], 1.0)
        ])
    );
    assert_eq!(
        scrape.series("sandbox_cleanup_total"),
        series(&[(&[("result", "cleaned")], 1.0)])
    );
    assert!(scrape.series("sandbox_cleanup_error_total").is_empty());
    assert_eq!(
        scrape.series("sandbox_extend_total"),
        series(&[(&[("result", "extended")], 2.0)])
    );
    // Live sessions: A (replaced). B was cleaned, C deleted.
    assert_eq!(scrape.series("sandbox_active_count"), series(&[(&[], 1.0)]));

    // RPC latency: one observation per call made, by method and code.
    let rpc = "sandbox_grpc_request_duration_seconds";
    for (method, code, calls) in [
        ("CreateSandbox", "OK", 5.0),
        ("CreateSandbox", "ALREADY_EXISTS", 3.0),
        ("DeleteSandbox", "OK", 2.0),
        ("ExtendSandbox", "OK", 2.0),
        ("CleanupExpiredSandboxes", "OK", 1.0),
    ] {
        assert_eq!(
            scrape.histogram_count(rpc, &[("method", method), ("code", code)]),
            calls,
            "{method} {code}\n{}",
            scrape.text
        );
    }
    // Runtime: 4 containers created (A, B, C, A again), C and A's first one removed by
    // delete/replace, B stopped by cleanup.
    let runtime = "sandbox_runtime_duration_seconds";
    assert_eq!(
        scrape.histogram_count(runtime, &[("operation", "create"), ("result", "ok")]),
        4.0,
        "{}",
        scrape.text
    );
    let removals: f64 = ["stop", "delete"]
        .iter()
        .map(|op| scrape.histogram_count(runtime, &[("operation", op), ("result", "ok")]))
        .sum();
    assert_eq!(removals, 3.0, "{}", scrape.text);
    // Locks: a create that found a live session (reused, conflict) answers from a lock-free read;
    // the 4 other creates, both deletes, both extends and both listed sessions of the cleanup
    // took a lease.
    assert_eq!(
        scrape.histogram_count("sandbox_lock_wait_seconds", &[("result", "acquired")]),
        4.0 + 2.0 + 2.0 + 2.0,
        "{}",
        scrape.text
    );
    assert!(
        scrape.histogram_count(
            "sandbox_redis_command_duration_seconds",
            &[("command", "save")]
        ) >= 4.0
    );

    // HELP on every metric family, and the exposition passes promtool when it is installed.
    let families: std::collections::BTreeSet<&str> = scrape
        .text
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_whitespace().next())
        .collect();
    assert!(families.len() >= 8, "{families:?}");
    for family in families {
        // The Python parser names a counter family without its `_total` suffix.
        let help = scrape
            .docs
            .get(family)
            .or_else(|| scrape.docs.get(family.trim_end_matches("_total")));
        assert!(
            help.is_some_and(|help| !help.is_empty()),
            "no HELP for {family}: {:?}",
            scrape.docs
        );
    }
    promtool_check(&scrape.text);
    println!("{}", scrape.text);
}

/// `promtool check metrics` on the exposition (skipped with a note when promtool is missing;
/// scripts/test installs it).
fn promtool_check(text: &str) {
    use std::io::Write as _;
    let child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        eprintln!("promtool not installed: skipping `promtool check metrics`");
        return;
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // `sandbox_active_count` is the design's (and the dashboards') name for the gauge; promtool's
    // naming lint reserves `_count` for histograms. That one finding is accepted, nothing else
    // (a parse error reads "error while linting", and fails the test).
    let problems: Vec<&str> = report
        .lines()
        .filter(|line| !line.trim().is_empty())
        .filter(|line| {
            !(line.starts_with("sandbox_active_count ") && line.contains("\"_count\" suffix"))
        })
        .collect();
    assert!(
        problems.is_empty(),
        "promtool check metrics ({}): {problems:#?}",
        output.status
    );
}

#[tokio::test]
async fn healthz_and_readyz_answer() {
    let mut app = spawn_app_with(AppConfig::default()).await;
    let addr = app.http_addr.to_string();
    assert_eq!(http_get(&addr, "/healthz").await.unwrap().0, 200);
    assert_eq!(http_get(&addr, "/readyz").await.unwrap().0, 200);
    app.sigterm();
    assert!(app.wait_for_exit(Duration::from_secs(10)).await.success());
}

// ---- traces --------------------------------------------------------------------------------

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

// ---- logs ----------------------------------------------------------------------------------

#[tokio::test]
async fn json_logs_are_one_object_per_line_with_the_outcome_events() {
    let secret_dir = tempfile::tempdir().unwrap();
    let token = "tok-3f9a1c77e2b54d0c9aa1";
    let token_file = secret_dir.path().join("token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let app = spawn_app_with(AppConfig {
        extra_toml: format!(
            "log_format = \"json\"\nlog_spans = true\nauth_token_file = {}\n",
            serde_json::to_string(token_file.to_str().unwrap()).unwrap()
        ),
        env: vec![("RUST_LOG".to_owned(), "debug".to_owned())],
        ..AppConfig::default()
    })
    .await;
    let mut api = app.api.clone();
    let chat_id = new_chat_id();
    let volume = app.new_volume("logged");
    let authorized = |message| {
        let mut request = Request::new(message);
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        request
    };
    let request = |agent: &str| v1::CreateSandboxRequest {
        chat_id: chat_id.clone(),
        agent_id: agent.to_owned(),
        volume_host_path: volume.clone(),
    };
    api.create_sandbox(authorized(request("default")))
        .await
        .unwrap();
    api.create_sandbox(authorized(request("default")))
        .await
        .unwrap();
    let conflict = api
        .create_sandbox(authorized(request("other")))
        .await
        .unwrap_err();
    assert_eq!(conflict.code(), Code::AlreadyExists);
    // Give the last lines time to be written.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let log = app.log();
    let mut events: HashMap<String, serde_json::Value> = HashMap::new();
    for line in log.lines().filter(|line| !line.trim().is_empty()) {
        let object: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(object.is_object(), "{line}");
        if let Some(message) = object.get("message").and_then(|m| m.as_str()) {
            events.insert(message.to_owned(), object.clone());
        }
    }
    let created = &events["sandbox_created"];
    assert_eq!(created["chat_id"], chat_id.as_str(), "{created}");
    assert!(
        created["session_id"]
            .as_str()
            .is_some_and(|s| !s.is_empty()),
        "{created}"
    );
    assert!(
        created["container_id"]
            .as_str()
            .is_some_and(|s| !s.is_empty()),
        "{created}"
    );
    // With log_spans the line names the span it happened in.
    assert!(created["span"]["name"].is_string(), "{created}");
    let reused = &events["sandbox_reused"];
    assert_eq!(reused["chat_id"], chat_id.as_str(), "{reused}");
    let conflict = &events["sandbox_conflict"];
    assert_eq!(conflict["chat_id"], chat_id.as_str(), "{conflict}");
    assert!(
        conflict.to_string().contains("agent_id"),
        "the conflict names its reason: {conflict}"
    );
    assert!(!log.contains(token), "the auth token was logged");
}

#[tokio::test]
async fn by_default_log_lines_carry_the_event_fields_without_span_fields() {
    let app = spawn_app_with(AppConfig::default()).await;
    let mut api = app.api.clone();
    let chat_id = new_chat_id();
    let volume = app.new_volume("plain-log");
    api.create_sandbox(v1::CreateSandboxRequest {
        chat_id: chat_id.clone(),
        agent_id: "default".to_owned(),
        volume_host_path: volume,
    })
    .await
    .unwrap();

    // The line is written by the time the call returns, but read back by a pipe reader thread.
    let deadline = Instant::now() + Duration::from_secs(10);
    let created = loop {
        let log = app.log();
        if let Some(line) = log.lines().find(|line| line.contains("sandbox_created")) {
            break line.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no sandbox_created line in:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(created.contains(&format!("chat_id={chat_id}")), "{created}");
    assert!(created.contains("session_id="), "{created}");
    assert!(created.contains("container_id="), "{created}");
    // The spans' fields (RPC, use case) stay out of the line: they go to traces.
    assert!(!created.contains("grpc.request{"), "{created}");
    assert!(!created.contains("usecase.create_sandbox{"), "{created}");
}

// ---- authentication ------------------------------------------------------------------------

/// Calls all six RPCs with `authorization` set to `header` (or none) and returns their codes.
async fn six_rpcs(
    api: &mut SandboxServiceClient<Channel>,
    header: Option<&str>,
    chat_id: &str,
    volume: &str,
) -> Vec<(&'static str, Code)> {
    fn with<T>(message: T, header: Option<&str>) -> Request<T> {
        let mut request = Request::new(message);
        if let Some(header) = header {
            request
                .metadata_mut()
                .insert("authorization", header.parse().unwrap());
        }
        request
    }
    fn code<T>(outcome: Result<T, tonic::Status>) -> Code {
        outcome.map_or_else(|status| status.code(), |_| Code::Ok)
    }
    let chat = chat_id.to_owned();
    vec![
        (
            "CreateSandbox",
            code(
                api.create_sandbox(with(
                    v1::CreateSandboxRequest {
                        chat_id: chat.clone(),
                        agent_id: "default".to_owned(),
                        volume_host_path: volume.to_owned(),
                    },
                    header,
                ))
                .await,
            ),
        ),
        (
            "GetSandbox",
            code(
                api.get_sandbox(with(
                    v1::GetSandboxRequest {
                        chat_id: chat.clone(),
                    },
                    header,
                ))
                .await,
            ),
        ),
        (
            "ListSandboxes",
            code(
                api.list_sandboxes(with(v1::ListSandboxesRequest::default(), header))
                    .await,
            ),
        ),
        (
            "ExtendSandbox",
            code(
                api.extend_sandbox(with(
                    v1::ExtendSandboxRequest {
                        chat_id: chat.clone(),
                        ttl: None,
                    },
                    header,
                ))
                .await,
            ),
        ),
        (
            "CleanupExpiredSandboxes",
            code(
                api.cleanup_expired_sandboxes(with(v1::CleanupExpiredSandboxesRequest {}, header))
                    .await,
            ),
        ),
        (
            "DeleteSandbox",
            code(
                api.delete_sandbox(with(v1::DeleteSandboxRequest { chat_id: chat }, header))
                    .await,
            ),
        ),
    ]
}

#[tokio::test]
async fn every_rpc_needs_the_bearer_token_while_health_and_reflection_stay_open() {
    let secret_dir = tempfile::tempdir().unwrap();
    let token = "s3cret-token-0123456789";
    let token_file = secret_dir.path().join("token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    // The harness reaching SERVING already shows health answers without a token.
    let app = spawn_app_with(AppConfig {
        extra_toml: format!(
            "auth_token_file = {}\n",
            serde_json::to_string(token_file.to_str().unwrap()).unwrap()
        ),
        ..AppConfig::default()
    })
    .await;
    let mut api = app.api.clone();
    let chat_id = new_chat_id();
    let volume = app.new_volume("guarded");
    let same_length_wrong = format!("Bearer {}", "x".repeat(token.len()));
    let shorter = format!("Bearer {}", &token[..token.len() - 1]);
    let longer = format!("Bearer {token}0");
    let keys_before = app.redis_keys().await;
    for header in [
        None,
        Some(same_length_wrong.as_str()),
        Some(shorter.as_str()),
        Some(longer.as_str()),
        Some(token),
    ] {
        for (rpc, code) in six_rpcs(&mut api, header, &chat_id, &volume).await {
            assert_eq!(code, Code::Unauthenticated, "{rpc} with {header:?}");
        }
    }
    // Nothing changed: no session keys, no container.
    assert_eq!(app.redis_keys().await, keys_before);
    assert!(app.container_ids().await.is_empty());

    let right = format!("Bearer {token}");
    let codes = six_rpcs(&mut api, Some(&right), &chat_id, &volume).await;
    assert!(codes.iter().all(|(_, code)| *code == Code::Ok), "{codes:?}");

    // Reflection stays open.
    let mut reflection =
        tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient::new(
            Channel::from_shared(app.grpc_url())
                .unwrap()
                .connect()
                .await
                .unwrap(),
        );
    let request = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            tonic_reflection::pb::v1::server_reflection_request::MessageRequest::ListServices(
                String::new(),
            ),
        ),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let listed = responses.message().await.unwrap().unwrap();
    assert!(format!("{listed:?}").contains(sandboxd_api::SERVICE_NAME));
    assert!(!app.log().contains(token), "the token was logged");
}
