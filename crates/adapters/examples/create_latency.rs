//! Measures create-to-ready latency of `DockerRuntime::create` against the local engine, and, in
//! the same run, `docker run -d -p 127.0.0.1::8080` of the same image until its first HTTP answer
//! (plain, and with the runtime's hardening flags), so the runtime's overhead can be read off.
//!
//! `cargo run -p sandboxd-adapters --example create_latency [-- RUNS]` (default 20 runs each).
//! Everything it starts carries a unique label prefix and is removed at the end (containers, then
//! the egress network the runtime attached them to).

use std::collections::HashMap;
use std::error::Error;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::query_parameters::{
    ListContainersOptionsBuilder, ListNetworksOptionsBuilder, RemoveContainerOptionsBuilder,
};
use sandboxd_adapters::docker::{DockerConfig, DockerRuntime};
use sandboxd_domain::AgentProfile;
use sandboxd_domain::{AgentId, ChatId, SessionId, VolumePath};
use sandboxd_usecase::ports::{NewSandbox, SandboxRuntime};
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type BoxResult<T> = Result<T, Box<dyn Error>>;

#[tokio::main]
async fn main() -> BoxResult<()> {
    let runs: usize = std::env::args()
        .nth(1)
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(20);
    let image = std::env::var("SANDBOX_IMAGE").unwrap_or_else(|_| "sandboxd/busybox:local".into());
    let prefix = format!(
        "sbxbench-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    );
    let root = tempfile::Builder::new()
        .prefix("sandboxd-bench-")
        .tempdir()?;
    let docker = Docker::connect_with_defaults()?.negotiate_version().await?;

    let result = measure(runs, &image, &prefix, root.path()).await;
    remove_labelled(&docker, &prefix).await?;
    let (runtime_create, cli_plain, cli_hardened) = result?;
    println!("{runs} runs each, image {image}");
    let creates: Vec<Duration> = runtime_create.iter().map(|(create, _)| *create).collect();
    let deletes: Vec<Duration> = runtime_create.iter().map(|(_, delete)| *delete).collect();
    report(
        "DockerRuntime::create (create+start+inspect+HTTP ready)",
        &creates,
    );
    report("DockerRuntime::delete (forced removal)", &deletes);
    report(
        "docker run -d -p 127.0.0.1::8080 + first HTTP answer",
        &cli_plain,
    );
    report(
        "docker run (same hardening flags) + first HTTP answer",
        &cli_hardened,
    );
    Ok(())
}

/// The three series: runtime creates (with their deletes), plain CLI runs, hardened CLI runs.
async fn measure(
    runs: usize,
    image: &str,
    prefix: &str,
    root: &std::path::Path,
) -> BoxResult<(Vec<(Duration, Duration)>, Vec<Duration>, Vec<Duration>)> {
    let agent = AgentId::parse("web")?;
    let mut profile = AgentProfile::new(image);
    profile.port = Some(8080);
    let profile = std::sync::Arc::new(profile);
    let runtime = DockerRuntime::new(DockerConfig {
        key_prefix: prefix.to_owned(),
        allowed_volume_roots: vec![root.to_path_buf()],
        ..DockerConfig::default()
    });
    runtime.ping().await?; // connect and negotiate outside the timed loop

    // Interleaved, so load from anything else on the machine hits all three series alike.
    let mut runtime_series = Vec::with_capacity(runs);
    let mut plain = Vec::with_capacity(runs);
    let mut hardened = Vec::with_capacity(runs);
    let label = format!("{prefix}.managed-by=sandboxd");
    for run in 0..runs {
        let dir = root.join(format!("rt-{run}"));
        std::fs::create_dir(&dir)?;
        let now = OffsetDateTime::now_utc();
        let spec = NewSandbox {
            node_id: None,
            session_id: SessionId::new_random(),
            chat_id: ChatId::from_uuid(uuid::Uuid::new_v4()),
            agent_id: agent.clone(),
            profile: profile.clone(),
            volume_host_path: VolumePath::parse(dir.to_str().ok_or("non-UTF-8 temp dir")?)?,
            created_at: now,
            expires_at: now + Duration::from_secs(600),
        };
        let started = Instant::now();
        let session = runtime.create(&spec).await?;
        let create = started.elapsed();
        let started = Instant::now();
        runtime.force_remove(&session.container_id).await?;
        runtime_series.push((create, started.elapsed()));

        plain.push(cli_run(&["--label", &label, "-p", "127.0.0.1::8080", image]).await?);
        let mount = format!("type=bind,source={},target=/workspace", dir.display());
        hardened.push(
            cli_run(&[
                "--label",
                &label,
                "-p",
                "127.0.0.1::8080",
                "--init",
                "--cap-drop",
                "ALL",
                "--security-opt",
                "no-new-privileges",
                "--pids-limit",
                "256",
                "--memory",
                "512m",
                "--cpus",
                "1",
                "--mount",
                &mount,
                image,
            ])
            .await?,
        );
    }
    Ok((runtime_series, plain, hardened))
}

/// `docker run -d ARGS`, `docker port`, then HTTP polling: time until the first status line.
async fn cli_run(args: &[&str]) -> BoxResult<Duration> {
    let started = Instant::now();
    let run = Command::new("docker")
        .args(["run", "-d"])
        .args(args)
        .output()?;
    if !run.status.success() {
        return Err(format!(
            "docker run failed: {}",
            String::from_utf8_lossy(&run.stderr)
        )
        .into());
    }
    let id = String::from_utf8(run.stdout)?.trim().to_owned();
    let port = Command::new("docker")
        .args(["port", &id, "8080/tcp"])
        .output()?;
    let mapping = String::from_utf8(port.stdout)?;
    let addr: SocketAddr = mapping
        .lines()
        .next()
        .ok_or("docker port printed nothing")?
        .parse()?;
    let deadline = started + Duration::from_secs(10);
    let mut ready = None;
    while Instant::now() < deadline {
        if http_answers(addr).await {
            ready = Some(started.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // Removed outside the timing, so containers do not pile up across runs.
    Command::new("docker").args(["rm", "-f", &id]).output()?;
    ready.ok_or_else(|| "docker run: no HTTP answer within 10 s".into())
}

async fn http_answers(addr: SocketAddr) -> bool {
    let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
        return false;
    };
    if stream.write_all(b"GET / HTTP/1.0\r\n\r\n").await.is_err() {
        return false;
    }
    let mut head = [0_u8; 12];
    stream.read_exact(&mut head).await.is_ok() && head.starts_with(b"HTTP/1.")
}

fn report(what: &str, series: &[Duration]) {
    let mut millis: Vec<f64> = series.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    millis.sort_by(f64::total_cmp);
    let (Some(min), Some(max)) = (millis.first(), millis.last()) else {
        return;
    };
    let middle = millis.len() / 2;
    let median = if millis.len().is_multiple_of(2) {
        (millis[middle - 1] + millis[middle]) / 2.0
    } else {
        millis[middle]
    };
    println!("{what}: min {min:.1} ms, median {median:.1} ms, max {max:.1} ms");
}

async fn remove_labelled(docker: &Docker, prefix: &str) -> BoxResult<()> {
    let filters = HashMap::from([("label", vec![format!("{prefix}.managed-by=sandboxd")])]);
    let options = ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&filters)
        .build();
    for container in docker.list_containers(Some(options)).await? {
        if let Some(id) = container.id {
            let options = RemoveContainerOptionsBuilder::default().force(true).build();
            docker.remove_container(&id, Some(options)).await?;
        }
    }
    // The runtime's egress network (labelled like its containers), free once they are gone.
    let options = ListNetworksOptionsBuilder::default()
        .filters(&filters)
        .build();
    for network in docker.list_networks(Some(options)).await? {
        if let Some(id) = network.id {
            docker.remove_network(&id).await?;
        }
    }
    Ok(())
}
