//! sandboxd's test kit (unpublished): exactly one of each thing the tests and the bench start or
//! share, so they cannot drift apart.
//!
//! - [`redis`]: a throwaway `redis-server` on a free port, killed with its handle (and with the
//!   test binary, by pdeathsig), stoppable and restartable for outage tests, with extra
//!   arguments (TLS, replicas, ACL users); a `redis-sentinel` ([`Sentinel`]) for failover tests.
//! - [`docker`]: the local engine, the sandbox image, and containers listed and removed by label.
//! - [`egress`]: a deployment's bridge networks and packet-filter rules, found and removed.
//! - [`process`]: one spawned `sandboxd` process: its log, addresses, signals and memory.
//! - [`app`]: `spawn_app()`, a whole test world around one `sandboxd` (Redis, prefix, volume
//!   root, clients) that removes everything it started when dropped, and its [`Peer`]s (more
//!   processes on the same Redis and prefix); `start_refused()` for a configuration sandboxd
//!   must refuse at start.
//! - [`app_config`]: what a test may change in that `sandboxd`'s configuration.
//! - [`requests`]: the sandbox API's calls with typed arguments (`app.create(chat, agent,
//!   volume)`, `app.get(chat)`, ...) on a [`TestApp`], a [`Peer`] or a bare client.
//! - [`binary`]: the `sandboxd` binary under test, refused when older than its sources.
//! - [`fleet`]: several Docker engines in network namespaces (`scripts/lib/fleet.sh`) and a
//!   `sandboxd` fleet node started inside one, for the fleet tests.
//! - [`hostile`]: the one table of hostile requests with the code and field each must get.
//! - [`pool`]: the static pool waiter, built once, and the removal of the mounts a pool test left.
//! - [`http`]: a minimal HTTP/1.0 GET for `/metrics`, `/healthz`, `/readyz` and sandbox
//!   endpoints, and the samples of one metric.

pub mod app;
pub mod app_config;
pub mod binary;
pub mod docker;
pub mod egress;
pub mod fleet;
pub mod hostile;
pub mod http;
pub mod pool;
pub mod process;
pub mod redis;
pub mod requests;

pub use app::{Peer, TestApp, spawn_app, spawn_app_with, start_refused};
pub use app_config::{AppConfig, new_chat_id};
pub use binary::workspace_root;
pub use docker::{LabelGuard, sandbox_image};
pub use http::{http_get, metric_samples};
pub use redis::{RedisServer, Sentinel};
pub use requests::{Created, SandboxRequests};

/// The result of a test or helper that reports failures as errors rather than panics.
pub type TestResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Why a launcher or engine helper failed; the bench reports it, a test fails with it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Redis(#[from] ::redis::RedisError),
    #[error(transparent)]
    Docker(#[from] bollard::errors::Error),
    /// A process that did not start, answer or stop as it should; the message says which.
    #[error("{0}")]
    Failed(String),
}

/// The kit's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
