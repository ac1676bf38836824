//! Startup and shutdown of the whole server: binds the listeners, serves gRPC (SandboxService,
//! health, reflection v1 and v1alpha), HTTP and in fleet mode the node API, and registers up to
//! seven background tasks with one [`Background`]: the health checks, the event reader behind
//! WatchSandboxes, the cleanup and reconcile passes (unless their interval is 0s), the warm
//! pool's refill (when a profile pools), the heartbeat (fleet mode) and a runtime check deferred
//! until the engine answers. On cancellation it drains in order under time bounds.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use metrics_exporter_prometheus::PrometheusHandle;
use sandboxd_adapters::egress::EgressFirewall;
use sandboxd_api::node::v1::node_runtime_server::NodeRuntimeServer;
use sandboxd_api::v1::sandbox_service_server::SandboxServiceServer;
use sandboxd_usecase::{
    AdmissionPolicy, CleanupExpiredSandboxes, CleanupOptions, Heartbeat, Ports, ReconcileOptions,
};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;

use crate::auth::BearerAuth;
use crate::background::Background;
use crate::config::{Config, TlsFiles};
use crate::drain::Drain;
use crate::fleet::Fleet;
use crate::grpc::{SandboxGrpcService, ServiceSettings, UseCases};
use crate::health::{HealthPublisher, Readiness, run_checks};
use crate::names;
use crate::node_api::NodeApiService;
use crate::rpc_telemetry::RpcTelemetryLayer;
use crate::runtimes::{RuntimeCheck, check_at_start, check_when_engine_answers};

/// After the calls drained, how long open connections (health watches, idle clients) get to
/// close before the listeners are dropped.
const CONNECTION_CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// After the drain's grace, how long the streams it ends get to close (ending one is a single
/// last item, so this bounds only a client too slow to take it).
const STREAMS_END_BOUND: Duration = Duration::from_secs(1);

/// What the application is built from besides the configuration.
#[derive(Debug)]
pub struct Dependencies {
    pub ports: Ports,
    pub metrics: PrometheusHandle,
    pub auth: BearerAuth,
    /// The egress rules, installed already, that the health loop re-checks; `None` when nothing
    /// is enforced (only `open` profiles, or in-process tests over fake ports).
    pub egress: Option<Arc<EgressFirewall>>,
    /// Which node this is ([`Fleet::single`] unless `node_id` is set).
    pub fleet: Fleet,
}

/// A server with its listeners bound, ready to run.
#[derive(Debug)]
pub struct Application {
    grpc_listener: TcpListener,
    http_listener: TcpListener,
    ports: Ports,
    metrics: PrometheusHandle,
    auth: BearerAuth,
    egress: Option<Arc<EgressFirewall>>,
    settings: ServiceSettings,
    cleanup_interval: Duration,
    reconcile_interval: Duration,
    drain_timeout: Duration,
    /// TLS for the gRPC port (`None` = plaintext); read at build so a bad file fails start.
    tls: Option<TlsFiles>,
    /// Whether the profiles' runtimes were checked at build or wait for the engine to answer.
    runtime_check: RuntimeCheck,
    /// Fleet mode: the node API's listener, bound at build like the others.
    node_listener: Option<TcpListener>,
}

impl Application {
    /// Checks the profiles' runtimes against the engine (when it answers; see
    /// [`crate::runtimes`]), binds both listeners (port 0 picks free ports) and logs the bound
    /// addresses.
    ///
    /// # Errors
    /// When a profile names a runtime the engine does not have, or a listener cannot be bound.
    pub async fn build(config: &Config, deps: Dependencies) -> anyhow::Result<Self> {
        let profiles = config.agents.by_agent_id();
        // Before binding: a server that cannot honour its profiles never listens.
        let runtime_check = check_at_start(deps.ports.engines.local().as_ref(), &profiles).await?;
        let grpc_listener = TcpListener::bind(config.server.grpc_addr)
            .await
            .with_context(|| format!("binding grpc_addr {}", config.server.grpc_addr))?;
        let http_listener = TcpListener::bind(config.server.http_addr)
            .await
            .with_context(|| format!("binding http_addr {}", config.server.http_addr))?;
        let node_listener = match &deps.fleet.node {
            Some(node) => Some(
                TcpListener::bind(node.grpc_addr)
                    .await
                    .with_context(|| format!("binding node_grpc_addr {}", node.grpc_addr))?,
            ),
            None => None,
        };
        if !deps.auth.is_enabled() && !config.server.grpc_addr.ip().is_loopback() {
            tracing::warn!(
                name: names::AUTH_DISABLED_ON_NON_LOOPBACK_ADDRESS,
                message = names::AUTH_DISABLED_ON_NON_LOOPBACK_ADDRESS,
                grpc_addr = %config.server.grpc_addr,
            );
        }
        let app = Self {
            grpc_listener,
            http_listener,
            ports: deps.ports,
            metrics: deps.metrics,
            auth: deps.auth,
            egress: deps.egress,
            settings: ServiceSettings {
                session_ttl: config.lifecycle.session_ttl,
                max_ttl: config.lifecycle.max_ttl,
                cleanup: CleanupOptions {
                    concurrency: config.lifecycle.cleanup_concurrency,
                    ..CleanupOptions::default()
                },
                reconcile: ReconcileOptions {
                    grace: config.lifecycle.reconcile_grace,
                    adoption_grace: config.lifecycle.adoption_grace,
                    settle_pool: config.agents.iter().any(|(_, p)| p.pool_size > 0),
                    ..ReconcileOptions::default()
                },
                profiles,
                event_retention: config.lifecycle.event_retention,
                admission: AdmissionPolicy {
                    // In fleet mode it is each node's capacity, which placement enforces.
                    max_sandboxes: config
                        .admission
                        .max_sandboxes()
                        .filter(|_| deps.fleet.node.is_none()),
                    max_concurrent_creates: config.admission.max_concurrent_creates(),
                    wait: config.redis.lock_wait,
                    // Longer than any create: its engine calls, its readiness wait, its save.
                    reservation_ttl: 2 * config.docker.engine_timeout
                        + config.agents.slowest_ready_timeout()
                        + config.redis.lock_ttl,
                },
                node_capacity: Fleet::capacity(config),
                fleet: deps.fleet,
            },
            cleanup_interval: config.lifecycle.cleanup_interval,
            reconcile_interval: config.lifecycle.reconcile_interval,
            drain_timeout: config.server.drain_timeout,
            tls: config.server.tls_files()?,
            runtime_check,
            node_listener,
        };
        tracing::info!(
            name: names::GRPC_LISTENING,
            message = names::GRPC_LISTENING,
            addr = %app.grpc_addr()?,
            tls = app.tls.is_some(),
            mutual_tls = app.tls.as_ref().is_some_and(|tls| tls.client_ca_pem.is_some()),
        );
        tracing::info!(
            name: names::HTTP_LISTENING,
            message = names::HTTP_LISTENING,
            addr = %app.http_addr()?,
        );
        if let (Some(listener), Some(node)) = (&app.node_listener, &app.settings.fleet.node) {
            tracing::info!(
                name: names::NODE_API_LISTENING,
                message = names::NODE_API_LISTENING,
                addr = %listener.local_addr()?,
                node_id = %app.settings.fleet.directory.local(),
                advertise_addr = %node.advertise_addr,
            );
        }
        Ok(app)
    }

    /// # Errors
    /// When the OS cannot tell the bound address.
    pub fn grpc_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.grpc_listener.local_addr()?)
    }

    /// # Errors
    /// When the OS cannot tell the bound address.
    pub fn http_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.http_listener.local_addr()?)
    }

    /// Serves until `shutdown` is cancelled, then drains: health NOT_SERVING, new SandboxService
    /// calls refused (UNAVAILABLE), in-flight calls and a running cleanup pass finish within
    /// `drain_timeout`, then the listeners close. A runtime check deferred at build that fails
    /// once the engine answers drains the same way, then returns its error.
    ///
    /// # Errors
    /// When a server stops on its own with an error, or the deferred runtime check fails.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        let readiness = Arc::new(match self.runtime_check {
            RuntimeCheck::Passed => Readiness::default(),
            RuntimeCheck::Deferred => Readiness::awaiting_runtime_check(),
        });
        let publisher = HealthPublisher::new(health_reporter, Arc::clone(&readiness)).await;

        let (mut background, mut fatal) = Background::new();
        if self.runtime_check == RuntimeCheck::Deferred {
            let engine = Arc::clone(self.ports.engines.local());
            let (profiles, publisher) = (self.settings.profiles.clone(), publisher.clone());
            background.fallible(names::TASK_RUNTIME_CHECK, |stop| {
                check_when_engine_answers(engine, profiles, publisher, stop)
            });
        }
        let (ports, egress, checks) = (self.ports.clone(), self.egress.clone(), publisher.clone());
        background.task(names::TASK_HEALTH_CHECKS, |stop| {
            run_checks(ports, egress, checks, stop)
        });
        let use_cases = Arc::new(UseCases::new(&self.ports, &self.settings));
        // Ends when the hub closes, first thing in the drain.
        let events = Arc::clone(&use_cases.events);
        background.task(names::TASK_EVENT_READER, |_| events.run_reader());
        crate::cleanup::register(
            &mut background,
            CleanupExpiredSandboxes::clone(&use_cases.cleanup),
            self.cleanup_interval,
        );
        crate::reconcile::register(
            &mut background,
            use_cases.reconcile.clone(),
            self.reconcile_interval,
        );
        if let Some(node) = &self.settings.fleet.node {
            crate::fleet::register_heartbeat(
                &mut background,
                Heartbeat::new(
                    self.ports.clone(),
                    Arc::clone(&node.registry),
                    self.settings.fleet.directory.clone(),
                    node.advertise_addr.clone(),
                    self.settings.node_capacity,
                    node.heartbeat_ttl,
                ),
            );
        }
        crate::refill::register(&mut background, &use_cases.refill);

        let drain = Drain::new();
        let sandbox_service = SandboxGrpcService::new(Arc::clone(&use_cases), drain.clone());
        let auth = self.auth.clone();
        let reflection_v1 = reflection_builder().build_v1()?;
        let reflection_v1alpha = reflection_builder().build_v1alpha()?;
        let servers_stop = CancellationToken::new();
        let grpc_server = tokio::spawn(
            grpc_server_builder(self.tls.as_ref())?
                .layer(RpcTelemetryLayer)
                .add_service(health_service)
                .add_service(reflection_v1)
                .add_service(reflection_v1alpha)
                .add_service(SandboxServiceServer::with_interceptor(
                    sandbox_service,
                    move |request| auth.check(request),
                ))
                .serve_with_incoming_shutdown(
                    // Without TCP_NODELAY an answer's trailers frame, written after its data,
                    // waits for the client's delayed ACK: about 40 ms on every unary call.
                    TcpIncoming::from(self.grpc_listener).with_nodelay(Some(true)),
                    servers_stop.clone().cancelled_owned(),
                ),
        );
        let node_server = match (self.node_listener, &self.settings.fleet.node) {
            (Some(listener), Some(node)) => {
                let auth = self.auth.clone();
                Some(tokio::spawn(
                    grpc_server_builder(self.tls.as_ref())?
                        .add_service(InterceptedService::new(
                            // Tracked by the drain like SandboxService calls: shutdown refuses
                            // new node calls and waits for running ones.
                            NodeRuntimeServer::new(
                                NodeApiService::new(
                                    Arc::clone(&node.local),
                                    self.settings.profiles.clone(),
                                )
                                .with_drain(drain.clone()),
                            ),
                            move |request| auth.check(request),
                        ))
                        .serve_with_incoming_shutdown(
                            TcpIncoming::from(listener).with_nodelay(Some(true)),
                            servers_stop.clone().cancelled_owned(),
                        ),
                ))
            }
            _ => None,
        };
        let http_server = tokio::spawn(
            axum::serve(
                self.http_listener,
                crate::http::router(self.metrics, readiness),
            )
            .with_graceful_shutdown(servers_stop.clone().cancelled_owned())
            .into_future(),
        );

        let mut grpc_server = grpc_server;
        let mut http_server = http_server;
        let mut failure = None;
        let early_exit = tokio::select! {
            () = shutdown.cancelled() => None,
            error = fatal.next() => {
                // Drained like a shutdown (calls may have been served meanwhile), then reported.
                failure = Some(error);
                None
            }
            outcome = &mut grpc_server => Some(flatten("grpc server", outcome)),
            outcome = &mut http_server => Some(flatten("http server", outcome)),
        };
        if let Some(outcome) = early_exit {
            // A server died on its own: stop the rest and report why.
            background.stop();
            servers_stop.cancel();
            return outcome.and(Err(anyhow::anyhow!("a server stopped unexpectedly")));
        }

        tracing::info!(
            name: names::SHUTDOWN_STARTED,
            message = names::SHUTDOWN_STARTED,
            in_flight = drain.in_flight(),
        );
        publisher.set_draining().await;
        drain.start();
        background.stop();
        // Watches end now, cleanly, so their connections can close.
        use_cases.events.close();
        let finish_work = async {
            drain.wait().await;
            background.join().await;
        };
        if tokio::time::timeout(self.drain_timeout, finish_work)
            .await
            .is_err()
        {
            tracing::warn!(
                name: names::SHUTDOWN_DRAIN_TIMED_OUT,
                message = names::SHUTDOWN_DRAIN_TIMED_OUT,
                in_flight = drain.in_flight(),
            );
        }
        // The grace is over: streams still open end now (their clients get UNAVAILABLE and
        // reconnect elsewhere), so their connections can close.
        drain.end_streams();
        let _ = tokio::time::timeout(STREAMS_END_BOUND, drain.wait()).await;
        servers_stop.cancel();
        close_server("grpc server", grpc_server).await;
        close_server("http server", http_server).await;
        if let Some(node_server) = node_server {
            close_server("node api server", node_server).await;
        }
        tracing::info!(name: names::SHUTDOWN_COMPLETE, message = names::SHUTDOWN_COMPLETE);
        failure.map_or(Ok(()), Err)
    }
}

/// The gRPC server, speaking TLS (mutual when a client CA is set) when configured.
fn grpc_server_builder(tls: Option<&TlsFiles>) -> anyhow::Result<tonic::transport::Server> {
    let builder = tonic::transport::Server::builder();
    let Some(tls) = tls else {
        return Ok(builder);
    };
    let mut tls_config = tonic::transport::ServerTlsConfig::new().identity(
        tonic::transport::Identity::from_pem(&tls.cert_pem, &tls.key_pem),
    );
    if let Some(client_ca) = &tls.client_ca_pem {
        // A CA root makes a client certificate mandatory (tonic's `client_auth_optional` is off).
        tls_config = tls_config.client_ca_root(tonic::transport::Certificate::from_pem(client_ca));
    }
    builder
        .tls_config(tls_config)
        .context("configuring TLS from tls_cert_file/tls_key_file")
}

/// Reflection over our API plus the error-detail and health types, so clients such as grpcurl
/// can decode rich error details and the health service without proto files.
fn reflection_builder() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(sandboxd_api::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}

type ServerTask<E> = JoinHandle<Result<(), E>>;

fn flatten<E: std::error::Error + Send + Sync + 'static>(
    name: &str,
    outcome: Result<Result<(), E>, tokio::task::JoinError>,
) -> anyhow::Result<()> {
    match outcome {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(anyhow::Error::new(error).context(format!("{name} failed"))),
        Err(join_error) => Err(anyhow::Error::new(join_error).context(format!("{name} panicked"))),
    }
}

async fn close_server<E: std::error::Error + Send + Sync + 'static>(
    name: &str,
    server: ServerTask<E>,
) {
    let abort = server.abort_handle();
    match tokio::time::timeout(CONNECTION_CLOSE_TIMEOUT, server).await {
        Ok(outcome) => {
            if let Err(error) = flatten(name, outcome) {
                tracing::warn!(
                    name: names::SERVER_CLOSE_FAILED,
                    message = names::SERVER_CLOSE_FAILED,
                    error = format!("{error:#}"),
                );
            }
        }
        Err(_elapsed) => {
            // Long-lived streams (health watches) would otherwise hold the exit forever.
            abort.abort();
            tracing::info!(
                name: names::SERVER_CONNECTIONS_CLOSED_FORCIBLY,
                message = names::SERVER_CONNECTIONS_CLOSED_FORCIBLY,
                server = name,
            );
        }
    }
}
