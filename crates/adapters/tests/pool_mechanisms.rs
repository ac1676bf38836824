//! The warm pool's two risky mechanisms on the real engine with real mounts (issue 18): a
//! hardened sandbox whose mount target is bound (`rslave`) from an empty slot (its own shared
//! mount) under a private directory, whose entrypoint is the static waiter (bind-mounted read-only) blocking on its
//! claim FIFO; then a chat's volume hot-attached onto the slot, the claim sent, and the command
//! seen to run in the volume with the chat's environment.
//!
//! Every test removes its containers (by label), its mounts and its directories, also when it
//! fails. Needs root, the engine, and the sandbox image (`scripts/build-sandbox-image`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/docker_engine.rs"]
mod docker_engine;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::query_parameters::{CreateContainerOptionsBuilder, StopContainerOptionsBuilder};
use docker_engine::{TestSandboxes, agent, engine, exec, web_profile};
use sandboxd_adapters::docker::LabelKeys;
use sandboxd_adapters::docker::body::{HostSide, PooledMounts, pooled};
use sandboxd_adapters::pool::claim::{ClaimChannel, FIFO_NAME};
use sandboxd_adapters::pool::slots::{SlotDirectory, SlotError};
use sandboxd_pool_waiter::Claim;

/// The sandbox image's WORKDIR and the profiles' mount target.
const MOUNT_TARGET: &str = "/workspace";
const MARKER: &str = "hello from the chat volume\n";

/// One test's pool world; its sandboxes' `Drop` removes the containers (they hold propagated
/// copies of the mounts) and then every mount under the root, before the temporary root is
/// deleted: deleting it with a volume still attached would reach into the volume.
struct PoolWorld {
    sandboxes: TestSandboxes,
    slots: SlotDirectory,
    claims_dir: PathBuf,
    volumes_dir: PathBuf,
}

impl PoolWorld {
    async fn new() -> Self {
        let sandboxes = TestSandboxes::new();
        let root = sandboxes.root.path().canonicalize().unwrap();
        let slots = SlotDirectory::prepare(&root.join("slots")).await.unwrap();
        let claims_dir = root.join("claims");
        let volumes_dir = root.join("volumes");
        std::fs::create_dir_all(&claims_dir).unwrap();
        std::fs::create_dir_all(&volumes_dir).unwrap();
        Self {
            sandboxes,
            slots,
            claims_dir,
            volumes_dir,
        }
    }

    /// A chat volume holding the marker (as `marker` and `index.html`).
    fn chat_volume(&self, name: &str) -> PathBuf {
        let volume = self.volumes_dir.join(name);
        std::fs::create_dir(&volume).unwrap();
        std::fs::write(volume.join("marker"), MARKER).unwrap();
        std::fs::write(volume.join("index.html"), MARKER).unwrap();
        volume
    }

    /// Mount points below this test's root, as this process's mount namespace lists them.
    fn mounts_left(&self) -> Vec<PathBuf> {
        self.sandboxes.mounts_left()
    }

    /// Creates and starts a pooled sandbox `name` of a small profile whose env has
    /// `PROFILE_VAR=kept`: an empty slot, a claim channel, and the container that
    /// `sandboxd_adapters::docker::body::pooled` describes, on the default bridge, whose
    /// entrypoint is the waiter with `default_command`.
    async fn start_pooled(
        &self,
        docker: &Docker,
        name: &str,
        default_command: &[&str],
        port: Option<u16>,
    ) -> (String, ClaimChannel) {
        let slot = self.slots.create(name).await.unwrap();
        let channel = ClaimChannel::create(&self.claims_dir, name).unwrap();
        let mut profile = web_profile();
        profile.port = port;
        profile.read_only_rootfs = true;
        profile.mount_target = MOUNT_TARGET.to_owned();
        // What the profile sets: the claim's environment comes on top.
        profile.env = BTreeMap::from([("PROFILE_VAR".to_owned(), "kept".to_owned())]);
        let host = HostSide {
            network: "bridge",
            publish_host_ip: IpAddr::from([127, 0, 0, 1]),
            stop_timeout_secs: 10,
        };
        let waiter = waiter_binary();
        let mounts = PooledMounts {
            slot: slot.to_str().unwrap(),
            waiter: waiter.to_str().unwrap(),
            claim_dir: channel.dir().to_str().unwrap(),
        };
        let labels = LabelKeys::new(&self.sandboxes.prefix).for_pooled(&agent("web"), name);
        let default_command = default_command.iter().map(|s| (*s).to_owned()).collect();
        let body = pooled(&profile, host, mounts, default_command, labels);
        let container_name = format!("{}-{name}", self.sandboxes.prefix);
        let options = CreateContainerOptionsBuilder::default()
            .name(&container_name)
            .build();
        let created = docker.create_container(Some(options), body).await.unwrap();
        docker.start_container(&created.id, None).await.unwrap();
        (created.id, channel)
    }
}

fn waiter_binary() -> PathBuf {
    sandboxd_testkit::pool::waiter_binary()
}

/// Asks until the waiter has its FIFO open (the container is starting meanwhile).
async fn wait_until_waiting(channel: &ClaimChannel) -> Duration {
    let started = Instant::now();
    while !channel.is_waiting().unwrap() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the waiter never opened its FIFO"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    started.elapsed()
}

async fn published_port(docker: &Docker, container: &str, port: u16) -> SocketAddr {
    let inspect = docker.inspect_container(container, None).await.unwrap();
    let ports = inspect.network_settings.and_then(|n| n.ports).unwrap();
    let binding = ports
        .get(&format!("{port}/tcp"))
        .cloned()
        .flatten()
        .unwrap();
    let host_port: u16 = binding[0].host_port.as_deref().unwrap().parse().unwrap();
    SocketAddr::from(([127, 0, 0, 1], host_port))
}

/// The first real HTTP answer: the engine's userland proxy accepts and closes connections
/// before anything listens inside, which reads as no status.
async fn first_http_answer(addr: SocketAddr, path: &str) -> (u16, String) {
    let started = Instant::now();
    loop {
        if let Ok((status, body)) = sandboxd_testkit::http_get(&addr.to_string(), path).await
            && status != 0
        {
            return (status, body);
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no HTTP answer from {addr}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn chat_claim(chat_id: &str, command: &[&str]) -> Claim {
    Claim {
        env: vec![("SANDBOX_CHAT_ID".to_owned(), chat_id.to_owned())],
        command: command.iter().map(|s| (*s).to_owned()).collect(),
        working_dir: None,
    }
}

#[tokio::test]
async fn a_claimed_sandbox_serves_the_hot_attached_volume_with_the_chats_environment() {
    let world = PoolWorld::new().await;
    let docker = engine().await;
    let volume = world.chat_volume("chat-a");
    // Served relative to the working directory: only right if the waiter entered it again
    // after the attach (it started in /workspace, the image's WORKDIR, when it was still empty).
    let creating = Instant::now();
    let (container, channel) = world
        .start_pooled(
            &docker,
            "pool-0",
            &["httpd", "-f", "-p", "8080", "-h", "."],
            Some(8080),
        )
        .await;
    let after_start = wait_until_waiting(&channel).await;
    let create_to_waiting = creating.elapsed();
    let endpoint = published_port(&docker, &container, 8080).await;

    // The slots root is a private mount (nothing below it propagates elsewhere), preparing it
    // again changes nothing; the slot is a shared mount of its own peer group.
    let root_line = |table: &str| {
        let root = world.slots.root().to_str().unwrap().to_owned();
        table
            .lines()
            .filter(|line| line.split(' ').nth(4) == Some(root.as_str()))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let before = root_line(&std::fs::read_to_string("/proc/self/mountinfo").unwrap());
    assert_eq!(before.len(), 1, "{before:?}");
    assert!(!before[0].contains(" shared:"), "{before:?}");
    SlotDirectory::prepare(world.slots.root()).await.unwrap();
    let after = root_line(&std::fs::read_to_string("/proc/self/mountinfo").unwrap());
    assert_eq!(before, after);
    let slot = world.slots.slot_path("pool-0").unwrap();
    let slot_line = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .find(|line| line.split(' ').nth(4) == slot.to_str())
        .map(str::to_owned)
        .unwrap();
    assert!(slot_line.contains(" shared:"), "{slot_line}");

    // Waiting: the waiter is the only process besides init, and the mount target is the empty
    // slot, bound as a slave of the host's peer group.
    assert_eq!(
        exec(&docker, &container, &["ls", "-A", MOUNT_TARGET]).await,
        ""
    );
    let processes = exec(&docker, &container, &["ps", "-o", "comm"]).await;
    assert!(processes.contains("pool-waiter"), "{processes}");
    let mountinfo = exec(&docker, &container, &["cat", "/proc/self/mountinfo"]).await;
    let target_line = mountinfo
        .lines()
        .find(|line| line.split(' ').nth(4) == Some(MOUNT_TARGET))
        .unwrap();
    assert!(target_line.contains("master:"), "{target_line}");

    let attach_started = Instant::now();
    world.slots.attach("pool-0", &volume).await.unwrap();
    let attach_took = attach_started.elapsed();
    assert!(world.slots.is_attached("pool-0").await.unwrap());
    assert!(matches!(
        world.slots.attach("pool-0", &volume).await,
        Err(SlotError::AlreadyAttached(_))
    ));

    let claimed = Instant::now();
    channel.send(&chat_claim("chat-a-id", &[])).await.unwrap();
    let (status, body) = first_http_answer(endpoint, "/marker").await;
    let claim_to_http = claimed.elapsed();
    assert_eq!((status, body.as_str()), (200, MARKER));
    println!(
        "pool figures: create+start->waiting {create_to_waiting:?} (after start returned \
         {after_start:?}), attach {attach_took:?}, claim->first HTTP answer {claim_to_http:?}"
    );

    // The command replaced the waiter (exec), with the profile's env and the chat's on top.
    let processes = exec(&docker, &container, &["ps", "-o", "comm"]).await;
    assert!(!processes.contains("pool-waiter"), "{processes}");
    let environ = exec(
        &docker,
        &container,
        &["sh", "-c", "tr '\\0' '\\n' < /proc/$(pidof httpd)/environ"],
    )
    .await;
    for wanted in ["SANDBOX_CHAT_ID=chat-a-id", "PROFILE_VAR=kept"] {
        assert!(
            environ.lines().any(|line| line == wanted),
            "{wanted} not in {environ}"
        );
    }

    // Writes inside land in the volume; the sandbox cannot take the volume away.
    exec(
        &docker,
        &container,
        &["sh", "-c", "echo from-sandbox > /workspace/out.txt"],
    )
    .await;
    assert_eq!(
        std::fs::read_to_string(volume.join("out.txt")).unwrap(),
        "from-sandbox\n"
    );
    let refused = exec(&docker, &container, &["umount", MOUNT_TARGET]).await;
    assert!(
        refused.contains("Operation not permitted") || refused.contains("Permission denied"),
        "{refused}"
    );
    let refused_lazy = exec(&docker, &container, &["umount", "-l", MOUNT_TARGET]).await;
    assert!(!refused_lazy.is_empty(), "a lazy unmount succeeded inside");
    assert_eq!(
        exec(&docker, &container, &["cat", "/workspace/marker"]).await,
        MARKER
    );

    // While the command works in the volume, the host cannot detach it: busy, not hidden.
    assert!(
        matches!(
            world.slots.detach("pool-0").await,
            Err(SlotError::Busy { .. })
        ),
        "detached under a running command"
    );
    assert!(world.slots.is_attached("pool-0").await.unwrap());

    // Released: the container goes, then the slot, and no mount is left behind.
    sandboxd_testkit::docker::remove_forced(&docker, &container)
        .await
        .unwrap();
    world.slots.detach("pool-0").await.unwrap();
    world.slots.delete("pool-0").await.unwrap();
    channel.remove().unwrap();
    assert_eq!(
        world.mounts_left(),
        vec![world.slots.root().to_path_buf()],
        "only the slots root itself stays mounted"
    );
    assert!(!world.slots.root().join("pool-0").exists());
    assert_eq!(
        std::fs::read_to_string(volume.join("marker")).unwrap(),
        MARKER,
        "the volume is untouched"
    );
    assert!(volume.join("out.txt").exists());
    assert_eq!(world.sandboxes.count().await, 0);
}

#[tokio::test]
async fn a_claimed_command_runs_once_in_the_volume_and_a_detach_after_it_leaves_nothing() {
    let world = PoolWorld::new().await;
    let docker = engine().await;
    let volume = world.chat_volume("chat-b");
    let (container, channel) = world
        .start_pooled(&docker, "pool-1", &["false"], None)
        .await;
    wait_until_waiting(&channel).await;
    // A probe (open and close without a claim) leaves the waiter waiting.
    assert!(channel.is_waiting().unwrap());
    wait_until_waiting(&channel).await;

    world.slots.attach("pool-1", &volume).await.unwrap();
    // The claim's command overrides the default; relative paths resolve in the volume.
    let claim = chat_claim(
        "chat-b-id",
        &[
            "sh",
            "-c",
            "cat marker; env | sort; pwd; echo written > written-by-command",
        ],
    );
    channel.send(&claim).await.unwrap();
    let exit = wait_for_exit(&docker, &container).await;
    let logs = container_logs(&docker, &container).await;
    assert_eq!(exit, 0, "{logs}");
    assert!(logs.contains(MARKER.trim_end()), "{logs}");
    assert!(logs.contains("SANDBOX_CHAT_ID=chat-b-id"), "{logs}");
    assert!(logs.contains("PROFILE_VAR=kept"), "{logs}");
    assert!(logs.contains("/workspace"), "{logs}");
    assert_eq!(
        std::fs::read_to_string(volume.join("written-by-command")).unwrap(),
        "written\n"
    );
    // The waiter is gone: nobody reads the FIFO any more.
    assert!(!channel.is_waiting().unwrap());

    // Detaching with the container stopped (not removed) works: nothing uses the mount.
    world.slots.detach("pool-1").await.unwrap();
    world.slots.delete("pool-1").await.unwrap();
    assert_eq!(world.mounts_left(), vec![world.slots.root().to_path_buf()]);
    sandboxd_testkit::docker::remove_forced(&docker, &container)
        .await
        .unwrap();
    channel.remove().unwrap();
}

#[tokio::test]
async fn a_waiting_sandbox_stops_at_once_and_a_bad_claim_ends_it() {
    let world = PoolWorld::new().await;
    let docker = engine().await;
    let (waiting, waiting_channel) = world.start_pooled(&docker, "pool-2", &["true"], None).await;
    let (bad, bad_channel) = world.start_pooled(&docker, "pool-3", &["true"], None).await;
    wait_until_waiting(&waiting_channel).await;
    wait_until_waiting(&bad_channel).await;

    // SIGTERM through docker-init ends the blocked waiter: no stop grace is waited out.
    let stop_started = Instant::now();
    let options = StopContainerOptionsBuilder::default().t(10).build();
    docker
        .stop_container(&waiting, Some(options))
        .await
        .unwrap();
    let stop_took = stop_started.elapsed();
    println!("pool figures: stop of a waiting sandbox {stop_took:?}");
    assert!(stop_took < Duration::from_secs(3), "{stop_took:?}");

    // A claim cut short (no `end` record) is never run: the waiter exits with status 2.
    let fifo = bad_channel.dir().join(FIFO_NAME);
    std::fs::write(&fifo, b"sandboxd-claim/1\0arg sh\0").unwrap();
    let exit = wait_for_exit(&docker, &bad).await;
    let logs = container_logs(&docker, &bad).await;
    assert_eq!(exit, 2, "{logs}");
    assert!(logs.contains("cut short"), "{logs}");

    for (container, channel, slot) in [
        (&waiting, &waiting_channel, "pool-2"),
        (&bad, &bad_channel, "pool-3"),
    ] {
        sandboxd_testkit::docker::remove_forced(&docker, container)
            .await
            .unwrap();
        world.slots.delete(slot).await.unwrap();
        channel.remove().unwrap();
    }
    assert_eq!(world.mounts_left(), vec![world.slots.root().to_path_buf()]);
}

async fn wait_for_exit(docker: &Docker, container: &str) -> i64 {
    let started = Instant::now();
    loop {
        let inspect = docker.inspect_container(container, None).await.unwrap();
        let state = inspect.state.unwrap();
        if state.running != Some(true) {
            return state.exit_code.unwrap_or(-1);
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{container} did not exit"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn container_logs(docker: &Docker, container: &str) -> String {
    use futures::StreamExt;
    let options = bollard::query_parameters::LogsOptionsBuilder::default()
        .stdout(true)
        .stderr(true)
        .build();
    let mut logs = docker.logs(container, Some(options));
    let mut text = String::new();
    while let Some(chunk) = logs.next().await {
        text.push_str(&chunk.unwrap().to_string());
    }
    text
}
