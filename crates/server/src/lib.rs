//! The `sandboxd` server: configuration, the gRPC handlers over the use cases, health,
//! reflection, the operations HTTP port, fleet mode's node API, the background loops and
//! graceful shutdown.
//!
//! `main.rs` only wires these together; tests build an [`Application`] from in-memory ports. The
//! crate exports what those two need and nothing else.

pub(crate) mod adapters;
mod app;
pub mod auth;
pub(crate) mod background;
pub(crate) mod cleanup;
pub mod config;
pub(crate) mod drain;
mod fleet;
mod grpc;
pub(crate) mod health;
pub(crate) mod http;
pub mod names;
mod node_api;
pub(crate) mod reconcile;
pub(crate) mod refill;
pub(crate) mod rpc_telemetry;
pub(crate) mod runtimes;
pub(crate) mod shutdown;
pub mod telemetry;

pub use app::{Application, Dependencies};
pub use fleet::Fleet;
/// The request parsing the handlers share, for the validator fuzz tests.
pub use grpc::convert;
pub use node_api::node_runtime_server;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

/// Runs the server for `config` until SIGTERM or ctrl-c, then drains and returns.
///
/// # Errors
/// When a backend cannot be set up, a listener cannot be bound, or a server fails.
pub async fn run(config: config::Config) -> anyhow::Result<()> {
    let metrics = telemetry::init_metrics()?;
    let auth = match &config.server.auth_token_file {
        Some(path) => auth::BearerAuth::from_file(path)?,
        None => auth::BearerAuth::default(),
    };
    tracing::info!(
        name: names::SANDBOXD_STARTING,
        message = names::SANDBOXD_STARTING,
        redis_url = %config.redis.redis_url_redacted(),
        key_prefix = %config.redis.key_prefix,
        agents = ?config.agents.names().collect::<Vec<_>>(),
        allowed_volume_roots = ?config.docker.allowed_volume_roots,
        auth = auth.is_enabled(),
    );
    let egress = adapters::egress_firewall(&config)?;
    match &egress {
        // Before anything serves: a sandbox must never run without its egress rules, so a
        // failure here stops the start (the message says what is missing: root, iptables, the
        // engine's chain).
        Some(firewall) => firewall
            .install()
            .await
            .context("installing the egress packet-filter rules")?,
        None => tracing::info!(
            name: sandboxd_adapters::egress::names::EVENT_NO_PACKET_FILTER,
            message = sandboxd_adapters::egress::names::EVENT_NO_PACKET_FILTER,
        ),
    }
    let (ports, fleet) = adapters::connect(&config)?;
    let app = app::Application::build(
        &config,
        app::Dependencies {
            ports,
            fleet,
            metrics,
            auth,
            egress: egress.map(std::sync::Arc::new),
        },
    )
    .await?;
    let shutdown = CancellationToken::new();
    shutdown::cancel_on_signals(shutdown.clone());
    app.run_until_stopped(shutdown).await
}
