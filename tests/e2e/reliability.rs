//! Reliability end to end (issue 8): concurrency on one chat and across two sandboxd processes,
//! SIGKILL during creates, Redis and Docker outages, lease expiry during a slow create, hostile
//! input, and a bounded soak (`cargo test --test e2e -- --ignored soak`).
//!
//! The invariant checked after each run: the containers carrying the test's label are exactly
//! the containers of the sessions in Redis (same count as `sandbox_active_count` after a final
//! reconcile pass), all running, and no chat has more than one.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use rand::SeedableRng;
use rand::rngs::StdRng;
use sandboxd_api::v1;
use sandboxd_api::v1::sandbox_service_client::SandboxServiceClient;
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_types::StatusExt;

use crate::helpers::{AppConfig, TestApp, http_get, new_chat_id, spawn_app_with};

type Api = SandboxServiceClient<Channel>;

fn create_request(chat_id: &str, agent_id: &str, volume: &str) -> v1::CreateSandboxRequest {
    v1::CreateSandboxRequest {
        chat_id: chat_id.to_owned(),
        agent_id: agent_id.to_owned(),
        volume_host_path: volume.to_owned(),
    }
}

/// One CreateSandbox during an outage: UNAVAILABLE, and fast (within `bound`), not a hang.
async fn create_is_unavailable_within(api: &Api, chat: &str, volume: &str, bound: Duration) {
    let started = Instant::now();
    let status = api
        .clone()
        .create_sandbox(create_request(chat, "default", volume))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        started.elapsed() < bound,
        "took {:?}, bound {bound:?}",
        started.elapsed()
    );
}

/// CreateSandbox, retrying ABORTED (lock contention) as the contract says clients should.
async fn create_retrying(
    api: &Api,
    chat_id: &str,
    volume: &str,
) -> Result<v1::CreateSandboxResponse, Status> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match api
            .clone()
            .create_sandbox(create_request(chat_id, "default", volume))
            .await
        {
            Err(status) if status.code() == Code::Aborted && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            outcome => return outcome.map(tonic::Response::into_inner),
        }
    }
}

async fn reconcile(api: &Api) -> v1::ReconcileSandboxesResponse {
    api.clone()
        .reconcile_sandboxes(v1::ReconcileSandboxesRequest {})
        .await
        .unwrap_or_else(|status| panic!("reconcile: {status:?}"))
        .into_inner()
}

/// Every session, through ListSandboxes.
async fn all_sandboxes(api: &Api) -> Vec<v1::Sandbox> {
    let mut sandboxes = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = api
            .clone()
            .list_sandboxes(v1::ListSandboxesRequest {
                agent_id: String::new(),
                page_size: 1000,
                page_token,
            })
            .await
            .expect("list")
            .into_inner();
        sandboxes.extend(page.sandboxes);
        if page.next_page_token.is_empty() {
            return sandboxes;
        }
        page_token = page.next_page_token;
    }
}

/// `sandbox_active_count` as `/metrics` shows it.
async fn active_gauge(http_addr: &str) -> Option<f64> {
    let (_, body) = http_get(http_addr, "/metrics").await.ok()?;
    body.lines()
        .find(|line| line.starts_with("sandbox_active_count"))
        .and_then(|line| line.split_whitespace().last())
        .and_then(|value| value.parse().ok())
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
async fn assert_invariant(app: &TestApp, api: &Api, http_addr: &str) -> (usize, usize, f64) {
    let sessions = all_sandboxes(api).await;
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

/// Samples `docker ps` by label in the background: records the first moment a chat had two
/// running containers.
struct DoubleSampler {
    stop: Arc<AtomicBool>,
    task: JoinHandle<(usize, Vec<String>)>,
}

impl DoubleSampler {
    fn start(app: &TestApp) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let docker = app.docker.clone();
        let filter = format!("{}.managed-by=sandboxd", app.prefix);
        let chat_label = format!("{}.chat_id", app.prefix);
        let flag = Arc::clone(&stop);
        let task = tokio::spawn(async move {
            let mut samples = 0;
            let mut doubles = Vec::new();
            while !flag.load(Ordering::SeqCst) {
                let filters = HashMap::from([
                    ("label", vec![filter.clone()]),
                    ("status", vec!["running".to_owned()]),
                ]);
                let options = bollard::query_parameters::ListContainersOptionsBuilder::default()
                    .filters(&filters)
                    .build();
                if let Ok(listed) = docker.list_containers(Some(options)).await {
                    samples += 1;
                    let mut per_chat: HashMap<String, usize> = HashMap::new();
                    for container in listed {
                        let chat = container
                            .labels
                            .and_then(|labels| labels.get(&chat_label).cloned())
                            .unwrap_or_default();
                        *per_chat.entry(chat).or_default() += 1;
                    }
                    doubles.extend(
                        per_chat
                            .into_iter()
                            .filter(|(_, n)| *n > 1)
                            .map(|(chat, n)| format!("{chat}: {n}")),
                    );
                }
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
            (samples, doubles)
        });
        Self { stop, task }
    }

    async fn finish(self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        let (samples, doubles) = self.task.await.expect("sampler");
        assert!(
            doubles.is_empty(),
            "chats seen with two live containers: {doubles:?}"
        );
        samples
    }
}

#[tokio::test]
async fn sixty_four_concurrent_creates_for_one_chat_make_one_container() {
    let app = spawn_app_with(AppConfig::default()).await;
    let chat = new_chat_id();
    let volume = app.new_volume("one");
    let mut calls = Vec::new();
    for _ in 0..64 {
        let api = app.new_client().await;
        let (chat, volume) = (chat.clone(), volume.clone());
        calls.push(tokio::spawn(async move {
            create_retrying(&api, &chat, &volume).await
        }));
    }
    let mut sessions = BTreeSet::new();
    let mut created = 0;
    for call in calls {
        let response = call
            .await
            .unwrap()
            .unwrap_or_else(|status| panic!("create: {status:?}\n{}", app.log()));
        if response.result == v1::CreateSandboxResult::Created as i32 {
            created += 1;
        }
        sessions.insert(response.sandbox.unwrap().session_id);
    }
    assert_eq!(sessions.len(), 1, "answers named {sessions:?}");
    assert_eq!(created, 1);
    let containers = app.containers().await;
    assert_eq!(containers.len(), 1);
    assert_eq!(
        app.label(&containers[0], "chat_id").as_deref(),
        Some(chat.as_str())
    );
    assert_eq!(
        app.label(&containers[0], "session_id"),
        sessions.into_iter().next()
    );
}

/// 200 chats, 16 client tasks over two processes, random create/reuse/extend/delete/cleanup.
/// Scaled for 2 cores: 16 × 30 operations, so about 150 containers are started in all.
#[tokio::test]
async fn two_processes_sharing_redis_keep_one_container_per_chat_under_random_load() {
    let app = spawn_app_with(AppConfig {
        session_ttl: "10m".to_owned(),
        cleanup_interval: "2s".to_owned(),
        // Both processes also reconcile every second with a short grace, racing the creates.
        lock_ttl: "2s".to_owned(),
        profile_extra: "ready_timeout = \"2s\"".to_owned(),
        extra_toml: "reconcile_interval = \"1s\"\nreconcile_grace = \"5s\"\n".to_owned(),
        ..AppConfig::default()
    })
    .await;
    let peer = app.spawn_peer().await;
    let chats: Arc<Vec<(String, String)>> = Arc::new(
        (0..200)
            .map(|i| (new_chat_id(), app.new_volume(&format!("chat-{i}"))))
            .collect(),
    );
    let sampler = DoubleSampler::start(&app);
    let ops = Arc::new(Mutex::new(BTreeMap::<&'static str, usize>::new()));
    let mut tasks = Vec::new();
    for task in 0..16u64 {
        let api = if task % 2 == 0 {
            app.new_client().await
        } else {
            peer.api.clone()
        };
        let (chats, ops) = (Arc::clone(&chats), Arc::clone(&ops));
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(task);
            for _ in 0..30 {
                let (chat, volume) = &chats[rng.random_range(0..chats.len())];
                let roll = rng.random_range(0..100);
                let (name, outcome) = match roll {
                    0..35 => (
                        "create",
                        create_retrying(&api, chat, volume).await.map(drop),
                    ),
                    35..55 => {
                        let ttl = if rng.random_bool(0.3) { 1 } else { 600 };
                        let request = v1::ExtendSandboxRequest {
                            chat_id: chat.clone(),
                            ttl: Some(prost_types::Duration {
                                seconds: ttl,
                                nanos: 0,
                            }),
                        };
                        (
                            "extend",
                            api.clone().extend_sandbox(request).await.map(drop),
                        )
                    }
                    55..75 => (
                        "get",
                        api.clone()
                            .get_sandbox(v1::GetSandboxRequest {
                                chat_id: chat.clone(),
                            })
                            .await
                            .map(drop),
                    ),
                    75..93 => (
                        "delete",
                        api.clone()
                            .delete_sandbox(v1::DeleteSandboxRequest {
                                chat_id: chat.clone(),
                            })
                            .await
                            .map(drop),
                    ),
                    _ => (
                        "cleanup",
                        api.clone()
                            .cleanup_expired_sandboxes(v1::CleanupExpiredSandboxesRequest {})
                            .await
                            .map(drop),
                    ),
                };
                match outcome {
                    Ok(()) => {}
                    // Expected answers of a racing workload: no sandbox, an expired one, a busy chat.
                    Err(status)
                        if matches!(
                            status.code(),
                            Code::NotFound | Code::FailedPrecondition | Code::Aborted
                        ) => {}
                    Err(status) => panic!("{name} {chat}: {status:?}"),
                }
                *ops.lock().unwrap().entry(name).or_default() += 1;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap_or_else(|e| {
            panic!(
                "{e}\n--- app ---\n{}\n--- peer ---\n{}",
                app.log(),
                peer.log()
            )
        });
    }
    let samples = sampler.finish().await;
    // Without crashes nothing is ever an orphan: a repair here would mean the reconcile loops
    // raced an in-flight create or delete (which the workload, tolerating NOT_FOUND, would hide).
    for (who, log) in [("app", app.log()), ("peer", peer.log())] {
        let repairs: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("sandbox_orphan_"))
            .collect();
        assert!(
            repairs.is_empty(),
            "{who} reconciled live state:\n{}",
            repairs.join("\n")
        );
    }
    // Quiet now: one reconcile pass refreshes the gauge from the store on the process we scrape.
    let report = reconcile(&app.api).await;
    assert_eq!(report.error_count, 0);
    let (containers, sessions, gauge) =
        assert_invariant(&app, &app.api, &app.http_addr.to_string()).await;
    eprintln!(
        "two processes: ops {:?}, {samples} docker samples, containers {containers} == sessions {sessions} == gauge {gauge}",
        ops.lock().unwrap()
    );
    drop(peer);
}

/// ≥ 20 SIGKILLs at random moments of creates and deletes, restarting each time; then one
/// reconcile pass (short grace) restores the invariant.
#[tokio::test]
async fn sigkill_during_creates_then_reconcile_restores_the_invariant() {
    let mut app = spawn_app_with(AppConfig {
        lock_ttl: "2s".to_owned(),
        lock_wait: "3s".to_owned(),
        profile_extra: "ready_timeout = \"2s\"".to_owned(),
        extra_toml: "reconcile_grace = \"5s\"\nreconcile_interval = \"1h\"\n".to_owned(),
        ..AppConfig::default()
    })
    .await;
    let mut rng = StdRng::seed_from_u64(8);
    // Many chats: a chat whose lock died with the last process stays busy for up to lock_ttl.
    let chats: Vec<(String, String)> = (0..80)
        .map(|i| (new_chat_id(), app.new_volume(&format!("c{i}"))))
        .collect();
    let kills = 22;
    let (mut created, mut deleted) = (0usize, 0usize);
    for _ in 0..kills {
        let mut calls = Vec::new();
        for _ in 0..4 {
            let (chat, volume) = chats[rng.random_range(0..chats.len())].clone();
            let api = app.api.clone();
            let delete = rng.random_bool(0.2);
            calls.push(tokio::spawn(async move {
                let outcome = if delete {
                    api.clone()
                        .delete_sandbox(v1::DeleteSandboxRequest { chat_id: chat })
                        .await
                        .map(drop)
                } else {
                    api.clone()
                        .create_sandbox(create_request(&chat, "default", &volume))
                        .await
                        .map(drop)
                };
                (delete, outcome.is_ok())
            }));
        }
        // Random moments across a create's whole life (engine create, start, readiness, save).
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..1500))).await;
        app.kill9().await;
        for call in calls {
            match call.await {
                Ok((true, true)) => deleted += 1,
                Ok((false, true)) => created += 1,
                _ => {}
            }
        }
        app.restart().await;
    }
    // Past the grace and the leases of the killed processes: the next pass may repair anything.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let report = reconcile(&app.api).await;
    assert_eq!(report.error_count, 0, "{report:?}");
    let (containers, sessions, gauge) =
        assert_invariant(&app, &app.api, &app.http_addr.to_string()).await;
    eprintln!(
        "crash: {kills} kills, {created} creates and {deleted} deletes answered before a kill, reconcile removed {} containers and {} sessions; containers {containers} == sessions {sessions} == gauge {gauge}",
        report.removed_container_ids.len(),
        report.removed_sandboxes.len()
    );
}

/// Redis killed and restarted (empty) mid-run: calls fail fast with UNAVAILABLE, health goes
/// NOT_SERVING and back, and one reconcile pass removes the containers whose sessions were lost.
#[tokio::test]
async fn redis_outage_is_unavailable_fast_then_recovers_by_itself() {
    let mut app = spawn_app_with(AppConfig {
        cleanup_interval: "1s".to_owned(),
        profile_extra: "ready_timeout = \"2s\"".to_owned(),
        lock_ttl: "2s".to_owned(),
        extra_toml: "reconcile_grace = \"5s\"\nreconcile_interval = \"1s\"\n".to_owned(),
        ..AppConfig::default()
    })
    .await;
    let api = app.api.clone();
    let before = new_chat_id();
    create_retrying(&api, &before, &app.new_volume("before"))
        .await
        .unwrap();

    app.redis.stop();
    let chat = new_chat_id();
    let volume = app.new_volume("during");
    for _ in 0..3 {
        // Bounded by the Redis command timeout (2 s) plus scheduling slack.
        create_is_unavailable_within(&api, &chat, &volume, Duration::from_secs(4)).await;
        let status = api
            .clone()
            .get_sandbox(v1::GetSandboxRequest {
                chat_id: before.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
    }
    app.wait_for_health(ServingStatus::NotServing).await;
    // Several loop ticks of both loops inside the outage.
    tokio::time::sleep(Duration::from_secs(4)).await;

    app.redis.restart().await;
    app.wait_for_health(ServingStatus::Serving).await;
    let created = create_retrying(&api, &chat, &volume).await.unwrap();
    assert_eq!(created.result, v1::CreateSandboxResult::Created as i32);
    // The session of `before` died with Redis: its container is an orphan the loop removes.
    let deadline = Instant::now() + Duration::from_secs(20);
    while app.containers().await.len() != 1 {
        assert!(
            Instant::now() < deadline,
            "orphan not reconciled\n{}",
            app.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_invariant(&app, &api, &app.http_addr.to_string()).await;
    let log = app.log();
    for loop_name in ["cleanup", "reconcile"] {
        for event in ["background_outage_started", "background_outage_ended"] {
            assert_eq!(
                loop_events(&log, loop_name, event),
                1,
                "{loop_name} {event}\n{log}"
            );
        }
    }
}

/// A unix-socket proxy in front of the Docker engine that the test can cut and restore, so the
/// engine is "unreachable" without touching the real dockerd.
struct DockerProxy {
    path: PathBuf,
    _dir: tempfile::TempDir,
    accept: Option<JoinHandle<()>>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl DockerProxy {
    fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("sandboxd-docker-proxy-")
            .tempdir()
            .unwrap();
        let mut proxy = Self {
            path: dir.path().join("docker.sock"),
            _dir: dir,
            accept: None,
            connections: Arc::new(Mutex::new(Vec::new())),
        };
        proxy.start();
        proxy
    }

    fn url(&self) -> String {
        format!("unix://{}", self.path.display())
    }

    fn start(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let listener = UnixListener::bind(&self.path).unwrap();
        let connections = Arc::clone(&self.connections);
        self.accept = Some(tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let connection = tokio::spawn(async move {
                    if let Ok(mut engine) = UnixStream::connect("/var/run/docker.sock").await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut engine).await;
                    }
                });
                connections.lock().unwrap().push(connection);
            }
        }));
    }

    /// Refuses new connections and cuts the open ones.
    fn stop(&mut self) {
        if let Some(accept) = self.accept.take() {
            accept.abort();
        }
        for connection in self.connections.lock().unwrap().drain(..) {
            connection.abort();
        }
    }
}

impl Drop for DockerProxy {
    fn drop(&mut self) {
        self.stop();
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Counts `event` lines of `loop_name` in a text or JSON log.
fn loop_events(log: &str, loop_name: &str, event: &str) -> usize {
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

/// The engine cut off behind a proxy socket while a session expires: calls needing the engine
/// fail fast with UNAVAILABLE, health goes NOT_SERVING, both loops keep ticking and log the
/// outage once each (not the expired session once per tick), and everything recovers.
#[tokio::test]
async fn docker_outage_is_unavailable_fast_then_recovers_by_itself() {
    let mut proxy = DockerProxy::new();
    let app = spawn_app_with(AppConfig {
        cleanup_interval: "1s".to_owned(),
        extra_toml: format!(
            "docker_host = \"{}\"\nengine_timeout = \"10s\"\nreconcile_interval = \"1s\"\n",
            proxy.url()
        ),
        ..AppConfig::default()
    })
    .await;
    let api = app.api.clone();
    let expiring = new_chat_id();
    create_retrying(&api, &expiring, &app.new_volume("expiring"))
        .await
        .unwrap();

    proxy.stop();
    app.wait_for_health(ServingStatus::NotServing).await;
    // Expires inside the outage: every cleanup tick now fails to stop it.
    let one_second = Some(prost_types::Duration {
        seconds: 1,
        nanos: 0,
    });
    api.clone()
        .extend_sandbox(v1::ExtendSandboxRequest {
            chat_id: expiring.clone(),
            ttl: one_second,
        })
        .await
        .unwrap();
    let chat = new_chat_id();
    let volume = app.new_volume("during");
    for _ in 0..3 {
        create_is_unavailable_within(&api, &chat, &volume, Duration::from_secs(5)).await;
    }
    // Reads that need only Redis still answer.
    api.clone()
        .get_sandbox(v1::GetSandboxRequest {
            chat_id: expiring.clone(),
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;

    proxy.start();
    app.wait_for_health(ServingStatus::Serving).await;
    let created = create_retrying(&api, &chat, &volume).await.unwrap();
    assert_eq!(created.result, v1::CreateSandboxResult::Created as i32);
    let deadline = Instant::now() + Duration::from_secs(15);
    while app.containers().await.len() != 1 {
        assert!(
            Instant::now() < deadline,
            "expired sandbox never cleaned\n{}",
            app.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let report = reconcile(&api).await;
    assert_eq!(report.error_count, 0);
    assert_invariant(&app, &api, &app.http_addr.to_string()).await;
    let log = app.log();
    for loop_name in ["cleanup", "reconcile"] {
        for event in ["background_outage_started", "background_outage_ended"] {
            assert_eq!(
                loop_events(&log, loop_name, event),
                1,
                "{loop_name} {event}\n{log}"
            );
        }
    }
    let per_session = log
        .lines()
        .filter(|l| l.contains("sandbox_clean_failed"))
        .count();
    assert_eq!(
        per_session, 0,
        "per-session failures logged at info or above\n{log}"
    );
}

/// Process A's lease expires while its slow create waits for readiness (A is frozen with
/// SIGSTOP); process B takes the chat and creates. When A resumes, its write is fenced: ABORTED,
/// and its container is removed. The chat ends with B's one container.
#[tokio::test]
async fn a_stale_lease_holder_cannot_commit_and_removes_its_container() {
    let slow = format!(
        "{}command = [\"/bin/busybox\", \"sh\", \"-c\", \"sleep 3; exec /bin/busybox httpd -f -p 8080 -h /workspace\"]\nready_timeout = \"10s\"\n",
        AppConfig::busybox_profile()
    );
    let app = spawn_app_with(
        AppConfig {
            lock_ttl: "2s".to_owned(),
            lock_wait: "8s".to_owned(),
            extra_toml: "reconcile_interval = \"0s\"\n".to_owned(),
            ..AppConfig::default()
        }
        .with_agent("slow", &slow),
    )
    .await;
    let peer = app.spawn_peer().await;
    let chat = new_chat_id();
    let volume = app.new_volume("slow");
    let request = v1::CreateSandboxRequest {
        chat_id: chat.clone(),
        agent_id: "slow".to_owned(),
        volume_host_path: volume.clone(),
    };
    let stale = {
        let api = app.api.clone();
        let request = request.clone();
        tokio::spawn(async move { api.clone().create_sandbox(request).await })
    };
    // A's container exists (it is waiting for readiness): freeze A past its lease.
    let deadline = Instant::now() + Duration::from_secs(10);
    while app.containers().await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "A never created its container\n{}",
            app.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.signal("STOP");
    let fresh = peer.api.clone().create_sandbox(request).await;
    app.signal("CONT");
    let fresh = fresh
        .unwrap_or_else(|s| panic!("B: {s:?}\n{}", peer.log()))
        .into_inner();
    assert_eq!(fresh.result, v1::CreateSandboxResult::Created as i32);
    let stale = stale.await.unwrap();
    let status = stale.expect_err("the stale holder's create must not commit");
    assert_eq!(status.code(), Code::Aborted, "{status:?}\n{}", app.log());
    let fresh = fresh.sandbox.unwrap();
    let ids = app.container_ids().await;
    assert_eq!(
        ids,
        BTreeSet::from([fresh.container_id.clone()]),
        "{}",
        app.log()
    );
    let current = app.live_sandbox(&chat).await;
    assert_eq!(current.session_id, fresh.session_id);
    drop(peer);
}

/// A snapshot of every key under the test's prefix with its value (type-aware), so "nothing
/// changed" covers values, not just names.
async fn redis_dump(app: &TestApp) -> BTreeMap<String, String> {
    let mut con = app.redis_connection().await;
    let mut dump = BTreeMap::new();
    for key in app.redis_keys().await {
        let kind: String = redis::cmd("TYPE")
            .arg(&key)
            .query_async(&mut con)
            .await
            .unwrap();
        let value = match kind.as_str() {
            "string" => redis::cmd("GET")
                .arg(&key)
                .query_async::<String>(&mut con)
                .await
                .unwrap(),
            "hash" => format!(
                "{:?}",
                redis::cmd("HGETALL")
                    .arg(&key)
                    .query_async::<BTreeMap<String, String>>(&mut con)
                    .await
                    .unwrap()
            ),
            "zset" => format!(
                "{:?}",
                redis::cmd("ZRANGE")
                    .arg(&key)
                    .arg(0)
                    .arg(-1)
                    .arg("WITHSCORES")
                    .query_async::<Vec<String>>(&mut con)
                    .await
                    .unwrap()
            ),
            other => other.to_owned(),
        };
        dump.insert(key, value);
    }
    dump
}

enum Bad {
    Create(v1::CreateSandboxRequest),
    Get(String),
    List(i32, String, String),
    Extend(String, Option<prost_types::Duration>),
    Delete(String),
}

/// Hostile input across all RPCs: each case gets its documented code and names its field, and
/// no Redis key or container was created or changed.
#[tokio::test]
async fn hostile_requests_get_their_code_and_field_and_change_nothing() {
    let app = spawn_app_with(AppConfig {
        max_ttl: "1h".to_owned(),
        ..AppConfig::default()
    })
    .await;
    let chat = new_chat_id();
    let volume = app.new_volume("live");
    create_retrying(&app.api, &chat, &volume).await.unwrap();
    let fresh = new_chat_id();
    let ok_volume = app.new_volume("fresh");
    let root = path_str(app.volume_root.path()).to_owned();
    let escape = app.volume_root.path().join("to-docker");
    std::os::unix::fs::symlink("/var/run", &escape).unwrap();
    let mib = "a".repeat(1 << 20);
    let issued = app
        .api
        .clone()
        .list_sandboxes(v1::ListSandboxesRequest {
            agent_id: String::new(),
            page_size: 1,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .next_page_token;
    // With one session and page size 1, a token may or may not be issued; forge one either way.
    let token = if issued.is_empty() {
        "7362782d6c6973742d76310a0a".to_owned() + &hex(&chat)
    } else {
        issued
    };
    let create = |c: &str, a: &str, v: &str| Bad::Create(create_request(c, a, v));
    let d = |seconds, nanos| Some(prost_types::Duration { seconds, nanos });
    let bad_ids = [
        String::new(),
        "nope".to_owned(),
        chat.to_uppercase(),
        chat.replace('-', ""),
        format!("{{{chat}}}"),
        format!("urn:uuid:{chat}"),
        format!(" {chat}"),
        format!("{chat}\0"),
        format!("{}\u{7}", &chat[..35]),
        mib.clone(),
    ];
    let mut cases: Vec<(String, Bad, Code, &str)> = Vec::new();
    for (i, id) in bad_ids.iter().enumerate() {
        let what = format!("chat_id #{i} {:.40?}", id);
        cases.push((
            format!("Create {what}"),
            create(id, "default", &ok_volume),
            Code::InvalidArgument,
            "chat_id",
        ));
        match i % 3 {
            0 => cases.push((
                format!("Get {what}"),
                Bad::Get(id.clone()),
                Code::InvalidArgument,
                "chat_id",
            )),
            1 => cases.push((
                format!("Extend {what}"),
                Bad::Extend(id.clone(), None),
                Code::InvalidArgument,
                "chat_id",
            )),
            _ => cases.push((
                format!("Delete {what}"),
                Bad::Delete(id.clone()),
                Code::InvalidArgument,
                "chat_id",
            )),
        }
    }
    for agent in ["", "unknown", "Default", "de\0fault", "de\tfault", &mib] {
        cases.push((
            format!("Create agent_id {agent:.40?}"),
            create(&fresh, agent, &ok_volume),
            Code::InvalidArgument,
            "agent_id",
        ));
    }
    for path in [
        String::new(),
        "relative".to_owned(),
        "./x".to_owned(),
        format!("{root}/../etc"),
        format!("{root}/a/.."),
        format!("{root}/x\0y"),
        format!("{root}/x\ny"),
        format!("/{mib}"),
    ] {
        cases.push((
            format!("Create volume_host_path {path:.60?}"),
            create(&fresh, "default", &path),
            Code::InvalidArgument,
            "volume_host_path",
        ));
    }
    for path in [
        "/".to_owned(),
        "/etc".to_owned(),
        "/proc".to_owned(),
        "/proc/self/root".to_owned(),
        "/var/run/docker.sock".to_owned(),
        "/run/docker.sock".to_owned(),
        path_str(&escape).to_owned(),
        format!("{}/docker.sock", path_str(&escape)),
    ] {
        cases.push((
            format!("Create volume_host_path {path:?}"),
            create(&fresh, "default", &path),
            Code::PermissionDenied,
            "volume_host_path",
        ));
    }
    for (what, ttl) in [
        ("zero", d(0, 0)),
        ("negative", d(-60, 0)),
        ("negative nanos", d(0, -1)),
        ("huge", d(i64::MAX, 0)),
        ("over max_ttl", d(7200, 0)),
        ("denormal", d(1, 2_000_000_000)),
    ] {
        cases.push((
            format!("Extend ttl {what}"),
            Bad::Extend(chat.clone(), ttl),
            Code::InvalidArgument,
            "ttl",
        ));
    }
    for size in [-1, 1001, i32::MAX, i32::MIN] {
        cases.push((
            format!("List page_size {size}"),
            Bad::List(size, String::new(), String::new()),
            Code::InvalidArgument,
            "page_size",
        ));
    }
    for (what, forged) in [
        ("truncated", token[..token.len() - 2].to_owned()),
        ("odd length", token[..token.len() - 1].to_owned()),
        ("upper case", token.to_uppercase()),
        ("not hex", "zz".repeat(20)),
        ("1 MiB", mib.clone()),
        ("other filter", token.clone()),
    ] {
        let agent = if what == "other filter" {
            "other".to_owned()
        } else {
            String::new()
        };
        cases.push((
            format!("List page_token {what}"),
            Bad::List(0, agent, forged),
            Code::InvalidArgument,
            "page_token",
        ));
    }
    cases.push((
        "List agent_id with NUL".to_owned(),
        Bad::List(0, "a\0".to_owned(), String::new()),
        Code::InvalidArgument,
        "agent_id",
    ));
    assert!(cases.len() >= 40, "{}", cases.len());

    let keys_before = redis_dump(&app).await;
    let containers_before = app.container_ids().await;
    let mut failures = Vec::new();
    let total = cases.len();
    for (what, call, code, field) in cases {
        let mut api = app.api.clone();
        let outcome = match call {
            Bad::Create(request) => api.create_sandbox(request).await.map(drop),
            Bad::Get(chat_id) => api
                .get_sandbox(v1::GetSandboxRequest { chat_id })
                .await
                .map(drop),
            Bad::List(page_size, agent_id, page_token) => api
                .list_sandboxes(v1::ListSandboxesRequest {
                    agent_id,
                    page_size,
                    page_token,
                })
                .await
                .map(drop),
            Bad::Extend(chat_id, ttl) => api
                .extend_sandbox(v1::ExtendSandboxRequest { chat_id, ttl })
                .await
                .map(drop),
            Bad::Delete(chat_id) => api
                .delete_sandbox(v1::DeleteSandboxRequest { chat_id })
                .await
                .map(drop),
        };
        match outcome {
            Ok(()) => failures.push(format!("{what}: accepted")),
            Err(status) => {
                let named = status
                    .get_details_bad_request()
                    .and_then(|b| b.field_violations.first().map(|v| v.field.clone()));
                if status.code() != code || named.as_deref() != Some(field) {
                    failures.push(format!(
                        "{what}: got {:?} {named:?} ({:.120}), want {code:?} {field}",
                        status.code(),
                        status.message()
                    ));
                }
            }
        }
    }
    // Beyond the server's decoding limit (tonic's 4 MiB): refused before any handler runs.
    let huge = create_request(&fresh, "default", &format!("/{}", "a".repeat(5 << 20)));
    let status = app
        .api
        .clone()
        .max_encoding_message_size(16 << 20)
        .create_sandbox(huge)
        .await
        .unwrap_err();
    if !matches!(status.code(), Code::OutOfRange | Code::ResourceExhausted) {
        failures.push(format!("5 MiB message: {status:?}"));
    }
    assert!(
        failures.is_empty(),
        "{} of {total} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(redis_dump(&app).await, keys_before, "Redis changed");
    assert_eq!(
        app.container_ids().await,
        containers_before,
        "containers changed"
    );
    eprintln!("hostile input: {} cases + 1 oversized message", total);
}

fn hex(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

fn proc_figures(pid: u32) -> (usize, u64, u64) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(Iterator::count)
        .unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (fds, field("Threads:"), field("VmRSS:"))
}

/// Bounded soak: `SOAK_CYCLES` (default 2,000) create/delete cycles over 50 chats, 8 at a time,
/// with the cleanup and reconcile loops running. Run with
/// `cargo test --test e2e -- --ignored soak --nocapture`.
#[tokio::test]
#[ignore = "slow: about 15 minutes for 2,000 cycles"]
async fn soak_create_delete_cycles_leak_nothing() {
    let cycles: usize = std::env::var("SOAK_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let app = spawn_app_with(AppConfig {
        session_ttl: "20s".to_owned(),
        cleanup_interval: "5s".to_owned(),
        extra_toml: "reconcile_interval = \"10s\"\nreconcile_grace = \"30s\"\n".to_owned(),
        ..AppConfig::default()
    })
    .await;
    let chats: Arc<Vec<(String, String)>> = Arc::new(
        (0..50)
            .map(|i| (new_chat_id(), app.new_volume(&format!("s{i}"))))
            .collect(),
    );
    let done = Arc::new(AtomicUsize::new(0));
    let run = |count: usize| {
        let (chats, done) = (Arc::clone(&chats), Arc::clone(&done));
        let api = app.api.clone();
        async move {
            let mut workers = Vec::new();
            for worker in 0..8 {
                let (chats, done, api) = (Arc::clone(&chats), Arc::clone(&done), api.clone());
                workers.push(tokio::spawn(async move {
                    let mut i = worker;
                    while done.fetch_add(1, Ordering::SeqCst) < count {
                        let (chat, volume) = &chats[i % chats.len()];
                        i += 8;
                        create_retrying(&api, chat, volume).await.unwrap();
                        loop {
                            match api
                                .clone()
                                .delete_sandbox(v1::DeleteSandboxRequest {
                                    chat_id: chat.clone(),
                                })
                                .await
                            {
                                Err(s) if s.code() == Code::Aborted => {
                                    tokio::time::sleep(Duration::from_millis(50)).await
                                }
                                outcome => {
                                    outcome.unwrap();
                                    break;
                                }
                            }
                        }
                    }
                }));
            }
            for worker in workers {
                worker.await.unwrap();
            }
        }
    };
    let started = Instant::now();
    let warm_up = (cycles / 10).max(20);
    run(warm_up).await;
    let (fds0, threads0, rss0) = proc_figures(app.pid());
    done.store(0, Ordering::SeqCst);
    run(cycles - warm_up.min(cycles)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (fds1, threads1, rss1) = proc_figures(app.pid());
    let report = reconcile(&app.api).await;
    assert_eq!(report.error_count, 0);
    assert!(app.container_ids().await.is_empty(), "leaked containers");
    let keys: Vec<String> = app
        .redis_keys()
        .await
        .into_iter()
        .filter(|k| !k.ends_with(":expiry"))
        .collect();
    assert!(keys.is_empty(), "leaked keys {keys:?}");
    eprintln!(
        "soak: {cycles} cycles in {:?}; after warm-up fds {fds0} threads {threads0} rss {rss0} kB; end fds {fds1} threads {threads1} rss {rss1} kB",
        started.elapsed()
    );
    assert!(fds1 <= fds0 + 4, "fds {fds0} -> {fds1}");
    assert!(threads1 <= threads0 + 2, "threads {threads0} -> {threads1}");
    #[allow(clippy::cast_precision_loss)]
    let growth = rss1 as f64 / rss0.max(1) as f64;
    assert!(growth <= 1.2, "rss {rss0} -> {rss1} kB");
}
