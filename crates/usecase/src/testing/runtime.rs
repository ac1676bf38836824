//! A runtime that records calls, keeps a table of "containers" and fails on demand.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use sandboxd_domain::{AgentId, AgentProfile, ChatId, ContainerId, Endpoint, VolumePath};

use super::{CallLog, InjectedFailures, lock};
use crate::ports::{
    ClaimError, ContainerState, ManagedContainer, NewSandbox, PoolRecovery, PoolRuntime,
    PooledSandbox, RuntimeError, SandboxLabels, SandboxRuntime, StartedSandbox,
};

/// Runtime methods, for failure injection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RuntimeOp {
    Validate,
    Create,
    RemoveGracefully,
    ForceRemove,
    ListManaged,
    ListChat,
    Inspect,
    Pause,
    Unpause,
    Stop,
    Start,
    Runtimes,
    Ping,
    StartPooled,
    Claim,
    DiscardPooled,
    RecoverPool,
}

/// One "container" of the fake engine.
#[derive(Debug, Clone)]
struct FakeContainer {
    labels: SandboxLabels,
    endpoint: Option<Endpoint>,
    state: ContainerState,
    /// The slot of a pooled container; it waits while its labels name no chat.
    pool_slot: Option<String>,
}

impl FakeContainer {
    /// A pooled container nobody claimed: the pool's, not a chat's, so no listing shows it.
    fn is_waiting(&self) -> bool {
        self.pool_slot.is_some() && self.labels.chat_id.is_none()
    }
}

type CreateHook = Arc<dyn Fn(&NewSandbox) + Send + Sync>;

/// The runtime every fake engine starts with, as Docker's default is `runc`.
const DEFAULT_RUNTIME: &str = "runc";

pub struct FakeRuntime {
    calls: CallLog,
    /// The engine's containers: id -> what they were created from, and their state.
    containers: Mutex<BTreeMap<ContainerId, FakeContainer>>,
    failures: InjectedFailures<RuntimeOp, RuntimeError>,
    /// Containers whose removals always fail (per-session failure isolation tests).
    failing_containers: Mutex<HashSet<ContainerId>>,
    /// Runs inside `create`, after the container "starts": lets tests act mid-operation.
    on_create: Mutex<Option<CreateHook>>,
    /// The OCI runtimes this fake engine has; `runc` (its default) unless a test sets others.
    runtimes: Mutex<BTreeSet<String>>,
    next_id: AtomicU64,
    next_port: AtomicU16,
    created_total: AtomicU64,
    stops_in_flight: AtomicU64,
    max_stops_in_flight: AtomicU64,
}

impl std::fmt::Debug for FakeRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeRuntime")
            .field("containers", &lock(&self.containers).len())
            .finish()
    }
}

impl FakeRuntime {
    #[must_use]
    pub fn new(calls: CallLog) -> Self {
        Self {
            calls,
            containers: Mutex::new(BTreeMap::new()),
            failures: InjectedFailures::default(),
            failing_containers: Mutex::new(HashSet::new()),
            on_create: Mutex::new(None),
            runtimes: Mutex::new(BTreeSet::from([DEFAULT_RUNTIME.to_owned()])),
            next_id: AtomicU64::new(1),
            next_port: AtomicU16::new(40_000),
            created_total: AtomicU64::new(0),
            stops_in_flight: AtomicU64::new(0),
            max_stops_in_flight: AtomicU64::new(0),
        }
    }

    /// The next call of `op` fails with `error` (queued).
    pub fn fail_next(&self, op: RuntimeOp, error: RuntimeError) {
        self.failures.push(op, error);
    }

    /// Every removal of this container fails with `Other`.
    pub fn fail_container(&self, container_id: ContainerId) {
        lock(&self.failing_containers).insert(container_id);
    }

    pub fn on_create(&self, hook: impl Fn(&NewSandbox) + Send + Sync + 'static) {
        *lock(&self.on_create) = Some(Arc::new(hook));
    }

    /// Replaces the runtimes the fake engine has (as if registered with it).
    pub fn set_runtimes<S: Into<String>>(&self, names: impl IntoIterator<Item = S>) {
        *lock(&self.runtimes) = names.into_iter().map(Into::into).collect();
    }

    /// Ids of the containers the fake engine has, in any state.
    #[must_use]
    pub fn running(&self) -> Vec<ContainerId> {
        lock(&self.containers).keys().cloned().collect()
    }

    /// Changes a container's state, as the engine would (paused or stopped by hand, died).
    /// A container's state, without recording a call (test assertions).
    #[must_use]
    pub fn state_of(&self, container_id: &ContainerId) -> ContainerState {
        lock(&self.containers)
            .get(container_id)
            .map_or(ContainerState::Gone, |c| c.state)
    }

    pub fn set_state(&self, container_id: &ContainerId, state: ContainerState) {
        if let Some(container) = lock(&self.containers).get_mut(container_id) {
            container.state = state;
        }
    }

    /// How many containers `create` has started in total.
    #[must_use]
    pub fn created_total(&self) -> u64 {
        self.created_total.load(Ordering::SeqCst)
    }

    /// The pooled containers still waiting for a claim.
    #[must_use]
    pub fn waiting(&self) -> Vec<ContainerId> {
        lock(&self.containers)
            .iter()
            .filter(|(_, container)| container.is_waiting())
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// The most graceful removals that were in progress at once.
    #[must_use]
    pub fn max_stops_in_flight(&self) -> u64 {
        self.max_stops_in_flight.load(Ordering::SeqCst)
    }

    /// Removes a container directly, as if it died or was removed by hand.
    pub fn remove_direct(&self, container_id: &ContainerId) {
        lock(&self.containers).remove(container_id);
    }

    /// Adds a running container directly (test setup of an existing session).
    pub fn insert_running(&self, container_id: ContainerId, spec: NewSandbox) {
        self.insert(
            container_id,
            SandboxLabels::of(&spec),
            ContainerState::Running,
        );
    }

    /// Adds a container with any labels (missing or partial ones too) in any state.
    pub fn insert(&self, container_id: ContainerId, labels: SandboxLabels, state: ContainerState) {
        lock(&self.containers).insert(
            container_id,
            FakeContainer {
                labels,
                endpoint: None,
                state,
                pool_slot: None,
            },
        );
    }

    /// The containers whose labels match, as an engine lists them.
    fn managed(&self, matches: impl Fn(&SandboxLabels) -> bool) -> Vec<ManagedContainer> {
        lock(&self.containers)
            .iter()
            .filter(|(_, container)| !container.is_waiting() && matches(&container.labels))
            .map(|(id, container)| ManagedContainer {
                node_id: container.labels.node_id.clone(),
                container_id: id.clone(),
                state: container.state,
                labels: container.labels.clone(),
                // As an engine: a container that does not run has nothing bound.
                endpoint: container
                    .endpoint
                    .filter(|_| container.state == ContainerState::Running),
            })
            .collect()
    }

    /// A new running container with a fresh id and published port.
    fn start_container(
        &self,
        labels: SandboxLabels,
        pool_slot: Option<String>,
    ) -> Result<(ContainerId, Endpoint), RuntimeError> {
        let number = self.next_id.fetch_add(1, Ordering::SeqCst);
        let container_id = ContainerId::parse(&format!("fake-{number:04}"))
            .map_err(|e| RuntimeError::Other(Box::new(e)))?;
        let port = self.next_port.fetch_add(1, Ordering::SeqCst);
        let endpoint = Endpoint::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
            .map_err(|e| RuntimeError::Other(Box::new(e)))?;
        lock(&self.containers).insert(
            container_id.clone(),
            FakeContainer {
                labels,
                endpoint: Some(endpoint),
                state: ContainerState::Running,
                pool_slot,
            },
        );
        Ok((container_id, endpoint))
    }

    /// Refuses a profile naming a runtime this fake engine does not have, as an engine would.
    fn check_runtime(&self, profile: &AgentProfile) -> Result<(), RuntimeError> {
        match &profile.runtime {
            Some(runtime) if !lock(&self.runtimes).contains(runtime) => Err(RuntimeError::Other(
                format!("unknown runtime specified {runtime}").into(),
            )),
            _ => Ok(()),
        }
    }

    fn enter(&self, op: RuntimeOp, call: String) -> Result<(), RuntimeError> {
        self.failures.enter(&self.calls, op, call)
    }

    /// A state change of an existing container, recorded as `runtime.{method}(id)`: `change`
    /// gets the current state and returns the new one, or `None` to refuse (`Vanished`).
    fn transition(
        &self,
        op: RuntimeOp,
        method: &str,
        container_id: &ContainerId,
        change: impl FnOnce(ContainerState) -> Option<ContainerState>,
    ) -> Result<Option<Endpoint>, RuntimeError> {
        self.enter(op, format!("runtime.{method}({container_id})"))?;
        let mut containers = lock(&self.containers);
        let container = containers
            .get_mut(container_id)
            .ok_or(RuntimeError::Vanished)?;
        container.state = change(container.state).ok_or(RuntimeError::Vanished)?;
        Ok(container.endpoint)
    }

    /// A removal: recorded as `runtime.{method}(id)`, failed if injected for `op` or for this
    /// container.
    fn enter_removal(
        &self,
        op: RuntimeOp,
        method: &str,
        container_id: &ContainerId,
    ) -> Result<(), RuntimeError> {
        self.enter(op, format!("runtime.{method}({container_id})"))?;
        if lock(&self.failing_containers).contains(container_id) {
            return Err(RuntimeError::Other(
                format!("injected failure for {container_id}").into(),
            ));
        }
        Ok(())
    }
}

#[async_trait]
impl SandboxRuntime for FakeRuntime {
    async fn validate(
        &self,
        profile: &AgentProfile,
        volume: &VolumePath,
    ) -> Result<(), RuntimeError> {
        self.enter(
            RuntimeOp::Validate,
            format!("runtime.validate({},{volume})", profile.image),
        )
    }

    async fn create(&self, spec: &NewSandbox) -> Result<StartedSandbox, RuntimeError> {
        self.enter(
            RuntimeOp::Create,
            format!("runtime.create({})", spec.session_id),
        )?;
        self.check_runtime(&spec.profile)?;
        // Yield so concurrent callers interleave here, where a real engine takes ~200 ms.
        tokio::task::yield_now().await;
        let (container_id, endpoint) = self.start_container(SandboxLabels::of(spec), None)?;
        self.created_total.fetch_add(1, Ordering::SeqCst);
        let hook = lock(&self.on_create).clone();
        if let Some(hook) = hook {
            hook(spec);
        }
        Ok(StartedSandbox {
            container_id,
            endpoint: Some(endpoint),
        })
    }

    async fn remove_gracefully(&self, container_id: &ContainerId) -> Result<(), RuntimeError> {
        self.enter_removal(
            RuntimeOp::RemoveGracefully,
            "remove_gracefully",
            container_id,
        )?;
        let in_flight = self.stops_in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_stops_in_flight
            .fetch_max(in_flight, Ordering::SeqCst);
        // A real stop waits on the engine; yield a few times so concurrent stops overlap.
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
        self.stops_in_flight.fetch_sub(1, Ordering::SeqCst);
        lock(&self.containers).remove(container_id);
        Ok(())
    }

    async fn force_remove(&self, container_id: &ContainerId) -> Result<(), RuntimeError> {
        self.enter_removal(RuntimeOp::ForceRemove, "force_remove", container_id)?;
        lock(&self.containers).remove(container_id);
        Ok(())
    }

    async fn inspect(&self, container_id: &ContainerId) -> Result<ContainerState, RuntimeError> {
        self.enter(
            RuntimeOp::Inspect,
            format!("runtime.inspect({container_id})"),
        )?;
        Ok(lock(&self.containers)
            .get(container_id)
            .map_or(ContainerState::Gone, |c| c.state))
    }

    async fn list_managed(&self) -> Result<Vec<ManagedContainer>, RuntimeError> {
        self.enter(RuntimeOp::ListManaged, "runtime.list_managed".to_owned())?;
        Ok(self.managed(|_| true))
    }

    async fn list_chat(&self, chat_id: &ChatId) -> Result<Vec<ManagedContainer>, RuntimeError> {
        self.enter(RuntimeOp::ListChat, format!("runtime.list_chat({chat_id})"))?;
        Ok(self.managed(|labels| labels.chat_id == Some(*chat_id)))
    }

    async fn pause(&self, container_id: &ContainerId) -> Result<(), RuntimeError> {
        self.transition(
            RuntimeOp::Pause,
            "pause",
            container_id,
            |state| match state {
                ContainerState::Running | ContainerState::Paused => Some(ContainerState::Paused),
                ContainerState::Stopped | ContainerState::Gone => None,
            },
        )
        .map(drop)
    }

    async fn unpause(&self, container_id: &ContainerId) -> Result<(), RuntimeError> {
        self.transition(
            RuntimeOp::Unpause,
            "unpause",
            container_id,
            |state| match state {
                ContainerState::Running | ContainerState::Paused => Some(ContainerState::Running),
                ContainerState::Stopped | ContainerState::Gone => None,
            },
        )
        .map(drop)
    }

    async fn stop(&self, container_id: &ContainerId) -> Result<(), RuntimeError> {
        self.transition(RuntimeOp::Stop, "stop", container_id, |state| match state {
            ContainerState::Gone => None,
            _ => Some(ContainerState::Stopped),
        })
        .map(drop)
    }

    async fn start(
        &self,
        container_id: &ContainerId,
        _profile: &AgentProfile,
    ) -> Result<Option<Endpoint>, RuntimeError> {
        self.enter(RuntimeOp::Start, format!("runtime.start({container_id})"))?;
        let mut containers = lock(&self.containers);
        let container = containers
            .get_mut(container_id)
            .ok_or(RuntimeError::Vanished)?;
        match container.state {
            ContainerState::Running => {}
            ContainerState::Stopped => {
                container.state = ContainerState::Running;
                // Like an engine re-publishing the port on start: the endpoint changes.
                if container.endpoint.is_some() {
                    let port = self.next_port.fetch_add(1, Ordering::SeqCst);
                    container.endpoint = Some(
                        Endpoint::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
                            .map_err(|e| RuntimeError::Other(Box::new(e)))?,
                    );
                }
            }
            ContainerState::Paused | ContainerState::Gone => return Err(RuntimeError::Vanished),
        }
        Ok(container.endpoint)
    }

    async fn runtimes(&self) -> Result<BTreeSet<String>, RuntimeError> {
        self.enter(RuntimeOp::Runtimes, "runtime.runtimes".to_owned())?;
        Ok(lock(&self.runtimes).clone())
    }

    async fn ping(&self) -> Result<(), RuntimeError> {
        self.enter(RuntimeOp::Ping, "runtime.ping".to_owned())
    }
}

#[async_trait]
impl PoolRuntime for FakeRuntime {
    async fn start_pooled(
        &self,
        agent_id: &AgentId,
        profile: &AgentProfile,
    ) -> Result<PooledSandbox, RuntimeError> {
        self.enter(
            RuntimeOp::StartPooled,
            format!("runtime.start_pooled({agent_id})"),
        )?;
        self.check_runtime(profile)?;
        tokio::task::yield_now().await;
        let number = self.next_id.load(Ordering::SeqCst);
        let slot = format!("fake-{agent_id}-{number}");
        let labels = SandboxLabels {
            agent_id: Some(agent_id.clone()),
            ..SandboxLabels::default()
        };
        let (container_id, endpoint) = self.start_container(labels, Some(slot.clone()))?;
        Ok(PooledSandbox {
            container_id,
            agent_id: agent_id.clone(),
            slot,
            endpoint: Some(endpoint),
        })
    }

    async fn claim(
        &self,
        pooled: PooledSandbox,
        spec: &NewSandbox,
    ) -> Result<StartedSandbox, ClaimError> {
        let entered = self.enter(
            RuntimeOp::Claim,
            format!("runtime.claim({},{})", pooled.container_id, spec.session_id),
        );
        let mut containers = lock(&self.containers);
        let waiting = containers
            .get(&pooled.container_id)
            .is_some_and(|c| c.is_waiting() && c.state == ContainerState::Running);
        let refused = match entered {
            Err(error) => Some(error),
            Ok(()) if !waiting => Some(RuntimeError::Vanished),
            Ok(()) => None,
        };
        if let Some(error) = refused {
            // As the adapter: nothing of a failed claim is left.
            containers.remove(&pooled.container_id);
            return Err(match error {
                RuntimeError::VolumeDenied(_)
                | RuntimeError::VolumeInvalid(_)
                | RuntimeError::NotReady(_) => ClaimError::Failed(error),
                lost => ClaimError::Lost(lost),
            });
        }
        let container = containers
            .get_mut(&pooled.container_id)
            .ok_or(ClaimError::Lost(RuntimeError::Vanished))?;
        container.labels = SandboxLabels::of(spec);
        Ok(StartedSandbox {
            container_id: pooled.container_id,
            endpoint: container.endpoint,
        })
    }

    async fn discard_pooled(&self, pooled: PooledSandbox) -> Result<(), RuntimeError> {
        self.enter(
            RuntimeOp::DiscardPooled,
            format!("runtime.discard_pooled({})", pooled.container_id),
        )?;
        lock(&self.containers).remove(&pooled.container_id);
        Ok(())
    }

    async fn recover_pool(&self) -> Result<PoolRecovery, RuntimeError> {
        self.enter(RuntimeOp::RecoverPool, "runtime.recover_pool".to_owned())?;
        let waiting = lock(&self.containers)
            .iter()
            .filter(|(_, c)| c.is_waiting() && c.state == ContainerState::Running)
            .filter_map(|(id, c)| {
                Some(PooledSandbox {
                    container_id: id.clone(),
                    agent_id: c.labels.agent_id.clone()?,
                    slot: c.pool_slot.clone()?,
                    endpoint: c.endpoint,
                })
            })
            .collect();
        Ok(PoolRecovery {
            waiting,
            ..PoolRecovery::default()
        })
    }
}
