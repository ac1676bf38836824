//! Every metric, span and log name the use cases emit, in one place: the API's fixed telemetry
//! contract (docs/design.md §7), read by dashboards, alerts and the e2e suite.
//!
//! Metrics use Prometheus spelling (`sandbox.create.total` -> `sandbox_create_total`, label
//! `error.type` -> `error_type`). Each use case's spans and log lines are built beside it (its
//! `telemetry` submodule) from these names.

/// Metric names and label keys.
pub mod metric {
    pub const CREATE_TOTAL: &str = "sandbox_create_total";
    pub const DELETE_TOTAL: &str = "sandbox_delete_total";
    pub const CLEANUP_TOTAL: &str = "sandbox_cleanup_total";
    pub const CLEANUP_ERROR_TOTAL: &str = "sandbox_cleanup_error_total";
    pub const ACTIVE_COUNT: &str = "sandbox_active_count";
    pub const GET_TOTAL: &str = "sandbox_get_total";
    pub const LIST_TOTAL: &str = "sandbox_list_total";
    pub const EXTEND_TOTAL: &str = "sandbox_extend_total";
    pub const RECONCILE_TOTAL: &str = "sandbox_reconcile_total";
    pub const RECONCILE_ERROR_TOTAL: &str = "sandbox_reconcile_error_total";
    pub const PAUSE_TOTAL: &str = "sandbox_pause_total";
    pub const RESUME_TOTAL: &str = "sandbox_resume_total";
    pub const TOUCH_TOTAL: &str = "sandbox_touch_total";
    pub const SESSIONS: &str = "sandbox_sessions";
    pub const WATCHERS: &str = "sandbox_watchers";
    pub const WATCH_TOTAL: &str = "sandbox_watch_total";
    pub const EVENTS_DELIVERED_TOTAL: &str = "sandbox_events_delivered_total";
    pub const POOL_CLAIMS_TOTAL: &str = "sandbox_pool_claims_total";
    pub const POOL_READY: &str = "sandbox_pool_ready";
    pub const POOL_STARTS_TOTAL: &str = "sandbox_pool_starts_total";
    pub const POOL_RELEASED_TOTAL: &str = "sandbox_pool_released_total";
    pub const NODE_HEARTBEAT_TOTAL: &str = "sandbox_node_heartbeat_total";
    pub const NODES: &str = "sandbox_nodes";
    pub const NODE_LOST_TOTAL: &str = "sandbox_node_lost_total";
    pub const PLACEMENT_TOTAL: &str = "sandbox_placement_total";

    pub const RESULT: &str = "result";
    pub const REASON: &str = "reason";
    pub const ERROR_TYPE: &str = "error_type";
    pub const STATE: &str = "state";
    pub const AGENT: &str = "agent";

    /// `result` values of `sandbox_pool_claims_total`: served from the pool; no pooled sandbox
    /// was ready (cold create); the pooled sandbox was unusable (cold create); the claim failed
    /// as a cold create would have (no fallback).
    pub const CLAIM_CLAIMED: &str = "claimed";
    pub const CLAIM_EMPTY: &str = "empty";
    pub const CLAIM_LOST: &str = "lost";
    pub const CLAIM_FAILED: &str = "failed";

    /// `result` values of `sandbox_reconcile_total`: the repairs, by reason.
    pub const REPAIR_CONTAINER_REMOVED: &str = "container_removed";
    pub const REPAIR_SESSION_REMOVED: &str = "session_removed";
    pub const REPAIR_ADOPTED: &str = "adopted";
    pub const REPAIR_STRAY_REMOVED: &str = "stray_removed";
    pub const REPAIR_DRIFT: &str = "drift_repaired";

    /// `reason` of a cleanup error raised by the listing itself, not by one session.
    pub const REASON_LIST_EXPIRED: &str = "list_expired";

    /// Every metric with its help text, for the exporter's `describe_*` calls.
    pub const DESCRIPTIONS: &[(&str, &str)] = &[
        (
            CREATE_TOTAL,
            "CreateSandbox outcomes by result (created, reused, replaced, resumed, conflict, quota_exceeded, engine_busy, error) and conflict reason.",
        ),
        (
            DELETE_TOTAL,
            "DeleteSandbox outcomes by result (deleted, not_found, error).",
        ),
        (
            CLEANUP_TOTAL,
            "Expired sandboxes removed by the cleanup pass.",
        ),
        (
            CLEANUP_ERROR_TOTAL,
            "Cleanup failures by error type; reason=list_expired when the listing itself failed.",
        ),
        (ACTIVE_COUNT, "Sessions in the store after the last write."),
        (
            GET_TOTAL,
            "GetSandbox outcomes by result (found, not_found, error).",
        ),
        (LIST_TOTAL, "ListSandboxes calls by result (ok, error)."),
        (
            RECONCILE_TOTAL,
            "Repairs by result: container_removed (dead or unlabelled container), session_removed (session whose container is gone), adopted (session rebuilt from a live container's labels), stray_removed (a chat's container other than its session's), drift_repaired (engine state brought back in line with the session's).",
        ),
        (
            RECONCILE_ERROR_TOTAL,
            "Reconciliation failures by error type.",
        ),
        (
            EXTEND_TOTAL,
            "ExtendSandbox outcomes by result (extended, not_found, expired, invalid, error).",
        ),
        (
            PAUSE_TOTAL,
            "PauseSandbox and idle pauses/hibernations by result (paused, hibernated, already_paused, not_found, expired, hibernated_refused, changed, error).",
        ),
        (
            RESUME_TOTAL,
            "ResumeSandbox and resuming creates by result (resumed, already_running, not_found, expired, error).",
        ),
        (
            TOUCH_TOTAL,
            "TouchSandbox outcomes by result (touched, not_found, not_running, expired, error).",
        ),
        (
            SESSIONS,
            "Stored sessions by state (running, paused, hibernated), refreshed by every cleanup and reconcile pass.",
        ),
        (WATCHERS, "WatchSandboxes streams open in this process."),
        (
            WATCH_TOTAL,
            "WatchSandboxes streams opened, by result (opened, cursor_expired, error).",
        ),
        (EVENTS_DELIVERED_TOTAL, "Lifecycle events sent to watchers."),
        (
            POOL_CLAIMS_TOTAL,
            "Creates of pooled profiles by agent and result: claimed (served from the warm pool), empty (none ready: cold create), lost (the pooled sandbox was unusable: cold create), failed (the claim failed as a cold create would).",
        ),
        (
            POOL_READY,
            "Pooled sandboxes waiting for a claim in this process, by agent.",
        ),
        (
            POOL_STARTS_TOTAL,
            "Pooled sandboxes started by the refill, by agent and result (ok, error).",
        ),
        (
            POOL_RELEASED_TOTAL,
            "Pooled sandboxes, slots and claims left half-way (a crash, a removal behind the service's back) that the pool's recovery removed.",
        ),
        (
            NODE_HEARTBEAT_TOTAL,
            "Fleet mode: renewals of this node's registration by result (ok, error).",
        ),
        (
            NODES,
            "Fleet mode: registered nodes as this node last read them, by state (healthy, unhealthy, draining).",
        ),
        (
            NODE_LOST_TOTAL,
            "Fleet mode: lost nodes this node reported (one LOST event per session of each).",
        ),
        (
            PLACEMENT_TOTAL,
            "Fleet mode: new sandboxes placed, by node and result (ok, failed: the node failed the create and another was tried, none: no node accepted).",
        ),
    ];
}

/// Span names and attribute keys.
pub mod span {
    pub const CREATE: &str = "usecase.create_sandbox";
    pub const DELETE: &str = "usecase.delete_sandbox";
    pub const CLEANUP_PASS: &str = "usecase.cleanup_expired_sandboxes";
    pub const CLEANUP_ONE: &str = "usecase.cleanup_expired_sandbox";
    pub const GET: &str = "usecase.get_sandbox";
    pub const LIST: &str = "usecase.list_sandboxes";
    pub const EXTEND: &str = "usecase.extend_sandbox";
    pub const RECONCILE: &str = "usecase.reconcile_sandboxes";
    pub const PAUSE: &str = "usecase.pause_sandbox";
    pub const RESUME: &str = "usecase.resume_sandbox";
    pub const TOUCH: &str = "usecase.touch_sandbox";
    pub const WATCH: &str = "usecase.watch_sandboxes";

    pub const CHAT_ID: &str = "chat.id";
    pub const AGENT_ID: &str = "agent.id";
    pub const VOLUME_HOST_PATH: &str = "volume.host_path";
    pub const SESSION_ID: &str = "session.id";
    pub const CONTAINER_ID: &str = "container.id";
    pub const SESSION_AGENT_ID: &str = "sandbox.session_agent.id";
    pub const SESSION_VOLUME_HOST_PATH: &str = "sandbox.session_volume.host_path";
    pub const ENDPOINT_IP: &str = "sandbox.endpoint.ip";
    pub const ENDPOINT_PORT: &str = "sandbox.endpoint.port";
    pub const RESULT: &str = "sandbox.result";
    pub const CONFLICT_REASON: &str = "sandbox.conflict.reason";
    pub const PREVIOUS_SESSION_ID: &str = "sandbox.previous_session.id";
    pub const PREVIOUS_CONTAINER_ID: &str = "sandbox.previous_container.id";
    pub const PREVIOUS_AGENT_ID: &str = "sandbox.previous_agent.id";
    pub const PREVIOUS_VOLUME_HOST_PATH: &str = "sandbox.previous_volume.host_path";
    pub const NEW_SESSION_ID: &str = "sandbox.new_session.id";
    pub const NEW_CONTAINER_ID: &str = "sandbox.new_container.id";
    pub const NEW_AGENT_ID: &str = "sandbox.new_agent.id";
    pub const NEW_VOLUME_HOST_PATH: &str = "sandbox.new_volume.host_path";
    pub const EXPIRED_COUNT: &str = "sandbox.expired_count";
    pub const CLEANED_COUNT: &str = "sandbox.cleaned_count";
    pub const ERROR_COUNT: &str = "sandbox.error_count";
    pub const SKIPPED_COUNT: &str = "sandbox.skipped_count";
    pub const PAGE_SIZE: &str = "sandbox.page_size";
    pub const RETURNED_COUNT: &str = "sandbox.returned_count";
    pub const TTL_MS: &str = "sandbox.ttl_ms";
    pub const EXPIRES_AT: &str = "sandbox.expires_at";
    pub const CONTAINER_COUNT: &str = "sandbox.container_count";
    pub const SESSION_COUNT: &str = "sandbox.session_count";
    pub const REMOVED_CONTAINERS: &str = "sandbox.removed_containers";
    pub const REMOVED_SESSIONS: &str = "sandbox.removed_sessions";
    pub const ADOPTED_SESSIONS: &str = "sandbox.adopted_sessions";
    pub const REPAIRED_SESSIONS: &str = "sandbox.repaired_sessions";
    pub const SUSPENDED_COUNT: &str = "sandbox.suspended_count";
    pub const STATE: &str = "sandbox.state";
    pub const AFTER: &str = "sandbox.watch.after";
    /// What `record_error` sets: the error's type label, message and an error status.
    pub const ERROR_TYPE: &str = "error.type";
    pub const EXCEPTION_MESSAGE: &str = "exception.message";
    pub const OTEL_STATUS_CODE: &str = "otel.status_code";
}

/// Log event names (the event's metadata name and its message).
pub mod event {
    pub const SANDBOX_CREATED: &str = "sandbox_created";
    pub const SANDBOX_REUSED: &str = "sandbox_reused";
    pub const SANDBOX_REPLACED: &str = "sandbox_replaced";
    pub const SANDBOX_CONFLICT: &str = "sandbox_conflict";
    pub const SANDBOX_DELETED: &str = "sandbox_deleted";
    pub const SANDBOX_DELETE_NOT_FOUND: &str = "sandbox_delete_not_found";
    pub const SANDBOX_DELETE_FAILED: &str = "sandbox_delete_failed";
    pub const SANDBOX_CLEANED: &str = "sandbox_cleaned";
    pub const SANDBOX_CLEAN_FAILED: &str = "sandbox_clean_failed";
    pub const SANDBOX_STALE_INDEX_REMOVED: &str = "sandbox_stale_index_removed";
    pub const SANDBOX_EXTENDED: &str = "sandbox_extended";
    pub const SANDBOX_EXTEND_FAILED: &str = "sandbox_extend_failed";
    pub const SANDBOX_COMPENSATION_FAILED: &str = "sandbox_compensation_failed";
    pub const LEASE_RELEASE_FAILED: &str = "lease_release_failed";
    pub const SANDBOX_ORPHAN_CONTAINER_REMOVED: &str = "sandbox_orphan_container_removed";
    pub const SANDBOX_ORPHAN_SESSION_REMOVED: &str = "sandbox_orphan_session_removed";
    pub const SANDBOX_RECONCILE_FAILED: &str = "sandbox_reconcile_failed";
    pub const SANDBOX_ADOPTED: &str = "sandbox_adopted";
    pub const SANDBOX_STRAY_CONTAINER_REMOVED: &str = "sandbox_stray_container_removed";
    pub const SANDBOX_PAUSED: &str = "sandbox_paused";
    pub const SANDBOX_HIBERNATED: &str = "sandbox_hibernated";
    pub const SANDBOX_RESUMED: &str = "sandbox_resumed";
    pub const SANDBOX_TOUCHED: &str = "sandbox_touched";
    pub const SANDBOX_LIFECYCLE_REFUSED: &str = "sandbox_lifecycle_refused";
    pub const SANDBOX_DRIFT_REPAIRED: &str = "sandbox_drift_repaired";
    pub const SANDBOX_CREATE_REFUSED: &str = "sandbox_create_refused";
    pub const RESERVATION_RELEASE_FAILED: &str = "reservation_release_failed";
    pub const SANDBOX_WATCH_LAGGED: &str = "sandbox_watch_lagged";
    pub const EVENT_READER_FAILED: &str = "event_reader_failed";
    pub const POOL_CLAIM_LOST: &str = "sandbox_pool_claim_lost";
    pub const POOL_START_FAILED: &str = "sandbox_pool_start_failed";
    pub const POOL_RECOVERED: &str = "sandbox_pool_recovered";
    pub const POOL_RECOVERY_FAILED: &str = "sandbox_pool_recovery_failed";
    pub const POOL_DISCARD_FAILED: &str = "sandbox_pool_discard_failed";
    pub const NODE_LOST: &str = "node_lost";
    pub const NODE_DRAINED: &str = "node_draining_set";
    pub const NODE_COUNT_FAILED: &str = "node_count_failed";
    /// Fleet mode: a node failed a create and another is tried (beside `sandbox_placement_total`).
    pub const PLACEMENT_FAILED: &str = "placement_failed";
}
