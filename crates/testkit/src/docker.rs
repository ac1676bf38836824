//! The local Docker engine as the tests and the bench see it: one client, the sandbox image, and
//! containers listed and removed by label, also from a destructor.

use std::collections::HashMap;

use bollard::Docker;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::ContainerSummary;
use bollard::query_parameters::{ListContainersOptionsBuilder, RemoveContainerOptionsBuilder};
use futures::StreamExt;

use crate::Result;

/// The value of `{prefix}.managed-by` on every container sandboxd creates.
pub const MANAGED_BY: &str = "sandboxd";
/// Removals in flight during a sweep, so hundreds do not pile onto the engine at once.
const SWEEP_CONCURRENCY: usize = 8;

/// The local sandbox image (busybox httpd on 8080) that `scripts/build-sandbox-image` builds;
/// `SANDBOX_IMAGE` overrides it.
#[must_use]
pub fn sandbox_image() -> String {
    std::env::var("SANDBOX_IMAGE").unwrap_or_else(|_| "sandboxd/busybox:local".to_owned())
}

/// The label filter (`{prefix}.managed-by=sandboxd`) matching every container that a sandboxd
/// with this key prefix created.
#[must_use]
pub fn managed_filter(prefix: &str) -> String {
    format!("{prefix}.managed-by={MANAGED_BY}")
}

/// The local engine (`DOCKER_HOST` or the socket), version-negotiated: bollard speaks 1.53 by
/// default and this engine 1.41.
///
/// # Errors
/// When no engine answers.
pub async fn engine() -> Result<Docker> {
    Ok(Docker::connect_with_defaults()?.negotiate_version().await?)
}

/// Every container (running or not) carrying `filter` (`label` or `label=value`); every
/// container of the engine for an empty `filter`.
///
/// # Errors
/// When the engine does not answer.
pub async fn list_by_label(docker: &Docker, filter: &str) -> Result<Vec<ContainerSummary>> {
    let filters = HashMap::from([("label", vec![filter.to_owned()])]);
    let mut options = ListContainersOptionsBuilder::default().all(true);
    if !filter.is_empty() {
        options = options.filters(&filters);
    }
    Ok(docker.list_containers(Some(options.build())).await?)
}

/// Forced removal with its anonymous volumes; a container already gone counts as removed.
///
/// # Errors
/// When the engine refuses for another reason.
pub async fn remove_forced(docker: &Docker, id: &str) -> Result<()> {
    let options = RemoveContainerOptionsBuilder::default()
        .force(true)
        .v(true)
        .build();
    match docker.remove_container(id, Some(options)).await {
        Ok(())
        | Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(()),
        Err(error) => Err(error.into()),
    }
}

/// Removes every container carrying one of `filters`, then the networks carrying it and, for a
/// deployment's filter (`{prefix}.managed-by=sandboxd`), its packet-filter rules; returns how many
/// containers it removed. One pass: see [`sweep_settled`] after killing a sandboxd.
///
/// # Errors
/// The first listing or removal the engine or `iptables` refused.
pub async fn sweep(docker: &Docker, filters: &[String]) -> Result<usize> {
    Ok(sweep_pass(docker, filters).await?.0)
}

/// How long [`sweep_settled`] waits before it looks again.
const SETTLE: std::time::Duration = std::time::Duration::from_millis(300);
/// Passes [`sweep_settled`] makes at most.
const SETTLE_PASSES: usize = 5;

/// [`sweep`] again, [`SETTLE`] after the pass before, until a pass finds nothing; returns how many
/// containers it removed. The engine finishes a create (a container, or a deployment's egress
/// network) whose caller was killed mid-request, so one pass right after a kill can miss it, and
/// a network removal fails while such a late container is still attached.
///
/// # Errors
/// The last pass's failure, when no pass after it came back clean.
pub async fn sweep_settled(docker: &Docker, filters: &[String]) -> Result<usize> {
    let mut removed = 0;
    let mut failure = None;
    for pass in 0..SETTLE_PASSES {
        if pass > 0 {
            tokio::time::sleep(SETTLE).await;
        }
        match sweep_pass(docker, filters).await {
            Ok((containers, networks)) => {
                removed += containers;
                failure = None;
                if pass > 0 && containers + networks == 0 {
                    break;
                }
            }
            Err(error) => failure = Some(error),
        }
    }
    failure.map_or(Ok(removed), Err)
}

/// One sweep: (containers, networks) removed.
async fn sweep_pass(docker: &Docker, filters: &[String]) -> Result<(usize, usize)> {
    let containers = sweep_containers(docker, filters).await?;
    let mut networks = 0;
    for filter in filters {
        let removed = crate::egress::remove_networks(docker, filter).await;
        // The rules go even when a network stays (Docker 20.10 can keep a stale endpoint count
        // on a network no container is attached to, moby#42119): a stuck network must not
        // leave its packet filter behind too.
        if let Some(prefix) = filter.strip_suffix(&format!(".managed-by={MANAGED_BY}")) {
            crate::egress::remove_rules(prefix).await?;
        }
        networks += removed?;
    }
    Ok((containers, networks))
}

async fn sweep_containers(docker: &Docker, filters: &[String]) -> Result<usize> {
    let mut removed = 0;
    for filter in filters {
        let ids: Vec<String> = list_by_label(docker, filter)
            .await?
            .into_iter()
            .filter_map(|container| container.id)
            .collect();
        let results: Vec<Result<()>> = futures::stream::iter(ids.iter())
            .map(|id| remove_forced(docker, id))
            .buffer_unordered(SWEEP_CONCURRENCY)
            .collect()
            .await;
        for result in results {
            result?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Runs the future `make` returns on a thread of its own with a runtime of its own, and waits
/// for it: for synchronous callers (a destructor, a `Once`), whose runtime may be gone (a
/// panicking test) or must not be blocked. `None` when no runtime could be built.
pub fn block_on_own_thread<F, Fut, T>(make: F) -> Option<T>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T>,
    T: Send + 'static,
{
    let worker = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        Some(runtime.block_on(make()))
    });
    worker.join().ok().flatten()
}

/// [`sweep_settled`] from synchronous code (a destructor). Failures are printed, not raised.
pub fn sweep_blocking(filters: Vec<String>) {
    let swept = block_on_own_thread(move || async move {
        let outcome = match engine().await {
            Ok(docker) => sweep_settled(&docker, &filters).await,
            Err(error) => Err(error),
        };
        outcome.map_err(|error| format!("container cleanup of {filters:?} failed: {error}"))
    });
    match swept {
        Some(Ok(_)) => {}
        Some(Err(message)) => eprintln!("{message}"),
        None => eprintln!("container cleanup: no runtime"),
    }
}

/// Whether the engine still knows a container with this id (in any state).
///
/// # Errors
/// When the engine answers anything but the container or 404.
pub async fn container_exists(docker: &Docker, id: &str) -> Result<bool> {
    match docker.inspect_container(id, None).await {
        Ok(_) => Ok(true),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(false),
        Err(error) => Err(error.into()),
    }
}

/// The engine's status of a container (`running`, `paused`, `exited`, ...), `None` when the
/// engine does not know it.
///
/// # Errors
/// When the engine answers anything but the container or 404.
pub async fn container_status(docker: &Docker, id: &str) -> Result<Option<String>> {
    match docker.inspect_container(id, None).await {
        Ok(inspected) => Ok(Some(
            inspected
                .state
                .and_then(|state| state.status)
                .map(|status| status.to_string())
                .unwrap_or_default(),
        )),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(None),
        Err(error) => Err(error.into()),
    }
}

/// Runs `cmd` in the container and returns its combined output.
///
/// # Errors
/// When the engine refuses the exec.
pub async fn exec(docker: &Docker, container: &str, cmd: &[&str]) -> Result<String> {
    let exec = docker
        .create_exec(
            container,
            CreateExecOptions {
                cmd: Some(cmd.iter().map(|s| (*s).to_owned()).collect()),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                ..Default::default()
            },
        )
        .await?;
    let mut text = String::new();
    if let StartExecResults::Attached { mut output, .. } = docker.start_exec(&exec.id, None).await?
    {
        while let Some(Ok(chunk)) = output.next().await {
            text.push_str(&chunk.to_string());
        }
    }
    Ok(text)
}

/// Removes, on drop, every container matching its label filter (then the networks and rules of
/// that deployment, see [`sweep`]): a test's containers go when the
/// test ends, also when it fails or panics.
#[derive(Debug)]
pub struct LabelGuard {
    filter: String,
}

impl LabelGuard {
    /// Guards every container carrying `filter` (`label=value`).
    #[must_use]
    pub fn new(filter: String) -> Self {
        Self { filter }
    }

    /// The label filter it removes by.
    #[must_use]
    pub fn filter(&self) -> &str {
        &self.filter
    }
}

impl Drop for LabelGuard {
    fn drop(&mut self) {
        sweep_blocking(vec![self.filter.clone()]);
    }
}
