//! A runtime that records calls, keeps a table of "containers" and fails on demand.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use sandboxd_domain::{AgentId, ContainerId, Endpoint, SandboxSession, VolumePath};

use super::{CallLog, lock};
use crate::ports::{ManagedContainer, NewSandbox, RuntimeError, SandboxRuntime};

/// Runtime methods, for failure injection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RuntimeOp {
    Validate,
    Create,
    Stop,
    Delete,
    ListManaged,
    Exists,
    Ping,
}

type CreateHook = Arc<dyn Fn(&NewSandbox) + Send + Sync>;

pub struct FakeRuntime {
    calls: CallLog,
    /// Running containers: id -> the spec they were created from.
    containers: Mutex<BTreeMap<ContainerId, NewSandbox>>,
    failures: Mutex<HashMap<RuntimeOp, VecDeque<RuntimeError>>>,
    /// Containers whose stop/delete always fails (per-session failure isolation tests).
    failing_containers: Mutex<HashSet<ContainerId>>,
    known_agents: Mutex<Option<HashSet<AgentId>>>,
    /// Runs inside `create`, after the container "starts": lets tests act mid-operation.
    on_create: Mutex<Option<CreateHook>>,
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
            failures: Mutex::new(HashMap::new()),
            failing_containers: Mutex::new(HashSet::new()),
            known_agents: Mutex::new(None),
            on_create: Mutex::new(None),
            next_id: AtomicU64::new(1),
            next_port: AtomicU16::new(40_000),
            created_total: AtomicU64::new(0),
            stops_in_flight: AtomicU64::new(0),
            max_stops_in_flight: AtomicU64::new(0),
        }
    }

    /// The next call of `op` fails with `error` (queued).
    pub fn fail_next(&self, op: RuntimeOp, error: RuntimeError) {
        lock(&self.failures).entry(op).or_default().push_back(error);
    }

    /// Every stop and delete of this container fails with `Other`.
    pub fn fail_container(&self, container_id: ContainerId) {
        lock(&self.failing_containers).insert(container_id);
    }

    /// Restricts `validate`/`create` to these agents (default: any agent is known).
    pub fn set_known_agents(&self, agents: impl IntoIterator<Item = AgentId>) {
        *lock(&self.known_agents) = Some(agents.into_iter().collect());
    }

    pub fn on_create(&self, hook: impl Fn(&NewSandbox) + Send + Sync + 'static) {
        *lock(&self.on_create) = Some(Arc::new(hook));
    }

    /// Ids of containers currently "running".
    #[must_use]
    pub fn running(&self) -> Vec<ContainerId> {
        lock(&self.containers).keys().cloned().collect()
    }

    /// How many containers `create` has started in total.
    #[must_use]
    pub fn created_total(&self) -> u64 {
        self.created_total.load(Ordering::SeqCst)
    }

    /// The most `stop` calls that were in progress at once.
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
        lock(&self.containers).insert(container_id, spec);
    }

    fn enter(&self, op: RuntimeOp, call: String) -> Result<(), RuntimeError> {
        self.calls.record(call);
        match lock(&self.failures)
            .get_mut(&op)
            .and_then(VecDeque::pop_front)
        {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    fn check_container(&self, container_id: &ContainerId) -> Result<(), RuntimeError> {
        if lock(&self.failing_containers).contains(container_id) {
            return Err(RuntimeError::Other(
                format!("injected failure for {container_id}").into(),
            ));
        }
        Ok(())
    }

    fn check_agent(&self, agent_id: &AgentId) -> Result<(), RuntimeError> {
        match &*lock(&self.known_agents) {
            Some(known) if !known.contains(agent_id) => {
                Err(RuntimeError::UnknownAgent(agent_id.clone()))
            }
            _ => Ok(()),
        }
    }
}

#[async_trait]
impl SandboxRuntime for FakeRuntime {
    async fn validate(&self, agent_id: &AgentId, volume: &VolumePath) -> Result<(), RuntimeError> {
        self.enter(
            RuntimeOp::Validate,
            format!("runtime.validate({agent_id},{volume})"),
        )?;
        self.check_agent(agent_id)
    }

    async fn create(&self, spec: &NewSandbox) -> Result<SandboxSession, RuntimeError> {
        self.enter(
            RuntimeOp::Create,
            format!("runtime.create({})", spec.session_id),
        )?;
        self.check_agent(&spec.agent_id)?;
        // Yield so concurrent callers interleave here, where a real engine takes ~200 ms.
        tokio::task::yield_now().await;
        let number = self.next_id.fetch_add(1, Ordering::SeqCst);
        let container_id = ContainerId::parse(&format!("fake-{number:04}"))
            .map_err(|e| RuntimeError::Other(Box::new(e)))?;
        let port = self.next_port.fetch_add(1, Ordering::SeqCst);
        let endpoint = Endpoint::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
            .map_err(|e| RuntimeError::Other(Box::new(e)))?;
        lock(&self.containers).insert(container_id.clone(), spec.clone());
        self.created_total.fetch_add(1, Ordering::SeqCst);
        let hook = lock(&self.on_create).clone();
        if let Some(hook) = hook {
            hook(spec);
        }
        Ok(SandboxSession {
            session_id: spec.session_id,
            chat_id: spec.chat_id,
            agent_id: spec.agent_id.clone(),
            volume_host_path: spec.volume_host_path.clone(),
            container_id,
            endpoint: Some(endpoint),
            created_at: spec.created_at,
            expires_at: spec.expires_at,
        })
    }

    async fn stop(&self, container_id: &ContainerId) -> Result<(), RuntimeError> {
        self.enter(RuntimeOp::Stop, format!("runtime.stop({container_id})"))?;
        self.check_container(container_id)?;
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

    async fn delete(&self, container_id: &ContainerId) -> Result<(), RuntimeError> {
        self.enter(RuntimeOp::Delete, format!("runtime.delete({container_id})"))?;
        self.check_container(container_id)?;
        lock(&self.containers).remove(container_id);
        Ok(())
    }

    async fn exists(&self, container_id: &ContainerId) -> Result<bool, RuntimeError> {
        self.enter(RuntimeOp::Exists, format!("runtime.exists {container_id}"))?;
        Ok(lock(&self.containers).contains_key(container_id))
    }

    async fn list_managed(&self) -> Result<Vec<ManagedContainer>, RuntimeError> {
        self.enter(RuntimeOp::ListManaged, "runtime.list_managed".to_owned())?;
        Ok(lock(&self.containers)
            .iter()
            .map(|(id, spec)| ManagedContainer {
                container_id: id.clone(),
                session_id: Some(spec.session_id),
                chat_id: Some(spec.chat_id),
                created_at: Some(spec.created_at),
                running: true,
            })
            .collect())
    }

    async fn ping(&self) -> Result<(), RuntimeError> {
        self.enter(RuntimeOp::Ping, "runtime.ping".to_owned())
    }
}
