//! Starting a sandbox (just created, or stopped and started again) and waiting until its
//! published endpoint serves: the host port the engine chose, probes with backoff, and failing
//! fast when the container dies meanwhile.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use bollard::Docker;
use bollard::models::ContainerStateStatusEnum;
use sandboxd_domain::{AgentProfile, ContainerId, Endpoint, ReadyProbe};
use sandboxd_usecase::ports::RuntimeError;
use tokio::time::Instant;

use super::engine::{container_error, other};
use super::probe;

/// Probe retry backoff: the engine's floor here is ~2 ms from start to serving.
const PROBE_BACKOFF_START: Duration = Duration::from_millis(2);
/// First wait between probes of a claimed sandbox (its command starts within milliseconds).
const CLAIM_PROBE_BACKOFF_START: Duration = Duration::from_micros(500);
/// Longest wait between probes of a claimed sandbox: a claim answers within milliseconds.
const CLAIM_PROBE_BACKOFF_MAX: Duration = Duration::from_millis(4);
const PROBE_BACKOFF_MAX: Duration = Duration::from_millis(50);
/// Bound on one probe attempt, so a hung connection cannot eat the whole ready timeout.
const PROBE_ATTEMPT_MAX: Duration = Duration::from_secs(1);
/// Exit code of a process killed by SIGKILL (128 + 9).
const SIGKILL_EXIT: i64 = 137;
/// How often a wait for readiness asks whether the container died (then it fails fast).
const STATE_CHECK_EVERY: Duration = Duration::from_millis(250);

/// Starts the container and, when the profile publishes a port, waits until it serves there.
pub(super) async fn start_and_wait_ready(
    docker: &Docker,
    container_id: &ContainerId,
    profile: &AgentProfile,
    publish_host_ip: IpAddr,
) -> Result<Option<Endpoint>, RuntimeError> {
    docker
        .start_container(container_id.as_str(), None)
        .await
        .map_err(container_error)?;
    wait_ready_endpoint(docker, container_id, profile, publish_host_ip).await
}

/// The endpoint of a started container, once it serves there; `None` when the profile publishes
/// no port. The host port is read afresh: the engine picks a new one at every start.
pub(super) async fn wait_ready_endpoint(
    docker: &Docker,
    container_id: &ContainerId,
    profile: &AgentProfile,
    publish_host_ip: IpAddr,
) -> Result<Option<Endpoint>, RuntimeError> {
    let Some(container_port) = profile.port else {
        return Ok(None);
    };
    let host_port = published_port(docker, container_id, container_port).await?;
    let endpoint = Endpoint::new(publish_host_ip, host_port)
        .map_err(|e| other(format!("engine published an unusable port: {e}")))?;
    let probe_addr = SocketAddr::new(probe_ip(publish_host_ip), host_port);
    wait_ready(
        docker,
        container_id,
        profile.effective_probe(),
        probe_addr,
        profile.ready_timeout,
        (PROBE_BACKOFF_START, PROBE_BACKOFF_MAX),
    )
    .await?;
    Ok(Some(endpoint))
}

/// The ephemeral host port the engine chose for `container_port`.
pub(super) async fn published_port(
    docker: &Docker,
    container_id: &ContainerId,
    container_port: u16,
) -> Result<u16, RuntimeError> {
    let inspect = docker
        .inspect_container(container_id.as_str(), None)
        .await
        .map_err(container_error)?;
    let key = format!("{container_port}/tcp");
    inspect
        .network_settings
        .and_then(|settings| settings.ports)
        .and_then(|mut ports| ports.remove(&key).flatten())
        .and_then(|bindings| {
            bindings.into_iter().find_map(|binding| {
                binding
                    .host_port
                    .and_then(|port| port.parse::<u16>().ok())
                    .filter(|port| *port != 0)
            })
        })
        .ok_or_else(|| other(format!("engine reported no host port for {key}")))
}

/// Waits until a just-claimed sandbox serves at `endpoint` (published when it was pooled). The
/// command starts within milliseconds of the claim, so the probes start closer together than a
/// cold start's.
pub(super) async fn wait_ready_claimed(
    docker: &Docker,
    container_id: &ContainerId,
    profile: &AgentProfile,
    endpoint: Endpoint,
) -> Result<(), RuntimeError> {
    let probe_addr = SocketAddr::new(probe_ip(endpoint.ip), endpoint.port.get());
    wait_ready(
        docker,
        container_id,
        profile.effective_probe(),
        probe_addr,
        profile.ready_timeout,
        (CLAIM_PROBE_BACKOFF_START, CLAIM_PROBE_BACKOFF_MAX),
    )
    .await
}

/// Probes until ready, the container dies, or `ready_timeout` passes.
async fn wait_ready(
    docker: &Docker,
    container_id: &ContainerId,
    kind: ReadyProbe,
    addr: SocketAddr,
    ready_timeout: Duration,
    (backoff_start, backoff_max): (Duration, Duration),
) -> Result<(), RuntimeError> {
    let deadline = Instant::now() + ready_timeout;
    let mut backoff = backoff_start;
    let mut next_state_check = Instant::now() + STATE_CHECK_EVERY;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(RuntimeError::NotReady(ready_timeout));
        }
        if probe::probe_once(kind, addr, remaining.min(PROBE_ATTEMPT_MAX)).await {
            return Ok(());
        }
        if Instant::now() >= next_state_check {
            // A container that exited will never serve: fail now, not at the deadline.
            let state = docker
                .inspect_container(container_id.as_str(), None)
                .await
                .map_err(container_error)?
                .state;
            if let Some(state) = state
                && state.running == Some(false)
            {
                // Killed from outside without running out of memory, or being removed: another
                // lease holder's sweep (`docker rm -f` sends SIGKILL), not this sandbox failing.
                let swept = matches!(
                    state.status,
                    Some(ContainerStateStatusEnum::REMOVING | ContainerStateStatusEnum::DEAD)
                ) || (state.exit_code == Some(SIGKILL_EXIT)
                    && state.oom_killed != Some(true));
                if swept {
                    return Err(RuntimeError::Vanished);
                }
                let code = state.exit_code.unwrap_or_default();
                return Err(other(format!(
                    "container exited with code {code} before its endpoint was ready"
                )));
            }
            next_state_check = Instant::now() + STATE_CHECK_EVERY;
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        tokio::time::sleep(backoff.min(remaining)).await;
        backoff = (backoff * 2).min(backoff_max);
    }
}

/// The address to probe: the published IP, or loopback when publishing on every interface.
fn probe_ip(publish_host_ip: IpAddr) -> IpAddr {
    match publish_host_ip {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    }
}
