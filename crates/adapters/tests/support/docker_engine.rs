//! The Docker runtime tests' view of the kit's engine helper (`sandboxd_testkit::docker`): a
//! per-test label namespace whose containers are removed when the test ends (also on failure or
//! panic), a temp volume root, and the adapter config and specs built on them.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bollard::Docker;
use sandboxd_adapters::docker::{DockerConfig, DockerRuntime, PoolConfig};
use sandboxd_domain::{AgentId, AgentProfile, ChatId, SessionId, VolumePath};
use sandboxd_testkit::docker::{self, LabelGuard};
pub(crate) use sandboxd_testkit::sandbox_image;
use sandboxd_usecase::ports::NewSandbox;
use tempfile::TempDir;
use time::OffsetDateTime;

/// A client for the engine the tests run against (the same one the runtime uses by default).
pub(crate) async fn engine() -> Docker {
    docker::engine()
        .await
        .expect("the Docker engine must be running: scripts/build-sandbox-image starts it")
}

/// One test's world: a unique label namespace, a volume root, and a guard that removes every
/// container carrying this namespace's managed-by label when dropped.
pub(crate) struct TestSandboxes {
    // First field, so it drops first: containers go before their volume directories.
    guard: LabelGuard,
    pub prefix: String,
    pub root: TempDir,
}

impl Drop for TestSandboxes {
    /// Containers first (they hold propagated copies of the pool's mounts), then every mount
    /// left under the root, so deleting the root never reaches into an attached volume.
    fn drop(&mut self) {
        docker::sweep_blocking(vec![docker::managed_filter(&self.prefix)]);
        sandboxd_testkit::pool::unmount_all_under(self.root.path());
    }
}

impl TestSandboxes {
    pub(crate) fn new() -> Self {
        let prefix = format!(
            "sbxtest-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let root = tempfile::Builder::new()
            .prefix("sandboxd-docker-test-")
            .tempdir()
            .unwrap();
        Self {
            guard: LabelGuard::new(docker::managed_filter(&prefix)),
            prefix,
            root,
        }
    }

    /// A fresh directory under the root, for one sandbox's volume.
    pub(crate) fn volume_dir(&self, name: &str) -> PathBuf {
        let dir = self.root.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        dir
    }

    /// A config with this test's prefix and root; its pool root is `pool/` under the root, with
    /// no waiter (see [`Self::pooled_config`]).
    pub(crate) fn config(&self) -> DockerConfig {
        DockerConfig {
            key_prefix: self.prefix.clone(),
            allowed_volume_roots: vec![self.root.path().to_path_buf()],
            pool: PoolConfig {
                root: self.pool_root(),
                waiter: None,
            },
            ..DockerConfig::default()
        }
    }

    /// [`Self::config`] with the static waiter, so pooled sandboxes can start.
    pub(crate) fn pooled_config(&self) -> DockerConfig {
        let mut config = self.config();
        config.pool.waiter = Some(sandboxd_testkit::pool::waiter_binary());
        config
    }

    /// Where this test's pool keeps its slots, channels and records.
    pub(crate) fn pool_root(&self) -> PathBuf {
        self.root
            .path()
            .canonicalize()
            .unwrap_or_else(|_| self.root.path().to_path_buf())
            .join("pool")
    }

    /// Mount points left below this test's root.
    pub(crate) fn mounts_left(&self) -> Vec<PathBuf> {
        sandboxd_testkit::pool::mounts_under(self.root.path())
    }

    pub(crate) fn runtime(&self) -> DockerRuntime {
        DockerRuntime::new(self.config())
    }

    /// Containers of this test, counted on the engine by label.
    pub(crate) async fn count(&self) -> usize {
        docker::list_by_label(&engine().await, self.guard.filter())
            .await
            .unwrap()
            .len()
    }
}

pub(crate) fn agent(name: &str) -> AgentId {
    AgentId::parse(name).unwrap()
}

/// The profile `web`: the sandbox image serving HTTP on 8080, with small limits.
pub(crate) fn web_profile() -> AgentProfile {
    let mut web = AgentProfile::new(sandbox_image());
    web.port = Some(8080);
    web.memory = sandboxd_domain::ByteSize(64 << 20);
    web.cpus = 0.5;
    web.pids_limit = 64;
    web.ready_timeout = Duration::from_secs(10);
    web
}

/// A spec of agent `web` with the [`web_profile`] for `volume`.
pub(crate) fn new_sandbox(volume: &Path) -> NewSandbox {
    sandbox_of("web", web_profile(), volume)
}

/// A spec of `agent_id` with `profile` for `volume`, created now and expiring in 30 minutes.
pub(crate) fn sandbox_of(agent_id: &str, profile: AgentProfile, volume: &Path) -> NewSandbox {
    let now = OffsetDateTime::now_utc();
    NewSandbox {
        node_id: None,
        session_id: SessionId::new_random(),
        chat_id: ChatId::from_uuid(uuid::Uuid::new_v4()),
        agent_id: agent(agent_id),
        profile: Arc::new(profile),
        volume_host_path: VolumePath::parse(volume.to_str().unwrap()).unwrap(),
        created_at: now,
        expires_at: now + Duration::from_secs(1800),
    }
}

/// Runs `cmd` in the container and returns its combined output.
pub(crate) async fn exec(docker: &Docker, container: &str, cmd: &[&str]) -> String {
    docker::exec(docker, container, cmd).await.unwrap()
}

/// `GET {path}` from a sandbox endpoint: the status code and the body.
pub(crate) async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    sandboxd_testkit::http_get(&addr.to_string(), path)
        .await
        .unwrap()
}
