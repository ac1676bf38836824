//! Every metric name, label value and log event name the Redis adapters emit, in one place.

/// Histogram of one Redis round trip, labelled by [`LABEL_COMMAND`] (an operation name below).
pub const REDIS_COMMAND_DURATION_SECONDS: &str = "sandbox_redis_command_duration_seconds";
/// Histogram of the time `lock` waited for a chat's lease, labelled by [`LABEL_RESULT`].
pub const LOCK_WAIT_SECONDS: &str = "sandbox_lock_wait_seconds";

pub const LABEL_COMMAND: &str = "command";
pub const LABEL_RESULT: &str = "result";

/// `command` label values: one per logical operation, each one round trip.
pub mod command {
    pub const GET_ACTIVE_BY_CHAT_ID: &str = "get_current_by_chat_id";
    pub const GET_BY_SESSION_ID: &str = "get_by_session_id";
    pub const SAVE: &str = "save";
    pub const DELETE: &str = "delete";
    pub const UPDATE: &str = "update";
    pub const TOUCH: &str = "touch";
    pub const APPEND_EVENT: &str = "append_event";
    pub const COUNT_BY_STATE: &str = "count_by_state";
    pub const RESERVE: &str = "reserve";
    pub const RELEASE_RESERVATION: &str = "release_reservation";
    pub const READ_EVENTS: &str = "read_events";
    pub const WAIT_EVENTS: &str = "wait_events";
    pub const LAST_EVENT: &str = "last_event";
    pub const LIST_EXPIRED: &str = "list_expired";
    pub const COUNT_ACTIVE: &str = "count_active";
    pub const LIST: &str = "list";
    pub const PING: &str = "ping";
    pub const LOCK_ACQUIRE: &str = "lock_acquire";
    pub const LOCK_RENEW: &str = "lock_renew";
    pub const LOCK_RELEASE: &str = "lock_release";
    pub const NODE_BEAT: &str = "node_beat";
    pub const NODES: &str = "nodes";
    pub const NODE_DRAIN: &str = "node_drain";
    pub const NODE_CLAIM_LOSS: &str = "node_claim_loss";
}

/// `result` label values of [`LOCK_WAIT_SECONDS`].
pub mod lock_result {
    pub const ACQUIRED: &str = "acquired";
    pub const BUSY: &str = "busy";
    pub const ERROR: &str = "error";
}

/// Event: a renewal found the lease's token gone (warn): another holder may act on the chat.
pub const EVENT_LEASE_LOST_TOKEN_GONE: &str = "lease_lost token_gone";
/// Event: a renewal failed and another fits before the key could expire (debug).
pub const EVENT_LEASE_RENEWAL_RETRY: &str = "lease_renewal_retry";
/// Event: renewals failed until the key could expire (warn): the lease counts as lost.
pub const EVENT_LEASE_LOST_RENEWAL_FAILED: &str = "lease_lost renewal_failed";

/// HELP text of the histograms above, for the exporter's `describe_histogram` calls.
pub const DESCRIPTIONS: &[(&str, &str)] = &[
    (
        REDIS_COMMAND_DURATION_SECONDS,
        "Redis round trips in seconds by logical command (one script or pipeline each).",
    ),
    (
        LOCK_WAIT_SECONDS,
        "Time spent waiting for a chat's lease in seconds, by result (acquired, busy, error).",
    ),
];
