//! The ReconcileSandboxes reply (admin): what one reconcile pass run now removed and adopted.

use sandboxd_api::v1;
use sandboxd_usecase::{NodeDirectory, ReconcileReport};

use super::convert;

/// The reply to a reconcile pass run now.
pub(super) fn response(
    report: &ReconcileReport,
    nodes: &NodeDirectory,
) -> v1::ReconcileSandboxesResponse {
    let sandbox = |session| convert::sandbox(session, nodes);
    v1::ReconcileSandboxesResponse {
        removed_container_ids: report
            .removed_containers
            .iter()
            .map(ToString::to_string)
            .collect(),
        removed_sandboxes: report.removed_sessions.iter().map(sandbox).collect(),
        error_count: i32::try_from(report.error_count).unwrap_or(i32::MAX),
        adopted_sandboxes: report.adopted.iter().map(sandbox).collect(),
        repaired_sandboxes: report.repaired.iter().map(sandbox).collect(),
    }
}
