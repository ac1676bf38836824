//! Every metric name, label value and log event name the Docker runtime emits, in one place.

/// Histogram of engine-side work per runtime call, in seconds.
pub const RUNTIME_DURATION_SECONDS: &str = "sandbox_runtime_duration_seconds";

/// Label: which runtime call (one of the `OPERATION_*` values below).
pub const LABEL_OPERATION: &str = "operation";
/// Label: `ok` or `error`.
pub const LABEL_RESULT: &str = "result";

/// `create`: create, start, and wait until the endpoint serves.
pub const OPERATION_CREATE: &str = "create";
/// `remove_gracefully`: a graceful stop, then removal. Named before containers could be kept;
/// a stop that keeps the container is [`OPERATION_STOP_KEEP`].
pub const OPERATION_STOP: &str = "stop";
/// `force_remove`.
pub const OPERATION_DELETE: &str = "delete";
/// `pause`: freeze.
pub const OPERATION_PAUSE: &str = "pause";
/// `unpause`: thaw.
pub const OPERATION_UNPAUSE: &str = "unpause";
/// `stop`: a graceful stop that keeps the container.
pub const OPERATION_STOP_KEEP: &str = "stop_keep";
/// `start`: start a stopped container and wait until the endpoint serves.
pub const OPERATION_START: &str = "start";
/// Starting a pooled sandbox that waits for a claim (the warm pool's refill).
pub const OPERATION_START_POOLED: &str = "start_pooled";
/// Claiming a pooled sandbox for a chat: attach, claim, probe.
pub const OPERATION_CLAIM: &str = "claim";

pub const RESULT_OK: &str = "ok";
pub const RESULT_ERROR: &str = "error";

/// Event: a `start` whose sandbox never became ready could not stop it again (it may be left
/// running unserved until the next stop or removal).
pub const EVENT_STOP_AFTER_FAILED_START_FAILED: &str = "sandbox_stop_after_failed_start_failed";

/// Event: the engine's `info` failed while connecting, so its root directory stays unknown
/// (warn).
pub const EVENT_DOCKER_INFO_FAILED: &str = "docker_info_failed";
/// Event: a created sandbox serves its endpoint (debug), with the time it took.
pub const EVENT_CONTAINER_READY: &str = "sandbox_container_ready";
/// Event: a create that failed could not remove its container (warn); reconcile removes it.
pub const EVENT_CLEANUP_AFTER_FAILED_CREATE_FAILED: &str =
    "sandbox_cleanup_after_failed_create_failed";
/// Event: a create abandoned by its caller could not remove its container (warn); reconcile
/// removes it.
pub const EVENT_CLEANUP_AFTER_ABANDONED_CREATE_FAILED: &str =
    "sandbox_cleanup_after_abandoned_create_failed";
/// Event: a pool slot could not be released (warn); the next pool recovery releases it.
pub const EVENT_POOL_RELEASE_FAILED: &str = "sandbox_pool_release_failed";
/// Event: a removed claimed sandbox's slot stayed busy past the wait (warn); the next pool
/// recovery releases it.
pub const EVENT_POOL_RELEASE_SKIPPED_BUSY: &str = "sandbox_pool_release_skipped_busy";
/// Event: a claim that failed could not discard its pooled sandbox (warn).
pub const EVENT_POOL_CLEANUP_AFTER_FAILED_CLAIM_FAILED: &str =
    "sandbox_pool_cleanup_after_failed_claim_failed";
/// Event: a claimed sandbox kept its pool name (debug); nothing depends on the name.
pub const EVENT_POOL_RENAME_FAILED: &str = "sandbox_pool_rename_failed";
/// Event: an `allowed_volume_roots` entry does not resolve and is skipped (warn). A sentence,
/// unlike the other names, kept as it was because log queries may match it.
pub const EVENT_VOLUME_ROOT_UNRESOLVED: &str = "allowed volume root does not resolve";

/// Value of the `{prefix}.managed-by` label on every container this service starts.
pub const MANAGED_BY_VALUE: &str = "sandboxd";

/// HELP text of the histograms above, for the exporter's `describe_histogram` calls.
pub const DESCRIPTIONS: &[(&str, &str)] = &[(
    RUNTIME_DURATION_SECONDS,
    "Docker engine work per runtime call in seconds, by operation (create, stop, delete, pause, unpause, stop_keep, start) and result.",
)];
