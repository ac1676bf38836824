//! Graceful shutdown of the real process: SIGTERM while a create is in flight lets the create
//! finish, reports NOT_SERVING meanwhile, refuses new calls, and exits 0.

use std::time::{Duration, Instant};

use sandboxd_api::v1;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

use sandboxd_testkit::{
    AppConfig, SandboxRequests, http_get, new_chat_id, sandbox_image, spawn_app_with,
};

/// A profile whose httpd starts two seconds late: the ready probe keeps CreateSandbox in flight
/// long enough to signal the process in the middle of it.
fn slow_profile() -> String {
    format!(
        "image = \"{}\"\ncommand = [\"/bin/sh\", \"-c\", \"sleep 2; exec httpd -f -p 8080 -h /workspace\"]\n\
         port = 8080\nready_probe = \"http\"\nready_timeout = \"15s\"\nmemory = \"64m\"\n",
        sandbox_image()
    )
}

#[tokio::test]
async fn sigterm_during_a_create_finishes_it_reports_not_serving_and_exits_zero() {
    let mut app = spawn_app_with(AppConfig::default().with_agent("slow", &slow_profile())).await;
    let chat = new_chat_id();
    let volume = app.new_volume("slow");
    let client = app.new_client().await;
    let started = Instant::now();
    let in_flight = {
        let chat = chat.clone();
        tokio::spawn(async move { client.create(&chat, "slow", &volume).await })
    };

    // The container exists but the call has not returned: the create is in flight.
    app.wait_for_a_container().await;
    assert!(
        !in_flight.is_finished(),
        "the create finished too early to test the drain"
    );

    app.sigterm();
    app.wait_for_health(ServingStatus::NotServing).await;
    assert!(
        !in_flight.is_finished(),
        "NOT_SERVING must be reported while the create is still running"
    );
    // New calls are refused while draining; clients retry elsewhere.
    let refused = app.get(&chat).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");

    let created = in_flight
        .await
        .unwrap()
        .expect("the in-flight create completes");
    assert!(started.elapsed() >= Duration::from_secs(2));
    assert_eq!(created.result, v1::CreateSandboxResult::Created as i32);
    let endpoint = created.sandbox.unwrap().endpoint.unwrap();
    let (status, _) = http_get(&format!("{}:{}", endpoint.ip, endpoint.port), "/")
        .await
        .unwrap();
    assert!(status > 0, "the sandbox answers HTTP");

    let exit = app.wait_for_exit(Duration::from_secs(25)).await;
    assert_eq!(exit.code(), Some(0), "{exit}\n{}", app.log());
    let log = app.log();
    assert!(log.contains("shutdown_signal"), "{log}");
    assert!(log.contains("shutdown_complete"), "{log}");
}
