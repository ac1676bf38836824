//! `/metrics` read with a real Prometheus text parser (and `promtool check metrics` when
//! installed), and the health endpoints.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use sandboxd_api::v1;
use tonic::Code;

use sandboxd_testkit::{
    AppConfig, SandboxRequests, TestApp, http_get, new_chat_id, spawn_app, spawn_app_with,
};

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

#[tokio::test]
async fn metrics_count_a_scripted_sequence_exactly() {
    // Sessions start with the long default TTL, so a slow machine cannot expire one early; the
    // expiry step shortens A and B with ExtendSandbox instead of waiting out a short TTL.
    let app = spawn_app().await;
    let (chat_a, chat_b, chat_c, chat_d) =
        (new_chat_id(), new_chat_id(), new_chat_id(), new_chat_id());
    let (vol1, vol2) = (app.new_volume("one"), app.new_volume("two"));

    // created, then at once (while A is live) reused and one conflict per reason.
    let first = app.create(&chat_a, "default", &vol1).await.unwrap();
    assert_eq!(first.result(), v1::CreateSandboxResult::Created);
    let reused = app.create(&chat_a, "default", &vol1).await.unwrap();
    assert_eq!(reused.result(), v1::CreateSandboxResult::Reused);
    for (agent, volume) in [("other", &vol1), ("default", &vol2), ("other", &vol2)] {
        let status = app.create(&chat_a, agent, volume).await.unwrap_err();
        assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    }
    // Two more created; C deleted, D never existed.
    app.create(&chat_b, "default", &vol1).await.unwrap();
    app.create(&chat_c, "default", &vol2).await.unwrap();
    for (chat, expected) in [
        (&chat_c, v1::DeleteSandboxResult::Deleted),
        (&chat_d, v1::DeleteSandboxResult::NotFound),
    ] {
        let deleted = app.delete(chat).await.unwrap();
        assert_eq!(deleted.result(), expected);
    }

    // Once A's and B's sessions expired: A is replaced (live again), B is cleaned, and a stale
    // expiry-index entry pointing at A's new, live session is skipped.
    for chat in [&chat_a, &chat_b] {
        app.extend(chat, Some(Duration::from_millis(100)))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let replaced = app.create(&chat_a, "default", &vol1).await.unwrap();
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
    let report = app.cleanup().await.unwrap();
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
