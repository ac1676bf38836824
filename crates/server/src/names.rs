//! Names of the server's own log events and their field values, in one place so dashboards and
//! log queries have one list to follow (its metric and span names are in `telemetry::names`,
//! the use cases' in `sandboxd_usecase::telemetry`, the adapters' in their `names` modules).

// ---- start and serving ---------------------------------------------------------------------

/// The configuration is read and the server starts (what it will use, no secrets).
pub const SANDBOXD_STARTING: &str = "sandboxd_starting";
/// The server stopped with an error; the process exits with a failure.
pub const SANDBOXD_FAILED: &str = "sandboxd_failed";
/// No bearer token is configured while the gRPC port listens beyond loopback.
pub const AUTH_DISABLED_ON_NON_LOOPBACK_ADDRESS: &str = "auth_disabled_on_non_loopback_address";
/// A port is bound, with its address (the test harness reads the gRPC and HTTP addresses from
/// these lines).
pub const GRPC_LISTENING: &str = "grpc_listening";
pub const HTTP_LISTENING: &str = "http_listening";
pub const NODE_API_LISTENING: &str = "node_api_listening";
/// Traces are exported over OTLP (logged once at start, with the endpoint).
pub const TRACE_EXPORT_ENABLED: &str = "trace_export_enabled";

// ---- requests ------------------------------------------------------------------------------

/// A use case failed as unavailable (warn) or internal (error): the cause, logged where the
/// error is turned into a status and never sent to the client.
pub const RPC_UNAVAILABLE: &str = "rpc_unavailable";
pub const RPC_INTERNAL_ERROR: &str = "rpc_internal_error";
/// The task running an RPC panicked or was cancelled (answered INTERNAL).
pub const RPC_TASK_FAILED: &str = "rpc_task_failed";
/// A node API request named an agent this node does not have (the nodes' configurations
/// differ).
pub const NODE_API_UNKNOWN_AGENT: &str = "node_api_unknown_agent";

// ---- health --------------------------------------------------------------------------------

/// Redis and the engine answer again (info) or stopped answering (warn): the service's serving
/// status follows.
pub const BACKENDS_UP: &str = "backends_up";
pub const BACKENDS_DOWN: &str = "backends_down";
/// Redis did not answer the ping; logged once per reason.
pub const REDIS_UNREACHABLE: &str = "redis_unreachable";
/// The engine did not answer the ping (debug: `backends_down` says it once).
pub const DOCKER_PING_FAILED: &str = "docker_ping_failed";
/// The active-sessions gauge could not be read from the store yet (debug; retried).
pub const ACTIVE_COUNT_UNAVAILABLE: &str = "active_count_unavailable";
/// The egress rules could not be checked or reinstalled (the service is NOT_SERVING until they
/// are); logged once per reason.
pub const EGRESS_CHECK_FAILED: &str = "egress_check_failed";
/// Every profile's runtime is registered with the engine (logged once, with what it has).
pub const RUNTIMES_CHECKED: &str = "runtimes_checked";
/// The engine did not answer the runtime check at start: sandboxd starts NOT_SERVING and checks
/// once it answers.
pub const RUNTIMES_CHECK_DEFERRED: &str = "runtimes_check_deferred";
/// A deferred runtime check failed again (debug; the next tick asks again).
pub const RUNTIMES_CHECK_FAILED: &str = "runtimes_check_failed";

// ---- background loops ----------------------------------------------------------------------

/// A background pass failed after the previous one succeeded: the start of an outage.
pub const BACKGROUND_OUTAGE_STARTED: &str = "background_outage_started";
/// A background pass succeeded after one or more failed: the end of an outage.
pub const BACKGROUND_OUTAGE_ENDED: &str = "background_outage_ended";
/// A failing pass inside an outage that was already logged (debug level only).
pub const BACKGROUND_PASS_STILL_FAILING: &str = "background_pass_still_failing";
/// A background task ended by a panic (its work stops; the server goes on).
pub const BACKGROUND_TASK_FAILED: &str = "background_task_failed";
/// A reconcile pass repaired something (removed orphans); quiet passes log nothing.
pub const RECONCILE_PASS_REPAIRED: &str = "reconcile_pass_repaired";

/// `loop` field values: which background loop an event is about.
pub const LOOP_CLEANUP: &str = "cleanup";
pub const LOOP_RECONCILE: &str = "reconcile";
pub const LOOP_REFILL: &str = "pool_refill";
pub const LOOP_HEARTBEAT: &str = "node_heartbeat";
/// Names of the background tasks with a loop of their own (the `task` field of
/// `background_task_failed`).
pub const TASK_HEALTH_CHECKS: &str = "health_checks";
pub const TASK_EVENT_READER: &str = "event_reader";
pub const TASK_RUNTIME_CHECK: &str = "runtime_check";

// ---- shutdown ------------------------------------------------------------------------------

/// SIGTERM or SIGINT arrived (with which), or its handler could not be installed.
pub const SHUTDOWN_SIGNAL: &str = "shutdown_signal";
pub const CTRL_C_HANDLER_FAILED: &str = "ctrl_c_handler_failed";
pub const SIGTERM_HANDLER_FAILED: &str = "sigterm_handler_failed";
/// The drain began (with the calls in flight), outlasted its timeout, and the process is done.
pub const SHUTDOWN_STARTED: &str = "shutdown_started";
pub const SHUTDOWN_DRAIN_TIMED_OUT: &str = "shutdown_drain_timed_out";
pub const SHUTDOWN_COMPLETE: &str = "shutdown_complete";
/// A server failed while closing, or its connections (long-lived watches) were cut at the
/// close timeout.
pub const SERVER_CLOSE_FAILED: &str = "server_close_failed";
pub const SERVER_CONNECTIONS_CLOSED_FORCIBLY: &str = "server_connections_closed_forcibly";
/// The last spans could not be flushed to the collector at exit.
pub const TRACE_EXPORT_SHUTDOWN_FAILED: &str = "trace_export_shutdown_failed";
pub const TRACE_EXPORT_SHUTDOWN_TIMED_OUT: &str = "trace_export_shutdown_timed_out";
