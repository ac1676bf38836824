//! Every bad field of every RPC (the kit's one hostile-input table) against the real process and
//! stores: the right code, a `BadRequest` violation naming the field, and nothing created: the set
//! of Redis keys under the test's prefix and the set of containers with its label are the same
//! before and after each case.

use std::collections::BTreeSet;
use std::time::Duration;

use sandboxd_testkit::hostile::{self, hostile_cases};
use sandboxd_testkit::{SandboxRequests, TestApp, spawn_app};

/// The Redis keys under the test's prefix and the containers with its label.
async fn state_snapshot(app: &TestApp) -> (BTreeSet<String>, BTreeSet<String>) {
    (app.redis_keys().await, app.container_ids().await)
}

#[tokio::test]
async fn every_bad_field_of_every_rpc_is_refused_without_touching_the_stores() {
    // The default config's max_ttl.
    let app = spawn_app().await;
    let targets = hostile::setup(&app, Duration::from_secs(24 * 3600)).await;
    let live_chat = targets.live_chat.clone();

    let before = state_snapshot(&app).await;
    assert_eq!(before.1.len(), 1);
    let live_before = app.live_sandbox(&live_chat).await;
    let mut failures = Vec::new();
    for case in hostile_cases(&targets) {
        failures.extend(case.run(&app.api).await);
        let after = state_snapshot(&app).await;
        if after != before {
            failures.push(format!(
                "{}: changed the stores: {before:?} -> {after:?}",
                case.what
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The live sandbox is untouched (same session, same expiry, same volume).
    let live = app.live_sandbox(&live_chat).await;
    assert_eq!(live.session_id, live_before.session_id);
    assert_eq!(live.expires_at, live_before.expires_at);
    assert_eq!(live.volume_host_path, live_before.volume_host_path);
}
