//! Crashes: SIGKILL at random moments of creates and deletes, and a process frozen past its
//! lease whose late write is fenced.

use std::collections::BTreeSet;
use std::time::Duration;

use rand::Rng;
use rand::SeedableRng;
use rand::rngs::StdRng;
use sandboxd_api::v1;
use sandboxd_testkit::{AppConfig, SandboxRequests, new_chat_id, spawn_app_with};
use tonic::Code;

use super::{assert_invariant, repairing_config};

/// ≥ 20 SIGKILLs at random moments of creates and deletes, restarting each time; then one
/// reconcile pass (short grace) restores the invariant.
#[tokio::test]
async fn sigkill_during_creates_then_reconcile_restores_the_invariant() {
    let mut app = spawn_app_with(AppConfig {
        lock_wait: "3s".to_owned(),
        ..repairing_config("1h")
    })
    .await;
    let mut rng = StdRng::seed_from_u64(8);
    // Many chats: a chat whose lock died with the last process stays busy for up to lock_ttl.
    let chats: Vec<(String, String)> = (0..80)
        .map(|i| (new_chat_id(), app.new_volume(&format!("c{i}"))))
        .collect();
    let kills = 22;
    let (mut created, mut deleted) = (0usize, 0usize);
    for _ in 0..kills {
        let mut calls = Vec::new();
        for _ in 0..4 {
            let (chat, volume) = chats[rng.random_range(0..chats.len())].clone();
            let api = app.api.clone();
            let delete = rng.random_bool(0.2);
            calls.push(tokio::spawn(async move {
                let outcome = if delete {
                    api.delete(&chat).await.map(drop)
                } else {
                    api.create(&chat, "default", &volume).await.map(drop)
                };
                (delete, outcome.is_ok())
            }));
        }
        // Random moments across a create's whole life (engine create, start, readiness, save).
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..1500))).await;
        app.kill9().await;
        for call in calls {
            match call.await {
                Ok((true, true)) => deleted += 1,
                Ok((false, true)) => created += 1,
                _ => {}
            }
        }
        app.restart().await;
    }
    // Past the grace and the leases of the killed processes: the next pass may repair anything.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let report = app.reconcile().await.expect("reconcile");
    assert_eq!(report.error_count, 0, "{report:?}");
    let (containers, sessions, gauge) = assert_invariant(&app, &app.http_addr.to_string()).await;
    eprintln!(
        "crash: {kills} kills, {created} creates and {deleted} deletes answered before a kill, reconcile removed {} containers and {} sessions; containers {containers} == sessions {sessions} == gauge {gauge}",
        report.removed_container_ids.len(),
        report.removed_sandboxes.len()
    );
}

/// Process A's lease expires while its slow create waits for readiness (A is frozen with
/// SIGSTOP); process B takes the chat and creates. When A resumes, its write is fenced: ABORTED,
/// and its container is removed. The chat ends with B's one container.
#[tokio::test]
async fn a_stale_lease_holder_cannot_commit_and_removes_its_container() {
    let slow = format!(
        "{}command = [\"/bin/busybox\", \"sh\", \"-c\", \"sleep 3; exec /bin/busybox httpd -f -p 8080 -h /workspace\"]\nready_timeout = \"10s\"\n",
        AppConfig::busybox_profile()
    );
    let app = spawn_app_with(
        AppConfig {
            lock_ttl: "2s".to_owned(),
            lock_wait: "8s".to_owned(),
            extra_toml: "reconcile_interval = \"0s\"\n".to_owned(),
            ..AppConfig::default()
        }
        .with_agent("slow", &slow),
    )
    .await;
    let peer = app.spawn_peer().await;
    let chat = new_chat_id();
    let volume = app.new_volume("slow");
    let stale = {
        let (api, chat, volume) = (app.api.clone(), chat.clone(), volume.clone());
        tokio::spawn(async move { api.create(&chat, "slow", &volume).await })
    };
    // A's container exists (it is waiting for readiness): freeze A past its lease.
    app.wait_for_a_container().await;
    app.signal("STOP");
    let fresh = peer.create(&chat, "slow", &volume).await;
    app.signal("CONT");
    let fresh = fresh.unwrap_or_else(|s| panic!("B: {s:?}\n{}", peer.log()));
    assert_eq!(fresh.result, v1::CreateSandboxResult::Created as i32);
    let stale = stale.await.unwrap();
    let status = stale.expect_err("the stale holder's create must not commit");
    assert_eq!(status.code(), Code::Aborted, "{status:?}\n{}", app.log());
    let fresh = fresh.sandbox.unwrap();
    let ids = app.container_ids().await;
    assert_eq!(
        ids,
        BTreeSet::from([fresh.container_id.clone()]),
        "{}",
        app.log()
    );
    let current = app.live_sandbox(&chat).await;
    assert_eq!(current.session_id, fresh.session_id);
    drop(peer);
}
