//! The deployment's existing containers: listing them in the port's terms, and their state
//! changes (stop, pause, unpause, start), a refused change settled by the state the container
//! is in rather than by the engine's message.

use std::collections::HashMap;
use std::net::IpAddr;

use bollard::Docker;
use bollard::models::{ContainerStateStatusEnum, ContainerSummary, ContainerSummaryStateEnum};
use bollard::query_parameters::{ListContainersOptionsBuilder, StopContainerOptionsBuilder};
use sandboxd_domain::{AgentProfile, ContainerId, Endpoint};
use sandboxd_usecase::ports::{ContainerState, ManagedContainer, RuntimeError};

use super::engine::{container_error, engine_error, is_not_found, is_removal_in_progress};
use super::names::EVENT_STOP_AFTER_FAILED_START_FAILED;
use super::{DockerRuntime, pool, ready, remove_forced};

impl DockerRuntime {
    pub(super) async fn list_labelled(
        &self,
        label_filters: Vec<String>,
    ) -> Result<Vec<ManagedContainer>, RuntimeError> {
        self.list_filtered(HashMap::from([("label", label_filters)]))
            .await
    }

    /// The deployment's containers matching the engine's list `filters`.
    pub(super) async fn list_filtered(
        &self,
        filters: HashMap<&str, Vec<String>>,
    ) -> Result<Vec<ManagedContainer>, RuntimeError> {
        let docker = self.client().await?;
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let containers = docker
            .list_containers(Some(options))
            .await
            .map_err(engine_error)?;
        let records = self.pool.all_records().await;
        Ok(containers
            .into_iter()
            .filter_map(|summary| self.managed(summary, &records))
            .collect())
    }

    /// A listed container in the port's terms; `None` for an id the engine should never send,
    /// and for a pooled sandbox still waiting (the pool's, not a chat's). A claimed one has the
    /// labels of its claim record.
    fn managed(
        &self,
        summary: ContainerSummary,
        records: &HashMap<String, pool::Record>,
    ) -> Option<ManagedContainer> {
        let container_id = ContainerId::parse(summary.id.as_deref()?).ok()?;
        let raw = summary.labels.unwrap_or_default();
        let labels = match raw.get(&self.labels.pool_slot_key()) {
            Some(slot) => self.labels.decode(&records.get(slot)?.labels),
            None => self.labels.decode(&raw),
        };
        // The one published TCP port of a sandbox, on the address this deployment publishes on.
        let endpoint = summary
            .ports
            .unwrap_or_default()
            .into_iter()
            .find_map(|port| {
                let public = port.public_port.filter(|p| *p != 0)?;
                let ip = port.ip.as_deref()?.parse::<IpAddr>().ok()?;
                (ip == self.config.publish_host_ip)
                    .then(|| Endpoint::new(ip, public).ok())
                    .flatten()
            });
        Some(ManagedContainer {
            node_id: labels.node_id.clone(),
            container_id,
            state: summary_state(summary.state),
            labels,
            endpoint,
        })
    }

    pub(super) async fn stop_and_remove(
        &self,
        container_id: &ContainerId,
    ) -> Result<(), RuntimeError> {
        let docker = self.client().await?;
        match self.stop_within_grace(&docker, container_id).await {
            Ok(()) => {}
            Err(error) if is_not_found(&error) => return Ok(()),
            Err(error) => return Err(engine_error(error)),
        }
        remove_forced(&docker, container_id.as_str()).await
    }

    /// SIGTERM, then SIGKILL once the configured grace has passed. The engine answers 304 for a
    /// container that is not running, which bollard passes as success. A paused container needs
    /// no thaw first: the engine signals it and then thaws it itself (moby's `killWithSignal`),
    /// so its stop is graceful too (measured on 20.10: exit 143, in about 0.1 s).
    async fn stop_within_grace(
        &self,
        docker: &Docker,
        container_id: &ContainerId,
    ) -> Result<(), bollard::errors::Error> {
        let options = StopContainerOptionsBuilder::default()
            .t(self.stop_grace_secs())
            .build();
        docker
            .stop_container(container_id.as_str(), Some(options))
            .await
    }

    /// Freezes (`to` = Paused) or thaws (`to` = Running) the container; a refusal is settled by
    /// the state the container is in (see `settle_refusal`).
    pub(super) async fn freeze_or_thaw(
        &self,
        container_id: &ContainerId,
        to: ContainerState,
    ) -> Result<(), RuntimeError> {
        let docker = self.client().await?;
        let id = container_id.as_str();
        let (called, from) = if to == ContainerState::Paused {
            (docker.pause_container(id).await, ContainerState::Running)
        } else {
            (docker.unpause_container(id).await, ContainerState::Paused)
        };
        match called {
            Ok(()) => Ok(()),
            Err(refused) => settle_refusal(&docker, container_id, refused, from, to).await,
        }
    }

    pub(super) async fn stop_keeping(
        &self,
        container_id: &ContainerId,
    ) -> Result<(), RuntimeError> {
        let docker = self.client().await?;
        self.stop_within_grace(&docker, container_id)
            .await
            .map_err(container_error)
    }

    pub(super) async fn start_stopped(
        &self,
        container_id: &ContainerId,
        profile: &AgentProfile,
    ) -> Result<Option<Endpoint>, RuntimeError> {
        let docker = self.client().await?;
        // A running container is answered 304, which bollard passes as success: it then only
        // has its current endpoint read and probed.
        if let Err(refused) = docker.start_container(container_id.as_str(), None).await {
            settle_refusal(
                &docker,
                container_id,
                refused,
                ContainerState::Stopped,
                ContainerState::Running,
            )
            .await?;
        }
        let ready = match self.reclaim_after_start(container_id, profile).await {
            Ok(()) => {
                ready::wait_ready_endpoint(
                    &docker,
                    container_id,
                    profile,
                    self.config.publish_host_ip,
                )
                .await
            }
            Err(error) => Err(error),
        };
        if ready.is_err() {
            // A sandbox that does not serve is stopped again rather than left running unused;
            // its filesystem is kept, so a later start can try again.
            match self.stop_within_grace(&docker, container_id).await {
                Ok(()) => {}
                Err(error) if is_not_found(&error) || is_removal_in_progress(&error) => {}
                Err(error) => tracing::warn!(
                    name: EVENT_STOP_AFTER_FAILED_START_FAILED,
                    %container_id,
                    %error,
                    message = EVENT_STOP_AFTER_FAILED_START_FAILED,
                ),
            }
        }
        ready
    }
}

/// The container's state now; [`ContainerState::Gone`] when the engine does not know it.
pub(super) async fn container_state(
    docker: &Docker,
    container_id: &ContainerId,
) -> Result<ContainerState, RuntimeError> {
    match docker.inspect_container(container_id.as_str(), None).await {
        Ok(inspect) => Ok(inspect_state(inspect.state.and_then(|state| state.status))),
        Err(error) if is_not_found(&error) => Ok(ContainerState::Gone),
        Err(error) => Err(engine_error(error)),
    }
}

/// Decides a state change (`from` → `to`) that the engine refused, by the state the container
/// is in now, so no engine message has to be matched. Already in `to` is success: Docker refuses
/// to pause a paused container (409 "already paused") and to unpause a running one (500 "is not
/// paused"), and a concurrent caller that won is refused the same way. Still in `from` means the
/// change itself failed: the engine's error stands. Any other state (gone; stopped, for a pause
/// or unpause; paused, for a start) is one this call does not work on: `Vanished`, as the port
/// says.
async fn settle_refusal(
    docker: &Docker,
    container_id: &ContainerId,
    refused: bollard::errors::Error,
    from: ContainerState,
    to: ContainerState,
) -> Result<(), RuntimeError> {
    if is_not_found(&refused) {
        return Err(RuntimeError::Vanished);
    }
    // A transport failure says nothing about the container: asking again would not help.
    if !matches!(
        refused,
        bollard::errors::Error::DockerResponseServerError { .. }
    ) {
        return Err(engine_error(refused));
    }
    let now = container_state(docker, container_id).await?;
    if now == to {
        Ok(())
    } else if now == from {
        Err(engine_error(refused))
    } else {
        Err(RuntimeError::Vanished)
    }
}

/// The state of a listed container in the port's terms.
fn summary_state(state: Option<ContainerSummaryStateEnum>) -> ContainerState {
    match state {
        Some(ContainerSummaryStateEnum::RUNNING) => ContainerState::Running,
        Some(ContainerSummaryStateEnum::PAUSED) => ContainerState::Paused,
        Some(ContainerSummaryStateEnum::REMOVING | ContainerSummaryStateEnum::DEAD) => {
            ContainerState::Gone
        }
        // created, exited, restarting, or a state this client does not know.
        _ => ContainerState::Stopped,
    }
}

/// The state of an inspected container in the port's terms.
fn inspect_state(state: Option<ContainerStateStatusEnum>) -> ContainerState {
    match state {
        Some(ContainerStateStatusEnum::RUNNING) => ContainerState::Running,
        Some(ContainerStateStatusEnum::PAUSED) => ContainerState::Paused,
        Some(ContainerStateStatusEnum::REMOVING | ContainerStateStatusEnum::DEAD) => {
            ContainerState::Gone
        }
        _ => ContainerState::Stopped,
    }
}
