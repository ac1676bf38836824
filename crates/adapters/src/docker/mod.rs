//! The Docker implementation of the `SandboxRuntime` port, through bollard: hardened sandbox
//! containers named `sandbox-{session_id}`, labelled so the engine alone can rebuild state, with a
//! bind-mounted chat volume and an endpoint published on the host and probed until it serves.
//!
//! Nothing is ever pulled: a profile's image must already be on the engine.

pub mod body;
pub mod config;
mod containers;
mod engine;
mod labels;
pub mod names;
mod network;
mod pool;
mod pooled;
mod probe;
mod ready;
mod volume;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bollard::Docker;
use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder};
use sandboxd_domain::{
    AgentId, AgentProfile, ChatId, ContainerId, Endpoint, IDENTITY_ENV, VolumePath,
};
use sandboxd_usecase::ports::{
    ClaimError, ContainerState, ManagedContainer, NewSandbox, PoolRecovery, PoolRuntime,
    PooledSandbox, RuntimeError, SandboxRuntime, StartedSandbox, VolumeRefusal,
};
use tokio::sync::OnceCell;
use tokio::time::Instant;

pub use config::{DockerConfig, PoolConfig};
use containers::container_state;
use engine::{engine_error, is_network_not_found, is_not_found, is_removal_in_progress, other};
pub use labels::LabelKeys;
use names::{
    EVENT_CLEANUP_AFTER_ABANDONED_CREATE_FAILED, EVENT_CLEANUP_AFTER_FAILED_CREATE_FAILED,
    EVENT_CONTAINER_READY, EVENT_DOCKER_INFO_FAILED, LABEL_OPERATION, LABEL_RESULT,
    OPERATION_CLAIM, OPERATION_CREATE, OPERATION_DELETE, OPERATION_PAUSE, OPERATION_START,
    OPERATION_START_POOLED, OPERATION_STOP, OPERATION_STOP_KEEP, OPERATION_UNPAUSE, RESULT_ERROR,
    RESULT_OK, RUNTIME_DURATION_SECONDS,
};
use volume::VolumePolicy;

use crate::egress::EgressNetwork;

/// Sandboxes as Docker containers. Cheap to share (`Arc<dyn SandboxRuntime>`).
///
/// The engine connection is made on first use and kept; while the engine is unreachable every
/// call fails with `Unavailable` and the next one tries again, so the service can start (and
/// report NOT_SERVING) before the engine is up.
pub struct DockerRuntime {
    config: DockerConfig,
    labels: LabelKeys,
    policy: Arc<VolumePolicy>,
    client: OnceCell<Docker>,
    /// The engine's data root (`docker info`), learnt on connect; the volume policy protects it.
    engine_root_dir: std::sync::OnceLock<PathBuf>,
    /// Egress networks known to exist, so a create checks the engine once per network and
    /// process, not on every call.
    networks_ready: std::sync::Mutex<HashSet<String>>,
    /// One network creation at a time in this process: the first creates of a deployment arrive
    /// together, and the engine refuses all but one bridge of a name.
    network_creation: tokio::sync::Mutex<()>,
    /// The warm pool's host side (slots, channels, claim records).
    pool: pool::PoolHost,
    /// The command of each image a pooled sandbox runs once claimed (see `default_command`).
    image_commands: std::sync::Mutex<HashMap<String, Vec<String>>>,
}

impl fmt::Debug for DockerRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DockerRuntime")
            .field("docker_host", &self.config.docker_host)
            .field("key_prefix", &self.config.key_prefix)
            .field("connected", &self.client.initialized())
            .finish_non_exhaustive()
    }
}

impl DockerRuntime {
    /// A runtime for `config`, already validated by its owner (sandboxd's `docker` section and
    /// `AgentProfile::validate`); does not contact the engine (see the type's docs).
    #[must_use]
    pub fn new(config: DockerConfig) -> Self {
        let policy =
            VolumePolicy::new(config.allowed_volume_roots.clone(), unix_socket_of(&config))
                .with_protected(config.pool.root.clone());
        Self {
            labels: LabelKeys::new(&config.key_prefix),
            policy: Arc::new(policy),
            pool: pool::PoolHost::new(config.pool.clone()),
            image_commands: std::sync::Mutex::new(HashMap::new()),
            config,
            client: OnceCell::new(),
            engine_root_dir: std::sync::OnceLock::new(),
            networks_ready: std::sync::Mutex::new(HashSet::new()),
            network_creation: tokio::sync::Mutex::new(()),
        }
    }

    /// The connected, version-negotiated engine client.
    async fn client(&self) -> Result<Docker, RuntimeError> {
        self.client
            .get_or_try_init(|| async {
                let docker = match &self.config.docker_host {
                    Some(host) => Docker::connect_with_host(host),
                    // Honours DOCKER_HOST, else the local socket.
                    None => Docker::connect_with_defaults(),
                }
                .map_err(engine_error)?
                .with_timeout(self.config.engine_timeout);
                // bollard speaks API 1.53 by default; older engines (1.41 here) need the downgrade.
                let docker = docker.negotiate_version().await.map_err(engine_error)?;
                match docker.info().await.map(|info| info.docker_root_dir) {
                    Ok(Some(dir)) => {
                        let _ = self.engine_root_dir.set(PathBuf::from(dir));
                    }
                    Ok(None) => {}
                    Err(error) => tracing::warn!(
                        name: EVENT_DOCKER_INFO_FAILED,
                        message = EVENT_DOCKER_INFO_FAILED,
                        %error,
                    ),
                }
                Ok(docker)
            })
            .await
            .cloned()
    }

    /// The canonical host directory to mount, or why not.
    async fn check(&self, volume: &VolumePath) -> Result<PathBuf, RuntimeError> {
        let policy = Arc::clone(&self.policy);
        let volume = volume.clone();
        // Canonicalisation walks the filesystem: keep it off the async workers.
        // Known once connected; `create` connects before checking, `validate` uses what is known.
        let engine_root_dir = self.engine_root_dir.get().cloned();
        tokio::task::spawn_blocking(move || policy.check_with(&volume, engine_root_dir.as_deref()))
            .await
            .map_err(|e| other(format!("volume check task failed: {e}")))?
    }

    fn stop_grace_secs(&self) -> i32 {
        // The API takes whole seconds; round up so the grace is never shortened.
        let grace = self.config.stop_grace;
        let secs = grace.as_secs() + u64::from(grace.subsec_nanos() > 0);
        i32::try_from(secs).unwrap_or(i32::MAX)
    }

    /// Makes sure the egress network exists, once per process (see `network::ensure`).
    async fn ensure_network(
        &self,
        docker: &Docker,
        network: &EgressNetwork,
    ) -> Result<(), RuntimeError> {
        if self.network_known(&network.name) {
            return Ok(());
        }
        let _one_at_a_time = self.network_creation.lock().await;
        // Created by the create this one waited for.
        if self.network_known(&network.name) {
            return Ok(());
        }
        network::ensure(docker, network, &self.labels).await?;
        if let Ok(mut known) = self.networks_ready.lock() {
            known.insert(network.name.clone());
        }
        Ok(())
    }

    fn network_known(&self, name: &str) -> bool {
        self.networks_ready
            .lock()
            .is_ok_and(|known| known.contains(name))
    }

    /// Forgets a network that the engine says is gone (removed behind the service's back), so
    /// the next ensure creates it again.
    fn forget_network(&self, name: &str) {
        if let Ok(mut known) = self.networks_ready.lock() {
            known.remove(name);
        }
    }

    /// The full create request of a cold sandbox: the hardened base (`body::hardened`), the
    /// chat's volume, the identity in its env, and the chat's labels.
    fn container_body(
        &self,
        spec: &NewSandbox,
        profile: &AgentProfile,
        mount_source: &str,
        network: &EgressNetwork,
    ) -> ContainerCreateBody {
        let host = body::HostSide {
            network: &network.name,
            publish_host_ip: self.config.publish_host_ip,
            stop_timeout_secs: self.stop_grace_secs(),
        };
        body::cold(
            profile,
            host,
            mount_source,
            sandbox_env(spec, profile),
            self.labels.for_sandbox(spec),
        )
    }

    async fn create_sandbox(&self, spec: &NewSandbox) -> Result<StartedSandbox, RuntimeError> {
        // The engine first, so the volume check knows its data root.
        let docker = self.client().await?;
        let profile = spec.profile.as_ref();
        let source = self.check(&spec.volume_host_path).await?;
        let source = source
            .to_str()
            .ok_or(RuntimeError::VolumeInvalid(VolumeRefusal::NonUtf8Path))?
            .to_owned();
        let network = EgressNetwork::of(&self.config.key_prefix, profile);
        self.ensure_network(&docker, &network).await?;
        let name = format!("sandbox-{}", spec.session_id);
        let body = self.container_body(spec, profile, &source, &network);
        let (container_id, mut guard) = self
            .create_named(&docker, &name, &network, body, &profile.image)
            .await?;
        match ready::start_and_wait_ready(
            &docker,
            &container_id,
            profile,
            self.config.publish_host_ip,
        )
        .await
        {
            Ok(endpoint) => {
                guard.disarm();
                Ok(StartedSandbox {
                    container_id,
                    endpoint,
                })
            }
            Err(error) => {
                if let Err(cleanup) = remove_forced(&docker, container_id.as_str()).await {
                    tracing::warn!(
                        name: EVENT_CLEANUP_AFTER_FAILED_CREATE_FAILED,
                        message = EVENT_CLEANUP_AFTER_FAILED_CREATE_FAILED,
                        %container_id,
                        error = %cleanup,
                    );
                } else {
                    guard.disarm();
                }
                Err(error)
            }
        }
    }

    /// Creates the container `name` on `network` (made again, once, if it was removed since it
    /// was ensured). The returned guard removes it by name if the caller is abandoned before it
    /// disarms it; on an error nothing of it is left, or the guard is already removing it.
    async fn create_named(
        &self,
        docker: &Docker,
        name: &str,
        network: &EgressNetwork,
        body: ContainerCreateBody,
        image: &str,
    ) -> Result<(ContainerId, RemoveOnDrop), RuntimeError> {
        // Armed before the create call: if this future is dropped mid-way, whatever was created
        // under this name is removed in the background.
        let mut guard = RemoveOnDrop::arm(docker.clone(), name.to_owned());
        let options = CreateContainerOptionsBuilder::default().name(name).build();
        let mut outcome = docker
            .create_container(Some(options.clone()), body.clone())
            .await;
        if outcome.as_ref().is_err_and(is_network_not_found) && self.network_known(&network.name) {
            // The network was removed since it was ensured: make it again, once.
            self.forget_network(&network.name);
            self.ensure_network(docker, network).await?;
            outcome = docker.create_container(Some(options), body).await;
        }
        let created = match outcome {
            Ok(created) => created,
            Err(error) => {
                // An engine answer means nothing was created (and a name conflict belongs to
                // someone else: leave it). A transport failure may have lost the reply to a create
                // that happened, so the guard stays armed and removes by name (404 is fine).
                if matches!(
                    error,
                    bollard::errors::Error::DockerResponseServerError { .. }
                ) {
                    guard.disarm();
                }
                return Err(create_error(error, image));
            }
        };
        let container_id = ContainerId::parse(&created.id)
            .map_err(|e| other(format!("engine returned an unusable container id: {e}")))?;
        Ok((container_id, guard))
    }
}

#[async_trait]
impl SandboxRuntime for DockerRuntime {
    async fn validate(
        &self,
        _profile: &AgentProfile,
        volume: &VolumePath,
    ) -> Result<(), RuntimeError> {
        self.check(volume).await.map(drop)
    }

    async fn create(&self, spec: &NewSandbox) -> Result<StartedSandbox, RuntimeError> {
        let started = Instant::now();
        let result = self.create_sandbox(spec).await;
        record(OPERATION_CREATE, result.is_ok(), started);
        if let Ok(sandbox) = &result {
            tracing::debug!(
                name: EVENT_CONTAINER_READY,
                message = EVENT_CONTAINER_READY,
                container_id = %sandbox.container_id,
                session_id = %spec.session_id,
                elapsed_ms = started.elapsed().as_millis(),
            );
        }
        result
    }

    async fn remove_gracefully(&self, container_id: &ContainerId) -> Result<(), RuntimeError> {
        timed(OPERATION_STOP, self.stop_and_remove(container_id)).await?;
        self.release_after_removal(container_id).await;
        Ok(())
    }

    async fn force_remove(&self, container_id: &ContainerId) -> Result<(), RuntimeError> {
        timed(OPERATION_DELETE, async {
            let docker = self.client().await?;
            remove_forced(&docker, container_id.as_str()).await
        })
        .await?;
        self.release_after_removal(container_id).await;
        Ok(())
    }

    async fn inspect(&self, container_id: &ContainerId) -> Result<ContainerState, RuntimeError> {
        let docker = self.client().await?;
        container_state(&docker, container_id).await
    }

    async fn list_managed(&self) -> Result<Vec<ManagedContainer>, RuntimeError> {
        self.list_labelled(vec![self.labels.managed_filter()]).await
    }

    async fn list_chat(&self, chat_id: &ChatId) -> Result<Vec<ManagedContainer>, RuntimeError> {
        let mut listed = self
            .list_labelled(vec![
                self.labels.managed_filter(),
                self.labels.chat_filter(chat_id),
            ])
            .await?;
        // Claimed pooled sandboxes carry no chat label: their records name the chat, and only
        // those containers are asked for.
        let claimed = self.pool.claimed_of_chat(chat_id, &self.labels).await;
        if !claimed.is_empty() {
            let ids = claimed.iter().map(|id| id.as_str().to_owned()).collect();
            listed.extend(
                self.list_filtered(HashMap::from([
                    ("label", vec![self.labels.managed_filter()]),
                    ("id", ids),
                ]))
                .await?,
            );
        }
        Ok(listed)
    }

    async fn pause(&self, container_id: &ContainerId) -> Result<(), RuntimeError> {
        timed(
            OPERATION_PAUSE,
            self.freeze_or_thaw(container_id, ContainerState::Paused),
        )
        .await
    }

    async fn unpause(&self, container_id: &ContainerId) -> Result<(), RuntimeError> {
        timed(
            OPERATION_UNPAUSE,
            self.freeze_or_thaw(container_id, ContainerState::Running),
        )
        .await
    }

    async fn stop(&self, container_id: &ContainerId) -> Result<(), RuntimeError> {
        timed(OPERATION_STOP_KEEP, self.stop_keeping(container_id)).await
    }

    async fn start(
        &self,
        container_id: &ContainerId,
        profile: &AgentProfile,
    ) -> Result<Option<Endpoint>, RuntimeError> {
        timed(OPERATION_START, self.start_stopped(container_id, profile)).await
    }

    async fn runtimes(&self) -> Result<BTreeSet<String>, RuntimeError> {
        let docker = self.client().await?;
        let info = docker.info().await.map_err(engine_error)?;
        // `Runtimes` holds what daemon.json registers and the built-in runc; the default is
        // named too in case an engine lists it apart.
        let mut names: BTreeSet<String> = info.runtimes.unwrap_or_default().into_keys().collect();
        names.extend(info.default_runtime);
        Ok(names)
    }

    async fn ping(&self) -> Result<(), RuntimeError> {
        let docker = self.client().await?;
        docker.ping().await.map(drop).map_err(engine_error)
    }
}

#[async_trait]
impl PoolRuntime for DockerRuntime {
    async fn start_pooled(
        &self,
        agent_id: &AgentId,
        profile: &AgentProfile,
    ) -> Result<PooledSandbox, RuntimeError> {
        timed(
            OPERATION_START_POOLED,
            self.start_pooled_sandbox(agent_id, profile),
        )
        .await
    }

    async fn claim(
        &self,
        pooled: PooledSandbox,
        spec: &NewSandbox,
    ) -> Result<StartedSandbox, ClaimError> {
        let started = Instant::now();
        let result = self.claim_pooled(pooled, spec).await;
        record(OPERATION_CLAIM, result.is_ok(), started);
        result
    }

    async fn discard_pooled(&self, pooled: PooledSandbox) -> Result<(), RuntimeError> {
        let Some(_busy) = self.pool.mark_busy(&pooled.slot) else {
            return Err(other("the pooled sandbox is being worked on"));
        };
        self.discard(&pooled).await
    }

    async fn recover_pool(&self) -> Result<PoolRecovery, RuntimeError> {
        self.recover().await
    }
}

/// The profile's environment plus the sandbox's identity (`IDENTITY_ENV`, which a profile may
/// not set), so the sandbox's own process knows which chat and session it serves.
fn sandbox_env(spec: &NewSandbox, profile: &AgentProfile) -> Vec<String> {
    let [chat, session, agent] = IDENTITY_ENV;
    body::profile_env(profile)
        .into_iter()
        .chain([
            format!("{chat}={}", spec.chat_id),
            format!("{session}={}", spec.session_id),
            format!("{agent}={}", spec.agent_id),
        ])
        .collect()
}

/// A failed create call: a missing image is named; nothing is ever pulled.
fn create_error(error: bollard::errors::Error, image: &str) -> RuntimeError {
    if let bollard::errors::Error::DockerResponseServerError {
        status_code: 404,
        message,
    } = &error
        && message.contains("No such image")
    {
        return RuntimeError::ImageNotFound(image.to_owned());
    }
    engine_error(error)
}

/// Forced removal; gone already (or being removed by a concurrent call) is success.
/// `v` removes anonymous volumes only: a bind-mounted host directory is never touched.
async fn remove_forced(docker: &Docker, container: &str) -> Result<(), RuntimeError> {
    let options = RemoveContainerOptionsBuilder::default()
        .force(true)
        .v(true)
        .build();
    match docker.remove_container(container, Some(options)).await {
        Ok(()) => Ok(()),
        Err(error) if is_not_found(&error) || is_removal_in_progress(&error) => Ok(()),
        Err(error) => Err(engine_error(error)),
    }
}

/// The engine's unix socket when configured (or in `DOCKER_HOST`), so the policy protects it.
fn unix_socket_of(config: &DockerConfig) -> Option<PathBuf> {
    let host = config
        .docker_host
        .clone()
        .or_else(|| std::env::var("DOCKER_HOST").ok())?;
    host.strip_prefix("unix://")
        .map(|path| Path::new(path).to_path_buf())
}

/// Runs one runtime call, timed into [`RUNTIME_DURATION_SECONDS`] under `operation`.
async fn timed<T>(
    operation: &'static str,
    call: impl Future<Output = Result<T, RuntimeError>>,
) -> Result<T, RuntimeError> {
    let started = Instant::now();
    let result = call.await;
    record(operation, result.is_ok(), started);
    result
}

fn record(operation: &'static str, ok: bool, started: Instant) {
    let result = if ok { RESULT_OK } else { RESULT_ERROR };
    metrics::histogram!(RUNTIME_DURATION_SECONDS, LABEL_OPERATION => operation, LABEL_RESULT => result)
        .record(started.elapsed().as_secs_f64());
}

/// Removes a half-created sandbox if `create` is abandoned (its future dropped) before it
/// finished: Rust has no async drop, so the removal is spawned onto the current runtime.
struct RemoveOnDrop {
    armed: Option<(Docker, String)>,
}

impl RemoveOnDrop {
    fn arm(docker: Docker, container: String) -> Self {
        Self {
            armed: Some((docker, container)),
        }
    }

    fn disarm(&mut self) {
        self.armed = None;
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let Some((docker, container)) = self.armed.take() else {
            return;
        };
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                if let Err(error) = remove_forced(&docker, &container).await {
                    tracing::warn!(
                        name: EVENT_CLEANUP_AFTER_ABANDONED_CREATE_FAILED,
                        message = EVENT_CLEANUP_AFTER_ABANDONED_CREATE_FAILED,
                        container,
                        %error,
                    );
                }
            });
        }
    }
}
