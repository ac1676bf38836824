//! The fleet harness (issue 19, not wired into the service yet): three Docker engines in network
//! namespaces (`scripts/lib/fleet.sh`), one Redis on the host bound to the host ends of their
//! links, and a sandboxd inside each node driving its own engine. Today each node serves the chats
//! created through it; the fleet's routing, placement and node loss are still to be built (see
//! `docs/fleet-design.md`). Needs root and starts three dockerd: `scripts/test-extra` runs it.

use std::time::Duration;

use sandboxd_api::v1;
use sandboxd_api::v1::sandbox_service_client::SandboxServiceClient;
use sandboxd_testkit::fleet::{Fleet, start_node_sandboxd};
use sandboxd_testkit::{AppConfig, RedisServer, new_chat_id};

#[tokio::test]
#[ignore = "three engines in network namespaces: scripts/test-extra runs it"]
async fn three_nodes_each_serve_their_chats_on_their_own_address() {
    let fleet = Fleet::up("sbxf", 3).expect("fleet_up");
    let dir = tempfile::tempdir().unwrap();
    let volumes = tempfile::tempdir().unwrap();
    let bind: Vec<String> = std::iter::once("127.0.0.1".to_owned())
        .chain(fleet.nodes.iter().map(|n| n.host_address.clone()))
        .collect();
    let bind = bind.join(" ");
    let redis = RedisServer::start_with(dir.path(), &["--bind", &bind, "--protected-mode", "no"])
        .await
        .unwrap();
    let port = redis.port();
    let prefix = format!(
        "e2e-fleet-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let mut processes = Vec::new();
    for node in &fleet.nodes {
        let url = format!("redis://{}:{port}", node.host_address);
        let process = start_node_sandboxd(
            node,
            AppConfig::default(),
            &url,
            &prefix,
            volumes.path(),
            dir.path(),
        )
        .await
        .unwrap_or_else(|error| panic!("node {}: {error}", node.index));
        assert_eq!(process.grpc_addr.ip().to_string(), node.address);
        processes.push(process);
    }
    for (node, process) in fleet.nodes.iter().zip(&processes) {
        let mut api = SandboxServiceClient::connect(format!("http://{}", process.grpc_addr))
            .await
            .unwrap();
        let chat = new_chat_id();
        let volume = volumes.path().join(format!("n{}", node.index));
        std::fs::create_dir(&volume).unwrap();
        std::fs::write(volume.join("index.html"), format!("node {}\n", node.index)).unwrap();
        let sandbox = api
            .create_sandbox(v1::CreateSandboxRequest {
                chat_id: chat.clone(),
                agent_id: "default".to_owned(),
                volume_host_path: volume.display().to_string(),
            })
            .await
            .unwrap()
            .into_inner()
            .sandbox
            .unwrap();
        let endpoint = sandbox.endpoint.unwrap();
        assert_eq!(
            endpoint.ip, node.address,
            "published on the node's own address"
        );
        let (status, body) =
            sandboxd_testkit::http_get(&format!("{}:{}", endpoint.ip, endpoint.port), "/")
                .await
                .unwrap();
        assert_eq!((status, body), (200, format!("node {}\n", node.index)));
        api.delete_sandbox(v1::DeleteSandboxRequest { chat_id: chat })
            .await
            .unwrap();
    }
    for process in processes {
        process.stop(Duration::from_secs(20)).await.unwrap();
    }
    drop(redis);
    drop(fleet);
}
