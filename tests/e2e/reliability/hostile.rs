//! Hostile input across all RPCs (the kit's one table) against a real store and engine, and a
//! message beyond the server's decoding limit.

use std::collections::BTreeMap;
use std::time::Duration;

use sandboxd_api::v1;
use sandboxd_testkit::hostile::{self, hostile_cases};
use sandboxd_testkit::{AppConfig, TestApp, spawn_app_with};
use tonic::Code;

/// A snapshot of every key under the test's prefix with its value (type-aware), so "nothing
/// changed" covers values, not just names.
async fn redis_dump(app: &TestApp) -> BTreeMap<String, String> {
    let mut con = app.redis_connection().await;
    let mut dump = BTreeMap::new();
    for key in app.redis_keys().await {
        let kind: String = redis::cmd("TYPE")
            .arg(&key)
            .query_async(&mut con)
            .await
            .unwrap();
        let value = match kind.as_str() {
            "string" => redis::cmd("GET")
                .arg(&key)
                .query_async::<String>(&mut con)
                .await
                .unwrap(),
            "hash" => format!(
                "{:?}",
                redis::cmd("HGETALL")
                    .arg(&key)
                    .query_async::<BTreeMap<String, String>>(&mut con)
                    .await
                    .unwrap()
            ),
            "zset" => format!(
                "{:?}",
                redis::cmd("ZRANGE")
                    .arg(&key)
                    .arg(0)
                    .arg(-1)
                    .arg("WITHSCORES")
                    .query_async::<Vec<String>>(&mut con)
                    .await
                    .unwrap()
            ),
            // The event log: a refused call appends nothing.
            "stream" => format!(
                "{:?}",
                redis::cmd("XRANGE")
                    .arg(&key)
                    .arg("-")
                    .arg("+")
                    .query_async::<Vec<(String, Vec<String>)>>(&mut con)
                    .await
                    .unwrap()
            ),
            other => other.to_owned(),
        };
        dump.insert(key, value);
    }
    dump
}

/// Every case of the table gets its documented code and names its field, and no Redis key or
/// value and no container was created or changed.
#[tokio::test]
async fn hostile_requests_get_their_code_and_field_and_change_nothing() {
    let app = spawn_app_with(AppConfig {
        max_ttl: "1h".to_owned(),
        ..AppConfig::default()
    })
    .await;
    let targets = hostile::setup(&app, Duration::from_secs(3600)).await;
    let cases = hostile_cases(&targets);
    assert!(cases.len() >= 40, "{}", cases.len());

    let keys_before = redis_dump(&app).await;
    let containers_before = app.container_ids().await;
    let mut failures = Vec::new();
    for case in &cases {
        failures.extend(case.run(&app.api).await);
    }
    // Beyond the server's decoding limit (tonic's 4 MiB): refused before any handler runs.
    let huge = v1::CreateSandboxRequest {
        chat_id: targets.fresh_chat.clone(),
        agent_id: "default".to_owned(),
        volume_host_path: format!("/{}", "a".repeat(5 << 20)),
    };
    let status = app
        .api
        .clone()
        .max_encoding_message_size(16 << 20)
        .create_sandbox(huge)
        .await
        .unwrap_err();
    if !matches!(status.code(), Code::OutOfRange | Code::ResourceExhausted) {
        failures.push(format!("5 MiB message: {status:?}"));
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    assert_eq!(redis_dump(&app).await, keys_before, "Redis changed");
    assert_eq!(
        app.container_ids().await,
        containers_before,
        "containers changed"
    );
    eprintln!("hostile input: {} cases + 1 oversized message", cases.len());
}
