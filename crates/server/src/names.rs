//! Names of the server's own log events and fields for its background loops, in one place so
//! dashboards and log queries have one list to follow (the use cases' names live in
//! `sandboxd_usecase::telemetry`).

/// A background pass failed after the previous one succeeded: the start of an outage.
pub(crate) const BACKGROUND_OUTAGE_STARTED: &str = "background_outage_started";
/// A background pass succeeded after one or more failed: the end of an outage.
pub(crate) const BACKGROUND_OUTAGE_ENDED: &str = "background_outage_ended";
/// A failing pass inside an outage that was already logged (debug level only).
pub(crate) const BACKGROUND_PASS_STILL_FAILING: &str = "background_pass_still_failing";
/// A reconcile pass repaired something (removed orphans); quiet passes log nothing.
pub(crate) const RECONCILE_PASS_REPAIRED: &str = "reconcile_pass_repaired";

/// The egress rules could not be checked or reinstalled (the service is NOT_SERVING until they
/// are); logged once per reason.
pub(crate) const EGRESS_CHECK_FAILED: &str = "egress_check_failed";

/// `loop` field values: which background loop an event is about.
pub(crate) const LOOP_CLEANUP: &str = "cleanup";
pub(crate) const LOOP_RECONCILE: &str = "reconcile";
pub(crate) const LOOP_REFILL: &str = "pool_refill";
pub(crate) const LOOP_HEARTBEAT: &str = "node_heartbeat";

/// Every profile's runtime is registered with the engine (logged once, with what it has).
pub(crate) const RUNTIMES_CHECKED: &str = "runtimes_checked";
/// The engine did not answer the runtime check at start: sandboxd starts NOT_SERVING and checks
/// once it answers.
pub(crate) const RUNTIMES_CHECK_DEFERRED: &str = "runtimes_check_deferred";
