//! The ReconcileSandboxes reply (admin): what one reconcile pass run now removed and adopted.

use sandboxd_api::v1;
use sandboxd_usecase::ReconcileReport;

use super::convert;

/// The reply to a reconcile pass run now.
pub(super) fn response(report: &ReconcileReport) -> v1::ReconcileSandboxesResponse {
    v1::ReconcileSandboxesResponse {
        removed_container_ids: report
            .removed_containers
            .iter()
            .map(ToString::to_string)
            .collect(),
        removed_sandboxes: report
            .removed_sessions
            .iter()
            .map(convert::sandbox)
            .collect(),
        error_count: i32::try_from(report.error_count).unwrap_or(i32::MAX),
        adopted_sandboxes: report.adopted.iter().map(convert::sandbox).collect(),
        repaired_sandboxes: report.repaired.iter().map(convert::sandbox).collect(),
    }
}
