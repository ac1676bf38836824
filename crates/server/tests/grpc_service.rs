//! The whole server in-process on port 0, over the use-case fakes: real tonic clients exercise
//! the handlers' translation, the error mapping, health and the drain on shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/in_process.rs"]
mod in_process;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use in_process::{Served, quiet_config, serve};
use sandboxd_api::v1;
use sandboxd_api::v1::sandbox_service_client::SandboxServiceClient;
use sandboxd_server::config::Config;
use sandboxd_testkit::hostile::{self, DecidedBy};
use sandboxd_usecase::testing::{CallLog, FakeRuntime, Fakes};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_types::StatusExt;

const CHAT: &str = "0b0e4a8e-54f1-4f7e-9c1e-3b7b5f2f6a10";

struct TestApp {
    addr: SocketAddr,
    calls: CallLog,
    runtime: Arc<FakeRuntime>,
    shutdown: CancellationToken,
    server: JoinHandle<anyhow::Result<()>>,
}

impl TestApp {
    async fn spawn() -> Self {
        let config = quiet_config(&["default", "other"]);
        let fakes = Fakes::default();
        let Served {
            addr,
            shutdown,
            server,
        } = serve(&config, fakes.ports()).await;
        let test_app = Self {
            addr,
            calls: fakes.calls,
            runtime: fakes.runtime,
            shutdown,
            server,
        };
        test_app.wait_for_health(ServingStatus::Serving).await;
        test_app
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    async fn client(&self) -> SandboxServiceClient<Channel> {
        SandboxServiceClient::new(self.channel().await)
    }

    async fn health(&self) -> Option<ServingStatus> {
        let channel = Channel::from_shared(format!("http://{}", self.addr))
            .ok()?
            .connect()
            .await
            .ok()?;
        let response = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: sandboxd_api::SERVICE_NAME.to_owned(),
            })
            .await
            .ok()?;
        ServingStatus::try_from(response.into_inner().status).ok()
    }

    async fn wait_for_health(&self, want: ServingStatus) {
        for _ in 0..100 {
            if self.health().await == Some(want) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("health never became {want:?}");
    }
}

fn create_request(agent: &str, volume: &str) -> v1::CreateSandboxRequest {
    v1::CreateSandboxRequest {
        chat_id: CHAT.into(),
        agent_id: agent.into(),
        volume_host_path: volume.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_translates_to_the_use_cases_and_back() {
    let app = TestApp::spawn().await;
    let mut client = app.client().await;

    let created = client
        .create_sandbox(create_request("default", "/srv/a"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.result(), v1::CreateSandboxResult::Created);
    let sandbox = created.sandbox.unwrap();
    assert_eq!(sandbox.chat_id, CHAT);
    assert!(
        sandbox.endpoint.is_some() && sandbox.created_at.is_some() && sandbox.expires_at.is_some()
    );

    let reused = client
        .create_sandbox(create_request("default", "/srv/a"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reused.result(), v1::CreateSandboxResult::Reused);
    assert_eq!(reused.sandbox.unwrap().session_id, sandbox.session_id);

    let conflict = client
        .create_sandbox(create_request("other", "/srv/b"))
        .await
        .unwrap_err();
    assert_eq!(conflict.code(), Code::AlreadyExists);
    let info = conflict.get_details_error_info().unwrap();
    assert_eq!(
        (info.reason.as_str(), info.domain.as_str()),
        ("SANDBOX_CONFLICT", "sandboxd")
    );
    assert_eq!(info.metadata["fields"], "agent_id,volume_host_path");

    let got = client
        .get_sandbox(v1::GetSandboxRequest {
            chat_id: CHAT.into(),
        })
        .await
        .unwrap();
    assert_eq!(
        got.into_inner().sandbox.unwrap().session_id,
        sandbox.session_id
    );

    let listed = client
        .list_sandboxes(v1::ListSandboxesRequest {
            agent_id: "default".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.sandboxes.len(), 1);
    assert!(listed.next_page_token.is_empty());

    let ttl = prost_types::Duration {
        seconds: 3600,
        nanos: 0,
    };
    let extended = client
        .extend_sandbox(v1::ExtendSandboxRequest {
            chat_id: CHAT.into(),
            ttl: Some(ttl),
        })
        .await
        .unwrap()
        .into_inner()
        .sandbox
        .unwrap();
    assert!(extended.expires_at.unwrap().seconds > sandbox.expires_at.unwrap().seconds);
    let too_long = prost_types::Duration {
        seconds: 48 * 3600,
        nanos: 0,
    };
    let status = client
        .extend_sandbox(v1::ExtendSandboxRequest {
            chat_id: CHAT.into(),
            ttl: Some(too_long),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        status.get_details_bad_request().unwrap().field_violations[0].field,
        "ttl"
    );

    let deleted = client
        .delete_sandbox(v1::DeleteSandboxRequest {
            chat_id: CHAT.into(),
        })
        .await
        .unwrap();
    let deleted = deleted.into_inner();
    assert_eq!(deleted.result(), v1::DeleteSandboxResult::Deleted);
    assert_eq!(deleted.session_id, sandbox.session_id);
    let again = client
        .delete_sandbox(v1::DeleteSandboxRequest {
            chat_id: CHAT.into(),
        })
        .await
        .unwrap();
    assert_eq!(
        again.into_inner().result(),
        v1::DeleteSandboxResult::NotFound
    );

    let missing = client
        .get_sandbox(v1::GetSandboxRequest {
            chat_id: CHAT.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    assert!(missing.get_details_resource_info().is_some());
    let missing = client
        .extend_sandbox(v1::ExtendSandboxRequest {
            chat_id: CHAT.into(),
            ttl: None,
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);

    let report = client
        .cleanup_expired_sandboxes(v1::CleanupExpiredSandboxesRequest {})
        .await
        .unwrap();
    assert_eq!(report.into_inner().error_count, 0);

    app.shutdown.cancel();
    app.server.await.unwrap().unwrap();
}

/// The part of the kit's hostile-input table the server decides by itself: every case is refused
/// with its code and field before any port is called.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_field_is_invalid_argument_naming_it_and_touches_nothing() {
    let app = TestApp::spawn().await;
    let client = app.client().await;
    let targets = hostile::Targets {
        live_chat: CHAT.to_owned(),
        fresh_chat: "1b0e4a8e-54f1-4f7e-9c1e-3b7b5f2f6a10".to_owned(),
        fresh_volume: "/srv/a".to_owned(),
        volume_root: "/srv".to_owned(),
        page_token: hostile::forged_token(CHAT),
        max_ttl: Config::default().lifecycle.max_ttl,
    };
    app.calls.clear();

    let mut failures = Vec::new();
    let cases = hostile::hostile_cases(&targets);
    for case in cases
        .iter()
        .filter(|case| case.decided_by == DecidedBy::Request)
    {
        failures.extend(case.run(&client).await);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(
        app.calls.calls(),
        Vec::<String>::new(),
        "a bad request reached a port"
    );
    assert!(app.runtime.running().is_empty());
    app.shutdown.cancel();
    app.server.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_reports_not_serving_refuses_new_calls_and_finishes_in_flight_ones() {
    let app = TestApp::spawn().await;
    // The fake's hook is synchronous: a blocking sleep stands for a slow container start.
    app.runtime
        .on_create(|_| std::thread::sleep(Duration::from_millis(600)));
    let mut client = app.client().await;
    let in_flight = tokio::spawn(async move {
        client
            .create_sandbox(create_request("default", "/srv/a"))
            .await
    });
    tokio::time::sleep(Duration::from_millis(150)).await;

    app.shutdown.cancel();
    app.wait_for_health(ServingStatus::NotServing).await;
    let mut late_client = app.client().await;
    let other_chat = v1::GetSandboxRequest {
        chat_id: "1b0e4a8e-54f1-4f7e-9c1e-3b7b5f2f6a10".into(),
    };
    assert_eq!(
        late_client
            .get_sandbox(other_chat)
            .await
            .unwrap_err()
            .code(),
        Code::Unavailable
    );

    let created = in_flight.await.unwrap().unwrap().into_inner();
    assert_eq!(created.result(), v1::CreateSandboxResult::Created);
    tokio::time::timeout(Duration::from_secs(10), app.server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_node_lists_itself_and_draining_it_refuses_new_sandboxes_only() {
    let app = TestApp::spawn().await;
    let mut client = app.client().await;
    let created = client
        .create_sandbox(create_request("default", "/srv/a"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.sandbox.unwrap().node_id, "local");

    let nodes = client
        .list_nodes(v1::ListNodesRequest {})
        .await
        .unwrap()
        .into_inner()
        .nodes;
    assert_eq!(nodes.len(), 1, "{nodes:?}");
    let local = &nodes[0];
    assert_eq!(
        (
            local.node_id.as_str(),
            local.active,
            local.draining,
            local.healthy
        ),
        ("local", 1, false, true)
    );
    assert!(local.last_heartbeat_at.is_some());

    let unknown = client
        .drain_node(v1::DrainNodeRequest {
            node_id: "elsewhere".into(),
            draining: true,
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");

    let drained = client
        .drain_node(v1::DrainNodeRequest {
            node_id: "local".into(),
            draining: true,
        })
        .await
        .unwrap()
        .into_inner()
        .node
        .unwrap();
    assert!(drained.draining);
    // The live sandbox is still served; a new chat gets none.
    let reused = client
        .create_sandbox(create_request("default", "/srv/a"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reused.result, v1::CreateSandboxResult::Reused as i32);
    let mut other_chat = create_request("default", "/srv/b");
    other_chat.chat_id = "1b0e4a8e-54f1-4f7e-9c1e-3b7b5f2f6a10".into();
    let refused = client.create_sandbox(other_chat.clone()).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("draining"), "{refused:?}");
    assert_eq!(app.runtime.running().len(), 1);

    client
        .drain_node(v1::DrainNodeRequest {
            node_id: "local".into(),
            draining: false,
        })
        .await
        .unwrap();
    let created = client
        .create_sandbox(other_chat)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.result, v1::CreateSandboxResult::Created as i32);
    app.shutdown.cancel();
    app.server.await.unwrap().unwrap();
}
