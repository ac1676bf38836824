//! Fleet mode end to end (issue 19): three Docker engines in network namespaces
//! (`scripts/lib/fleet.sh`), one Redis on the host bound to the host ends of their links, and a
//! sandboxd fleet node inside each, driving its own engine and reaching the others through their
//! node API. Needs root and starts three dockerd: `scripts/test-extra` runs these, one at a time
//! (one fleet's addresses at a time).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bollard::Docker;
use futures::StreamExt;
use rand::Rng;
use sandboxd_api::v1;
use sandboxd_api::v1::sandbox_service_client::SandboxServiceClient;
use sandboxd_testkit::docker::list_by_label;
use sandboxd_testkit::fleet::{Fleet, Node, in_netns, node_settings, start_node_sandboxd};
use sandboxd_testkit::process::SandboxdProcess;
use sandboxd_testkit::{AppConfig, RedisServer, new_chat_id};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

/// How long a node lives without renewing in the loss tests: short, so loss shows within seconds.
const TTL: Duration = Duration::from_secs(3);
const TTL_SETTING: &str = "3s";
/// The default TTL, for the tests that need no loss: a node slowed down by this 2-core
/// machine's load must not be declared lost in the middle of them.
const DEFAULT_TTL_SETTING: &str = "10s";
const TOKEN: &str = "fleet-e2e-token";

#[derive(Clone)]
struct Bearer(MetadataValue<Ascii>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

type Api = SandboxServiceClient<InterceptedService<Channel, Bearer>>;

fn bearer() -> Bearer {
    Bearer(format!("Bearer {TOKEN}").parse().unwrap())
}

/// A client of the node serving at `addr`.
fn api_at(addr: std::net::SocketAddr) -> Api {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(30))
        .connect_lazy();
    SandboxServiceClient::with_interceptor(channel, bearer())
}

/// Three nodes, one Redis, a sandboxd per node; torn down (processes, Redis, engines) on drop.
struct TestFleet {
    // Field order is drop order: the processes before the fleet (which kills their namespace).
    processes: Vec<Option<SandboxdProcess>>,
    apis: Vec<Api>,
    ttl: &'static str,
    redis: RedisServer,
    prefix: String,
    dir: tempfile::TempDir,
    volumes: tempfile::TempDir,
    engines: Vec<Docker>,
    fleet: Fleet,
}

impl TestFleet {
    /// Three nodes whose registrations live `ttl`.
    async fn start(name: &str, ttl: &'static str) -> Self {
        let fleet = Fleet::up(name, 3).expect("fleet_up");
        let dir = tempfile::tempdir().unwrap();
        let volumes = tempfile::tempdir().unwrap();
        let bind: Vec<String> = std::iter::once("127.0.0.1".to_owned())
            .chain(fleet.nodes.iter().map(|n| n.host_address.clone()))
            .collect();
        let redis = RedisServer::start_with(
            dir.path(),
            &["--bind", &bind.join(" "), "--protected-mode", "no"],
        )
        .await
        .unwrap();
        std::fs::write(dir.path().join("token"), TOKEN).unwrap();
        let prefix = format!(
            "e2e-fleet-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let engines = fleet
            .nodes
            .iter()
            .map(|node| {
                Docker::connect_with_unix(
                    &node.socket.display().to_string(),
                    30,
                    bollard::API_DEFAULT_VERSION,
                )
                .unwrap()
            })
            .collect();
        let mut this = Self {
            processes: Vec::new(),
            apis: Vec::new(),
            ttl,
            redis,
            prefix,
            dir,
            volumes,
            engines,
            fleet,
        };
        for index in 0..3 {
            let process = this.start_node(index).await;
            this.apis.push(api_at(process.grpc_addr));
            this.processes.push(Some(process));
        }
        this.wait_for_nodes(3).await;
        this
    }

    fn node(&self, index: usize) -> &Node {
        &self.fleet.nodes[index]
    }

    /// Index of the node named `node_id` (`n1` is 0).
    fn index_of(node_id: &str) -> usize {
        node_id.trim_start_matches('n').parse::<usize>().unwrap() - 1
    }

    async fn start_node(&self, index: usize) -> SandboxdProcess {
        let node = self.node(index);
        let config = AppConfig {
            extra_toml: format!(
                "{}auth_token_file = {:?}\n",
                node_settings(node, self.ttl),
                self.dir.path().join("token").display().to_string()
            ),
            ..AppConfig::default()
        };
        let url = format!("redis://{}:{}", node.host_address, self.redis.port());
        start_node_sandboxd(
            node,
            config,
            &url,
            &self.prefix,
            self.volumes.path(),
            self.dir.path(),
        )
        .await
        .unwrap_or_else(|error| panic!("node {}: {error}", node.index))
    }

    /// Waits until node 1 lists `healthy` healthy nodes.
    async fn wait_for_nodes(&self, healthy: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let nodes = self.nodes(0).await;
            if nodes.iter().filter(|n| n.healthy).count() == healthy {
                return;
            }
            assert!(Instant::now() < deadline, "nodes never settled: {nodes:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn nodes(&self, via: usize) -> Vec<v1::Node> {
        self.apis[via]
            .clone()
            .list_nodes(v1::ListNodesRequest {})
            .await
            .unwrap()
            .into_inner()
            .nodes
    }

    /// A volume holding an `index.html` that names `chat`.
    fn volume(&self, chat: &str) -> PathBuf {
        let volume = self.volumes.path().join(chat);
        std::fs::create_dir_all(&volume).unwrap();
        std::fs::write(volume.join("index.html"), format!("{chat}\n")).unwrap();
        volume
    }

    fn create_request(&self, chat: &str) -> v1::CreateSandboxRequest {
        v1::CreateSandboxRequest {
            chat_id: chat.to_owned(),
            agent_id: "default".to_owned(),
            volume_host_path: self.volume(chat).display().to_string(),
        }
    }

    async fn create(&self, via: usize, chat: &str) -> Result<v1::CreateSandboxResponse, Status> {
        self.apis[via]
            .clone()
            .create_sandbox(self.create_request(chat))
            .await
            .map(tonic::Response::into_inner)
    }

    async fn get(&self, via: usize, chat: &str) -> Result<v1::Sandbox, Status> {
        self.apis[via]
            .clone()
            .get_sandbox(v1::GetSandboxRequest {
                chat_id: chat.to_owned(),
            })
            .await
            .map(|r| r.into_inner().sandbox.unwrap())
    }

    /// Every container of this deployment on every engine, by chat label (engines that do not
    /// answer are skipped).
    async fn containers_by_chat(&self) -> BTreeMap<String, Vec<(usize, String)>> {
        let filter = format!("{}.managed-by=sandboxd", self.prefix);
        let key = format!("{}.chat_id", self.prefix);
        let listings = futures::future::join_all(
            self.engines
                .iter()
                .map(|engine| list_by_label(engine, &filter)),
        )
        .await;
        let mut by_chat: BTreeMap<String, Vec<(usize, String)>> = BTreeMap::new();
        for (index, listing) in listings.into_iter().enumerate() {
            let Ok(containers) = listing else { continue };
            for container in containers {
                let chat = container
                    .labels
                    .as_ref()
                    .and_then(|labels| labels.get(&key))
                    .cloned()
                    .unwrap_or_default();
                by_chat
                    .entry(chat)
                    .or_default()
                    .push((index, container.id.unwrap_or_default()));
            }
        }
        by_chat
    }

    /// Every session, through node `via`.
    async fn sessions(&self, via: usize) -> Vec<v1::Sandbox> {
        let mut all = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = self.apis[via]
                .clone()
                .list_sandboxes(v1::ListSandboxesRequest {
                    page_size: 1000,
                    page_token,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            all.extend(page.sandboxes);
            if page.next_page_token.is_empty() {
                return all;
            }
            page_token = page.next_page_token;
        }
    }

    /// The endpoint of `sandbox` answers at its node's address with its chat's marker.
    async fn assert_serves(&self, sandbox: &v1::Sandbox) {
        let endpoint = sandbox.endpoint.as_ref().unwrap();
        let node = self.node(Self::index_of(&sandbox.node_id));
        assert_eq!(endpoint.ip, node.address, "published on its node's address");
        let (status, body) =
            sandboxd_testkit::http_get(&format!("{}:{}", endpoint.ip, endpoint.port), "/")
                .await
                .unwrap();
        assert_eq!((status, body), (200, format!("{}\n", sandbox.chat_id)));
    }

    async fn stop(mut self) {
        for process in self.processes.iter_mut() {
            if let Some(process) = process.take() {
                process.stop(Duration::from_secs(20)).await.unwrap();
            }
        }
    }
}

/// Creates `count` chats through random nodes, six at a time; their sandboxes.
async fn create_chats(fleet: &TestFleet, count: usize) -> Vec<v1::Sandbox> {
    futures::stream::iter(0..count)
        .map(|_| async {
            let chat = new_chat_id();
            let via = rand::rng().random_range(0..3);
            let created = fleet.create(via, &chat).await.unwrap();
            assert_eq!(created.result, v1::CreateSandboxResult::Created as i32);
            created.sandbox.unwrap()
        })
        .buffer_unordered(6)
        .collect()
        .await
}

fn per_node(sandboxes: &[v1::Sandbox]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for sandbox in sandboxes {
        *counts.entry(sandbox.node_id.clone()).or_insert(0) += 1;
    }
    counts
}

#[tokio::test]
#[ignore = "three engines in network namespaces: scripts/test-extra runs it"]
async fn ninety_chats_spread_over_three_nodes_and_any_node_serves_any_chat() {
    let fleet = TestFleet::start("sbxf", DEFAULT_TTL_SETTING).await;
    let sandboxes = create_chats(&fleet, 90).await;
    let counts = per_node(&sandboxes);
    eprintln!("placement of 90 chats: {counts:?}");
    assert_eq!(counts.len(), 3, "every node got chats: {counts:?}");
    assert!(
        counts.values().all(|&n| n <= 45),
        "none holds more than half: {counts:?}"
    );
    for sandbox in &sandboxes {
        fleet.assert_serves(sandbox).await;
    }
    let nodes = fleet.nodes(1).await;
    assert_eq!(nodes.len(), 3);
    for node in &nodes {
        assert!(node.healthy && !node.draining, "{node:?}");
        assert_eq!(
            node.address,
            format!(
                "{}:50052",
                fleet.node(TestFleet::index_of(&node.node_id)).address
            )
        );
    }

    // Any operation through any node, on chats of every node: each step through another node.
    for (step, sandbox) in sandboxes.iter().take(9).enumerate() {
        let chat = &sandbox.chat_id;
        let owner = TestFleet::index_of(&sandbox.node_id);
        let (a, b, c) = ((owner + 1) % 3, (owner + 2) % 3, (owner + step) % 3);
        assert_eq!(
            fleet.get(a, chat).await.unwrap().container_id,
            sandbox.container_id
        );
        let paused = fleet.apis[b]
            .clone()
            .pause_sandbox(v1::PauseSandboxRequest {
                chat_id: chat.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .sandbox
            .unwrap();
        assert_eq!(paused.state, v1::SandboxState::Paused as i32);
        // The engine's own id, the node apart in `node_id`.
        let inspected = fleet.engines[owner]
            .inspect_container(&sandbox.container_id, None)
            .await
            .unwrap();
        assert_eq!(
            inspected.state.and_then(|s| s.paused),
            Some(true),
            "frozen on its node"
        );
        fleet.apis[a]
            .clone()
            .resume_sandbox(v1::ResumeSandboxRequest {
                chat_id: chat.clone(),
            })
            .await
            .unwrap();
        let reused = fleet.create(c, chat).await.unwrap();
        assert_eq!(reused.result, v1::CreateSandboxResult::Reused as i32);
        fleet.assert_serves(&reused.sandbox.unwrap()).await;
        let deleted = fleet.apis[(owner + 1) % 3]
            .clone()
            .delete_sandbox(v1::DeleteSandboxRequest {
                chat_id: chat.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(deleted.result, v1::DeleteSandboxResult::Deleted as i32);
        assert!(
            fleet.engines[owner]
                .inspect_container(&sandbox.container_id, None)
                .await
                .is_err(),
            "removed from its node's engine"
        );
    }
    fleet.stop().await;
}

#[tokio::test]
#[ignore = "three engines in network namespaces: scripts/test-extra runs it"]
async fn four_random_clients_for_a_minute_keep_one_container_per_chat_across_the_fleet() {
    let fleet = Arc::new(TestFleet::start("sbxf", DEFAULT_TTL_SETTING).await);
    let chats: Vec<String> = (0..16).map(|_| new_chat_id()).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicUsize::new(0));
    let sampler = {
        let (fleet, stop) = (Arc::clone(&fleet), Arc::clone(&stop));
        tokio::spawn(async move {
            let (mut samples, mut duplicates) = (0, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                let by_chat = fleet.containers_by_chat().await;
                for (chat, containers) in by_chat.iter().filter(|(_, c)| c.len() > 1) {
                    // Listed engine by engine, a chat that moved between the listings shows
                    // twice: a duplicate is one whose containers all still exist afterwards.
                    let mut alive = 0;
                    for (index, id) in containers {
                        if fleet.engines[*index]
                            .inspect_container(id, None)
                            .await
                            .is_ok()
                        {
                            alive += 1;
                        }
                    }
                    if alive > 1 {
                        duplicates.push(format!("chat {chat}: {containers:?}"));
                    }
                }
                samples += 1;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            (samples, duplicates)
        })
    };
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (fleet, stop, calls, chats) = (
                Arc::clone(&fleet),
                Arc::clone(&stop),
                Arc::clone(&calls),
                chats.clone(),
            );
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let (chat, via, op) = {
                        let mut rng = rand::rng();
                        (
                            chats[rng.random_range(0..chats.len())].clone(),
                            rng.random_range(0..3),
                            rng.random_range(0..3),
                        )
                    };
                    let outcome = match op {
                        0 | 1 => fleet.create(via, &chat).await.map(drop),
                        _ => fleet.apis[via]
                            .clone()
                            .delete_sandbox(v1::DeleteSandboxRequest { chat_id: chat })
                            .await
                            .map(drop),
                    };
                    // Contention on one chat is answered ABORTED (busy lease): retryable, fine.
                    if let Err(status) = outcome {
                        assert_eq!(status.code(), Code::Aborted, "{status:?}");
                    }
                    calls.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(60)).await;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    let (samples, duplicates) = sampler.await.unwrap();
    eprintln!(
        "random clients: {} calls, {samples} samples of every engine",
        calls.load(Ordering::Relaxed)
    );
    if !duplicates.is_empty() {
        for process in fleet.processes.iter().flatten() {
            let log = process.log();
            let about_nodes: Vec<&str> = log
                .lines()
                .filter(|line| line.contains("node_") || line.contains("replaced"))
                .collect();
            eprintln!("--- {} ---\n{}", process.grpc_addr, about_nodes.join("\n"));
        }
    }
    assert!(duplicates.is_empty(), "duplicates: {duplicates:#?}");
    assert!(samples > 100, "{samples} samples");
    // Containers == sessions at the end, each session's container on its own node.
    let sessions = fleet.sessions(2).await;
    let by_chat = fleet.containers_by_chat().await;
    let mut containers: Vec<(String, String)> = by_chat
        .iter()
        .flat_map(|(chat, list)| {
            list.iter()
                .map(|(index, id)| (chat.clone(), format!("n{}/{id}", index + 1)))
        })
        .collect();
    let mut recorded: Vec<(String, String)> = sessions
        .iter()
        .map(|s| {
            (
                s.chat_id.clone(),
                format!("{}/{}", s.node_id, s.container_id),
            )
        })
        .collect();
    containers.sort();
    recorded.sort();
    assert_eq!(containers, recorded, "containers == sessions");
    Arc::try_unwrap(fleet).ok().unwrap().stop().await;
}

/// Chats on node `index` among `sandboxes`, creating more until there are at least `at_least`.
async fn chats_on(fleet: &TestFleet, index: usize, at_least: usize) -> Vec<v1::Sandbox> {
    let node_id = format!("n{}", index + 1);
    let mut on_node = Vec::new();
    for _ in 0..60 {
        if on_node.len() >= at_least {
            break;
        }
        let chat = new_chat_id();
        let sandbox = fleet.create(0, &chat).await.unwrap().sandbox.unwrap();
        if sandbox.node_id == node_id {
            on_node.push(sandbox);
        }
    }
    assert!(on_node.len() >= at_least, "placement never chose {node_id}");
    on_node
}

/// Polls GetSandbox through every node of `via` until every chat reads LOST on all of them (each
/// node learns of the lapse at its own next beat); how long it took.
async fn wait_until_lost(
    fleet: &TestFleet,
    via: &[usize],
    chats: &[v1::Sandbox],
    bound: Duration,
) -> Duration {
    let started = Instant::now();
    loop {
        let mut lost = 0;
        for node in via {
            for sandbox in chats {
                let now = fleet.get(*node, &sandbox.chat_id).await.unwrap();
                if now.state == v1::SandboxState::Lost as i32 {
                    lost += 1;
                }
            }
        }
        if lost == chats.len() * via.len() {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < bound,
            "{lost} of {} lost after {bound:?}",
            chats.len() * via.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Creates the lost chats again through `via`: each REPLACED on another node, serving.
async fn replace_all(fleet: &TestFleet, via: usize, lost: &[v1::Sandbox]) {
    for sandbox in lost {
        let replaced = fleet.create(via, &sandbox.chat_id).await.unwrap();
        assert_eq!(replaced.result, v1::CreateSandboxResult::Replaced as i32);
        let new = replaced.sandbox.unwrap();
        assert_ne!(new.node_id, sandbox.node_id, "{new:?}");
        assert_eq!(new.state, v1::SandboxState::Running as i32);
        fleet.assert_serves(&new).await;
    }
}

/// Node `index`'s engine holds no container of `chats`.
async fn assert_none_left(fleet: &TestFleet, index: usize, chats: &[v1::Sandbox]) {
    let by_chat = fleet.containers_by_chat().await;
    for sandbox in chats {
        let left: Vec<_> = by_chat
            .get(&sandbox.chat_id)
            .into_iter()
            .flatten()
            .filter(|(node, _)| *node == index)
            .collect();
        assert!(
            left.is_empty(),
            "chat {} kept {left:?} on node {}",
            sandbox.chat_id,
            index + 1
        );
    }
}

#[tokio::test]
#[ignore = "three engines in network namespaces: scripts/test-extra runs it"]
async fn a_killed_node_is_lost_its_chats_replaced_and_its_containers_removed_when_it_returns() {
    let mut fleet = TestFleet::start("sbxf", TTL_SETTING).await;
    let on_n3 = chats_on(&fleet, 2, 3).await;
    let mut watch = fleet.apis[0]
        .clone()
        .watch_sandboxes(v1::WatchSandboxesRequest::default())
        .await
        .unwrap()
        .into_inner();

    // SIGKILL its sandboxd, kill its engine.
    fleet.processes[2].as_mut().unwrap().kill();
    fleet.fleet.kill_engine(fleet.node(2)).unwrap();
    let took = wait_until_lost(&fleet, &[0, 1], &on_n3, TTL + Duration::from_secs(5)).await;
    eprintln!("node loss seen by both other nodes after {took:?} (TTL {TTL:?})");
    let n3 = fleet
        .nodes(1)
        .await
        .into_iter()
        .find(|n| n.node_id == "n3")
        .unwrap();
    assert!(!n3.healthy, "{n3:?}");
    let listed_lost = fleet.apis[1]
        .clone()
        .list_sandboxes(v1::ListSandboxesRequest {
            state: v1::SandboxState::Lost as i32,
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .sandboxes;
    assert_eq!(listed_lost.len(), on_n3.len(), "{listed_lost:?}");
    // One LOST event per session, from whichever node saw the lapse first.
    let mut lost_events = Vec::new();
    while lost_events.len() < on_n3.len() {
        let event = tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .expect("LOST events")
            .unwrap()
            .unwrap();
        if event.r#type == v1::SandboxEventType::Lost as i32 {
            assert_eq!(event.reason, "node_lost");
            lost_events.push(event.sandbox.unwrap().chat_id);
        }
    }
    lost_events.sort();
    let mut want: Vec<_> = on_n3.iter().map(|s| s.chat_id.clone()).collect();
    want.sort();
    assert_eq!(lost_events, want);

    replace_all(&fleet, 1, &on_n3).await;

    // It comes back: its engine (the containers exited with it) and its sandboxd, whose first
    // reconcile removes the containers of the chats that moved on.
    fleet.fleet.start_engine(fleet.node(2)).unwrap();
    let process = fleet.start_node(2).await;
    fleet.apis[2] = api_at(process.grpc_addr);
    fleet.processes[2] = Some(process);
    fleet.apis[2]
        .clone()
        .reconcile_sandboxes(v1::ReconcileSandboxesRequest {})
        .await
        .unwrap();
    assert_none_left(&fleet, 2, &on_n3).await;
    fleet.wait_for_nodes(3).await;
    for sandbox in &on_n3 {
        let now = fleet.get(2, &sandbox.chat_id).await.unwrap();
        assert_ne!(now.node_id, "n3");
        assert_eq!(now.state, v1::SandboxState::Running as i32);
    }
    fleet.stop().await;
}

#[tokio::test]
#[ignore = "three engines in network namespaces: scripts/test-extra runs it"]
async fn a_node_cut_off_stops_creating_and_is_not_duplicated_before_its_registration_lapses() {
    let fleet = TestFleet::start("sbxf", TTL_SETTING).await;
    let on_n2 = chats_on(&fleet, 1, 2).await;
    let cut_at = Instant::now();
    fleet.fleet.set_link(fleet.node(1), false).unwrap();

    // Before the lapse, the others still count it alive: its chats are reused, not duplicated.
    let reused = fleet.create(0, &on_n2[0].chat_id).await.unwrap();
    assert!(cut_at.elapsed() < TTL, "too slow to check before the lapse");
    assert_eq!(reused.result, v1::CreateSandboxResult::Reused as i32);
    assert_eq!(reused.sandbox.unwrap().node_id, "n2");
    let by_chat = fleet.containers_by_chat().await;
    assert_eq!(by_chat.get(&on_n2[0].chat_id).map(Vec::len), Some(1));

    // The cut node itself, asked from inside its namespace, refuses once it cannot renew.
    tokio::time::sleep(TTL / 2 + Duration::from_millis(500)).await;
    let grpc_addr = fleet.processes[1].as_ref().unwrap().grpc_addr;
    let request = fleet.create_request(&new_chat_id());
    let answer = in_netns(&fleet.node(1).netns, move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move { api_at(grpc_addr).create_sandbox(request).await })
    })
    .unwrap();
    let refused = answer.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("cannot renew"), "{refused:?}");
    let on_engine = fleet
        .containers_by_chat()
        .await
        .values()
        .flatten()
        .filter(|(n, _)| *n == 1)
        .count();
    assert_eq!(on_engine, on_n2.len(), "the cut node started nothing");

    // After the lapse: lost, and replaced elsewhere.
    wait_until_lost(&fleet, &[0, 2], &on_n2, TTL + Duration::from_secs(5)).await;
    replace_all(&fleet, 2, &on_n2).await;

    // Back on the network: it renews, and its reconcile removes what moved away.
    fleet.fleet.set_link(fleet.node(1), true).unwrap();
    fleet.wait_for_nodes(3).await;
    fleet.apis[1]
        .clone()
        .reconcile_sandboxes(v1::ReconcileSandboxesRequest {})
        .await
        .unwrap();
    assert_none_left(&fleet, 1, &on_n2).await;
    fleet.stop().await;
}
