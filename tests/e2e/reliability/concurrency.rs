//! Concurrency: many creates for one chat, and two processes sharing Redis under random load,
//! watched by a sampler that fails the test if a chat ever had two live containers.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use rand::SeedableRng;
use rand::rngs::StdRng;
use sandboxd_api::v1;
use sandboxd_testkit::{AppConfig, SandboxRequests, new_chat_id, spawn_app_with};
use tonic::Code;

use super::{DoubleSampler, assert_invariant, repairing_config};

#[tokio::test]
async fn sixty_four_concurrent_creates_for_one_chat_make_one_container() {
    let app = spawn_app_with(AppConfig::default()).await;
    let chat = new_chat_id();
    let volume = app.new_volume("one");
    let mut calls = Vec::new();
    for _ in 0..64 {
        let api = app.new_client().await;
        let (chat, volume) = (chat.clone(), volume.clone());
        calls.push(tokio::spawn(async move {
            api.create_retrying(&chat, "default", &volume).await
        }));
    }
    let mut sessions = BTreeSet::new();
    let mut created = 0;
    for call in calls {
        let response = call
            .await
            .unwrap()
            .unwrap_or_else(|status| panic!("create: {status:?}\n{}", app.log()));
        if response.result == v1::CreateSandboxResult::Created as i32 {
            created += 1;
        }
        sessions.insert(response.sandbox.unwrap().session_id);
    }
    assert_eq!(sessions.len(), 1, "answers named {sessions:?}");
    assert_eq!(created, 1);
    let containers = app.containers().await;
    assert_eq!(containers.len(), 1);
    assert_eq!(
        app.label(&containers[0], "chat_id").as_deref(),
        Some(chat.as_str())
    );
    assert_eq!(
        app.label(&containers[0], "session_id"),
        sessions.into_iter().next()
    );
}

/// 200 chats, 16 client tasks over two processes, random create/reuse/extend/delete/cleanup.
/// Scaled for 2 cores: 16 × 30 operations, so about 150 containers are started in all.
#[tokio::test]
async fn two_processes_sharing_redis_keep_one_container_per_chat_under_random_load() {
    let app = spawn_app_with(AppConfig {
        session_ttl: "10m".to_owned(),
        cleanup_interval: "2s".to_owned(),
        // Both processes also reconcile every second with a short grace, racing the creates.
        ..repairing_config("1s")
    })
    .await;
    let peer = app.spawn_peer().await;
    let chats: Arc<Vec<(String, String)>> = Arc::new(
        (0..200)
            .map(|i| (new_chat_id(), app.new_volume(&format!("chat-{i}"))))
            .collect(),
    );
    let sampler = DoubleSampler::start(&app, Duration::from_millis(150));
    let ops = Arc::new(Mutex::new(BTreeMap::<&'static str, usize>::new()));
    let mut tasks = Vec::new();
    for task in 0..16u64 {
        let api = if task % 2 == 0 {
            app.new_client().await
        } else {
            peer.api.clone()
        };
        let (chats, ops) = (Arc::clone(&chats), Arc::clone(&ops));
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(task);
            for _ in 0..30 {
                let (chat, volume) = &chats[rng.random_range(0..chats.len())];
                let roll = rng.random_range(0..100);
                let (name, outcome) = match roll {
                    0..35 => (
                        "create",
                        api.create_retrying(chat, "default", volume).await.map(drop),
                    ),
                    35..55 => {
                        let ttl = if rng.random_bool(0.3) { 1 } else { 600 };
                        let ttl = Some(Duration::from_secs(ttl));
                        ("extend", api.extend(chat, ttl).await.map(drop))
                    }
                    55..75 => ("get", api.get(chat).await.map(drop)),
                    75..93 => ("delete", api.delete(chat).await.map(drop)),
                    _ => ("cleanup", api.cleanup().await.map(drop)),
                };
                match outcome {
                    Ok(()) => {}
                    // Expected answers of a racing workload: no sandbox, an expired one, a busy chat.
                    Err(status)
                        if matches!(
                            status.code(),
                            Code::NotFound | Code::FailedPrecondition | Code::Aborted
                        ) => {}
                    Err(status) => panic!("{name} {chat}: {status:?}"),
                }
                *ops.lock().unwrap().entry(name).or_default() += 1;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap_or_else(|e| {
            panic!(
                "{e}\n--- app ---\n{}\n--- peer ---\n{}",
                app.log(),
                peer.log()
            )
        });
    }
    let sampled = sampler.finish().await;
    sampled.assert_no_doubles();
    let samples = sampled.samples;
    // Without crashes nothing is ever an orphan: a repair here would mean the reconcile loops
    // raced an in-flight create or delete (which the workload, tolerating NOT_FOUND, would hide).
    for (who, log) in [("app", app.log()), ("peer", peer.log())] {
        let repairs: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("sandbox_orphan_"))
            .collect();
        assert!(
            repairs.is_empty(),
            "{who} reconciled live state:\n{}",
            repairs.join("\n")
        );
    }
    // Quiet now: one reconcile pass refreshes the gauge from the store on the process we scrape.
    let report = app.reconcile().await.expect("reconcile");
    assert_eq!(report.error_count, 0);
    let (containers, sessions, gauge) = assert_invariant(&app, &app.http_addr.to_string()).await;
    eprintln!(
        "two processes: ops {:?}, {samples} docker samples, containers {containers} == sessions {sessions} == gauge {gauge}",
        ops.lock().unwrap()
    );
    drop(peer);
}
