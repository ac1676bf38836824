//! Test harness: a world of fakes, and a capture of every metric, span and log event emitted while
//! a use case runs (a local `DebuggingRecorder` and a capturing `tracing` layer).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use sandboxd_domain::{
    AgentId, AgentProfile, ChatId, ContainerId, SandboxSession, SessionId, VolumePath,
};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

use crate::ports::{Clock, LockError, NewSandbox, RepositoryError, RuntimeError};
use crate::telemetry::span;
use crate::testing::{
    CallLog, FakeRuntime, Fakes, InMemoryLocker, InMemorySessionRepository, ManualClock, RepoOp,
    RuntimeOp,
};
use crate::{
    CreateSandbox, CreateSandboxCommand, CreateSandboxError, CreateSandboxOutput, NodeDirectory,
    Ports, Profiles,
};

pub(crate) const TTL: Duration = Duration::from_secs(30 * 60);

pub(crate) type Fields = BTreeMap<String, String>;

/// One finished span: its name, every field recorded on it, and its parent's name.
#[derive(Debug, Clone)]
pub(crate) struct SpanRecord {
    pub name: String,
    pub fields: Fields,
    pub parent: Option<String>,
}

impl SpanRecord {
    pub(crate) fn field(&self, key: &str) -> Option<&str> {
        self.fields.get(key).map(String::as_str)
    }
}

/// One log event: its name (metadata name), level, fields and the span it was emitted in.
#[derive(Debug, Clone)]
pub(crate) struct EventRecord {
    pub name: String,
    pub level: tracing::Level,
    pub fields: Fields,
    pub span: Option<String>,
}

#[derive(Debug, Default)]
struct Store {
    open: BTreeMap<u64, SpanRecord>,
    closed: Vec<SpanRecord>,
    events: Vec<EventRecord>,
}

#[derive(Clone, Default)]
struct CaptureLayer(Arc<Mutex<Store>>);

struct FieldVisitor<'a>(&'a mut Fields);

impl Visit for FieldVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> tracing_subscriber::Layer<S> for CaptureLayer {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = Fields::new();
        attrs.record(&mut FieldVisitor(&mut fields));
        let parent = ctx
            .span(id)
            .and_then(|s| s.parent())
            .map(|p| p.name().to_owned());
        let record = SpanRecord {
            name: attrs.metadata().name().to_owned(),
            fields,
            parent,
        };
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .open
            .insert(id.into_u64(), record);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _ctx: Context<'_, S>) {
        let mut store = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(span) = store.open.get_mut(&id.into_u64()) {
            values.record(&mut FieldVisitor(&mut span.fields));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut fields = Fields::new();
        event.record(&mut FieldVisitor(&mut fields));
        let span = ctx.event_span(event).map(|s| s.name().to_owned());
        let record = EventRecord {
            name: event.metadata().name().to_owned(),
            level: *event.metadata().level(),
            fields,
            span,
        };
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .events
            .push(record);
    }

    fn on_close(&self, id: Id, _ctx: Context<'_, S>) {
        let mut store = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(span) = store.open.remove(&id.into_u64()) {
            store.closed.push(span);
        }
    }
}

impl EventRecord {
    pub(crate) fn field(&self, key: &str) -> Option<&str> {
        self.fields.get(key).map(String::as_str)
    }
}

/// Everything a run emitted.
#[derive(Debug)]
pub(crate) struct Captured {
    /// (name, sorted labels) -> value, for counters and gauges.
    pub counters: BTreeMap<(String, Vec<(String, String)>), u64>,
    pub gauges: BTreeMap<String, f64>,
    pub spans: Vec<SpanRecord>,
    pub events: Vec<EventRecord>,
}

impl Captured {
    /// Every counter as `name{k=v,...} value`, sorted: compare whole to catch extra labels too.
    pub(crate) fn counter_lines(&self) -> Vec<String> {
        self.counters
            .iter()
            .map(|((name, labels), value)| {
                let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                format!("{name}{{{}}} {value}", labels.join(","))
            })
            .collect()
    }

    pub(crate) fn gauge(&self, name: &str) -> Option<f64> {
        self.gauges.get(name).copied()
    }

    /// The only finished span with this name.
    pub(crate) fn span(&self, name: &str) -> &SpanRecord {
        let matching: Vec<&SpanRecord> = self.spans.iter().filter(|s| s.name == name).collect();
        assert_eq!(
            matching.len(),
            1,
            "expected one span {name}, got {:#?}",
            self.spans
        );
        matching[0]
    }

    pub(crate) fn spans_named(&self, name: &str) -> Vec<&SpanRecord> {
        self.spans.iter().filter(|s| s.name == name).collect()
    }

    /// The names of all log events, in order.
    pub(crate) fn event_names(&self) -> Vec<&str> {
        self.events.iter().map(|e| e.name.as_str()).collect()
    }

    /// Asserts the whole set of counters, as [`Captured::counter_lines`] renders them.
    pub(crate) fn assert_counters(&self, want: &[&str]) {
        assert_eq!(self.counter_lines(), want);
    }

    /// Asserts the whole field set of the only span `name`.
    pub(crate) fn assert_span_fields(&self, name: &str, want: &[(&str, &str)]) {
        let want: Fields = want
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        assert_eq!(self.span(name).fields, want);
    }

    /// Asserts that the only span `name` ended in error with this error type.
    pub(crate) fn assert_error_span(&self, name: &str, error_type: &str) -> &SpanRecord {
        let span = self.span(name);
        assert_eq!(span.field(span::RESULT), Some("error"), "{span:?}");
        assert_eq!(span.field(span::ERROR_TYPE), Some(error_type), "{span:?}");
        assert_eq!(
            span.field(span::OTEL_STATUS_CODE),
            Some("ERROR"),
            "{span:?}"
        );
        span
    }

    /// Asserts that the only event `name` carries the session's log fields, then `extra`, then
    /// its message.
    pub(crate) fn assert_session_event(
        &self,
        name: &str,
        session: &SandboxSession,
        extra: &[(&'static str, String)],
    ) -> &EventRecord {
        let mut want = session_log_fields(session);
        want.extend_from_slice(extra);
        want.push(("message", name.to_owned()));
        let event = self.event(name);
        assert_eq!(event.fields, fields(&want));
        event
    }

    /// The only event with this name.
    pub(crate) fn event(&self, name: &str) -> &EventRecord {
        let matching: Vec<&EventRecord> = self.events.iter().filter(|e| e.name == name).collect();
        assert_eq!(
            matching.len(),
            1,
            "expected one event {name}, got {:#?}",
            self.events
        );
        matching[0]
    }
}

/// Runs `future` on a current-thread runtime with a local metrics recorder and a capturing
/// subscriber, both scoped to this thread so parallel tests do not see each other's telemetry.
pub(crate) fn capture<F: Future>(future: F) -> (F::Output, Captured) {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let layer = CaptureLayer::default();
    let store = layer.0.clone();
    let subscriber = tracing_subscriber::registry().with(layer);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap_or_else(|e| panic!("test runtime: {e}"));
    let output = metrics::with_local_recorder(&recorder, || {
        tracing::subscriber::with_default(subscriber, || runtime.block_on(future))
    });
    let mut counters = BTreeMap::new();
    let mut gauges = BTreeMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let key = key.key();
        let name = key.name().to_owned();
        let mut labels: Vec<(String, String)> = key
            .labels()
            .map(|l| (l.key().to_owned(), l.value().to_owned()))
            .collect();
        labels.sort();
        match value {
            DebugValue::Counter(v) => {
                counters.insert((name, labels), v);
            }
            DebugValue::Gauge(v) => {
                gauges.insert(name, v.into_inner());
            }
            DebugValue::Histogram(_) => {}
        }
    }
    let mut store = std::mem::take(
        &mut *store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    // Spans still open at the end (none expected) are reported too.
    store
        .closed
        .extend(std::mem::take(&mut store.open).into_values());
    (
        output,
        Captured {
            counters,
            gauges,
            spans: store.closed,
            events: store.events,
        },
    )
}

/// Fakes wired together, sharing one call log.
pub(crate) struct World {
    pub calls: CallLog,
    pub locker: Arc<InMemoryLocker>,
    pub repository: Arc<InMemorySessionRepository>,
    pub runtime: Arc<FakeRuntime>,
    pub clock: Arc<ManualClock>,
    pub ports: Ports,
    /// The agents `default`, `python` and `other`.
    pub profiles: Profiles,
}

impl World {
    pub(crate) fn new() -> Self {
        Self::with_lock_wait(Duration::from_secs(5))
    }

    pub(crate) fn with_lock_wait(wait: Duration) -> Self {
        let fakes = Fakes::with_lock_wait(wait);
        let ports = fakes.ports();
        let Fakes {
            calls,
            locker,
            repository,
            runtime,
            clock,
            directory: _,
        } = fakes;
        let profiles = Profiles::new(
            ["default", "python", "other"]
                .map(|agent| (agent_id(agent), AgentProfile::new(format!("{agent}:local")))),
        );
        Self {
            calls,
            locker,
            repository,
            runtime,
            clock,
            ports,
            profiles,
        }
    }

    /// This world with agent `agent`'s profile changed by `edit` (before any use case is built).
    pub(crate) fn with_profile(
        mut self,
        agent: &str,
        edit: impl FnOnce(&mut AgentProfile),
    ) -> Self {
        let target = agent_id(agent);
        let mut profiles: Vec<(AgentId, AgentProfile)> = self
            .profiles
            .iter()
            .map(|(id, profile)| (id.clone(), profile.clone()))
            .collect();
        if let Some((_, profile)) = profiles.iter_mut().find(|(id, _)| *id == target) {
            edit(profile);
        }
        self.profiles = Profiles::new(profiles);
        self
    }

    /// The use case under test, built like the server builds it.
    pub(crate) fn create(&self) -> CreateSandbox {
        CreateSandbox::new(self.ports.clone(), self.profiles.clone(), TTL)
    }

    /// This world's ports routed by `directory` (a node of a fleet, or a drained single node):
    /// every node's engine is this world's fake.
    pub(crate) fn ports_in(&self, directory: &NodeDirectory) -> Ports {
        Fakes {
            calls: self.calls.clone(),
            locker: self.locker.clone(),
            repository: self.repository.clone(),
            runtime: self.runtime.clone(),
            clock: self.clock.clone(),
            directory: directory.clone(),
        }
        .ports()
    }

    /// [`Self::create`] on the node `directory` describes.
    pub(crate) fn create_in(&self, directory: &NodeDirectory) -> CreateSandbox {
        CreateSandbox::new(self.ports_in(directory), self.profiles.clone(), TTL)
    }

    /// This world as node `n1` of a fleet whose node `gone` stopped renewing, with `session`
    /// moved onto `gone`; returns the moved session. Use cases built after this see the fleet.
    pub(crate) fn on_lost_node(&mut self, session: &SandboxSession) -> SandboxSession {
        let fakes = Fakes::in_fleet("n1");
        fakes.set_nodes(&[("n1", true), ("gone", false)]);
        self.ports = self.ports_in(&fakes.directory);
        let moved = SandboxSession {
            node_id: Some(crate::testing::node_id("gone")),
            ..session.clone()
        };
        self.repository.insert(moved.clone());
        moved
    }

    /// Runs a create of agent `default` on `/srv/a` for `chat`, capturing its telemetry.
    pub(crate) fn create_default(
        &self,
        chat: ChatId,
    ) -> (Result<CreateSandboxOutput, CreateSandboxError>, Captured) {
        capture(
            self.create()
                .execute(create_command(chat, "default", "/srv/a")),
        )
    }

    /// The spec a create of `agent` would hand the runtime.
    pub(crate) fn spec(
        &self,
        chat: ChatId,
        agent: &str,
        volume: &str,
        created_at: sandboxd_domain::Timestamp,
        expires_at: sandboxd_domain::Timestamp,
    ) -> NewSandbox {
        let agent = agent_id(agent);
        NewSandbox {
            session_id: SessionId::new_random(),
            chat_id: chat,
            profile: self
                .profiles
                .get(&agent)
                .cloned()
                .unwrap_or_else(|| Arc::new(AgentProfile::new("unknown:local"))),
            agent_id: agent,
            volume_host_path: volume_path(volume),
            created_at,
            expires_at,
            node_id: None,
        }
    }

    /// The repository's next `op` fails with `Unavailable`, as when Redis is down.
    pub(crate) fn repository_down(&self, op: RepoOp) {
        self.repository
            .fail_next(op, RepositoryError::Unavailable("redis down".into()));
    }

    /// The repository's next `op` finds the lease lost, as when another holder took the chat.
    pub(crate) fn lease_lost_on(&self, op: RepoOp) {
        self.repository.fail_next(op, RepositoryError::LeaseLost);
    }

    /// The next lock fails with `Unavailable`, as when Redis is down.
    pub(crate) fn locker_down(&self) {
        self.locker
            .fail_next(LockError::Unavailable("redis down".into()));
    }

    /// The runtime's next `op` fails with `Unavailable`, as when the engine is down.
    pub(crate) fn runtime_down(&self, op: RuntimeOp) {
        self.runtime
            .fail_next(op, RuntimeError::Unavailable("engine down".into()));
    }

    /// A world holding one live session ([`World::existing_live`]) of a fresh chat.
    pub(crate) fn with_live_session() -> (Self, ChatId, SandboxSession) {
        let world = Self::new();
        let chat = new_chat();
        let session = world.existing_live(chat);
        (world, chat, session)
    }

    /// A live session of `chat`: the `default` agent on `/srv/a`, a minute left.
    pub(crate) fn existing_live(&self, chat: ChatId) -> SandboxSession {
        self.existing(chat, "default", "/srv/a", Duration::from_secs(60))
    }

    /// Stores a session for `chat` (and its running container) expiring `expires_in` from now;
    /// a zero or past offset makes it expired. The call log is cleared afterwards.
    pub(crate) fn existing(
        &self,
        chat: ChatId,
        agent: &str,
        volume: &str,
        expires_in: Duration,
    ) -> SandboxSession {
        self.existing_expiring_at(chat, agent, volume, self.clock.now() + expires_in)
    }

    pub(crate) fn existing_expired(
        &self,
        chat: ChatId,
        agent: &str,
        volume: &str,
    ) -> SandboxSession {
        self.existing_expiring_at(
            chat,
            agent,
            volume,
            self.clock.now() - Duration::from_secs(1),
        )
    }

    fn existing_expiring_at(
        &self,
        chat: ChatId,
        agent: &str,
        volume: &str,
        expires_at: sandboxd_domain::Timestamp,
    ) -> SandboxSession {
        let session_id = SessionId::new_random();
        let container_id = ContainerId::parse(&format!("old-{}", &session_id.to_string()[..8]))
            .unwrap_or_else(|e| panic!("{e}"));
        let session = SandboxSession {
            session_id,
            chat_id: chat,
            agent_id: agent_id(agent),
            volume_host_path: volume_path(volume),
            node_id: None,
            container_id: container_id.clone(),
            endpoint: None,
            created_at: self.clock.now() - TTL,
            expires_at,
            state: sandboxd_domain::SandboxState::Running,
            last_active_at: self.clock.now() - TTL,
            max_expires_at: None,
            idle_timeout: None,
        };
        self.repository.insert(session.clone());
        let spec = NewSandbox {
            session_id,
            ..self.spec(chat, agent, volume, session.created_at, expires_at)
        };
        self.runtime.insert_running(container_id, spec);
        self.calls.clear();
        session
    }
}

/// The calls of a use case that works under the chat's lease: lock, the re-read, `inner`, release.
pub(crate) fn leased_calls(chat: ChatId, inner: &[String]) -> Vec<String> {
    let mut calls = vec![
        format!("locker.lock({chat})"),
        format!("repository.get_current_by_chat_id({chat})"),
    ];
    calls.extend_from_slice(inner);
    calls.push(format!("locker.release({chat})"));
    calls
}

pub(crate) fn create_command(chat: ChatId, agent: &str, volume: &str) -> CreateSandboxCommand {
    CreateSandboxCommand {
        chat_id: chat,
        agent_id: agent_id(agent),
        volume_host_path: volume_path(volume),
    }
}

pub(crate) fn new_chat() -> ChatId {
    ChatId::from_uuid(uuid::Uuid::new_v4())
}

pub(crate) fn agent_id(raw: &str) -> AgentId {
    AgentId::parse(raw).unwrap_or_else(|e| panic!("{raw}: {e}"))
}

pub(crate) fn volume_path(raw: &str) -> VolumePath {
    VolumePath::parse(raw).unwrap_or_else(|e| panic!("{raw}: {e}"))
}

/// `BTreeMap` of string pairs, for comparing whole field sets.
pub(crate) fn fields(pairs: &[(&str, String)]) -> Fields {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

/// The fields every session log event carries.
pub(crate) fn session_log_fields(session: &SandboxSession) -> Vec<(&'static str, String)> {
    vec![
        ("chat_id", session.chat_id.to_string()),
        ("session_id", session.session_id.to_string()),
        ("container_id", session.container_id.to_string()),
    ]
}

/// The session fields a use case records on its span.
pub(crate) fn session_span_fields(session: &SandboxSession) -> Vec<(&'static str, String)> {
    let mut out = vec![
        (span::SESSION_ID, session.session_id.to_string()),
        (span::CONTAINER_ID, session.container_id.to_string()),
        (span::SESSION_AGENT_ID, session.agent_id.to_string()),
        (
            span::SESSION_VOLUME_HOST_PATH,
            session.volume_host_path.to_string(),
        ),
    ];
    if let Some(endpoint) = session.endpoint {
        out.push((span::ENDPOINT_IP, endpoint.ip.to_string()));
        out.push((span::ENDPOINT_PORT, endpoint.port.to_string()));
    }
    out
}
