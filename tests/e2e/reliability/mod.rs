//! Reliability end to end (issue 8): concurrency on one chat and across two sandboxd processes,
//! SIGKILL during creates, Redis and Docker outages, lease expiry during a slow create, hostile
//! input, Redis losing every session while the sandboxes run (adoption), a minute of chaos
//! and a bounded soak of create/delete cycles (`--ignored --exact reliability::chaos::...` and
//! `reliability::soak::...`, both run by scripts/test-extra).
//!
//! The invariant checked after each run: the containers carrying the test's label are exactly
//! the containers of the sessions in Redis (same count as `sandbox_active_count` after a final
//! reconcile pass), all running, and no chat has more than one.
//!
//! This module holds the helpers the reliability tests share; each submodule tests one kind of
//! trouble.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sandboxd_api::v1::sandbox_service_client::SandboxServiceClient;
use sandboxd_testkit::{AppConfig, SandboxRequests, TestApp, metric_samples};
use tokio::task::JoinHandle;
use tonic::Code;
use tonic::transport::Channel;

mod adoption;
mod chaos;
mod concurrency;
mod crashes;
mod hostile;
mod outages;
mod redis_ha;
mod soak;

pub(super) type Api = SandboxServiceClient<Channel>;

/// A server for trouble tests: 2 s leases and readiness timeout, a reconcile grace (5 s) just
/// above them so an interrupted create is repaired within the test, and the reconciler running
/// every `reconcile_interval`.
pub(super) fn repairing_config(reconcile_interval: &str) -> AppConfig {
    AppConfig {
        lock_ttl: "2s".to_owned(),
        profile_extra: "ready_timeout = \"2s\"".to_owned(),
        extra_toml: format!(
            "reconcile_grace = \"5s\"\nreconcile_interval = \"{reconcile_interval}\"\n"
        ),
        ..AppConfig::default()
    }
}

/// One CreateSandbox during an outage: UNAVAILABLE, and fast (within `bound`), not a hang.
pub(super) async fn create_is_unavailable_within(
    app: &TestApp,
    chat: &str,
    volume: &str,
    bound: Duration,
) {
    let started = Instant::now();
    let status = app.create(chat, "default", volume).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        started.elapsed() < bound,
        "took {:?}, bound {bound:?}",
        started.elapsed()
    );
}

/// `sandbox_active_count` as `/metrics` shows it.
async fn active_gauge(http_addr: &str) -> Option<f64> {
    metric_samples(http_addr, "sandbox_active_count")
        .await?
        .first()
        .map(|(_, value)| *value)
}

/// `sandbox_reconcile_total` by `result` (adopted, stray_removed, container_removed,
/// session_removed) as `/metrics` shows it; empty when the process cannot be scraped.
pub(super) async fn repairs(http_addr: &str) -> BTreeMap<String, f64> {
    metric_samples(http_addr, "sandbox_reconcile_total")
        .await
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(labels, value)| {
            let result = labels.split_once("result=\"")?.1.split_once('"')?.0;
            Some((result.to_owned(), value))
        })
        .collect()
}

/// Live (running) containers of the test, by chat label.
async fn running_by_chat(app: &TestApp) -> BTreeMap<String, Vec<String>> {
    let mut by_chat: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for container in app.containers().await {
        if container.state.as_ref().map(ToString::to_string).as_deref() != Some("running") {
            continue;
        }
        let chat = app.label(&container, "chat_id").unwrap_or_default();
        by_chat
            .entry(chat)
            .or_default()
            .push(container.id.unwrap_or_default());
    }
    by_chat
}

/// The invariant counts after a run: (containers with the label, sessions in Redis, session
/// keys in Redis, the gauge). Panics when they disagree or a chat has two containers.
pub(super) async fn assert_invariant(app: &TestApp, http_addr: &str) -> (usize, usize, f64) {
    let sessions = app.all_sandboxes().await.expect("list");
    let containers = app.containers().await;
    let container_ids: BTreeSet<String> = containers.iter().filter_map(|c| c.id.clone()).collect();
    let session_containers: BTreeSet<String> =
        sessions.iter().map(|s| s.container_id.clone()).collect();
    let session_keys = app
        .redis_keys()
        .await
        .into_iter()
        .filter(|key| key.starts_with(&app.key("session:")))
        .count();
    let not_running: Vec<_> = containers
        .iter()
        .filter(|c| c.state.as_ref().map(ToString::to_string).as_deref() != Some("running"))
        .map(|c| (c.id.clone(), c.state))
        .collect();
    assert!(
        not_running.is_empty(),
        "containers not running: {not_running:?}"
    );
    assert_eq!(
        container_ids, session_containers,
        "containers with the label != sessions' containers"
    );
    assert_eq!(
        session_keys,
        sessions.len(),
        "session hashes != listed sessions"
    );
    let chats: BTreeSet<&str> = sessions.iter().map(|s| s.chat_id.as_str()).collect();
    assert_eq!(chats.len(), sessions.len(), "a chat has two sessions");
    for (chat, ids) in running_by_chat(app).await {
        assert!(ids.len() <= 1, "chat {chat} has containers {ids:?}");
    }
    let gauge = active_gauge(http_addr)
        .await
        .expect("sandbox_active_count on /metrics");
    #[allow(clippy::cast_precision_loss)]
    let expected = sessions.len() as f64;
    assert!(
        (gauge - expected).abs() < f64::EPSILON,
        "sandbox_active_count {gauge} != {expected} sessions"
    );
    (container_ids.len(), sessions.len(), gauge)
}

/// Samples the engine's running containers of the test (by label) every `interval` in the
/// background: counts per chat in each sample, so a chat that ever had two running containers at
/// one sampled instant is caught.
pub(super) struct DoubleSampler {
    stop: Arc<AtomicBool>,
    task: JoinHandle<Sampled>,
}

/// What a [`DoubleSampler`] saw.
#[derive(Debug, Default)]
pub(super) struct Sampled {
    pub samples: usize,
    /// The most running containers one chat had in one sample.
    pub max_per_chat: usize,
    /// Every sample where a chat had more than one: when (since the start), the chat, the ids.
    pub doubles: Vec<String>,
}

impl Sampled {
    pub(crate) fn assert_no_doubles(&self) {
        assert!(
            self.doubles.is_empty(),
            "chats seen with two running containers: {:?}",
            self.doubles
        );
    }
}

impl DoubleSampler {
    pub(crate) fn start(app: &TestApp, interval: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let docker = app.docker.clone();
        let filter = format!("{}.managed-by=sandboxd", app.prefix);
        let chat_label = format!("{}.chat_id", app.prefix);
        let flag = Arc::clone(&stop);
        let started = Instant::now();
        let task = tokio::spawn(async move {
            let mut sampled = Sampled::default();
            while !flag.load(Ordering::SeqCst) {
                let filters = HashMap::from([
                    ("label", vec![filter.clone()]),
                    ("status", vec!["running".to_owned()]),
                ]);
                let options = bollard::query_parameters::ListContainersOptionsBuilder::default()
                    .filters(&filters)
                    .build();
                if let Ok(listed) = docker.list_containers(Some(options)).await {
                    sampled.samples += 1;
                    let mut per_chat: HashMap<String, Vec<String>> = HashMap::new();
                    for container in listed {
                        let chat = container
                            .labels
                            .and_then(|labels| labels.get(&chat_label).cloned())
                            .unwrap_or_default();
                        per_chat
                            .entry(chat)
                            .or_default()
                            .push(container.id.unwrap_or_default());
                    }
                    let at = started.elapsed();
                    for (chat, ids) in per_chat {
                        sampled.max_per_chat = sampled.max_per_chat.max(ids.len());
                        if ids.len() > 1 {
                            sampled.doubles.push(format!("{at:.1?} {chat}: {ids:?}"));
                        }
                    }
                }
                tokio::time::sleep(interval).await;
            }
            sampled
        });
        Self { stop, task }
    }

    /// Stops sampling and returns what was seen (the caller asserts, after printing figures).
    pub(crate) async fn finish(self) -> Sampled {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.expect("sampler")
    }
}

/// Counts `event` lines of `loop_name` in a text or JSON log.
pub(super) fn loop_events(log: &str, loop_name: &str, event: &str) -> usize {
    let spellings = [
        format!("loop=\"{loop_name}\""),
        format!("loop={loop_name}"),
        format!("\"loop\":\"{loop_name}\""),
    ];
    log.lines()
        .filter(|line| line.contains(event))
        .filter(|line| spellings.iter().any(|s| line.contains(s.as_str())))
        .count()
}
