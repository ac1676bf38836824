//! The warm pool end to end (issue 18): a create of a pooled profile is served by a sandbox
//! started ahead of time, with the chat's own volume and environment from its command's first
//! instruction; claims never cross chats; the sandbox cannot unmount its workspace and is hardened
//! exactly like a cold one; an empty pool falls back to a cold create; SIGKILLs during claims and
//! a restart leave no container without a session and no slot mounted for nobody.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sandboxd_api::v1;
use sandboxd_testkit::{AppConfig, SandboxRequests, TestApp, new_chat_id, spawn_app_with};

/// Written by the test into each chat's volume before its create.
const MARKER: &str = "marker";

/// The pooled profile's command: its first instruction copies the chat's marker (so it must see
/// the volume at once), then records its environment, then serves the volume.
const COMMAND: &str = r#"command = ["/bin/busybox", "sh", "-c", "/bin/busybox cp marker served.txt && /bin/busybox env > env.txt && exec /bin/busybox httpd -f -p 8080 -h ."]"#;

/// Agents `pooled` (with `pool_size`) and `cold` (the same profile without a pool).
fn pool_config(pool_size: u32) -> AppConfig {
    let body = format!("{}{COMMAND}\n", AppConfig::busybox_profile());
    AppConfig {
        pool_waiter: true,
        ..AppConfig::default()
    }
    .with_agent("pooled", &format!("{body}pool_size = {pool_size}\n"))
    .with_agent("cold", &body)
}

/// A volume holding a marker naming `chat`.
fn volume_with_marker(app: &TestApp, name: &str, chat: &str) -> String {
    let volume = app.new_volume(name);
    std::fs::write(
        PathBuf::from(&volume).join(MARKER),
        format!("chat {chat}\n"),
    )
    .unwrap();
    volume
}

async fn metric(app: &TestApp, name: &str, labels: &str) -> f64 {
    sandboxd_testkit::metric_samples(&app.http_addr.to_string(), name)
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|(sample_labels, _)| sample_labels.contains(labels))
        .map(|(_, value)| value)
        .sum()
}

/// Waits until `ready` pooled sandboxes of `pooled` wait (the refill runs in the background).
async fn wait_for_pool(app: &TestApp, ready: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        #[allow(clippy::cast_precision_loss)]
        if metric(app, "sandbox_pool_ready", r#"agent="pooled""#).await >= ready as f64 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the pool never reached {ready}\n{}",
            app.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn get(sandbox: &v1::Sandbox, path: &str) -> (u16, String) {
    let endpoint = sandbox.endpoint.as_ref().expect("an endpoint");
    sandboxd_testkit::http_get(&format!("{}:{}", endpoint.ip, endpoint.port), path)
        .await
        .unwrap()
}

/// Ids of the containers carrying a pool slot: waiting or claimed.
async fn pooled_ids(app: &TestApp) -> BTreeSet<String> {
    app.containers()
        .await
        .into_iter()
        .filter(|c| app.label(c, "pool_slot").is_some())
        .filter_map(|c| c.id)
        .collect()
}

#[tokio::test]
async fn a_pooled_create_runs_the_command_in_the_chats_volume_with_its_environment() {
    let app = spawn_app_with(pool_config(2)).await;
    wait_for_pool(&app, 2).await;
    let waiting = pooled_ids(&app).await;
    let chat = new_chat_id();
    let volume = volume_with_marker(&app, "chat", &chat);
    let sandbox = app.create_ok(&chat, "pooled", &volume).await.sandbox;
    assert!(
        waiting.contains(&sandbox.container_id),
        "served by a sandbox that was waiting: {waiting:?} vs {}",
        sandbox.container_id
    );
    assert_eq!(
        metric(&app, "sandbox_pool_claims_total", r#"result="claimed""#).await,
        1.0
    );
    // The first instruction saw the chat's volume; the command's writes land in it.
    assert_eq!(
        get(&sandbox, "/served.txt").await,
        (200, format!("chat {chat}\n"))
    );
    let (status, env) = get(&sandbox, "/env.txt").await;
    assert_eq!(status, 200);
    for wanted in [
        format!("SANDBOX_CHAT_ID={chat}"),
        format!("SANDBOX_SESSION_ID={}", sandbox.session_id),
        "SANDBOX_AGENT_ID=pooled".to_owned(),
    ] {
        assert!(env.lines().any(|line| line == wanted), "{wanted} in {env}");
    }
    let host_volume = PathBuf::from(&volume);
    assert!(host_volume.join("served.txt").is_file() && host_volume.join("env.txt").is_file());

    // The sandbox cannot unmount or remount its workspace.
    let docker = &app.docker;
    for attempt in [
        vec!["/bin/busybox", "umount", "/workspace"],
        vec!["/bin/busybox", "umount", "-l", "/workspace"],
        vec!["/bin/busybox", "mount", "-o", "remount,ro", "/workspace"],
    ] {
        let _ = sandboxd_testkit::docker::exec(docker, &sandbox.container_id, &attempt).await;
    }
    assert_eq!(get(&sandbox, "/served.txt").await.0, 200);
    let probe = sandboxd_testkit::docker::exec(
        docker,
        &sandbox.container_id,
        &[
            "/bin/busybox",
            "sh",
            "-c",
            "echo still > /workspace/w && echo ok",
        ],
    )
    .await
    .unwrap();
    assert!(probe.contains("ok"), "{probe}");
    assert_eq!(
        std::fs::read_to_string(host_volume.join("w")).unwrap(),
        "still\n"
    );

    // Hardened exactly like a cold sandbox of the same profile.
    let cold_chat = new_chat_id();
    let cold_volume = volume_with_marker(&app, "cold", &cold_chat);
    let cold = app
        .create_ok(&cold_chat, "cold", &cold_volume)
        .await
        .sandbox;
    let pooled_host = hardening(&app, &sandbox.container_id).await;
    let cold_host = hardening(&app, &cold.container_id).await;
    assert_eq!(pooled_host, cold_host);

    // Deleted like any other: container gone, slot released; the waiting ones' slots are not
    // mounts, so only the slots root itself is left mounted.
    app.delete(&chat).await.unwrap();
    assert!(!app.container_exists(&sandbox.container_id).await);
    let slots = slot_mounts(&app);
    assert!(slots.is_empty(), "{slots:?}");
    // The volume itself is untouched by the release.
    assert_eq!(
        std::fs::read_to_string(host_volume.join(MARKER)).unwrap(),
        format!("chat {chat}\n")
    );
}

/// What limits a sandbox, from `docker inspect`.
async fn hardening(app: &TestApp, id: &str) -> BTreeMap<&'static str, String> {
    let inspect = app.docker.inspect_container(id, None).await.unwrap();
    let host = inspect.host_config.unwrap_or_default();
    let config = inspect.config.unwrap_or_default();
    BTreeMap::from([
        ("cap_add", format!("{:?}", host.cap_add)),
        ("cap_drop", format!("{:?}", host.cap_drop)),
        ("security_opt", format!("{:?}", host.security_opt)),
        ("privileged", format!("{:?}", host.privileged)),
        ("readonly_rootfs", format!("{:?}", host.readonly_rootfs)),
        ("memory", format!("{:?}", host.memory)),
        ("memory_swap", format!("{:?}", host.memory_swap)),
        ("nano_cpus", format!("{:?}", host.nano_cpus)),
        ("pids_limit", format!("{:?}", host.pids_limit)),
        ("init", format!("{:?}", host.init)),
        ("runtime", format!("{:?}", host.runtime)),
        ("network_mode", format!("{:?}", host.network_mode)),
        ("tmpfs", format!("{:?}", host.tmpfs)),
        ("port_bindings", format!("{:?}", host.port_bindings)),
        ("user", format!("{:?}", config.user)),
    ])
}

/// Mounts below the slots root now (the root itself excluded): each slot is bound onto itself,
/// and an attached volume is a second mount on the same slot.
fn mounts_below_slots(app: &TestApp) -> Vec<PathBuf> {
    let slots = app.scratch.path().join("pool/slots");
    let root = slots.canonicalize().unwrap_or(slots);
    sandboxd_testkit::pool::mounts_under(&root)
        .into_iter()
        .filter(|point| *point != root)
        .collect()
}

/// Slots with a chat's volume attached now.
fn slot_mounts(app: &TestApp) -> Vec<PathBuf> {
    let mounts = mounts_below_slots(app);
    let attached: BTreeSet<PathBuf> = mounts
        .iter()
        .filter(|point| mounts.iter().filter(|other| other == point).count() > 1)
        .cloned()
        .collect();
    attached.into_iter().collect()
}

/// `count` chats, each with a volume holding its marker.
fn chats_with_markers(app: &TestApp, count: usize) -> Vec<(String, String)> {
    (0..count)
        .map(|i| {
            let chat = new_chat_id();
            let volume = volume_with_marker(app, &format!("c{i}"), &chat);
            (chat, volume)
        })
        .collect()
}

/// Creates every chat's `pooled` sandbox at once; each serves its own chat's marker.
async fn create_all_serving(app: &TestApp, chats: &[(String, String)]) -> Vec<v1::Sandbox> {
    let created: Vec<v1::Sandbox> = futures::future::join_all(
        chats
            .iter()
            .map(|(chat, volume)| app.create_ok(chat, "pooled", volume)),
    )
    .await
    .into_iter()
    .map(|created| created.sandbox)
    .collect();
    for ((chat, _), sandbox) in chats.iter().zip(&created) {
        assert_eq!(
            get(sandbox, "/served.txt").await,
            (200, format!("chat {chat}\n"))
        );
    }
    created
}

#[tokio::test]
async fn concurrent_claims_each_get_their_own_chats_volume() {
    let app = spawn_app_with(pool_config(8)).await;
    wait_for_pool(&app, 8).await;
    let chats = chats_with_markers(&app, 8);
    let created = create_all_serving(&app, &chats).await;
    for ((chat, _), sandbox) in chats.iter().zip(&created) {
        let (_, env) = get(sandbox, "/env.txt").await;
        assert!(env.contains(&format!("SANDBOX_CHAT_ID={chat}")), "{env}");
    }
    assert_eq!(
        metric(&app, "sandbox_pool_claims_total", r#"result="claimed""#).await,
        8.0
    );
    assert_eq!(slot_mounts(&app).len(), 8);
}

#[tokio::test]
async fn an_empty_pool_falls_back_to_a_cold_create() {
    let app = spawn_app_with(pool_config(1)).await;
    wait_for_pool(&app, 1).await;
    let chats = chats_with_markers(&app, 3);
    // At once: one pooled sandbox for three creates.
    create_all_serving(&app, &chats).await;
    let claimed = metric(&app, "sandbox_pool_claims_total", r#"result="claimed""#).await;
    let empty = metric(&app, "sandbox_pool_claims_total", r#"result="empty""#).await;
    assert!(
        claimed >= 1.0 && claimed + empty == 3.0,
        "claimed {claimed}, empty {empty}"
    );
}

/// At least 10 SIGKILLs while claims run, restarting each time; then, past the reconcile grace,
/// one pass: every container but the waiting pooled ones has a session, every session's
/// container runs, and every mounted slot is a session's. Then the sessions are deleted and the
/// server stopped: no container and no slot mount is left.
#[tokio::test]
async fn sigkill_during_claims_then_restart_and_reconcile_leave_no_orphan() {
    let body = format!(
        "{}{COMMAND}\nready_timeout = \"2s\"\npool_size = 4\n",
        AppConfig::busybox_profile()
    );
    let mut config = AppConfig {
        pool_waiter: true,
        ..AppConfig::default()
    }
    .with_agent("pooled", &body);
    config.lock_ttl = "2s".to_owned();
    config.profile_extra = "ready_timeout = \"2s\"".to_owned();
    config.extra_toml = "reconcile_grace = \"5s\"\nreconcile_interval = \"1h\"\n".to_owned();
    let mut app = spawn_app_with(config).await;
    let mut rng = StdRng::seed_from_u64(18);
    let chats = chats_with_markers(&app, 40);
    let kills = 10;
    let mut answered = 0;
    for _ in 0..kills {
        wait_for_pool(&app, 2).await;
        let calls: Vec<_> = (0..4)
            .map(|_| {
                let (chat, volume) = chats[rng.random_range(0..chats.len())].clone();
                let api = app.api.clone();
                tokio::spawn(async move { api.create(&chat, "pooled", &volume).await.is_ok() })
            })
            .collect();
        // A claim takes a few milliseconds: kill inside or right after most of them.
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..40))).await;
        app.kill9().await;
        for call in calls {
            answered += usize::from(call.await.unwrap_or(false));
        }
        app.restart().await;
    }
    tokio::time::sleep(Duration::from_secs(6)).await;
    let report = app.reconcile().await.expect("reconcile");
    assert_eq!(report.error_count, 0, "{report:?}");

    let sessions: BTreeSet<String> = all_session_containers(&app).await;
    let mounted = slot_mounts(&app);
    let mut pooled_sessions = 0;
    let containers = app.containers().await;
    // For the failure message: each attached slot with the container that carries it, if any.
    let owners: Vec<String> = mounted
        .iter()
        .map(|slot| {
            let owner = containers.iter().find(|c| {
                app.label(c, "pool_slot")
                    .is_some_and(|label| slot.ends_with(&label))
            });
            let name = slot
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let mentions: Vec<String> = std::fs::read_dir(app.scratch.path())
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|entry| std::fs::read_to_string(entry.path()).ok())
                .flat_map(|log| {
                    log.lines()
                        .filter(|l| l.contains(&name))
                        .map(str::to_owned)
                        .collect::<Vec<_>>()
                })
                .collect();
            format!(
                "{} -> {:?} {mentions:#?}",
                slot.display(),
                owner.map(|c| (c.id.clone(), c.state, c.names.clone()))
            )
        })
        .collect();
    for container in containers {
        let id = container.id.clone().unwrap_or_default();
        let slot = app.label(&container, "pool_slot");
        let attached = slot
            .as_ref()
            .is_some_and(|slot| mounted.iter().any(|m| m.ends_with(slot)));
        let waiting = slot.is_some() && !attached;
        assert!(
            waiting || sessions.contains(&id),
            "container {id} (slot {slot:?}) has no session\n{}",
            app.log()
        );
        pooled_sessions += usize::from(attached && sessions.contains(&id));
    }
    // Every attached slot is a session's (cold fallbacks among the sessions have none).
    assert_eq!(
        mounted.len(),
        pooled_sessions,
        "{owners:#?} vs {sessions:?}\n{}",
        app.log()
            .lines()
            .filter(|line| line.contains("pool") && !line.contains("sandbox_created"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    eprintln!(
        "pool crash: {kills} kills, {answered} creates answered, reconcile removed {} containers and {} sessions, {} sessions left ({pooled_sessions} claimed from the pool)",
        report.removed_container_ids.len(),
        report.removed_sandboxes.len(),
        sessions.len()
    );

    for (chat, _) in &chats {
        let _ = app.delete(chat).await;
    }
    app.sigterm();
    let _ = app.wait_for_exit(Duration::from_secs(30)).await;
    assert!(
        app.containers().await.is_empty(),
        "{:?}",
        app.containers().await
    );
    assert!(
        mounts_below_slots(&app).is_empty(),
        "{:?}",
        mounts_below_slots(&app)
    );
}

async fn all_session_containers(app: &TestApp) -> BTreeSet<String> {
    app.all_sandboxes()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.container_id)
        .collect()
}

/// A claimed sandbox follows the lifecycle like a cold one: paused and resumed on request, then
/// hibernated when idle (the engine stops it) and resumed, when its waiter runs again and gets its
/// claim again: the command serves the chat's volume with the chat's environment.
#[tokio::test]
async fn a_claimed_sandbox_pauses_hibernates_and_resumes_with_its_volume_and_environment() {
    let body = format!(
        "{}{COMMAND}\npool_size = 1\nidle_timeout = \"2s\"\non_idle = \"hibernate\"\n",
        AppConfig::busybox_profile()
    );
    let config = AppConfig {
        pool_waiter: true,
        cleanup_interval: "500ms".to_owned(),
        ..AppConfig::default()
    }
    .with_agent("pooled", &body);
    let app = spawn_app_with(config).await;
    wait_for_pool(&app, 1).await;
    let chat = new_chat_id();
    let volume = volume_with_marker(&app, "chat", &chat);
    let sandbox = app.create_ok(&chat, "pooled", &volume).await.sandbox;
    assert_eq!(
        metric(&app, "sandbox_pool_claims_total", r#"result="claimed""#).await,
        1.0
    );
    let paused = app.pause(&chat).await.unwrap();
    assert_eq!(paused.state, v1::SandboxState::Paused as i32);
    let resumed = app.resume(&chat).await.unwrap();
    assert_eq!(get(&resumed, "/served.txt").await.0, 200);

    // Left alone past its idle timeout: hibernated (stopped by the engine, slot kept).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let now = app.live_sandbox(&chat).await;
        if now.state == v1::SandboxState::Hibernated as i32 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never hibernated");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    std::fs::remove_file(PathBuf::from(&volume).join("env.txt")).unwrap();
    let woken = app
        .resume(&chat)
        .await
        .unwrap_or_else(|status| panic!("resume: {status:?}\n{}", app.log()));
    assert_eq!(woken.container_id, sandbox.container_id);
    assert_eq!(
        get(&woken, "/served.txt").await,
        (200, format!("chat {chat}\n"))
    );
    // Written again by the command's restart, with the identity the claim carried again.
    let (status, env) = get(&woken, "/env.txt").await;
    assert_eq!(status, 200);
    assert!(env.contains(&format!("SANDBOX_CHAT_ID={chat}")), "{env}");
}
