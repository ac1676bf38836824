//! A bounded soak of create/delete cycles with the loops running (ignored by default).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sandboxd_api::v1;
use sandboxd_testkit::{AppConfig, new_chat_id, spawn_app_with};
use tonic::Code;

use super::{create_retrying, reconcile};

fn proc_figures(pid: u32) -> (usize, u64, u64) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(Iterator::count)
        .unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (fds, field("Threads:"), field("VmRSS:"))
}

/// Bounded soak: `SOAK_CYCLES` (default 2,000) create/delete cycles over 50 chats, 8 at a time,
/// with the cleanup and reconcile loops running. Run with
/// `cargo test --test e2e -- --ignored soak --nocapture`.
#[tokio::test]
#[ignore = "slow: about 15 minutes for 2,000 cycles"]
async fn soak_create_delete_cycles_leak_nothing() {
    let cycles: usize = std::env::var("SOAK_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let app = spawn_app_with(AppConfig {
        session_ttl: "20s".to_owned(),
        cleanup_interval: "5s".to_owned(),
        extra_toml: "reconcile_interval = \"10s\"\nreconcile_grace = \"30s\"\n".to_owned(),
        ..AppConfig::default()
    })
    .await;
    let chats: Arc<Vec<(String, String)>> = Arc::new(
        (0..50)
            .map(|i| (new_chat_id(), app.new_volume(&format!("s{i}"))))
            .collect(),
    );
    let done = Arc::new(AtomicUsize::new(0));
    let run = |count: usize| {
        let (chats, done) = (Arc::clone(&chats), Arc::clone(&done));
        let api = app.api.clone();
        async move {
            let mut workers = Vec::new();
            for worker in 0..8 {
                let (chats, done, api) = (Arc::clone(&chats), Arc::clone(&done), api.clone());
                workers.push(tokio::spawn(async move {
                    let mut i = worker;
                    while done.fetch_add(1, Ordering::SeqCst) < count {
                        let (chat, volume) = &chats[i % chats.len()];
                        i += 8;
                        create_retrying(&api, chat, volume).await.unwrap();
                        loop {
                            match api
                                .clone()
                                .delete_sandbox(v1::DeleteSandboxRequest {
                                    chat_id: chat.clone(),
                                })
                                .await
                            {
                                Err(s) if s.code() == Code::Aborted => {
                                    tokio::time::sleep(Duration::from_millis(50)).await
                                }
                                outcome => {
                                    outcome.unwrap();
                                    break;
                                }
                            }
                        }
                    }
                }));
            }
            for worker in workers {
                worker.await.unwrap();
            }
        }
    };
    let started = Instant::now();
    let warm_up = (cycles / 10).max(20);
    run(warm_up).await;
    let (fds0, threads0, rss0) = proc_figures(app.pid());
    done.store(0, Ordering::SeqCst);
    run(cycles - warm_up.min(cycles)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (fds1, threads1, rss1) = proc_figures(app.pid());
    let report = reconcile(&app.api).await;
    assert_eq!(report.error_count, 0);
    assert!(app.container_ids().await.is_empty(), "leaked containers");
    let keys: Vec<String> = app
        .redis_keys()
        .await
        .into_iter()
        .filter(|k| !k.ends_with(":expiry"))
        .collect();
    assert!(keys.is_empty(), "leaked keys {keys:?}");
    eprintln!(
        "soak: {cycles} cycles in {:?}; after warm-up fds {fds0} threads {threads0} rss {rss0} kB; end fds {fds1} threads {threads1} rss {rss1} kB",
        started.elapsed()
    );
    assert!(fds1 <= fds0 + 4, "fds {fds0} -> {fds1}");
    assert!(threads1 <= threads0 + 2, "threads {threads0} -> {threads1}");
    #[allow(clippy::cast_precision_loss)]
    let growth = rss1 as f64 / rss0.max(1) as f64;
    assert!(growth <= 1.2, "rss {rss0} -> {rss1} kB");
}
