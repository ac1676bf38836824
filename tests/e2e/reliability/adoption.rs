//! Redis losing every session while the sandboxes run (FLUSHALL, or a restart without
//! persistence): one reconcile pass adopts each live container back (the same session, the same
//! container, not restarted), and the clients' next CreateSandbox reuses it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use sandboxd_api::v1;
use sandboxd_testkit::{AppConfig, SandboxRequests, TestApp, new_chat_id, spawn_app_with};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

use super::{active_gauge, assert_invariant, repairs};

const CHATS: usize = 20;
/// Creates in flight at once while setting up (the engine's pace on 2 cores).
const CREATES_IN_FLIGHT: usize = 4;

/// One live sandbox before the loss: its chat, volume, the session as created, and when the
/// engine started its container.
struct Live {
    chat: String,
    volume: String,
    sandbox: v1::Sandbox,
    started_at: String,
}

/// No background pass (neither at start nor on a timer): the one pass is the test's RPC.
fn config() -> AppConfig {
    AppConfig {
        extra_toml: "reconcile_interval = \"0s\"\n".to_owned(),
        ..AppConfig::default()
    }
}

#[tokio::test]
async fn flushall_then_one_reconcile_pass_adopts_every_live_sandbox() {
    let app = spawn_app_with(config()).await;
    let live = start_live_sandboxes(&app).await;
    let _: () = redis::cmd("FLUSHALL")
        .query_async(&mut app.redis_connection().await)
        .await
        .expect("FLUSHALL");
    assert_adopted_by_one_pass(&app, &live, "flushall").await;
}

#[tokio::test]
async fn redis_restart_without_persistence_then_one_reconcile_pass_adopts_every_live_sandbox() {
    let mut app = spawn_app_with(config()).await;
    let live = start_live_sandboxes(&app).await;
    // SIGKILL, then an empty server on the same port (no RDB, no AOF).
    app.redis.restart().await.expect("restarting redis-server");
    app.wait_for_health(ServingStatus::Serving).await;
    assert_adopted_by_one_pass(&app, &live, "redis restart").await;
}

/// `CHATS` sandboxes of `CHATS` chats, created `CREATES_IN_FLIGHT` at a time.
async fn start_live_sandboxes(app: &TestApp) -> Vec<Live> {
    let started = Instant::now();
    let chats: Vec<(String, String)> = (0..CHATS)
        .map(|i| (new_chat_id(), app.new_volume(&format!("chat-{i}"))))
        .collect();
    let mut live: Vec<Live> = futures::stream::iter(chats)
        .map(|(chat, volume)| async move {
            let response = app
                .create_retrying(&chat, "default", &volume)
                .await
                .unwrap_or_else(|status| panic!("create {chat}: {status:?}\n{}", app.log()));
            assert_eq!(response.result, v1::CreateSandboxResult::Created as i32);
            let sandbox = response.sandbox.expect("a sandbox in the response");
            let started_at = started_at(app, &sandbox.container_id).await;
            Live {
                chat,
                volume,
                sandbox,
                started_at,
            }
        })
        .buffer_unordered(CREATES_IN_FLIGHT)
        .collect()
        .await;
    live.sort_by(|a, b| a.chat.cmp(&b.chat));
    eprintln!("{CHATS} sandboxes started in {:?}", started.elapsed());
    live
}

/// `State.StartedAt` of a container, from `docker inspect`.
async fn started_at(app: &TestApp, container_id: &str) -> String {
    app.docker
        .inspect_container(container_id, None)
        .await
        .unwrap_or_else(|error| panic!("inspecting {container_id}: {error}"))
        .state
        .and_then(|state| state.started_at)
        .unwrap_or_else(|| panic!("{container_id} has no StartedAt"))
}

/// The store is empty; after one reconcile pass every session is back as it was, every container
/// is the same one, never restarted, and a CreateSandbox for each chat reuses it.
async fn assert_adopted_by_one_pass(app: &TestApp, live: &[Live], loss: &str) {
    let left = app.redis_keys().await;
    assert!(
        left.is_empty(),
        "after the {loss}, Redis still holds {left:?}"
    );
    let pass_started = Instant::now();
    let report = reconcile_retrying(app).await;
    let pass_took = pass_started.elapsed();
    assert_eq!(report.error_count, 0, "{}", app.log());
    assert!(
        report.removed_container_ids.is_empty() && report.removed_sandboxes.is_empty(),
        "the pass removed something: {report:?}"
    );

    let by_chat = |sandboxes: Vec<v1::Sandbox>| -> BTreeMap<String, v1::Sandbox> {
        sandboxes
            .into_iter()
            .map(|s| (s.chat_id.clone(), s))
            .collect()
    };
    let expected = by_chat(live.iter().map(|l| l.sandbox.clone()).collect());
    let adopted = by_chat(report.adopted_sandboxes.clone());
    assert_eq!(report.adopted_sandboxes.len(), CHATS);
    // Session id, chat, agent, volume, container, endpoint, created_at and expires_at (the
    // labelled expiry, 30 min away, is later than now + adoption_grace).
    assert_eq!(
        adopted, expected,
        "adopted sessions differ from the created ones"
    );

    let containers = app.container_ids().await;
    let before: std::collections::BTreeSet<String> = live
        .iter()
        .map(|l| l.sandbox.container_id.clone())
        .collect();
    assert_eq!(containers, before, "the containers changed");
    for sandbox in live {
        assert_eq!(
            started_at(app, &sandbox.sandbox.container_id).await,
            sandbox.started_at,
            "container of chat {} was restarted",
            sandbox.chat
        );
        assert_eq!(app.live_sandbox(&sandbox.chat).await, sandbox.sandbox);
        let again = app
            .create_retrying(&sandbox.chat, "default", &sandbox.volume)
            .await
            .unwrap_or_else(|status| panic!("create {}: {status:?}", sandbox.chat));
        assert_eq!(
            again.result,
            v1::CreateSandboxResult::Reused as i32,
            "chat {}",
            sandbox.chat
        );
        // A reuse is activity: the same sandbox, its last_active_at moved on.
        let reused = again.sandbox.clone().expect("a sandbox");
        let activity = |s: &v1::Sandbox| {
            s.last_active_at
                .as_ref()
                .map(|at| (at.seconds, at.nanos))
                .unwrap_or_default()
        };
        assert!(activity(&reused) >= activity(&sandbox.sandbox));
        let unchanged = v1::Sandbox {
            last_active_at: sandbox.sandbox.last_active_at,
            ..reused
        };
        assert_eq!(unchanged, sandbox.sandbox, "chat {}", sandbox.chat);
    }

    let http = app.http_addr.to_string();
    assert_eq!(active_gauge(&http).await, Some(CHATS as f64));
    let repaired = repairs(&http).await;
    assert_eq!(
        repaired.get("adopted").copied(),
        Some(CHATS as f64),
        "{repaired:?}"
    );
    let (containers, sessions, gauge) = assert_invariant(app, &http).await;
    // A second pass finds nothing left to do.
    let second = app.reconcile().await.expect("reconcile");
    assert!(
        second.adopted_sandboxes.is_empty() && second.removed_container_ids.is_empty(),
        "{second:?}"
    );
    eprintln!(
        "{loss}: one pass ({pass_took:?}) adopted {} sessions; containers {containers} == sessions \
         {sessions} == gauge {gauge}; repairs {repaired:?}",
        report.adopted_sandboxes.len()
    );
}

/// The admin pass, retrying while the server's Redis connection comes back after a restart.
async fn reconcile_retrying(app: &TestApp) -> v1::ReconcileSandboxesResponse {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match app.reconcile().await {
            Ok(report) => return report,
            Err(status)
                if matches!(status.code(), Code::Unavailable | Code::Aborted)
                    && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => panic!("reconcile: {status:?}"),
        }
    }
}
