//! Egress policies against real hosts, all on this machine: two network namespaces the test
//! creates (veth pairs), one in 198.51.100.0/24 standing for the internet and one in 10.0.0.0/8
//! for a private host, each with a TCP (HTTP) listener; a listener on the host bound to 0.0.0.0
//! and tried at the bridge gateway's address; and other sandboxes. Each policy's sandbox probes
//! every target with busybox `nc` (busybox `wget` segfaults in these images). Then the rules
//! survive a restart without duplicates, and a check puts back what someone removed.
//!
//! Everything the test adds (namespaces, veths, listeners) is removed by guards, also on
//! failure; the sandboxes, networks and rules go with the `TestApp`.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bollard::Docker;
use futures::future::join_all;
use sandboxd_testkit::{
    AppConfig, SandboxRequests, TestApp, http_get, new_chat_id, spawn_app_with,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

/// The port the namespace hosts listen on (each namespace has its own ports).
const HOST_PORT: u16 = 18080;
/// The sandbox image's httpd.
const SANDBOX_PORT: u16 = 8080;

/// Runs a command of the test's setup; panics with its output when it fails.
fn run(program: &str, args: &[&str]) {
    let output = Command::new(program).args(args).output().unwrap();
    assert!(
        output.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// One host in a network namespace of its own, linked to the host by a veth pair, with an HTTP
/// listener on `addr:HOST_PORT`. Removed (listener, namespace, veth) when dropped.
struct NamespaceHost {
    namespace: String,
    host_veth: String,
    addr: IpAddr,
    listener: Option<Child>,
}

impl NamespaceHost {
    /// `host_cidr` on the host's end, `addr` (same subnet) inside.
    fn start(name: &str, host_cidr: &str, addr: &str) -> Self {
        let host_veth = format!("{name}0");
        let mut host = Self {
            namespace: name.to_owned(),
            host_veth: host_veth.clone(),
            addr: addr.parse().unwrap(),
            listener: None,
        };
        // From here on, a failing step still drops `host`, which removes what exists.
        let inner = format!("{name}1");
        run("ip", &["netns", "add", name]);
        run(
            "ip",
            &[
                "link", "add", &host_veth, "type", "veth", "peer", "name", &inner,
            ],
        );
        run("ip", &["link", "set", &inner, "netns", name]);
        run("ip", &["addr", "add", host_cidr, "dev", &host_veth]);
        run("ip", &["link", "set", &host_veth, "up"]);
        let in_ns = |args: &[&str]| {
            let mut full = vec!["netns", "exec", name];
            full.extend(args);
            run("ip", &full);
        };
        let prefix_len = host_cidr.split_once('/').unwrap().1;
        in_ns(&[
            "ip",
            "addr",
            "add",
            &format!("{addr}/{prefix_len}"),
            "dev",
            &inner,
        ]);
        in_ns(&["ip", "link", "set", &inner, "up"]);
        in_ns(&["ip", "link", "set", "lo", "up"]);
        let gateway = host_cidr.split_once('/').unwrap().0;
        in_ns(&["ip", "route", "add", "default", "via", gateway]);
        host.listener = Some(
            Command::new("ip")
                .args(["netns", "exec", name, "python3", "-m", "http.server"])
                .args([&HOST_PORT.to_string(), "--bind", addr])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        host
    }

    /// Waits until the listener answers from the host (it takes about a second to start).
    async fn wait_until_serving(&self) {
        let addr = SocketAddr::new(self.addr, HOST_PORT).to_string();
        let deadline = Instant::now() + Duration::from_secs(15);
        while http_get(&addr, "/").await.is_err() {
            assert!(Instant::now() < deadline, "{addr} never answered");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for NamespaceHost {
    fn drop(&mut self) {
        if let Some(mut listener) = self.listener.take() {
            let _ = listener.kill();
            let _ = listener.wait();
        }
        // Deleting the namespace deletes its end of the pair, and with it the host's end.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.namespace])
            .status();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_veth])
            .stderr(Stdio::null())
            .status();
    }
}

/// Whether the host has an address whose `ip -o -4 addr` text contains `needle` (`198.51.100.5/`).
fn address_in_use(needle: &str) -> bool {
    let output = Command::new("ip")
        .args(["-o", "-4", "addr", "show"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout).contains(needle)
}

/// The two namespace hosts, on subnets no other run on this machine uses right now.
fn start_hosts() -> (NamespaceHost, NamespaceHost) {
    let tag = format!("egt{}", &uuid::Uuid::new_v4().simple().to_string()[..5]);
    let (internet_base, private_octet) = loop {
        let random = uuid::Uuid::new_v4().as_u128();
        let internet_base = u8::try_from((random % 64) * 4).unwrap();
        let private_octet = u8::try_from((random >> 8) % 256).unwrap();
        if !address_in_use(&format!("198.51.100.{}/", internet_base + 1))
            && !address_in_use(&format!("10.231.{private_octet}."))
        {
            break (internet_base, private_octet);
        }
    };
    let internet = NamespaceHost::start(
        &format!("{tag}i"),
        &format!("198.51.100.{}/30", internet_base + 1),
        &format!("198.51.100.{}", internet_base + 2),
    );
    let private = NamespaceHost::start(
        &format!("{tag}p"),
        &format!("10.231.{private_octet}.1/24"),
        &format!("10.231.{private_octet}.2"),
    );
    (internet, private)
}

/// A listener on every address of the host, answering one HTTP line to anyone.
async fn start_host_listener() -> (u16, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("0.0.0.0:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let _ = stream
                .write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhost\n")
                .await;
        }
    });
    (port, task)
}

/// The body of a busybox profile with this egress policy.
fn profile(egress_lines: &str) -> String {
    format!("{}{egress_lines}\n", AppConfig::busybox_profile())
}

/// A sandbox of the test: its container, its address on its network, and its endpoint.
#[derive(Debug, Clone)]
struct Sandbox {
    container_id: String,
    ip: IpAddr,
    gateway: IpAddr,
    endpoint: String,
}

async fn create_sandbox(app: &TestApp, agent: &str, volume: &str) -> Sandbox {
    let created = app
        .create_ok(&new_chat_id(), agent, &app.new_volume(volume))
        .await
        .sandbox;
    let endpoint = created.endpoint.unwrap();
    let inspected = app
        .docker
        .inspect_container(&created.container_id, None)
        .await
        .unwrap();
    let networks = inspected.network_settings.unwrap().networks.unwrap();
    assert_eq!(networks.len(), 1, "{agent}: one network: {networks:?}");
    let (name, settings) = networks.into_iter().next().unwrap();
    assert!(name.starts_with(&app.prefix), "{agent} is on {name}");
    Sandbox {
        container_id: created.container_id,
        ip: settings.ip_address.unwrap().parse().unwrap(),
        gateway: settings.gateway.unwrap().parse().unwrap(),
        endpoint: format!("{}:{}", endpoint.ip, endpoint.port),
    }
}

/// Whether `container` gets an HTTP answer from `addr:port` (busybox `nc` with a 2 s timeout).
async fn reaches(docker: &Docker, container: &str, addr: IpAddr, port: u16) -> bool {
    let script = format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | busybox nc -w 2 {addr} {port}");
    let output =
        sandboxd_testkit::docker::exec(docker, container, &["busybox", "sh", "-c", &script])
            .await
            .unwrap();
    output.contains("HTTP/1.")
}

const POLICIES: [&str; 4] = ["none", "public", "allow", "open"];
const TARGETS: [&str; 5] = [
    "198.51.100.x host",
    "10.x host",
    "host 0.0.0.0 listener at the gateway",
    "sandbox, same network",
    "sandbox, other network",
];

#[tokio::test]
async fn each_policy_reaches_exactly_what_it_allows() {
    let (internet, private) = start_hosts();
    let (host_port, host_listener) = start_host_listener().await;
    let config = AppConfig::default()
        .with_agent("none", &profile("egress = \"none\""))
        .with_agent("public", &profile("egress = \"public\""))
        .with_agent(
            "allow",
            &profile(&format!(
                "egress = \"allow\"\negress_allow = [\"{}/32\"]",
                private.addr
            )),
        )
        .with_agent("open", &profile("egress = \"open\""));
    let app = spawn_app_with(config).await;
    internet.wait_until_serving().await;
    private.wait_until_serving().await;

    // Two sandboxes per policy: the second is the first's neighbour on the same bridge.
    let mut sandboxes: BTreeMap<&str, (Sandbox, Sandbox)> = BTreeMap::new();
    for policy in POLICIES {
        let first = create_sandbox(&app, policy, &format!("{policy}-1")).await;
        let second = create_sandbox(&app, policy, &format!("{policy}-2")).await;
        sandboxes.insert(policy, (first, second));
    }

    let probes = POLICIES.iter().flat_map(|policy| {
        let (from, neighbour) = &sandboxes[policy];
        // Another network's sandbox: the public one's, or for public the open one's.
        let other = if *policy == "public" {
            "open"
        } else {
            "public"
        };
        let stranger = &sandboxes[other].1;
        let targets = [
            (internet.addr, HOST_PORT),
            (private.addr, HOST_PORT),
            (from.gateway, host_port),
            (neighbour.ip, SANDBOX_PORT),
            (stranger.ip, SANDBOX_PORT),
        ];
        let docker = &app.docker;
        targets
            .into_iter()
            .zip(TARGETS)
            .map(move |((addr, port), target)| async move {
                let reached = reaches(docker, &from.container_id, addr, port).await;
                ((*policy, target), reached)
            })
    });
    let measured: BTreeMap<(&str, &str), bool> = join_all(probes).await.into_iter().collect();

    let mut table = String::from("egress matrix as measured (policy: target = reached)\n");
    for ((policy, target), reached) in &measured {
        table.push_str(&format!("  {policy:>6}: {target:<38} {reached}\n"));
    }
    eprintln!("{table}");
    let expected: BTreeMap<(&str, &str), bool> = POLICIES
        .iter()
        .flat_map(|policy| {
            let allowed: &[&str] = match *policy {
                "none" => &[],
                "public" => &["198.51.100.x host"],
                "allow" => &["10.x host"],
                _ => &[
                    "198.51.100.x host",
                    "10.x host",
                    "host 0.0.0.0 listener at the gateway",
                ],
            };
            TARGETS
                .iter()
                .map(move |target| ((*policy, *target), allowed.contains(target)))
        })
        .collect();
    assert_eq!(measured, expected, "{table}\n{}", app.log());

    for (policy, (first, second)) in &sandboxes {
        for sandbox in [first, second] {
            let (status, _) = http_get(&sandbox.endpoint, "/")
                .await
                .unwrap_or_else(|e| panic!("{policy}: endpoint {}: {e}", sandbox.endpoint));
            assert!(status > 0, "{policy}: endpoint answered {status}");
        }
        // The rules are IPv4 only: the engine gives these networks no IPv6 at all.
        let ipv6_off = sandboxd_testkit::docker::exec(
            &app.docker,
            &first.container_id,
            &["busybox", "cat", "/proc/sys/net/ipv6/conf/all/disable_ipv6"],
        )
        .await
        .unwrap();
        assert_eq!(ipv6_off.trim(), "1", "{policy}: IPv6 is on");
    }
    // Written as the packet filter prints them: the checks so far found nothing to repair.
    assert!(
        !app.log().contains("egress_rules_repaired"),
        "{}",
        app.log()
    );
    host_listener.abort();
}

#[tokio::test]
async fn rules_survive_a_restart_without_duplicates_and_a_check_repairs_them() {
    let (host_port, host_listener) = start_host_listener().await;
    let mut app = spawn_app_with(AppConfig::default()).await;
    let sandbox = create_sandbox(&app, "default", "public").await;
    let rules_before = sorted_rule_lines(&app.prefix).await;
    let jumps = |lines: &[String]| {
        lines
            .iter()
            .filter(|line| line.starts_with("-A DOCKER-USER ") || line.starts_with("-A INPUT "))
            .count()
    };
    assert_eq!(jumps(&rules_before), 2, "{rules_before:#?}");

    app.kill9().await;
    app.restart().await;
    app.sigterm();
    app.wait_for_exit(Duration::from_secs(20)).await;
    app.restart().await;
    let rules_after = sorted_rule_lines(&app.prefix).await;
    assert_eq!(rules_after, rules_before, "a restart changed the rules");

    // Someone removes the INPUT jump and flushes the forward chain: the next check puts both back.
    let input_jump = rules_before
        .iter()
        .find(|line| line.starts_with("-A INPUT "))
        .unwrap()
        .replacen("-A ", "-D ", 1)
        .replace('"', "");
    let mut delete = vec!["-w", "5"];
    delete.extend(input_jump.split_whitespace());
    run("iptables", &delete);
    let forward_chain = rules_before
        .iter()
        .find_map(|line| line.strip_prefix("-A DOCKER-USER "))
        .and_then(|spec| spec.rsplit_once("-j "))
        .map(|(_, chain)| chain.to_owned())
        .unwrap();
    run("iptables", &["-w", "5", "-F", &forward_chain]);
    let deadline = Instant::now() + Duration::from_secs(15);
    while sorted_rule_lines(&app.prefix).await != rules_before {
        assert!(Instant::now() < deadline, "not repaired\n{}", app.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(app.log().contains("egress_rules_repaired"), "{}", app.log());

    // Still enforced, and the endpoint still answers.
    assert!(
        !reaches(
            &app.docker,
            &sandbox.container_id,
            sandbox.gateway,
            host_port
        )
        .await
    );
    assert!(http_get(&sandbox.endpoint, "/").await.is_ok());
    host_listener.abort();
}

async fn sorted_rule_lines(prefix: &str) -> Vec<String> {
    let mut lines = sandboxd_testkit::egress::rule_lines(prefix).await.unwrap();
    lines.sort();
    lines
}

#[tokio::test]
async fn a_start_that_cannot_install_the_rules_stops_with_the_reason() {
    // No `iptables` on the PATH: the start must stop before serving, saying why, and leave no rule.
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!(
        "e2e-{}-{}",
        std::process::id(),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let config = AppConfig {
        env: vec![("PATH".to_owned(), "/nonexistent".to_owned())],
        ..AppConfig::default()
    };
    let config_path = dir.path().join("sandboxd.toml");
    // Nothing listens on port 1: the start must fail before it ever needs Redis.
    std::fs::write(
        &config_path,
        config.render(
            "redis://127.0.0.1:1",
            &prefix,
            dir.path(),
            &dir.path().join("pool"),
        ),
    )
    .unwrap();
    let launch = config.launch(
        sandboxd_testkit::binary::sandboxd_bin(),
        config_path,
        dir.path().join("sandboxd.log"),
    );
    let error = sandboxd_testkit::process::SandboxdProcess::start(&launch)
        .await
        .expect_err("sandboxd served without its egress rules")
        .to_string();
    assert!(
        error.contains("exited during start")
            && error.contains("installing the egress packet-filter rules")
            && error.contains("cannot run `iptables`"),
        "{error}"
    );
    assert!(
        sandboxd_testkit::egress::rule_lines(&prefix)
            .await
            .unwrap()
            .is_empty()
    );
}
