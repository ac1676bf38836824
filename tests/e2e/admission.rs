//! Admission end to end: `max_sandboxes` holds under concurrent creates for many chats, on one
//! replica and on two sharing the Redis, answers RESOURCE_EXHAUSTED with a `QuotaFailure` naming
//! the limit and starts nothing; deletes make room again.

use sandboxd_api::v1;
use sandboxd_api::v1::sandbox_service_client::SandboxServiceClient;
use sandboxd_testkit::{AppConfig, SandboxRequests, TestApp, new_chat_id, spawn_app_with};
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt;

/// Creates a sandbox for each chat at once, alternating between `clients`; returns each
/// chat's answer.
async fn create_all(
    app: &TestApp,
    clients: &[SandboxServiceClient<Channel>],
    chats: &[String],
) -> Vec<Result<v1::CreateSandboxResponse, tonic::Status>> {
    let calls = chats.iter().enumerate().map(|(i, chat)| {
        let client = &clients[i % clients.len()];
        let volume = app.new_volume(&format!("q{i}"));
        async move { client.create(chat, "default", &volume).await }
    });
    futures::future::join_all(calls).await
}

/// Exactly `created` admitted, every other answer RESOURCE_EXHAUSTED naming `max_sandboxes`,
/// and the deployment's 5 containers running: nothing else started.
async fn assert_exactly(
    app: &TestApp,
    answers: &[Result<v1::CreateSandboxResponse, tonic::Status>],
    created: usize,
) {
    let admitted = answers.iter().filter(|a| a.is_ok()).count();
    assert_eq!(admitted, created, "{answers:#?}\n{}", app.log());
    for refused in answers.iter().filter_map(|a| a.as_ref().err()) {
        assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
        let quota = refused
            .get_details_quota_failure()
            .expect("a QuotaFailure detail");
        assert_eq!(quota.violations[0].subject, "max_sandboxes");
        assert!(
            refused.message().contains("max_sandboxes (5)"),
            "{refused:?}"
        );
    }
    assert_eq!(app.container_ids().await.len(), 5, "nothing else started");
}

fn quota_config() -> AppConfig {
    AppConfig {
        extra_toml: "max_sandboxes = 5\n".to_owned(),
        ..AppConfig::default()
    }
}

#[tokio::test]
async fn twenty_concurrent_creates_against_max_sandboxes_5_start_exactly_5() {
    let app = spawn_app_with(quota_config()).await;
    let chats: Vec<String> = (0..20).map(|_| new_chat_id()).collect();
    let answers = create_all(&app, std::slice::from_ref(&app.api), &chats).await;
    assert_exactly(&app, &answers, 5).await;

    // Deletes make room again: two deleted, two more admitted, the next refused.
    let admitted: Vec<&String> = chats
        .iter()
        .zip(&answers)
        .filter(|(_, a)| a.is_ok())
        .map(|(chat, _)| chat)
        .collect();
    for chat in &admitted[..2] {
        app.delete(chat).await.unwrap();
    }
    let more: Vec<String> = (0..3).map(|_| new_chat_id()).collect();
    let answers = create_all(&app, std::slice::from_ref(&app.api), &more).await;
    assert_exactly(&app, &answers, 2).await;
}

#[tokio::test]
async fn two_replicas_on_one_redis_share_the_quota() {
    let app = spawn_app_with(quota_config()).await;
    let peer = app.spawn_peer().await;
    let chats: Vec<String> = (0..20).map(|_| new_chat_id()).collect();
    let answers = create_all(&app, &[app.api.clone(), peer.api.clone()], &chats).await;
    assert_exactly(&app, &answers, 5).await;
    drop(peer);
}

#[tokio::test]
async fn creates_beyond_max_concurrent_creates_wait_then_answer_unavailable_with_a_retry_delay() {
    let app = spawn_app_with(AppConfig {
        extra_toml: "max_concurrent_creates = 1\n".to_owned(),
        // A create takes a few hundred milliseconds on the engine; this wait is shorter.
        lock_wait: "100ms".to_owned(),
        ..AppConfig::default()
    })
    .await;
    let chats: Vec<String> = (0..6).map(|_| new_chat_id()).collect();
    let answers = create_all(&app, std::slice::from_ref(&app.api), &chats).await;
    let created = answers.iter().filter(|a| a.is_ok()).count();
    assert!(created >= 1, "{answers:#?}");
    let refused: Vec<&tonic::Status> = answers.iter().filter_map(|a| a.as_ref().err()).collect();
    assert!(
        !refused.is_empty(),
        "six creates at once, one engine slot, 100 ms of waiting"
    );
    for status in refused {
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(status.get_details_retry_info().is_some(), "{status:?}");
        assert!(
            status.message().contains("engine creates are in flight"),
            "{status:?}"
        );
    }
    assert_eq!(
        app.container_ids().await.len(),
        created,
        "a refused create starts nothing"
    );
}
