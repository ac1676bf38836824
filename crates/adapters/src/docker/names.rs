//! Every metric name and label value the Docker runtime emits, in one place.

/// Histogram of engine-side work per runtime call, in seconds.
pub const RUNTIME_DURATION_SECONDS: &str = "sandbox_runtime_duration_seconds";

/// Label: which runtime call (`create`, `stop`, `delete`).
pub const LABEL_OPERATION: &str = "operation";
/// Label: `ok` or `error`.
pub const LABEL_RESULT: &str = "result";

pub const OPERATION_CREATE: &str = "create";
pub const OPERATION_STOP: &str = "stop";
pub const OPERATION_DELETE: &str = "delete";

pub const RESULT_OK: &str = "ok";
pub const RESULT_ERROR: &str = "error";

/// Value of the `{prefix}.managed-by` label on every container this service starts.
pub const MANAGED_BY_VALUE: &str = "sandboxd";

/// HELP text of the histograms above, for the exporter's `describe_histogram` calls.
pub const DESCRIPTIONS: &[(&str, &str)] = &[(
    RUNTIME_DURATION_SECONDS,
    "Docker engine work per runtime call in seconds, by operation (create, stop, delete) and result.",
)];
