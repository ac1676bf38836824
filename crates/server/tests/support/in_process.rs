//! The server built and served in-process on the configured (port 0) addresses over the given
//! ports, for the tests that drive it with real clients.

use std::net::SocketAddr;

use metrics_exporter_prometheus::PrometheusBuilder;
use sandboxd_server::app::{Application, Dependencies};
use sandboxd_server::auth::BearerAuth;
use sandboxd_server::config::Config;
use sandboxd_usecase::Ports;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A running server: where its gRPC port listens, what stops it, and its task.
pub(crate) struct Served {
    pub(crate) addr: SocketAddr,
    pub(crate) shutdown: CancellationToken,
    pub(crate) server: JoinHandle<anyhow::Result<()>>,
}

/// Builds the application from `config` over `ports`, without authentication, and serves it
/// until `shutdown` is cancelled.
pub(crate) async fn serve(config: &Config, ports: Ports) -> Served {
    let deps = Dependencies {
        ports,
        metrics: PrometheusBuilder::new().build_recorder().handle(),
        auth: BearerAuth::default(),
        egress: None,
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
