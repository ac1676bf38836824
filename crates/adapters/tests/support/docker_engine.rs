//! Test support for the Docker runtime tests: a per-test label namespace whose containers are
//! removed when the test ends (also on failure or panic), temp volume roots, and engine helpers.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::Docker;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::query_parameters::{ListContainersOptionsBuilder, RemoveContainerOptionsBuilder};
use futures::StreamExt;
use sandboxd_adapters::docker::{DockerConfig, DockerRuntime};
use sandboxd_domain::{AgentId, AgentProfile, ChatId, SessionId, VolumePath};
use sandboxd_usecase::ports::NewSandbox;
use tempfile::TempDir;
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The local sandbox image built by `scripts/build-sandbox-image`.
pub fn sandbox_image() -> String {
    std::env::var("SANDBOX_IMAGE").unwrap_or_else(|_| "sandboxd/busybox:local".to_owned())
}

/// A client for the engine the tests run against (the same one the runtime uses by default).
pub async fn engine() -> Docker {
    Docker::connect_with_defaults()
        .expect("docker client")
        .negotiate_version()
        .await
        .expect("the Docker engine must be running: scripts/build-sandbox-image starts it")
}

/// One test's world: a unique label namespace, a volume root, and a guard that removes every
/// container carrying this namespace's managed-by label when dropped.
pub struct TestSandboxes {
    // First field, so it drops first: containers go before their volume directories.
    guard: LabelGuard,
    pub prefix: String,
    pub root: TempDir,
}

impl TestSandboxes {
    pub fn new() -> Self {
        let prefix = format!(
            "sbxtest-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let root = tempfile::Builder::new()
            .prefix("sandboxd-docker-test-")
            .tempdir()
            .unwrap();
        let guard = LabelGuard {
            filter: format!("{prefix}.managed-by=sandboxd"),
        };
        Self {
            guard,
            prefix,
            root,
        }
    }

    /// A fresh directory under the root, for one sandbox's volume.
    pub fn volume_dir(&self, name: &str) -> PathBuf {
        let dir = self.root.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        dir
    }

    /// A config with this test's prefix and root.
    pub fn config(&self) -> DockerConfig {
        DockerConfig {
            key_prefix: self.prefix.clone(),
            allowed_volume_roots: vec![self.root.path().to_path_buf()],
            ..DockerConfig::default()
        }
    }

    pub fn runtime(&self) -> DockerRuntime {
        DockerRuntime::new(self.config())
    }

    /// Containers of this test, counted on the engine by label.
    pub async fn count(&self) -> usize {
        list_by_label(&engine().await, &self.guard.filter)
            .await
            .len()
    }
}

pub fn agent(name: &str) -> AgentId {
    AgentId::parse(name).unwrap()
}

/// The profile `web`: the sandbox image serving HTTP on 8080, with small limits.
pub fn web_profile() -> AgentProfile {
    let mut web = AgentProfile::new(sandbox_image());
    web.port = Some(8080);
    web.memory = sandboxd_domain::ByteSize(64 << 20);
    web.cpus = 0.5;
    web.pids_limit = 64;
    web.ready_timeout = Duration::from_secs(10);
    web
}

/// A spec of agent `web` with the [`web_profile`] for `volume`.
pub fn new_sandbox(volume: &Path) -> NewSandbox {
    sandbox_of("web", web_profile(), volume)
}

/// A spec of `agent_id` with `profile` for `volume`, created now and expiring in 30 minutes.
pub fn sandbox_of(agent_id: &str, profile: AgentProfile, volume: &Path) -> NewSandbox {
    let now = OffsetDateTime::now_utc();
    NewSandbox {
        session_id: SessionId::new_random(),
        chat_id: ChatId::from_uuid(uuid::Uuid::new_v4()),
        agent_id: agent(agent_id),
        profile: std::sync::Arc::new(profile),
        volume_host_path: VolumePath::parse(volume.to_str().unwrap()).unwrap(),
        created_at: now,
        expires_at: now + Duration::from_secs(1800),
    }
}

async fn list_by_label(docker: &Docker, filter: &str) -> Vec<String> {
    let filters = HashMap::from([("label", vec![filter.to_owned()])]);
    let options = ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&filters)
        .build();
    docker
        .list_containers(Some(options))
        .await
        .unwrap()
        .into_iter()
        .filter_map(|c| c.id)
        .collect()
}

/// Removes, on drop, every container matching the label filter. Drop cannot await, and the
/// test's runtime may be gone (panic), so the removal runs on its own thread and runtime.
struct LabelGuard {
    filter: String,
}

impl Drop for LabelGuard {
    fn drop(&mut self) {
        let filter = self.filter.clone();
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let docker = engine().await;
                for id in list_by_label(&docker, &filter).await {
                    let options = RemoveContainerOptionsBuilder::default()
                        .force(true)
                        .v(true)
                        .build();
                    let _ = docker.remove_container(&id, Some(options)).await;
                }
            });
        });
        let _ = cleanup.join();
    }
}

/// Runs `cmd` in the container and returns its combined output.
pub async fn exec(docker: &Docker, container: &str, cmd: &[&str]) -> String {
    let exec = docker
        .create_exec(
            container,
            CreateExecOptions {
                cmd: Some(cmd.iter().map(|s| (*s).to_owned()).collect()),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut text = String::new();
    if let StartExecResults::Attached { mut output, .. } =
        docker.start_exec(&exec.id, None).await.unwrap()
    {
        while let Some(Ok(chunk)) = output.next().await {
            text.push_str(&chunk.to_string());
        }
    }
    text
}

/// A minimal HTTP/1.0 GET over raw TCP: the status code and the body.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}
