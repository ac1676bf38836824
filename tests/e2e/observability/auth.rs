//! Bearer-token authentication of all seven RPCs, while health and reflection stay open.

use sandboxd_api::v1;
use sandboxd_api::v1::sandbox_service_client::SandboxServiceClient;
use tonic::transport::Channel;
use tonic::{Code, Request};

use sandboxd_testkit::{AppConfig, new_chat_id, spawn_app_with};

/// Calls every RPC of the service, all seven, with `authorization` set to `header` (or none) and
/// returns their codes.
async fn every_rpc(
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
            "ReconcileSandboxes",
            code(
                api.reconcile_sandboxes(with(v1::ReconcileSandboxesRequest {}, header))
                    .await,
            ),
        ),
        (
            "PauseSandbox",
            code(
                api.pause_sandbox(with(
                    v1::PauseSandboxRequest {
                        chat_id: chat.clone(),
                    },
                    header,
                ))
                .await,
            ),
        ),
        (
            "ResumeSandbox",
            code(
                api.resume_sandbox(with(
                    v1::ResumeSandboxRequest {
                        chat_id: chat.clone(),
                    },
                    header,
                ))
                .await,
            ),
        ),
        (
            "TouchSandbox",
            code(
                api.touch_sandbox(with(
                    v1::TouchSandboxRequest {
                        chat_id: chat.clone(),
                    },
                    header,
                ))
                .await,
            ),
        ),
        (
            "WatchSandboxes",
            code(
                api.watch_sandboxes(with(v1::WatchSandboxesRequest::default(), header))
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
    let token = "s3cret-token-0123456789";
    // The harness reaching SERVING already shows health answers without a token.
    let app = spawn_app_with(AppConfig {
        auth_token: Some(token.to_owned()),
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
        for (rpc, code) in every_rpc(&mut api, header, &chat_id, &volume).await {
            assert_eq!(code, Code::Unauthenticated, "{rpc} with {header:?}");
        }
    }
    // Nothing changed: no session keys, no container.
    assert_eq!(app.redis_keys().await, keys_before);
    assert!(app.container_ids().await.is_empty());

    let right = format!("Bearer {token}");
    let codes = every_rpc(&mut api, Some(&right), &chat_id, &volume).await;
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
