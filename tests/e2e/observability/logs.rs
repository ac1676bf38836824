//! Log lines: JSON objects with the outcome events, and plain text without span fields.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use sandboxd_api::v1;
use tonic::{Code, Request};

use sandboxd_testkit::{AppConfig, SandboxRequests, new_chat_id, spawn_app_with};

#[tokio::test]
async fn json_logs_are_one_object_per_line_with_the_outcome_events() {
    let token = "tok-3f9a1c77e2b54d0c9aa1";
    let app = spawn_app_with(AppConfig {
        extra_toml: "log_format = \"json\"\nlog_spans = true\n".to_owned(),
        auth_token: Some(token.to_owned()),
        env: vec![("RUST_LOG".to_owned(), "debug".to_owned())],
        ..AppConfig::default()
    })
    .await;
    let mut api = app.api.clone();
    let chat_id = new_chat_id();
    let volume = app.new_volume("logged");
    let authorized = |message| {
        let mut request = Request::new(message);
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        request
    };
    let request = |agent: &str| v1::CreateSandboxRequest {
        chat_id: chat_id.clone(),
        agent_id: agent.to_owned(),
        volume_host_path: volume.clone(),
    };
    api.create_sandbox(authorized(request("default")))
        .await
        .unwrap();
    api.create_sandbox(authorized(request("default")))
        .await
        .unwrap();
    let conflict = api
        .create_sandbox(authorized(request("other")))
        .await
        .unwrap_err();
    assert_eq!(conflict.code(), Code::AlreadyExists);
    // Give the last lines time to be written.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let log = app.log();
    let mut events: HashMap<String, serde_json::Value> = HashMap::new();
    for line in log.lines().filter(|line| !line.trim().is_empty()) {
        let object: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(object.is_object(), "{line}");
        if let Some(message) = object.get("message").and_then(|m| m.as_str()) {
            events.insert(message.to_owned(), object.clone());
        }
    }
    let created = &events["sandbox_created"];
    assert_eq!(created["chat_id"], chat_id.as_str(), "{created}");
    assert!(
        created["session_id"]
            .as_str()
            .is_some_and(|s| !s.is_empty()),
        "{created}"
    );
    assert!(
        created["container_id"]
            .as_str()
            .is_some_and(|s| !s.is_empty()),
        "{created}"
    );
    // With log_spans the line names the span it happened in.
    assert!(created["span"]["name"].is_string(), "{created}");
    let reused = &events["sandbox_reused"];
    assert_eq!(reused["chat_id"], chat_id.as_str(), "{reused}");
    let conflict = &events["sandbox_conflict"];
    assert_eq!(conflict["chat_id"], chat_id.as_str(), "{conflict}");
    assert!(
        conflict.to_string().contains("agent_id"),
        "the conflict names its reason: {conflict}"
    );
    assert!(!log.contains(token), "the auth token was logged");
}

#[tokio::test]
async fn by_default_log_lines_carry_the_event_fields_without_span_fields() {
    let app = spawn_app_with(AppConfig::default()).await;
    let chat_id = new_chat_id();
    let volume = app.new_volume("plain-log");
    app.create(&chat_id, "default", &volume).await.unwrap();

    // The line is written by the time the call returns, but read back by a pipe reader thread.
    let deadline = Instant::now() + Duration::from_secs(10);
    let created = loop {
        let log = app.log();
        if let Some(line) = log.lines().find(|line| line.contains("sandbox_created")) {
            break line.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no sandbox_created line in:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(created.contains(&format!("chat_id={chat_id}")), "{created}");
    assert!(created.contains("session_id="), "{created}");
    assert!(created.contains("container_id="), "{created}");
    // The spans' fields (RPC, use case) stay out of the line: they go to traces.
    assert!(!created.contains("grpc.request{"), "{created}");
    assert!(!created.contains("usecase.create_sandbox{"), "{created}");
}
