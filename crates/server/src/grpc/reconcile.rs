//! The ReconcileSandboxes handler (admin): one reconcile pass now, as a tracked task.

use std::sync::Arc;

use sandboxd_api::v1;
use sandboxd_usecase::ReconcileReport;
use tonic::{Response, Status};

use super::UseCases;
use super::convert;
use super::status::status_for;
use crate::drain::Drain;

const RPC: &str = "ReconcileSandboxes";

pub(super) async fn handle(
    use_cases: Arc<UseCases>,
    drain: &Drain,
) -> Result<Response<v1::ReconcileSandboxesResponse>, Status> {
    drain
        .run(RPC, async move {
            let report = use_cases
                .reconcile
                .execute()
                .await
                .map_err(status_for(RPC, None))?;
            Ok(Response::new(response(&report)))
        })
        .await
}

fn response(report: &ReconcileReport) -> v1::ReconcileSandboxesResponse {
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
    }
}
