//! The engine floor: the sandbox container sandboxd would create (same image, hardening, limits,
//! bind mount and published port), driven directly through bollard (create, start, pause,
//! unpause, removal), and the label sweep that removes everything a run created.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use bollard::Docker;
use bollard::models::{
    ContainerCreateBody, HostConfig, Mount, MountType, NetworkCreateRequest, PortBinding,
};
use bollard::query_parameters::{CreateContainerOptionsBuilder, StopContainerOptionsBuilder};
use sandboxd_testkit::docker;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The label every floor container carries (value: the run id); sandboxd's containers carry
/// their instance's `{key_prefix}.managed-by` label instead.
pub(crate) const RUN_LABEL: &str = "sandboxd-bench.run";
const CONTAINER_PORT: &str = "8080/tcp";
/// Poll period of the floor's readiness probe: tighter than sandboxd's backoff (2 ms doubling),
/// so the floor is what the engine can do, not what a probe schedule allows.
const PROBE_EVERY: Duration = Duration::from_millis(1);
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// The profile's limits, identical to the sandboxd instances' `[agents.default]`.
const MEMORY: i64 = 512 * 1024 * 1024;
const NANO_CPUS: i64 = 1_000_000_000;
const PIDS_LIMIT: i64 = 256;
pub(crate) const STOP_GRACE_SECS: i32 = 2;

/// Where the time of one floor create went.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CreateTimings {
    pub create: Duration,
    pub start: Duration,
    pub inspect: Duration,
    /// From the end of inspect to the first HTTP status line.
    pub ready: Duration,
    pub total: Duration,
}

/// The engine client and this run's label.
#[derive(Debug, Clone)]
pub(crate) struct Engine {
    docker: Docker,
    run_id: String,
    image: String,
    /// A bridge like sandboxd's egress networks (inter-container traffic off), so the floor
    /// container is attached the way a sandbox is. Removed by the teardown sweep (its label).
    network: String,
}

impl Engine {
    pub(crate) async fn connect(run_id: &str, image: &str) -> Result<Self> {
        let docker = client().await?;
        docker
            .inspect_image(image)
            .await
            .with_context(|| format!("image {image} (scripts/build-sandbox-image builds it)"))?;
        let network = format!("sandboxd-bench-{run_id}");
        docker
            .create_network(NetworkCreateRequest {
                name: network.clone(),
                driver: Some("bridge".to_owned()),
                enable_ipv6: Some(false),
                options: Some(HashMap::from([(
                    "com.docker.network.bridge.enable_icc".to_owned(),
                    "false".to_owned(),
                )])),
                labels: Some(HashMap::from([(RUN_LABEL.to_owned(), run_id.to_owned())])),
                ..Default::default()
            })
            .await
            .context("creating the floor's network")?;
        Ok(Self {
            docker,
            run_id: run_id.to_owned(),
            image: image.to_owned(),
            network,
        })
    }

    /// DockerRuntime::container_body's request, for the default profile under `runtime` (the
    /// engine's default when `None`).
    fn body(&self, volume: &Path, runtime: Option<&str>) -> Result<ContainerCreateBody> {
        let source = volume
            .to_str()
            .ok_or_else(|| anyhow!("non-UTF-8 volume path"))?
            .to_owned();
        let host_config = HostConfig {
            privileged: Some(false),
            cap_drop: Some(vec!["ALL".to_owned()]),
            security_opt: Some(vec!["no-new-privileges".to_owned()]),
            pids_limit: Some(PIDS_LIMIT),
            memory: Some(MEMORY),
            memory_swap: Some(MEMORY),
            nano_cpus: Some(NANO_CPUS),
            init: Some(true),
            readonly_rootfs: Some(false),
            network_mode: Some(self.network.clone()),
            runtime: runtime.map(str::to_owned),
            mounts: Some(vec![Mount {
                target: Some("/workspace".to_owned()),
                source: Some(source),
                typ: Some(MountType::BIND),
                read_only: Some(false),
                ..Default::default()
            }]),
            port_bindings: Some(HashMap::from([(
                CONTAINER_PORT.to_owned(),
                Some(vec![PortBinding {
                    host_ip: Some("127.0.0.1".to_owned()),
                    host_port: Some(String::new()),
                }]),
            )])),
            ..Default::default()
        };
        Ok(ContainerCreateBody {
            image: Some(self.image.clone()),
            env: Some(Vec::new()),
            labels: Some(HashMap::from([(RUN_LABEL.to_owned(), self.run_id.clone())])),
            exposed_ports: Some(vec![CONTAINER_PORT.to_owned()]),
            stop_timeout: Some(i64::from(STOP_GRACE_SECS)),
            host_config: Some(host_config),
            ..Default::default()
        })
    }

    /// Create, start, read the published port, probe `GET /` until a status line: the floor of
    /// CreateSandbox cold. Returns the container id (removed by the caller or the sweep).
    pub(crate) async fn create_ready(&self, volume: &Path) -> Result<(String, CreateTimings)> {
        self.create_ready_under(volume, None).await
    }

    /// [`Self::create_ready`] of the same container under the OCI runtime `runtime` (`runsc`).
    pub(crate) async fn create_ready_under(
        &self,
        volume: &Path,
        runtime: Option<&str>,
    ) -> Result<(String, CreateTimings)> {
        let name = format!("sbxbench-floor-{}", uuid::Uuid::new_v4().simple());
        let options = CreateContainerOptionsBuilder::default().name(&name).build();
        let body = self.body(volume, runtime)?;
        let started = Instant::now();
        let created = self.docker.create_container(Some(options), body).await?;
        let t_created = Instant::now();
        self.docker.start_container(&created.id, None).await?;
        let t_started = Instant::now();
        let port = self.published_port(&created.id).await?;
        let t_inspected = Instant::now();
        wait_http(SocketAddr::from(([127, 0, 0, 1], port))).await?;
        let done = Instant::now();
        Ok((
            created.id,
            CreateTimings {
                create: t_created - started,
                start: t_started - t_created,
                inspect: t_inspected - t_started,
                ready: done - t_inspected,
                total: done - started,
            },
        ))
    }

    async fn published_port(&self, id: &str) -> Result<u16> {
        let inspect = self.docker.inspect_container(id, None).await?;
        inspect
            .network_settings
            .and_then(|settings| settings.ports)
            .and_then(|mut ports| ports.remove(CONTAINER_PORT).flatten())
            .and_then(|bindings| {
                bindings
                    .into_iter()
                    .find_map(|b| b.host_port.and_then(|p| p.parse::<u16>().ok()))
            })
            .filter(|port| *port != 0)
            .ok_or_else(|| anyhow!("engine reported no host port for {CONTAINER_PORT}"))
    }

    /// The OCI runtimes the engine has (`docker info`), by the names a profile uses.
    pub(crate) async fn runtimes(&self) -> Result<BTreeSet<String>> {
        let info = self.docker.info().await?;
        Ok(info.runtimes.unwrap_or_default().into_keys().collect())
    }

    /// Forced removal, as DockerRuntime::delete does it (`force`, `v`).
    pub(crate) async fn remove_forced(&self, id: &str) -> Result<()> {
        remove_forced(&self.docker, id).await
    }

    /// The engine's pause (a cgroup freeze) of a running container: the one engine call
    /// PauseSandbox makes, so its floor.
    pub(crate) async fn pause(&self, id: &str) -> Result<()> {
        Ok(self.docker.pause_container(id).await?)
    }

    /// The engine's unpause (thaw) of a paused container: the one engine call ResumeSandbox makes
    /// for a paused sandbox.
    pub(crate) async fn unpause(&self, id: &str) -> Result<()> {
        Ok(self.docker.unpause_container(id).await?)
    }

    /// Graceful stop then forced removal, as DockerRuntime::stop does it.
    pub(crate) async fn stop_and_remove(&self, id: &str) -> Result<()> {
        let options = StopContainerOptionsBuilder::default()
            .t(STOP_GRACE_SECS)
            .build();
        self.docker.stop_container(id, Some(options)).await?;
        self.remove_forced(id).await
    }
}

/// The local engine, through the test kit's engine helper.
pub(crate) async fn client() -> Result<Docker> {
    docker::engine()
        .await
        .context("the Docker engine must be running")
}

async fn remove_forced(docker: &Docker, id: &str) -> Result<()> {
    Ok(docker::remove_forced(docker, id).await?)
}

/// `GET / HTTP/1.0` until any `HTTP/1.x` status line comes back. A bare TCP connect is not
/// enough: Docker's userland proxy accepts before anything listens inside.
async fn wait_http(addr: SocketAddr) -> Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if http_status_line(addr).await {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{addr} did not answer HTTP within {READY_TIMEOUT:?}");
        }
        tokio::time::sleep(PROBE_EVERY).await;
    }
}

async fn http_status_line(addr: SocketAddr) -> bool {
    let attempt = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        stream.write_all(b"GET / HTTP/1.0\r\n\r\n").await.ok()?;
        let mut received = Vec::with_capacity(64);
        let mut chunk = [0_u8; 64];
        while received.len() < 256 && !received.contains(&b'\n') {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(chunk.get(..n)?),
            }
        }
        Some(received.starts_with(b"HTTP/1."))
    };
    tokio::time::timeout(Duration::from_secs(1), attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// Removes every container carrying one of `filters` (`label=value`): the run's floor containers
/// and every sandboxd instance's, until a pass finds nothing (a create the engine finished after
/// its killed caller had gone). Returns how many it removed.
pub(crate) async fn sweep(docker: &Docker, filters: &[String]) -> Result<usize> {
    Ok(docker::sweep_settled(docker, filters).await?)
}
