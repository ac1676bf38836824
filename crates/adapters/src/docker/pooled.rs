//! The pool operations of the Docker runtime: start a pooled sandbox, claim it for a chat,
//! discard it, release a claimed one's slot after its removal, and recover after a crash. The
//! order of steps and the crash table are in `docs/design.md` ("Warm pool").

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use bollard::Docker;
use bollard::models::{ContainerSummary, ContainerSummaryStateEnum};
use bollard::query_parameters::{ListContainersOptionsBuilder, RenameContainerOptionsBuilder};
use sandboxd_domain::{AgentId, AgentProfile, ContainerId, Endpoint};
use sandboxd_usecase::ports::{
    ClaimError, NewSandbox, PoolRecovery, PooledSandbox, RuntimeError, StartedSandbox,
};
use tokio::time::Instant;

use super::engine::{engine_error, other};
use super::names::{
    EVENT_POOL_CLEANUP_AFTER_FAILED_CLAIM_FAILED, EVENT_POOL_RELEASE_FAILED,
    EVENT_POOL_RELEASE_SKIPPED_BUSY, EVENT_POOL_RENAME_FAILED,
};
use super::pool::{
    Record, ReleaseError, claim_of, identity_of, identity_of_spec, is_own_slot, new_slot_name,
};
use super::{DockerRuntime, body, create_error, ready, remove_forced};
use crate::egress::EgressNetwork;
use crate::pool::claim::{ClaimChannel, ClaimSendError};
use sandboxd_pool_waiter::Claim;

/// How often a starting pooled sandbox is checked for its waiter reading the claim channel.
const WAITING_POLL: Duration = Duration::from_millis(2);
/// How long a claim waits for a waiter that is not reading at this instant (it reopens its FIFO
/// within microseconds of a probe) before the pooled sandbox counts as lost.
const CLAIM_SEND_WITHIN: Duration = Duration::from_millis(50);
/// Between two attempts to send a claim.
const SEND_RETRY_EVERY: Duration = Duration::from_millis(1);
/// How long a release after a removal waits for another call working on the same slot.
const BUSY_WAIT: Duration = Duration::from_secs(10);
/// How long after a claim its container is renamed.
const RENAME_AFTER: Duration = Duration::from_millis(500);

impl DockerRuntime {
    pub(super) async fn start_pooled_sandbox(
        &self,
        agent_id: &AgentId,
        profile: &AgentProfile,
    ) -> Result<PooledSandbox, RuntimeError> {
        let waiter = self
            .pool
            .waiter()
            .ok_or_else(|| other("no pool waiter is configured (docker.pool_waiter)"))?
            .to_path_buf();
        let docker = self.client().await?;
        let slots = self.pool.slots().await.map_err(other)?;
        let slot = new_slot_name(&self.config.key_prefix, agent_id);
        let _busy = self
            .pool
            .mark_busy(&slot)
            .ok_or_else(|| other("slot name taken"))?;
        let slot_path = slots.create(&slot).await.map_err(other)?;
        let started = match self.pool.create_channel(&slot) {
            Ok(channel) => {
                self.start_waiting(
                    &docker, agent_id, profile, &slot, &slot_path, &waiter, &channel,
                )
                .await
            }
            Err(error) => Err(other(error)),
        };
        if started.is_err()
            && let Err(error) = self.pool.release(&slot).await
        {
            tracing::warn!(
                name: EVENT_POOL_RELEASE_FAILED,
                message = EVENT_POOL_RELEASE_FAILED,
                slot,
                %error,
            );
        }
        started
    }

    #[allow(clippy::too_many_arguments)] // the parts of one start, each made by the caller
    async fn start_waiting(
        &self,
        docker: &Docker,
        agent_id: &AgentId,
        profile: &AgentProfile,
        slot: &str,
        slot_path: &Path,
        waiter: &Path,
        channel: &ClaimChannel,
    ) -> Result<PooledSandbox, RuntimeError> {
        if let Some(user) = &profile.user {
            own_channel_by(channel, user)?;
        }
        let network = EgressNetwork::of(&self.config.key_prefix, profile);
        self.ensure_network(docker, &network).await?;
        let default_command = self.default_command(docker, profile).await?;
        let path = |p: &Path| {
            p.to_str()
                .map(str::to_owned)
                .ok_or_else(|| other(format!("{} is not UTF-8", p.display())))
        };
        let (slot_src, waiter_src, claim_src) =
            (path(slot_path)?, path(waiter)?, path(channel.dir())?);
        let host = body::HostSide {
            network: &network.name,
            publish_host_ip: self.config.publish_host_ip,
            stop_timeout_secs: self.stop_grace_secs(),
        };
        let request = body::pooled(
            profile,
            host,
            body::PooledMounts {
                slot: &slot_src,
                waiter: &waiter_src,
                claim_dir: &claim_src,
            },
            default_command,
            self.labels.for_pooled(agent_id, slot),
        );
        let name = format!("pool-{slot}");
        let (container_id, mut guard) = self
            .create_named(docker, &name, &network, request, &profile.image)
            .await?;
        docker
            .start_container(container_id.as_str(), None)
            .await
            .map_err(engine_error)?;
        wait_until_waiting(channel, profile.ready_timeout).await?;
        let endpoint = match profile.port {
            Some(port) => Some(
                Endpoint::new(
                    self.config.publish_host_ip,
                    ready::published_port(docker, &container_id, port).await?,
                )
                .map_err(other)?,
            ),
            None => None,
        };
        guard.disarm();
        Ok(PooledSandbox {
            container_id,
            agent_id: agent_id.clone(),
            slot: slot.to_owned(),
            endpoint,
        })
    }

    /// The command a pooled sandbox runs once claimed: the profile's, else the image's
    /// entrypoint and command (the engine drops the image's command once the request sets the
    /// waiter as entrypoint). Cached per image.
    async fn default_command(
        &self,
        docker: &Docker,
        profile: &AgentProfile,
    ) -> Result<Vec<String>, RuntimeError> {
        if let Some(command) = profile.command.clone().filter(|c| !c.is_empty()) {
            return Ok(command);
        }
        if let Some(known) = self
            .image_commands
            .lock()
            .ok()
            .and_then(|cache| cache.get(&profile.image).cloned())
        {
            return Ok(known);
        }
        let image = docker
            .inspect_image(&profile.image)
            .await
            .map_err(|error| create_error(error, &profile.image))?;
        let config = image.config.unwrap_or_default();
        let command: Vec<String> = config
            .entrypoint
            .unwrap_or_default()
            .into_iter()
            .chain(config.cmd.unwrap_or_default())
            .collect();
        if command.is_empty() {
            return Err(other(format!(
                "image {} has no command: a pooled profile needs one",
                profile.image
            )));
        }
        if let Ok(mut cache) = self.image_commands.lock() {
            cache.insert(profile.image.clone(), command.clone());
        }
        Ok(command)
    }

    pub(super) async fn claim_pooled(
        &self,
        pooled: PooledSandbox,
        spec: &NewSandbox,
    ) -> Result<StartedSandbox, ClaimError> {
        let Some(busy) = self.pool.mark_busy(&pooled.slot) else {
            return Err(ClaimError::Lost(other(
                "the pooled sandbox is being worked on",
            )));
        };
        let claimed = self.claim_steps(&pooled, spec).await;
        match claimed {
            Ok(started) => {
                drop(busy);
                self.rename_in_background(&started.container_id, spec);
                Ok(started)
            }
            Err(error) => {
                if let Err(cleanup) = self.discard(&pooled).await {
                    tracing::warn!(
                        name: EVENT_POOL_CLEANUP_AFTER_FAILED_CLAIM_FAILED,
                        message = EVENT_POOL_CLEANUP_AFTER_FAILED_CLAIM_FAILED,
                        container_id = %pooled.container_id,
                        slot = pooled.slot,
                        error = %cleanup,
                    );
                }
                drop(busy);
                Err(error)
            }
        }
    }

    /// Check, record, attach, send, probe: each step's failure is `Lost` (the pooled sandbox was
    /// unusable; a cold create may still serve) or `Failed` (a cold create would fail the same).
    async fn claim_steps(
        &self,
        pooled: &PooledSandbox,
        spec: &NewSandbox,
    ) -> Result<StartedSandbox, ClaimError> {
        let lost = |error: String| ClaimError::Lost(other(error));
        let source = self
            .check(&spec.volume_host_path)
            .await
            .map_err(ClaimError::Failed)?;
        let docker = self.client().await.map_err(ClaimError::Lost)?;
        let record = Record {
            container_id: pooled.container_id.clone(),
            slot: pooled.slot.clone(),
            labels: self.labels.for_sandbox(spec),
        };
        self.pool
            .write_record(record)
            .await
            .map_err(|e| lost(format!("cannot write the claim record: {e}")))?;
        let slots = self.pool.slots().await.map_err(|e| lost(e.to_string()))?;
        slots
            .attach(&pooled.slot, &source)
            .await
            .map_err(|e| lost(e.to_string()))?;
        let channel = self
            .pool
            .channel(&pooled.slot)
            .map_err(|e| lost(e.to_string()))?;
        send_when_waiting(
            &channel,
            &claim_of(identity_of_spec(spec)),
            CLAIM_SEND_WITHIN,
        )
        .await
        .map_err(|e| lost(e.to_string()))?;
        if let Some(endpoint) = pooled.endpoint {
            ready::wait_ready_claimed(&docker, &pooled.container_id, &spec.profile, endpoint)
                .await
                .map_err(ClaimError::Failed)?;
        }
        Ok(StartedSandbox {
            container_id: pooled.container_id.clone(),
            endpoint: pooled.endpoint,
        })
    }

    /// Names the claimed container as a cold one is named (`sandbox-{session_id}`), off the
    /// claim's path and a moment later (a burst of claims is not slowed by engine calls nothing
    /// waits for): operators and logs see the same names; nothing depends on it.
    fn rename_in_background(&self, container_id: &ContainerId, spec: &NewSandbox) {
        let Some(docker) = self.client.get().cloned() else {
            return;
        };
        let container_id = container_id.clone();
        let name = format!("sandbox-{}", spec.session_id);
        tokio::spawn(async move {
            tokio::time::sleep(RENAME_AFTER).await;
            let options = RenameContainerOptionsBuilder::default().name(&name).build();
            if let Err(error) = docker
                .rename_container(container_id.as_str(), options)
                .await
            {
                tracing::debug!(
                    name: EVENT_POOL_RENAME_FAILED,
                    message = EVENT_POOL_RENAME_FAILED,
                    %container_id,
                    %error,
                );
            }
        });
    }

    /// Removes a pooled sandbox (waiting, or one whose claim failed) at once, then its slot.
    pub(super) async fn discard(&self, pooled: &PooledSandbox) -> Result<(), RuntimeError> {
        let docker = self.client().await?;
        remove_forced(&docker, pooled.container_id.as_str()).await?;
        self.pool.release(&pooled.slot).await.map_err(release_error)
    }

    /// After a claimed container was removed: releases its slot, if it had one. A release that
    /// fails is logged and left to the next recovery (the container is gone either way).
    pub(super) async fn release_after_removal(&self, container_id: &ContainerId) {
        let Some(record) = self.pool.record_of(container_id).await else {
            return;
        };
        // Another call of this process may be settling the slot (a recovery judging it): wait for
        // it rather than leave the slot mounted until the next recovery.
        let deadline = Instant::now() + BUSY_WAIT;
        let _busy = loop {
            match self.pool.mark_busy(&record.slot) {
                Some(busy) => break busy,
                None if Instant::now() < deadline => tokio::time::sleep(WAITING_POLL).await,
                None => {
                    tracing::warn!(
                        name: EVENT_POOL_RELEASE_SKIPPED_BUSY,
                        message = EVENT_POOL_RELEASE_SKIPPED_BUSY,
                        %container_id,
                        slot = record.slot,
                    );
                    return;
                }
            }
        };
        // Released meanwhile by whoever held it.
        if self.pool.record_of(container_id).await.is_none() {
            return;
        }
        if let Err(error) = self.pool.release(&record.slot).await {
            tracing::warn!(
                name: EVENT_POOL_RELEASE_FAILED,
                message = EVENT_POOL_RELEASE_FAILED,
                %container_id,
                slot = record.slot,
                %error,
            );
        }
    }

    /// Sends a claimed sandbox its claim again after a start (its waiter runs again: a stopped
    /// container restarts from its entrypoint). Not a claimed one: nothing to do.
    pub(super) async fn reclaim_after_start(
        &self,
        container_id: &ContainerId,
        profile: &AgentProfile,
    ) -> Result<(), RuntimeError> {
        let Some(record) = self.pool.record_of(container_id).await else {
            return Ok(());
        };
        let identity = identity_of(&self.labels.decode(&record.labels))
            .ok_or_else(|| other("the claim record lacks the chat's identity"))?;
        let channel = self.pool.channel(&record.slot).map_err(other)?;
        // The waiter starts again with the container: its claim goes as soon as it reads.
        match send_when_waiting(&channel, &claim_of(identity), profile.ready_timeout).await {
            Ok(()) => Ok(()),
            Err(ClaimSendError::NotWaiting(_)) => {
                Err(RuntimeError::NotReady(profile.ready_timeout))
            }
            Err(error) => Err(other(error)),
        }
    }

    /// Settles this deployment's slots on this host (the table in `docs/design.md`).
    pub(super) async fn recover(&self) -> Result<PoolRecovery, RuntimeError> {
        let docker = self.client().await?;
        let mut report = PoolRecovery::default();
        // In this order: a start of this process marks its slot busy before it creates it, so a
        // slot on disk whose container is not listed is either busy in this snapshot (a start in
        // flight, left alone) or left by a previous process (released now).
        let busy_before = self.pool.busy_snapshot();
        let on_disk = self.pool.known_slots().await;
        let containers = self.list_pool_containers(&docker).await?;
        let records = self.pool.all_records().await;
        let slots = self.pool.slots_unprepared().map_err(other)?;
        let mut seen = std::collections::HashSet::new();
        for (slot, summary, container_id) in containers {
            seen.insert(slot.clone());
            let Some(_busy) = self.pool.mark_busy(&slot) else {
                continue;
            };
            let running = summary.state == Some(ContainerSummaryStateEnum::RUNNING);
            // Being removed (a removal a killed process asked for goes on in the engine).
            let removing = matches!(
                summary.state,
                Some(ContainerSummaryStateEnum::REMOVING | ContainerSummaryStateEnum::DEAD)
            );
            let waiting = running
                && self
                    .pool
                    .channel(&slot)
                    .ok()
                    .and_then(|channel| channel.is_waiting().ok())
                    .unwrap_or(false);
            let attached = slots.is_attached(&slot).await.unwrap_or(false);
            let keep = !removing
                && match (records.contains_key(&slot), attached, waiting) {
                    // Waiting for a claim: back into the pool.
                    (false, false, true) => {
                        let Some(agent_id) = self
                            .labels
                            .decode(&summary.labels.clone().unwrap_or_default())
                            .agent_id
                        else {
                            continue;
                        };
                        report.waiting.push(PooledSandbox {
                            container_id: container_id.clone(),
                            agent_id,
                            slot: slot.clone(),
                            endpoint: self.endpoint_of(&summary),
                        });
                        true
                    }
                    // Claimed: a chat's sandbox, for reconcile to judge through its record.
                    (true, true, false) => true,
                    // A claim or a start cut short, or a waiter that died.
                    _ => false,
                };
            if !keep {
                let pooled = PooledSandbox {
                    container_id,
                    agent_id: AgentId::parse("unknown").map_err(other)?,
                    slot: slot.clone(),
                    endpoint: None,
                };
                match self.discard(&pooled).await {
                    Ok(()) => report.released += 1,
                    Err(_) => report.unsettled += 1,
                }
            }
        }
        for slot in on_disk {
            if seen.contains(&slot)
                || busy_before.contains(&slot)
                || !is_own_slot(&self.config.key_prefix, &slot)
            {
                continue;
            }
            let Some(_busy) = self.pool.mark_busy(&slot) else {
                continue;
            };
            match self.pool.release(&slot).await {
                Ok(()) => report.released += 1,
                Err(_) => report.unsettled += 1,
            }
        }
        Ok(report)
    }

    /// This deployment's pooled containers on the engine (waiting or claimed, any state), with
    /// their slot.
    async fn list_pool_containers(
        &self,
        docker: &Docker,
    ) -> Result<Vec<(String, ContainerSummary, ContainerId)>, RuntimeError> {
        let slot_key = self.labels.pool_slot_key();
        let filters = HashMap::from([(
            "label",
            vec![self.labels.managed_filter(), slot_key.clone()],
        )]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let listed = docker
            .list_containers(Some(options))
            .await
            .map_err(engine_error)?;
        Ok(listed
            .into_iter()
            .filter_map(|summary| {
                let slot = summary.labels.as_ref()?.get(&slot_key)?.clone();
                let id = ContainerId::parse(summary.id.as_deref()?).ok()?;
                is_own_slot(&self.config.key_prefix, &slot).then_some((slot, summary, id))
            })
            .collect())
    }

    fn endpoint_of(&self, summary: &ContainerSummary) -> Option<Endpoint> {
        summary.ports.as_ref()?.iter().find_map(|port| {
            let public = port.public_port.filter(|p| *p != 0)?;
            let ip = port.ip.as_deref()?.parse::<std::net::IpAddr>().ok()?;
            (ip == self.config.publish_host_ip)
                .then(|| Endpoint::new(ip, public).ok())
                .flatten()
        })
    }
}

/// Waits until the waiter reads its channel (it opens the FIFO at its first instruction), up to
/// `timeout`.
async fn wait_until_waiting(channel: &ClaimChannel, timeout: Duration) -> Result<(), RuntimeError> {
    let deadline = Instant::now() + timeout;
    loop {
        if channel.is_waiting().map_err(other)? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(RuntimeError::NotReady(timeout));
        }
        tokio::time::sleep(WAITING_POLL).await;
    }
}

/// Sends `claim` once the waiter reads its channel, trying again for up to `within` while nobody
/// reads: a waiter reopens its FIFO after a probe's empty open (`ClaimChannel::is_waiting`), and a
/// restarted one opens it a moment after its container starts.
async fn send_when_waiting(
    channel: &ClaimChannel,
    claim: &Claim,
    within: Duration,
) -> Result<(), ClaimSendError> {
    let deadline = Instant::now() + within;
    loop {
        match channel.send(claim).await {
            Err(ClaimSendError::NotWaiting(_)) if Instant::now() < deadline => {
                tokio::time::sleep(SEND_RETRY_EVERY).await;
            }
            sent => return sent,
        }
    }
}

/// Hands the claim FIFO to a numeric `user` (`uid` or `uid:gid`), so the waiter can read it
/// without capabilities; a user name cannot be resolved on the host and is refused.
fn own_channel_by(channel: &ClaimChannel, user: &str) -> Result<(), RuntimeError> {
    let mut parts = user.splitn(2, ':');
    let parse = |part: Option<&str>| part.map(str::parse::<u32>).transpose();
    let (Ok(Some(uid)), Ok(gid)) = (parse(parts.next()), parse(parts.next())) else {
        return Err(other(format!(
            "a pooled profile's user must be numeric (uid or uid:gid), not {user:?}"
        )));
    };
    let fifo = channel.dir().join(crate::pool::claim::FIFO_NAME);
    std::os::unix::fs::chown(&fifo, Some(uid), gid).map_err(other)
}

fn release_error(error: ReleaseError) -> RuntimeError {
    other(error.to_string())
}
