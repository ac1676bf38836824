//! Chaos: two sandboxd replicas on one Redis (AOF, `appendfsync always`) and one engine, 16
//! clients doing random create/delete/extend/get over 40 chats for 60 s; one replica SIGKILLed at
//! 18 s (its clients switch to the other), Redis SIGKILLed at 36 s and restarted from its AOF 3 s
//! later.
//! The engine is sampled every 0.5 s: no chat may ever have two running containers. After the
//! load, one reconcile pass makes containers == sessions == `sandbox_active_count`, and deleting
//! every chat leaves no container at all.
//!
//! Over a minute of load on both cores: ignored by `cargo test`, run by scripts/test-extra.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sandboxd_testkit::{AppConfig, SandboxRequests, new_chat_id, spawn_app_with};
use tokio::time::sleep_until;
use tonic::{Code, Status};

use super::{Api, DoubleSampler, active_gauge, assert_invariant, repairs};

const CHATS: usize = 40;
const CLIENTS: u64 = 16;
const LOAD: Duration = Duration::from_secs(60);
const KILL_REPLICA_AT: Duration = Duration::from_secs(18);
const KILL_REDIS_AT: Duration = Duration::from_secs(36);
/// How long Redis stays down after its SIGKILL: more than `lock_ttl` (2 s).
const REDIS_DOWN: Duration = Duration::from_secs(3);
const SAMPLE_EVERY: Duration = Duration::from_millis(500);
/// How long one operation may keep being retried through an outage before the test fails.
const RETRY_FOR: Duration = Duration::from_secs(30);
/// A key outside the test's prefix (invisible to the invariant), written before the Redis kill:
/// its presence afterwards shows the restart loaded the AOF.
const MARKER: &str = "chaos-marker";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Op {
    Create,
    Extend,
    Get,
    Delete,
}

/// The tally of one client (or all of them).
#[derive(Debug, Default)]
struct Tally {
    /// Calls answered, by operation and code (`Ok`, `NotFound`, `FailedPrecondition`).
    answered: BTreeMap<(Op, String), usize>,
    /// Attempts retried (UNAVAILABLE, ABORTED, or cut by the replica's death), by code.
    retried: BTreeMap<String, usize>,
}

impl Tally {
    fn add(&mut self, other: Self) {
        for (key, n) in other.answered {
            *self.answered.entry(key).or_default() += n;
        }
        for (key, n) in other.retried {
            *self.retried.entry(key).or_default() += n;
        }
    }
}

/// Where a client sends its calls: its replica while that lives, else the survivor.
#[derive(Clone)]
struct Route {
    survivor: Api,
    peer: Option<Api>,
    peer_alive: Arc<AtomicBool>,
}

impl Route {
    /// The client to use now, and whether it is the (mortal) peer.
    fn pick(&self) -> (&Api, bool) {
        match &self.peer {
            Some(peer) if self.peer_alive.load(Ordering::SeqCst) => (peer, true),
            _ => (&self.survivor, false),
        }
    }
}

async fn call(api: &Api, op: Op, chat: &str, volume: &str, ttl: u64) -> Result<(), Status> {
    match op {
        Op::Create => api.create(chat, "default", volume).await.map(drop),
        Op::Extend => {
            let ttl = Some(Duration::from_secs(ttl));
            api.extend(chat, ttl).await.map(drop)
        }
        Op::Get => api.get(chat).await.map(drop),
        Op::Delete => api.delete(chat).await.map(drop),
    }
}

/// One call, retried through outages (UNAVAILABLE, ABORTED) and through the peer's death (any
/// failure of a call the dead peer was serving) for up to `RETRY_FOR`. NOT_FOUND and
/// FAILED_PRECONDITION are answers of a racing workload; anything else fails the client.
async fn call_retrying(
    route: &Route,
    op: Op,
    chat: &str,
    volume: &str,
    ttl: u64,
    tally: &mut Tally,
) -> Result<(), String> {
    let started = Instant::now();
    loop {
        let (api, on_peer) = route.pick();
        let outcome = call(api, op, chat, volume, ttl).await;
        let code = match &outcome {
            Ok(()) => "Ok".to_owned(),
            Err(status) => format!("{:?}", status.code()),
        };
        match outcome {
            Ok(()) => {}
            Err(status) if matches!(status.code(), Code::NotFound | Code::FailedPrecondition) => {}
            Err(status)
                if matches!(status.code(), Code::Unavailable | Code::Aborted)
                    || (on_peer && !route.peer_alive.load(Ordering::SeqCst)) =>
            {
                *tally.retried.entry(code).or_default() += 1;
                if started.elapsed() > RETRY_FOR {
                    return Err(format!(
                        "{op:?} {chat}: still failing after {RETRY_FOR:?}: {status:?}"
                    ));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Err(status) => return Err(format!("{op:?} {chat}: {status:?}")),
        }
        *tally.answered.entry((op, code)).or_default() += 1;
        return Ok(());
    }
}

/// One client: random operations on random chats until `until`.
async fn client(
    seed: u64,
    route: Route,
    chats: Arc<Vec<(String, String)>>,
    until: Instant,
) -> Result<Tally, String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut tally = Tally::default();
    while Instant::now() < until {
        let (chat, volume) = &chats[rng.random_range(0..chats.len())];
        let (op, ttl) = match rng.random_range(0..100) {
            0..35 => (Op::Create, 0),
            // Some sessions expire at once, so creates also replace.
            35..55 => (Op::Extend, if rng.random_bool(0.3) { 1 } else { 600 }),
            55..75 => (Op::Get, 0),
            _ => (Op::Delete, 0),
        };
        call_retrying(&route, op, chat, volume, ttl, &mut tally).await?;
    }
    Ok(tally)
}

#[tokio::test]
#[ignore = "slow: 60 s of load on both cores; scripts/test-extra runs it"]
async fn replica_and_redis_killed_under_random_load_keep_one_container_per_chat() {
    let mut app = spawn_app_with(AppConfig {
        session_ttl: "10m".to_owned(),
        cleanup_interval: "2s".to_owned(),
        // The dead replica's leases free in 2 s; both replicas reconcile every 2 s meanwhile.
        lock_ttl: "2s".to_owned(),
        profile_extra: "ready_timeout = \"5s\"".to_owned(),
        extra_toml: "reconcile_interval = \"2s\"\nreconcile_grace = \"10s\"\n".to_owned(),
        ..AppConfig::default()
    })
    .await;
    // The same port with AOF from here on, so the SIGKILL at 36 s loses no acknowledged write.
    let aof_dir = app.scratch.path().join("redis");
    std::fs::create_dir_all(&aof_dir).expect("creating the AOF dir");
    app.redis
        .restart_with_aof(&aof_dir)
        .await
        .expect("restarting redis-server with AOF");
    let mut peer = Some(app.spawn_peer().await);
    let chats: Arc<Vec<(String, String)>> = Arc::new(
        (0..CHATS)
            .map(|i| (new_chat_id(), app.new_volume(&format!("chat-{i}"))))
            .collect(),
    );
    let peer_alive = Arc::new(AtomicBool::new(true));

    let started = Instant::now();
    let sampler = DoubleSampler::start(&app, SAMPLE_EVERY);
    let mut clients = Vec::new();
    for seed in 0..CLIENTS {
        let route = Route {
            survivor: app.new_client().await,
            peer: (seed % 2 == 1).then(|| peer.as_ref().expect("peer").api.clone()),
            peer_alive: Arc::clone(&peer_alive),
        };
        clients.push(tokio::spawn(client(
            seed,
            route,
            Arc::clone(&chats),
            started + LOAD,
        )));
    }

    sleep_until((started + KILL_REPLICA_AT).into()).await;
    let peer_http = peer.as_ref().expect("peer").http_addr.to_string();
    let peer_repairs = repairs(&peer_http).await;
    peer_alive.store(false, Ordering::SeqCst);
    peer.as_ref().expect("peer").signal("KILL");
    eprintln!("{:?}: replica SIGKILLed", started.elapsed());

    sleep_until((started + KILL_REDIS_AT).into()).await;
    let _: () = redis::cmd("SET")
        .arg(MARKER)
        .arg("1")
        .query_async(&mut app.redis_connection().await)
        .await
        .expect("SET marker");
    let killed_at = started.elapsed();
    let down = Instant::now();
    // SIGKILL, down for longer than a lease lives (leases held across the outage are lost), then
    // the same port and dir: the AOF is loaded again.
    app.redis.stop();
    tokio::time::sleep(REDIS_DOWN).await;
    app.redis.restart().await.expect("restarting redis-server");
    eprintln!(
        "{killed_at:?}: Redis SIGKILLed, serving again {:?} later",
        down.elapsed()
    );
    // Serving means answering PING; the AOF may still be loading (LOADING) for a moment.
    let loaded_by = Instant::now() + Duration::from_secs(10);
    let marker: Option<String> = loop {
        match redis::cmd("GET")
            .arg(MARKER)
            .query_async(&mut app.redis_connection().await)
            .await
        {
            Err(error)
                if error.kind()
                    == redis::ErrorKind::Server(redis::ServerErrorKind::BusyLoading)
                    && Instant::now() < loaded_by =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            result => break result.expect("GET marker"),
        }
    };
    assert_eq!(
        marker.as_deref(),
        Some("1"),
        "Redis came back without its AOF"
    );

    let mut tally = Tally::default();
    let mut failures = Vec::new();
    for task in clients {
        match task.await.expect("client task") {
            Ok(one) => tally.add(one),
            Err(failure) => failures.push(failure),
        }
    }
    let load_took = started.elapsed();
    let sampled = sampler.finish().await;
    let peer_log = peer
        .as_ref()
        .map(sandboxd_testkit::Peer::log)
        .unwrap_or_default();
    drop(peer.take());
    eprintln!(
        "chaos load: {load_took:?}, {} engine samples, max running containers per chat {}, \
         doubles {:?}\nanswered {:?}\nretried {:?}",
        sampled.samples, sampled.max_per_chat, sampled.doubles, tally.answered, tally.retried
    );
    assert!(
        failures.is_empty(),
        "clients failed: {failures:#?}\n--- survivor ---\n{}\n--- killed replica ---\n{peer_log}",
        app.log()
    );
    if !sampled.doubles.is_empty() {
        eprintln!(
            "--- survivor ---\n{}\n--- killed replica ---\n{peer_log}",
            app.log()
        );
    }
    sampled.assert_no_doubles();

    // Quiet: sessions extended by 1 s expire and the cleanup loop (2 s) ends them.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let report = app.reconcile().await.expect("reconcile");
    let http = app.http_addr.to_string();
    let survivor_repairs = repairs(&http).await;
    let log = app.log();
    let logged = |event: &str| {
        let count = |log: &str| log.lines().filter(|l| l.contains(event)).count();
        count(&log) + count(&peer_log)
    };
    eprintln!(
        "final pass: adopted {}, containers removed {}, sessions removed {}, errors {}; \
         repairs by /metrics: killed replica (at 18 s) {peer_repairs:?}, survivor {survivor_repairs:?}; \
         logged by both: adopted {}, stray removed {}, orphan container removed {}, orphan \
         session removed {}, compensation failed {}",
        report.adopted_sandboxes.len(),
        report.removed_container_ids.len(),
        report.removed_sandboxes.len(),
        report.error_count,
        logged("sandbox_adopted"),
        logged("sandbox_stray_container_removed"),
        logged("sandbox_orphan_container_removed"),
        logged("sandbox_orphan_session_removed"),
        logged("sandbox_compensation_failed"),
    );
    eprintln!(
        "at the end: containers {}, sessions {}, sandbox_active_count {:?}",
        app.containers().await.len(),
        app.all_sandboxes().await.expect("list").len(),
        active_gauge(&http).await
    );
    assert_eq!(report.error_count, 0, "{log}");
    let (containers, sessions, gauge) = assert_invariant(&app, &http).await;
    eprintln!("invariant: containers {containers} == sessions {sessions} == gauge {gauge}");

    let route = Route {
        survivor: app.api.clone(),
        peer: None,
        peer_alive: Arc::new(AtomicBool::new(false)),
    };
    let mut deletes = Tally::default();
    for (chat, volume) in chats.iter() {
        call_retrying(&route, Op::Delete, chat, volume, 0, &mut deletes)
            .await
            .unwrap_or_else(|failure| panic!("{failure}\n{}", app.log()));
    }
    let left = app.containers().await;
    let sessions_left = app.all_sandboxes().await.expect("list").len();
    eprintln!(
        "after deleting every chat: {} containers left, {sessions_left} sessions ({:?})",
        left.len(),
        deletes.answered
    );
    assert!(left.is_empty(), "containers left: {left:?}\n{}", app.log());
    assert_eq!(sessions_left, 0);
    assert_eq!(active_gauge(&http).await, Some(0.0));
}
