//! The lifecycle end to end (issue 16): idle sandboxes paused or hibernated by the cleanup loop
//! and resumed by CreateSandbox or ResumeSandbox, activity (TouchSandbox) holding them off, the
//! hard cap (`max_lifetime`) ending them anyway, PauseSandbox and ResumeSandbox on request and
//! under concurrency, and WatchSandboxes with many watchers, reconnects, cursors and a drain.
//!
//! Every state the API reports is checked against the engine's (`docker inspect` through
//! bollard). This module holds the helpers the lifecycle tests share; each submodule tests one
//! part of the contract.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sandboxd_api::v1;
use sandboxd_api::v1::sandbox_service_client::SandboxServiceClient;
use sandboxd_testkit::{AppConfig, SandboxRequests, TestApp, http_get};
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_types::StatusExt;

mod concurrency;
mod idle;
mod on_request;
mod watch;

type Api = SandboxServiceClient<Channel>;

/// A busybox profile (the kit's) with lifecycle settings appended, e.g. `idle_timeout = "3s"`.
fn profile_with(settings: &str) -> String {
    format!("{}{settings}\n", AppConfig::busybox_profile())
}

/// A server whose cleanup loop runs every `cleanup_interval` (`"0s"`: off, the test drives it),
/// with extra agents `(agent id, lifecycle settings)` on top of the kit's `default` and `other`.
fn lifecycle_config(cleanup_interval: &str, agents: &[(&str, &str)]) -> AppConfig {
    agents.iter().fold(
        AppConfig {
            cleanup_interval: cleanup_interval.to_owned(),
            ..AppConfig::default()
        },
        |config, (agent, settings)| config.with_agent(agent, &profile_with(settings)),
    )
}

/// A volume whose `index.html` the sandbox's httpd serves, so "the endpoint answers" means 200.
fn serving_volume(app: &TestApp, name: &str) -> String {
    let volume = app.new_volume(name);
    std::fs::write(
        app.volume_root.path().join(name).join("index.html"),
        format!("hello from {name}"),
    )
    .expect("writing index.html");
    volume
}

/// One page (at most 1000) of ListSandboxes in `state` (`0` for all): the chat ids, sorted.
async fn list_chats(app: &TestApp, state: v1::SandboxState) -> Result<Vec<String>, Status> {
    let request = v1::ListSandboxesRequest {
        agent_id: String::new(),
        page_size: 1000,
        page_token: String::new(),
        state: state.into(),
    };
    let page = app.list(request).await?;
    assert!(page.next_page_token.is_empty(), "more than one page");
    let mut chats: Vec<String> = page.sandboxes.into_iter().map(|s| s.chat_id).collect();
    chats.sort();
    Ok(chats)
}

fn state(sandbox: &v1::Sandbox) -> v1::SandboxState {
    v1::SandboxState::try_from(sandbox.state).unwrap_or(v1::SandboxState::Unspecified)
}

/// The status `docker inspect` shows for a sandbox in `state`.
fn engine_status(state: v1::SandboxState) -> &'static str {
    match state {
        v1::SandboxState::Running => "running",
        v1::SandboxState::Paused => "paused",
        v1::SandboxState::Hibernated => "exited",
        v1::SandboxState::Unspecified | v1::SandboxState::Lost => "unspecified",
    }
}

/// Asserts the engine holds `sandbox`'s container in the state the API reports.
async fn assert_engine_agrees(app: &TestApp, sandbox: &v1::Sandbox) {
    let status = app.container_status(&sandbox.container_id).await;
    assert_eq!(
        status.as_deref(),
        Some(engine_status(state(sandbox))),
        "container {} of chat {} (reported {:?})",
        sandbox.container_id,
        sandbox.chat_id,
        state(sandbox)
    );
}

/// Polls GetSandbox until the chat's sandbox is in `wanted`; panics with the log after `within`.
async fn wait_for_state(
    app: &TestApp,
    chat_id: &str,
    wanted: v1::SandboxState,
    within: Duration,
) -> v1::Sandbox {
    let deadline = Instant::now() + within;
    loop {
        let current = app.get(chat_id).await;
        if let Ok(sandbox) = &current
            && state(sandbox) == wanted
        {
            return sandbox.clone();
        }
        assert!(
            Instant::now() < deadline,
            "chat {chat_id} not {wanted:?} within {within:?} (last: {current:?})\n{}",
            app.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The sandbox's endpoint answers `GET /index.html` with 200 (see [`serving_volume`]).
async fn assert_serves(sandbox: &v1::Sandbox) {
    let endpoint = sandbox.endpoint.as_ref().expect("an endpoint");
    let addr = format!("{}:{}", endpoint.ip, endpoint.port);
    let (status, body) = http_get(&addr, "/index.html")
        .await
        .unwrap_or_else(|error| panic!("GET {addr}: {error}"));
    assert_eq!(status, 200, "GET {addr}: {body}");
}

fn now_ms() -> i64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970");
    i64::try_from(since_epoch.as_millis()).expect("in range")
}

fn unix_ms(at: Option<&prost_types::Timestamp>) -> i64 {
    let at = at.expect("a timestamp");
    at.seconds * 1000 + i64::from(at.nanos) / 1_000_000
}

/// Asserts `status` has `code` and, for INVALID_ARGUMENT, a `BadRequest` naming `field`.
fn assert_refused(status: &Status, code: Code, field: Option<&str>) {
    assert_eq!(status.code(), code, "{status:?}");
    if let Some(field) = field {
        let named = status
            .get_details_bad_request()
            .and_then(|bad| bad.field_violations.first().map(|v| v.field.clone()));
        assert_eq!(named.as_deref(), Some(field), "{status:?}");
    }
}
