//! Several Docker engines on this machine, each in its own network namespace with its own
//! address (`scripts/lib/fleet.sh`, see `docs/fleet-foundation.md`), and a sandboxd started inside
//! one of them. Removed when dropped, also on failure.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::app_config::AppConfig;
use crate::binary::sandboxd_bin;
use crate::process::SandboxdProcess;
use crate::{Error, Result, workspace_root};

/// One node: its index, its address, its engine's socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub index: usize,
    pub address: String,
    pub socket: PathBuf,
    /// The host's end of the node's link (what the node reaches the host's Redis at).
    pub host_address: String,
    pub netns: String,
}

/// A fleet of engines; `fleet_down` when dropped.
#[derive(Debug)]
pub struct Fleet {
    name: String,
    pub nodes: Vec<Node>,
}

fn fleet_sh(script: &str) -> Result<String> {
    let lib = workspace_root().join("scripts/lib/fleet.sh");
    let output = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "set -euo pipefail; source {}; {script}",
            lib.display()
        ))
        .output()?;
    if !output.status.success() {
        return Err(Error::Failed(format!(
            "{script}: {}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

impl Fleet {
    /// Starts `count` nodes named `name` (removing the leftovers of a killed run first); the
    /// nodes reach each other (`FLEET_CROSS_NODE=1`: the node API goes node to node).
    ///
    /// # Errors
    /// When `fleet_up` fails (it has removed what it made).
    pub fn up(name: &str, count: usize) -> Result<Self> {
        fleet_sh(&format!("fleet_down {name} >/dev/null 2>&1 || true"))?;
        let listed = fleet_sh(&format!("FLEET_CROSS_NODE=1 fleet_up {name} {count}"))?;
        let mut fleet = Self {
            name: name.to_owned(),
            nodes: Vec::new(),
        };
        for line in listed.lines() {
            let parts: Vec<&str> = line.split_whitespace().collect();
            let [index, address, socket] = parts[..] else {
                continue;
            };
            let index: usize = index
                .parse()
                .map_err(|_| Error::Failed(format!("fleet_up printed {line:?}")))?;
            let host_address = fleet_sh(&format!("fleet_host_addr {name} {index}"))?
                .trim()
                .to_owned();
            fleet.nodes.push(Node {
                index,
                address: address.to_owned(),
                socket: PathBuf::from(socket),
                host_address,
                netns: format!("{name}-n{index}"),
            });
        }
        if fleet.nodes.len() != count {
            return Err(Error::Failed(format!("fleet_up printed {listed:?}")));
        }
        Ok(fleet)
    }
}

impl Fleet {
    /// Kills `node`'s engine as a crash would (its containers die and stay, exited).
    ///
    /// # Errors
    /// When `fleet_engine_kill` fails.
    pub fn kill_engine(&self, node: &Node) -> Result<()> {
        fleet_sh(&format!("fleet_engine_kill {} {}", self.name, node.index)).map(drop)
    }

    /// Starts `node`'s engine again and waits for it.
    ///
    /// # Errors
    /// When `fleet_engine_start` fails.
    pub fn start_engine(&self, node: &Node) -> Result<()> {
        fleet_sh(&format!("fleet_engine_start {} {}", self.name, node.index)).map(drop)
    }

    /// Cuts (`false`) or restores (`true`) `node`'s link to the host: Redis and the other nodes
    /// stop reaching it.
    ///
    /// # Errors
    /// When `ip link` fails.
    pub fn set_link(&self, node: &Node, up: bool) -> Result<()> {
        let state = if up { "up" } else { "down" };
        fleet_sh(&format!("ip link set {}h{} {state}", self.name, node.index)).map(drop)
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if let Err(error) = fleet_sh(&format!("fleet_down {}", self.name)) {
            eprintln!("fleet_down {}: {error}", self.name);
        }
    }
}

/// Starts sandboxd inside `node`'s namespace with `config` (its listen address set to the
/// node's), its engine the node's, `redis_url` as its store; files under `dir`.
///
/// # Errors
/// When it does not start.
pub async fn start_node_sandboxd(
    node: &Node,
    mut config: AppConfig,
    redis_url: &str,
    prefix: &str,
    volume_root: &Path,
    dir: &Path,
) -> Result<SandboxdProcess> {
    config.listen_ip.clone_from(&node.address);
    config.extra_toml.push_str(&format!(
        "docker_host = \"unix://{}\"\n",
        node.socket.display()
    ));
    let wrapper = dir.join(format!("sandboxd-n{}.sh", node.index));
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec nsenter --net=/run/netns/{} -- {} \"$@\"\n",
            node.netns,
            sandboxd_bin().display()
        ),
    )?;
    std::fs::set_permissions(
        &wrapper,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755),
    )?;
    let config_path = dir.join(format!("sandboxd-n{}.toml", node.index));
    std::fs::write(
        &config_path,
        config.render(
            redis_url,
            prefix,
            volume_root,
            &dir.join(format!("pool-n{}", node.index)),
        ),
    )?;
    let launch = config.launch(
        wrapper,
        config_path,
        dir.join(format!("sandboxd-n{}.log", node.index)),
    );
    SandboxdProcess::start(&launch).await
}

/// Runs `work` on a thread of its own inside network namespace `netns` (a client that must
/// reach a node through the node's own link, as while that link is cut): every socket made on
/// that thread belongs to the namespace. `work` builds its own current-thread runtime.
///
/// # Errors
/// When the namespace cannot be entered or the thread panics.
pub fn in_netns<T, F>(netns: &str, work: F) -> Result<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let path = PathBuf::from("/run/netns").join(netns);
    let worker = std::thread::spawn(move || -> Result<T> {
        let namespace = std::fs::File::open(&path)?;
        rustix::thread::move_into_link_name_space(
            std::os::fd::AsFd::as_fd(&namespace),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .map_err(|error| Error::Failed(format!("setns {}: {error}", path.display())))?;
        Ok(work())
    });
    worker
        .join()
        .map_err(|_| Error::Failed("the namespace thread panicked".to_owned()))?
}

/// The settings that make a sandboxd fleet node `node_id` of `node`: its node API on the node's
/// address (port 50052: each node has its own address), its heartbeat TTL.
#[must_use]
pub fn node_settings(node: &Node, ttl: &str) -> String {
    format!(
        "node_id = \"n{}\"\nnode_grpc_addr = \"{}:50052\"\nnode_heartbeat_ttl = \"{ttl}\"\n",
        node.index, node.address
    )
}
