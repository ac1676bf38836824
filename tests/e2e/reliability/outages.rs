//! Outages: Redis killed and restarted, and the Docker engine cut off behind a proxy socket;
//! calls fail fast with UNAVAILABLE and everything recovers by itself.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sandboxd_api::v1;
use sandboxd_testkit::{AppConfig, SandboxRequests, TestApp, new_chat_id, spawn_app_with};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinHandle;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

use super::{assert_invariant, create_is_unavailable_within, loop_events, repairing_config};

/// Redis killed and restarted (empty) mid-run: calls fail fast with UNAVAILABLE, health goes
/// NOT_SERVING and back, and the reconcile loop adopts the sandbox whose session was lost: the
/// same container, the same session id.
#[tokio::test]
async fn redis_outage_is_unavailable_fast_then_recovers_by_itself() {
    let mut app = spawn_app_with(AppConfig {
        cleanup_interval: "1s".to_owned(),
        ..repairing_config("1s")
    })
    .await;
    let before = new_chat_id();
    let before_sandbox = app
        .create_retrying(&before, "default", &app.new_volume("before"))
        .await
        .unwrap()
        .sandbox
        .unwrap();

    app.redis.stop();
    let chat = new_chat_id();
    let volume = app.new_volume("during");
    for _ in 0..3 {
        // Bounded by the Redis command timeout (2 s) plus scheduling slack.
        create_is_unavailable_within(&app, &chat, &volume, Duration::from_secs(4)).await;
        let status = app.get(&before).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
    }
    app.wait_for_health(ServingStatus::NotServing).await;
    // Several loop ticks of both loops inside the outage.
    tokio::time::sleep(Duration::from_secs(4)).await;

    app.redis.restart().await.unwrap();
    app.wait_for_health(ServingStatus::Serving).await;
    let created = app
        .create_retrying(&chat, "default", &volume)
        .await
        .unwrap();
    assert_eq!(created.result, v1::CreateSandboxResult::Created as i32);
    // The session of `before` died with Redis; its sandbox runs on and the loop adopts it.
    let deadline = Instant::now() + Duration::from_secs(20);
    let adopted = loop {
        match app.get(&before).await {
            Ok(found) => break found,
            Err(status) => assert!(
                Instant::now() < deadline,
                "never adopted: {status:?}\n{}",
                app.log()
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(adopted.session_id, before_sandbox.session_id);
    assert_eq!(adopted.container_id, before_sandbox.container_id);
    assert_eq!(adopted.endpoint, before_sandbox.endpoint);
    assert_eq!(app.containers().await.len(), 2);
    assert_invariant(&app, &app.http_addr.to_string()).await;
    let log = app.log();
    assert_each_loop_logged_the_outage_once(&log);
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
    let expiring = new_chat_id();
    app.create_retrying(&expiring, "default", &app.new_volume("expiring"))
        .await
        .unwrap();

    proxy.stop();
    app.wait_for_health(ServingStatus::NotServing).await;
    // Expires inside the outage: every cleanup tick now fails to stop it.
    app.extend(&expiring, Some(Duration::from_secs(1)))
        .await
        .unwrap();
    let chat = new_chat_id();
    let volume = app.new_volume("during");
    for _ in 0..3 {
        create_is_unavailable_within(&app, &chat, &volume, Duration::from_secs(5)).await;
    }
    // Reads that need only Redis still answer.
    app.get(&expiring).await.unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;

    proxy.start();
    app.wait_for_health(ServingStatus::Serving).await;
    create_then_wait_for_one_container(
        &app,
        &chat,
        &volume,
        Duration::from_secs(15),
        "expired sandbox",
    )
    .await;
    let report = app.reconcile().await.expect("reconcile");
    assert_eq!(report.error_count, 0);
    assert_invariant(&app, &app.http_addr.to_string()).await;
    let log = app.log();
    assert_each_loop_logged_the_outage_once(&log);
    let per_session = log
        .lines()
        .filter(|l| l.contains("sandbox_clean_failed"))
        .count();
    assert_eq!(
        per_session, 0,
        "per-session failures logged at info or above\n{log}"
    );
}

/// After the outage: a create for the new chat, then (within `bound`) the one container left is
/// its own; `leftover` names what the loops had to remove.
async fn create_then_wait_for_one_container(
    app: &TestApp,
    chat: &str,
    volume: &str,
    bound: Duration,
    leftover: &str,
) {
    let created = app.create_retrying(chat, "default", volume).await.unwrap();
    assert_eq!(created.result, v1::CreateSandboxResult::Created as i32);
    let deadline = Instant::now() + bound;
    while app.containers().await.len() != 1 {
        assert!(
            Instant::now() < deadline,
            "{leftover} never removed\n{}",
            app.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Both loops logged the outage's start and end exactly once (not once per tick).
fn assert_each_loop_logged_the_outage_once(log: &str) {
    for loop_name in ["cleanup", "reconcile"] {
        for event in ["background_outage_started", "background_outage_ended"] {
            assert_eq!(
                loop_events(log, loop_name, event),
                1,
                "{loop_name} {event}\n{log}"
            );
        }
    }
}
