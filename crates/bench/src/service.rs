//! The gRPC side: tonic clients of one sandboxd instance, the calls the bench times, and the
//! closed-loop throughput driver shared by the reuse figure and its gRPC floor.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use futures::future::BoxFuture;
use sandboxd_api::v1::sandbox_service_client::SandboxServiceClient;
use sandboxd_api::v1::{
    CreateSandboxRequest, CreateSandboxResponse, CreateSandboxResult, DeleteSandboxRequest,
    DeleteSandboxResult, GetSandboxRequest, PauseSandboxRequest, ResumeSandboxRequest, Sandbox,
    SandboxState, TouchSandboxRequest,
};
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

pub(crate) type Client = SandboxServiceClient<Channel>;
pub(crate) type Health = HealthClient<Channel>;

/// A new HTTP/2 connection to `endpoint` (one per simulated client in the throughput runs).
pub(crate) async fn connect(endpoint: &str) -> Result<Channel> {
    Channel::from_shared(endpoint.to_owned())?
        .connect()
        .await
        .with_context(|| format!("connecting to {endpoint}"))
}

/// Waits until the health service says SERVING (Redis and Docker both answered sandboxd).
pub(crate) async fn wait_serving(channel: &Channel, timeout: Duration) -> Result<()> {
    let mut health = HealthClient::new(channel.clone());
    let deadline = Instant::now() + timeout;
    loop {
        let status = health
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map(|response| response.into_inner().status);
        if matches!(status, Ok(s) if s == ServingStatus::Serving as i32) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("sandboxd not SERVING after {timeout:?} (last answer: {status:?})");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One health Check: a gRPC round trip that touches neither Redis nor Docker (the status is
/// published by a background loop), i.e. the transport's floor.
pub(crate) async fn health_check(health: &mut Health) -> Result<()> {
    health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await?;
    Ok(())
}

/// A CreateSandbox request for `chat_id` on the `default` profile.
pub(crate) fn create_request(chat_id: &str, volume: &Path) -> Result<CreateSandboxRequest> {
    Ok(CreateSandboxRequest {
        chat_id: chat_id.to_owned(),
        agent_id: "default".to_owned(),
        volume_host_path: volume
            .to_str()
            .ok_or_else(|| anyhow!("non-UTF-8 volume path"))?
            .to_owned(),
    })
}

/// CreateSandbox, checked to have the expected result.
pub(crate) async fn create(
    client: &mut Client,
    request: CreateSandboxRequest,
    expected: CreateSandboxResult,
) -> Result<Sandbox> {
    let response: CreateSandboxResponse = client.create_sandbox(request).await?.into_inner();
    if response.result != expected as i32 {
        bail!(
            "CreateSandbox returned {:?}, expected {expected:?}",
            CreateSandboxResult::try_from(response.result)
        );
    }
    response
        .sandbox
        .ok_or_else(|| anyhow!("CreateSandbox returned no sandbox"))
}

pub(crate) async fn get(client: &mut Client, chat_id: &str) -> Result<Sandbox> {
    client
        .get_sandbox(GetSandboxRequest {
            chat_id: chat_id.to_owned(),
        })
        .await?
        .into_inner()
        .sandbox
        .ok_or_else(|| anyhow!("GetSandbox returned no sandbox"))
}

pub(crate) async fn delete(client: &mut Client, chat_id: &str) -> Result<()> {
    let response = client
        .delete_sandbox(DeleteSandboxRequest {
            chat_id: chat_id.to_owned(),
        })
        .await?
        .into_inner();
    if response.result != DeleteSandboxResult::Deleted as i32 {
        bail!(
            "DeleteSandbox returned {}, expected DELETED",
            response.result
        );
    }
    Ok(())
}

/// PauseSandbox, checked to leave the sandbox paused.
pub(crate) async fn pause(client: &mut Client, chat_id: &str) -> Result<()> {
    let sandbox = client
        .pause_sandbox(PauseSandboxRequest {
            chat_id: chat_id.to_owned(),
        })
        .await?
        .into_inner()
        .sandbox;
    expect_state("PauseSandbox", sandbox, SandboxState::Paused)
}

/// ResumeSandbox, checked to leave the sandbox running.
pub(crate) async fn resume(client: &mut Client, chat_id: &str) -> Result<()> {
    let sandbox = client
        .resume_sandbox(ResumeSandboxRequest {
            chat_id: chat_id.to_owned(),
        })
        .await?
        .into_inner()
        .sandbox;
    expect_state("ResumeSandbox", sandbox, SandboxState::Running)
}

/// TouchSandbox (refused unless the sandbox runs, so success means it was touched).
pub(crate) async fn touch(client: &mut Client, chat_id: &str) -> Result<()> {
    let sandbox = client
        .touch_sandbox(TouchSandboxRequest {
            chat_id: chat_id.to_owned(),
        })
        .await?
        .into_inner()
        .sandbox;
    expect_state("TouchSandbox", sandbox, SandboxState::Running)
}

fn expect_state(call: &str, sandbox: Option<Sandbox>, expected: SandboxState) -> Result<()> {
    let state = sandbox
        .ok_or_else(|| anyhow!("{call} returned no sandbox"))?
        .state;
    if state != expected as i32 {
        bail!(
            "{call} left the sandbox {:?}, expected {expected:?}",
            SandboxState::try_from(state)
        );
    }
    Ok(())
}

/// Closed-loop load: `clients` tasks, each on its own connection, each issuing `call` back to
/// back for `duration`. Returns completed calls per second and every call's latency.
pub(crate) async fn closed_loop<S: Send + 'static>(
    channels: &[Channel],
    duration: Duration,
    make: impl Fn(usize, Channel) -> S,
    call: for<'a> fn(&'a mut S) -> BoxFuture<'a, Result<()>>,
) -> Result<(f64, Vec<Duration>)> {
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let stop_at = started + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for (index, channel) in channels.iter().enumerate() {
        let mut state = make(index, channel.clone());
        let errors = Arc::clone(&errors);
        tasks.spawn(async move {
            let mut latencies = Vec::with_capacity(4096);
            while Instant::now() < stop_at {
                let t = Instant::now();
                match call(&mut state).await {
                    Ok(()) => latencies.push(t.elapsed()),
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            latencies
        });
    }
    let mut all = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        all.extend(joined?);
    }
    let elapsed = started.elapsed();
    let errors = errors.load(Ordering::Relaxed);
    if errors > 0 {
        bail!("{errors} calls failed during the throughput run");
    }
    #[allow(clippy::cast_precision_loss)]
    let rate = all.len() as f64 / elapsed.as_secs_f64();
    Ok((rate, all))
}
