//! Checks of the harness itself: a spawned server is reachable and healthy, and everything it
//! started is gone after the handle drops.

use std::time::Duration;

use tonic_health::pb::health_check_response::ServingStatus;

use sandboxd_testkit::{SandboxRequests, new_chat_id, spawn_app};

#[tokio::test]
async fn spawned_server_is_serving_and_cleans_up_after_itself() {
    let app = spawn_app().await;
    assert_eq!(
        app.health_status(sandboxd_api::SERVICE_NAME).await.unwrap(),
        ServingStatus::Serving
    );
    let (status, body) = sandboxd_testkit::http_get(&app.http_addr.to_string(), "/healthz")
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");

    let created = app
        .create(&new_chat_id(), "default", &app.new_volume("smoke"))
        .await
        .unwrap();
    let container_id = created.sandbox.unwrap().container_id;
    assert_eq!(app.container_ids().await.len(), 1);

    let prefix = app.prefix.clone();
    let redis_url = app.redis.url();
    let volume_root = app.volume_root.path().to_path_buf();
    let docker = app.docker.clone();
    drop(app);

    // The container (by label), Redis and the volume root are gone.
    assert!(docker.inspect_container(&container_id, None).await.is_err());
    let filter = format!("label={prefix}.managed-by");
    let listed = std::process::Command::new("docker")
        .args(["ps", "-aq", "--filter", &filter])
        .output()
        .unwrap();
    assert!(listed.stdout.is_empty(), "containers left: {listed:?}");
    assert!(!volume_root.exists());
    let client = redis::Client::open(redis_url).unwrap();
    let connect = tokio::time::timeout(
        Duration::from_secs(2),
        client.get_multiplexed_async_connection(),
    )
    .await;
    assert!(!matches!(connect, Ok(Ok(_))), "redis still answers");
}
