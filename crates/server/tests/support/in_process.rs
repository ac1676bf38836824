//! The server built and served in-process on the configured (port 0) addresses over the given
//! ports, for the tests that drive it with real clients.

use std::net::SocketAddr;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusBuilder;
use sandboxd_domain::AgentProfile;
use sandboxd_server::auth::BearerAuth;
use sandboxd_server::config::{Config, LifecycleSettings, ServerSettings};
use sandboxd_server::{Application, Dependencies};
use sandboxd_usecase::Ports;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A running server: where its gRPC port listens, what stops it, and its task.
pub(crate) struct Served {
    pub(crate) addr: SocketAddr,
    pub(crate) shutdown: CancellationToken,
    pub(crate) server: JoinHandle<anyhow::Result<()>>,
}

/// Port-0 listeners, no background loops, and a busybox profile for each of `agents`.
#[allow(dead_code)] // not every test binary that includes this module builds its own config
pub(crate) fn quiet_config(agents: &[&str]) -> Config {
    let mut config = Config {
        server: ServerSettings {
            grpc_addr: "127.0.0.1:0".parse().unwrap(),
            http_addr: "127.0.0.1:0".parse().unwrap(),
            drain_timeout: Duration::from_secs(5),
            ..ServerSettings::default()
        },
        lifecycle: LifecycleSettings {
            cleanup_interval: Duration::ZERO,
            reconcile_interval: Duration::ZERO,
            ..LifecycleSettings::default()
        },
        ..Config::default()
    };
    for agent in agents {
        config
            .agents
            .insert(*agent, AgentProfile::new("sandboxd/busybox:local"));
    }
    config
}

/// Builds the application from `config` over `ports`, without authentication, and serves it
/// until `shutdown` is cancelled.
pub(crate) async fn serve(config: &Config, ports: Ports) -> Served {
    let fleet = sandboxd_server::Fleet::single(ports.engines.directory().clone());
    let deps = Dependencies {
        ports,
        metrics: PrometheusBuilder::new().build_recorder().handle(),
        auth: BearerAuth::default(),
        egress: None,
        fleet,
    };
    let app = Application::build(config, deps).await.unwrap();
    let addr = app.grpc_addr().unwrap();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    Served {
        addr,
        shutdown,
        server,
    }
}
