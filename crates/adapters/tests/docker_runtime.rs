//! The Docker runtime against a real engine: hardening, labels, mounts and endpoint of a created
//! sandbox, the volume policy, idempotent stop/delete, pause and stop/start as the engine sees
//! them, readiness failures, an absent engine, and the egress network a sandbox joins.
//! Every test labels what it creates with its own prefix and removes it, also when it fails.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/docker_engine.rs"]
mod docker_engine;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use docker_engine::{
    TestSandboxes, engine, exec, http_get, new_sandbox, sandbox_image, sandbox_of, web_profile,
};
use sandboxd_adapters::docker::{DockerConfig, DockerRuntime, names};
use sandboxd_domain::{AgentProfile, ContainerId, ValidationError, VolumePath};
use sandboxd_usecase::ports::{ContainerState, PoolRuntime, RuntimeError, SandboxRuntime};

#[tokio::test]
async fn create_starts_a_hardened_labelled_sandbox_whose_endpoint_answers_http() {
    let world = TestSandboxes::new();
    let runtime = world.runtime();
    let volume = world.volume_dir("chat-a");
    std::fs::write(volume.join("index.html"), "hello from the host\n").unwrap();
    let spec = new_sandbox(&volume);

    let session = spec
        .clone()
        .into_session(runtime.create(&spec).await.unwrap());
    let endpoint = session.endpoint.expect("the web profile publishes a port");
    assert_eq!(endpoint.ip, IpAddr::V4(Ipv4Addr::LOCALHOST));

    let docker = engine().await;
    let inspect = docker
        .inspect_container(session.container_id.as_str(), None)
        .await
        .unwrap();
    assert_eq!(
        inspect.name.as_deref(),
        Some(format!("/sandbox-{}", spec.session_id).as_str())
    );
    let labels = inspect
        .config
        .as_ref()
        .and_then(|c| c.labels.clone())
        .unwrap();
    let label = |name: &str| labels.get(&format!("{}.{name}", world.prefix)).cloned();
    assert_eq!(label("managed-by").as_deref(), Some("sandboxd"));
    assert_eq!(label("chat_id"), Some(spec.chat_id.to_string()));
    assert_eq!(label("session_id"), Some(spec.session_id.to_string()));
    assert_eq!(label("agent_id").as_deref(), Some("web"));
    assert_eq!(
        label("volume_host_path"),
        Some(spec.volume_host_path.to_string())
    );
    assert!(label("created_at").is_some_and(|v| v.ends_with('Z')));
    assert!(label("expires_at").is_some_and(|v| v.ends_with('Z')));
    // The sandbox's own process knows which chat, session and agent it serves.
    let env = inspect
        .config
        .as_ref()
        .and_then(|c| c.env.clone())
        .unwrap_or_default();
    for wanted in [
        format!("SANDBOX_CHAT_ID={}", spec.chat_id),
        format!("SANDBOX_SESSION_ID={}", spec.session_id),
        "SANDBOX_AGENT_ID=web".to_owned(),
    ] {
        assert!(env.contains(&wanted), "{wanted} not in {env:?}");
    }

    let host = inspect.host_config.clone().unwrap();
    assert_eq!(host.privileged, Some(false));
    assert_eq!(host.cap_drop, Some(vec!["ALL".to_owned()]));
    assert!(
        host.security_opt
            .unwrap_or_default()
            .iter()
            .any(|o| o.starts_with("no-new-privileges"))
    );
    assert_eq!(host.pids_limit, Some(64));
    assert_eq!(host.memory, Some(64 << 20));
    assert_eq!(host.nano_cpus, Some(500_000_000));
    assert_eq!(host.init, Some(true));
    let mounts = inspect.mounts.clone().unwrap();
    assert_eq!(mounts.len(), 1, "{mounts:?}");
    assert_eq!(mounts[0].destination.as_deref(), Some("/workspace"));
    assert_eq!(
        mounts[0].source.as_deref(),
        volume.canonicalize().unwrap().to_str()
    );
    assert_eq!(mounts[0].rw, Some(true));
    let ports = inspect.network_settings.and_then(|n| n.ports).unwrap();
    let bindings = ports.get("8080/tcp").cloned().flatten().unwrap();
    assert_eq!(
        bindings.len(),
        1,
        "published once, on loopback only: {bindings:?}"
    );
    assert_eq!(bindings[0].host_ip.as_deref(), Some("127.0.0.1"));
    assert_eq!(
        bindings[0].host_port.as_deref(),
        Some(endpoint.port.to_string().as_str())
    );

    // The endpoint serves the host directory, so HTTP proves the mount from the host side...
    let (status, body) = http_get(SocketAddr::new(endpoint.ip, endpoint.port.get()), "/").await;
    assert_eq!((status, body.as_str()), (200, "hello from the host\n"));
    // ...and a write inside the container shows up on the host.
    exec(
        &docker,
        session.container_id.as_str(),
        &["sh", "-c", "echo from-sandbox > /workspace/out.txt"],
    )
    .await;
    assert_eq!(
        std::fs::read_to_string(volume.join("out.txt")).unwrap(),
        "from-sandbox\n"
    );

    let managed = runtime.list_managed().await.unwrap();
    assert_eq!(managed.len(), 1);
    assert_eq!(managed[0].session(), Some(session.clone()));

    runtime.force_remove(&session.container_id).await.unwrap();
    assert_eq!(world.count().await, 0);
    assert!(
        volume.join("out.txt").exists(),
        "removal must never touch the host volume"
    );
}

#[tokio::test]
async fn volume_refusals_create_no_container() {
    let world = TestSandboxes::new();
    let runtime = world.runtime();
    let outside = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(outside.path(), world.root.path().join("escape")).unwrap();
    std::fs::write(world.root.path().join("a-file"), "x").unwrap();
    let root = world.root.path().to_str().unwrap().to_owned();

    let denied = [
        outside.path().to_str().unwrap().to_owned(),
        format!("{root}/escape"),
        "/var/run/docker.sock".to_owned(),
        "/run/docker.sock".to_owned(),
        "/etc".to_owned(),
        "/".to_owned(),
        "/proc".to_owned(),
        "/var/lib/docker".to_owned(),
        root.clone(),
    ];
    for path in &denied {
        let spec = new_sandbox(std::path::Path::new(path));
        let created = runtime.create(&spec).await;
        assert!(
            matches!(created, Err(RuntimeError::VolumeDenied(_))),
            "{path}: {created:?}"
        );
        let validated = runtime
            .validate(&spec.profile, &spec.volume_host_path)
            .await;
        assert!(
            matches!(validated, Err(RuntimeError::VolumeDenied(_))),
            "{path}: {validated:?}"
        );
    }
    for path in [format!("{root}/missing"), format!("{root}/a-file")] {
        let spec = new_sandbox(std::path::Path::new(&path));
        let created = runtime.create(&spec).await;
        assert!(
            matches!(created, Err(RuntimeError::VolumeInvalid(_))),
            "{path}: {created:?}"
        );
    }
    assert!(
        !world.root.path().join("missing").exists(),
        "a missing volume is never created"
    );
    // Relative paths and `..` never reach the runtime: the domain refuses them syntactically.
    assert_eq!(
        VolumePath::parse("chats/a"),
        Err(ValidationError::NotAbsolute)
    );
    assert_eq!(
        VolumePath::parse(&format!("{root}/../etc")),
        Err(ValidationError::NotNormalised)
    );

    assert_eq!(world.count().await, 0);
}

#[tokio::test]
async fn a_missing_image_is_named_and_nothing_is_left() {
    let world = TestSandboxes::new();
    let runtime = world.runtime();
    let ghost = AgentProfile::new("sandboxd/does-not-exist:never");
    let created = runtime
        .create(&sandbox_of("ghost", ghost, &world.volume_dir("chat")))
        .await;
    assert!(
        matches!(created, Err(RuntimeError::ImageNotFound(ref image)) if image == "sandboxd/does-not-exist:never"),
        "{created:?}"
    );
    assert_eq!(world.count().await, 0);
}

#[tokio::test]
async fn paused_and_stopped_containers_are_listed_and_inspected_in_their_state() {
    let world = TestSandboxes::new();
    let runtime = world.runtime();
    let paused = runtime
        .create(&new_sandbox(&world.volume_dir("a")))
        .await
        .unwrap();
    let stopped = runtime
        .create(&new_sandbox(&world.volume_dir("b")))
        .await
        .unwrap();
    let docker = engine().await;
    docker
        .pause_container(paused.container_id.as_str())
        .await
        .unwrap();
    docker
        .stop_container(stopped.container_id.as_str(), None)
        .await
        .unwrap();

    assert_eq!(
        runtime.inspect(&paused.container_id).await.unwrap(),
        ContainerState::Paused
    );
    assert_eq!(
        runtime.inspect(&stopped.container_id).await.unwrap(),
        ContainerState::Stopped
    );
    let listed = runtime.list_managed().await.unwrap();
    let state_of = |id: &ContainerId| {
        listed
            .iter()
            .find(|c| &c.container_id == id)
            .map(|c| (c.state, c.labels.session_id.is_some()))
    };
    assert_eq!(
        state_of(&paused.container_id),
        Some((ContainerState::Paused, true))
    );
    assert_eq!(
        state_of(&stopped.container_id),
        Some((ContainerState::Stopped, true))
    );
    // A paused container is removed like any other.
    runtime.force_remove(&paused.container_id).await.unwrap();
    runtime
        .remove_gracefully(&stopped.container_id)
        .await
        .unwrap();
    assert_eq!(world.count().await, 0);
}

#[tokio::test]
async fn a_stopped_sandbox_keeps_its_own_filesystem_and_serves_again_on_its_new_endpoint() {
    let world = TestSandboxes::new();
    let runtime = world.runtime();
    let volume = world.volume_dir("chat");
    std::fs::write(volume.join("index.html"), "hello again\n").unwrap();
    let spec = new_sandbox(&volume);
    let id = runtime.create(&spec).await.unwrap().container_id;
    let docker = engine().await;
    // The container's own filesystem, not the volume: what a stop must keep and a removal loses.
    exec(&docker, id.as_str(), &["sh", "-c", "echo kept > /kept.txt"]).await;

    runtime.stop(&id).await.unwrap();
    let state = docker
        .inspect_container(id.as_str(), None)
        .await
        .unwrap()
        .state
        .unwrap();
    assert_eq!(state.running, Some(false));
    let endpoint = runtime
        .start(&id, &spec.profile)
        .await
        .unwrap()
        .expect("the web profile publishes a port");

    let (status, body) = http_get(SocketAddr::new(endpoint.ip, endpoint.port.get()), "/").await;
    assert_eq!((status, body.as_str()), (200, "hello again\n"));
    assert_eq!(
        exec(&docker, id.as_str(), &["cat", "/kept.txt"]).await,
        "kept\n"
    );
    runtime.force_remove(&id).await.unwrap();
    assert_eq!(world.count().await, 0);
}

#[tokio::test]
async fn pause_is_the_engines_freeze_and_a_paused_sandbox_stops_gracefully() {
    let world = TestSandboxes::new();
    let config = DockerConfig {
        // A long grace, so a stop that had to kill the frozen process would show in the time.
        stop_grace: Duration::from_secs(30),
        engine_timeout: Duration::from_secs(60),
        ..world.config()
    };
    let runtime = DockerRuntime::new(config);
    let id = runtime
        .create(&new_sandbox(&world.volume_dir("chat")))
        .await
        .unwrap()
        .container_id;
    let docker = engine().await;

    runtime.pause(&id).await.unwrap();
    let state = docker
        .inspect_container(id.as_str(), None)
        .await
        .unwrap()
        .state
        .unwrap();
    assert_eq!((state.paused, state.running), (Some(true), Some(true)));

    let started = Instant::now();
    runtime.stop(&id).await.unwrap();
    let took = started.elapsed();
    let state = docker
        .inspect_container(id.as_str(), None)
        .await
        .unwrap()
        .state
        .unwrap();
    // 143 = 128 + SIGTERM: the engine thawed the process and it exited on the signal, unkilled.
    assert_eq!(
        (state.paused, state.running, state.exit_code),
        (Some(false), Some(false), Some(143))
    );
    assert!(took < Duration::from_secs(10), "stop took {took:?}");
    runtime.force_remove(&id).await.unwrap();
}

#[tokio::test]
async fn a_start_that_never_serves_stops_the_sandbox_again_and_reports_not_ready() {
    let world = TestSandboxes::new();
    // Serves on its first boot only: the marker in its own filesystem survives the stop.
    let mut once = web_profile();
    once.command = Some(
        [
            "sh",
            "-c",
            "if [ -e /booted ]; then exec sleep 3600; fi; touch /booted; \
             exec httpd -f -p 8080 -h /workspace",
        ]
        .map(str::to_owned)
        .to_vec(),
    );
    let runtime = world.runtime();
    let spec = sandbox_of("once", once.clone(), &world.volume_dir("chat"));
    let id = runtime.create(&spec).await.unwrap().container_id;
    runtime.stop(&id).await.unwrap();

    once.ready_timeout = Duration::from_secs(1);
    let started = runtime.start(&id, &once).await;
    assert!(
        matches!(started, Err(RuntimeError::NotReady(t)) if t == Duration::from_secs(1)),
        "{started:?}"
    );
    assert_eq!(
        runtime.inspect(&id).await.unwrap(),
        ContainerState::Stopped,
        "stopped again, and kept"
    );
    runtime.force_remove(&id).await.unwrap();
    assert_eq!(world.count().await, 0);
}

#[tokio::test]
async fn a_sandbox_that_never_serves_is_removed_and_reported_not_ready() {
    let world = TestSandboxes::new();
    let mute = mute_profile(Duration::from_secs(1));
    let runtime = world.runtime();

    let created = runtime
        .create(&sandbox_of("mute", mute, &world.volume_dir("chat")))
        .await;
    // NotReady carries the profile's bound: the create gave up at the timeout, it did not hang.
    assert!(
        matches!(created, Err(RuntimeError::NotReady(t)) if t == Duration::from_secs(1)),
        "{created:?}"
    );
    assert_eq!(
        world.count().await,
        0,
        "the unready container must be removed"
    );
}

/// A sandbox that publishes 8080 but never serves on it: its create waits for readiness until
/// `ready_timeout`.
fn mute_profile(ready_timeout: Duration) -> AgentProfile {
    let mut mute = AgentProfile::new(sandbox_image());
    mute.port = Some(8080);
    mute.command = Some(vec!["sleep".to_owned(), "3600".to_owned()]);
    mute.ready_timeout = ready_timeout;
    mute
}

#[tokio::test]
async fn an_abandoned_create_leaves_no_container_behind() {
    let world = TestSandboxes::new();
    let mute = mute_profile(Duration::from_secs(30));
    let runtime = world.runtime();

    // The caller gives up (a cancelled RPC drops the future) while create waits for readiness.
    let spec = sandbox_of("mute", mute, &world.volume_dir("chat"));
    let abandoned = tokio::time::timeout(Duration::from_secs(2), runtime.create(&spec)).await;
    assert!(
        abandoned.is_err(),
        "create must still have been waiting: {abandoned:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while world.count().await > 0 {
        assert!(
            Instant::now() < deadline,
            "the abandoned sandbox was not removed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_sandbox_removed_by_someone_else_while_starting_is_reported_vanished() {
    // Another lease holder's sweep removes the container this create is waiting on.
    let world = TestSandboxes::new();
    let mute = mute_profile(Duration::from_secs(30));
    let runtime = world.runtime();
    let spec = sandbox_of("mute", mute, &world.volume_dir("chat"));
    let sweeper = async {
        let deadline = Instant::now() + Duration::from_secs(10);
        let container = loop {
            // Running, so the create is waiting for readiness when the sweep hits.
            if let Some(found) = runtime
                .list_chat(&spec.chat_id)
                .await
                .unwrap()
                .into_iter()
                .find(|c| c.state == ContainerState::Running)
            {
                break found;
            }
            assert!(Instant::now() < deadline, "the create made no container");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        runtime.force_remove(&container.container_id).await.unwrap();
    };
    let (created, ()) = tokio::join!(runtime.create(&spec), sweeper);
    assert!(
        matches!(created, Err(RuntimeError::Vanished)),
        "{created:?}"
    );
    assert_eq!(world.count().await, 0);
}

#[tokio::test]
async fn a_sandbox_whose_process_exits_fails_fast_and_is_removed() {
    let world = TestSandboxes::new();
    let mut crashing = AgentProfile::new(sandbox_image());
    crashing.port = Some(8080);
    crashing.command = Some(vec!["false".to_owned()]);
    // Far longer than the test may take: failing fast must not mean waiting out the timeout.
    crashing.ready_timeout = Duration::from_secs(120);
    let runtime = world.runtime();

    let started = Instant::now();
    let created = runtime
        .create(&sandbox_of("crashing", crashing, &world.volume_dir("chat")))
        .await;
    assert!(
        matches!(created, Err(RuntimeError::Other(_))),
        "{created:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(world.count().await, 0);
}

#[tokio::test]
async fn stop_of_a_running_sandbox_returns_well_under_the_grace() {
    let world = TestSandboxes::new();
    let config = DockerConfig {
        // A long grace so the bound below separates "SIGTERM delivered" from "grace waited out"
        // by a wide margin even on a loaded machine.
        stop_grace: Duration::from_secs(30),
        engine_timeout: Duration::from_secs(60),
        ..world.config()
    };
    let runtime = DockerRuntime::new(config);
    let session = runtime
        .create(&new_sandbox(&world.volume_dir("chat")))
        .await
        .unwrap();

    let started = Instant::now();
    runtime
        .remove_gracefully(&session.container_id)
        .await
        .unwrap();
    let took = started.elapsed();
    // The init forwards SIGTERM to httpd, which exits at once; without it this takes the full 30 s.
    assert!(took < Duration::from_secs(10), "stop took {took:?}");
    assert_eq!(world.count().await, 0);
}

#[tokio::test]
async fn read_only_profiles_get_a_writable_tmp_and_their_capabilities() {
    let world = TestSandboxes::new();
    let mut locked = web_profile();
    locked.read_only_rootfs = true;
    locked.cap_add = vec!["CAP_NET_BIND_SERVICE".to_owned()];
    let runtime = world.runtime();
    let session = runtime
        .create(&sandbox_of("locked", locked, &world.volume_dir("chat")))
        .await
        .unwrap();

    let docker = engine().await;
    let id = session.container_id.as_str();
    let host = docker
        .inspect_container(id, None)
        .await
        .unwrap()
        .host_config
        .unwrap();
    assert_eq!(host.readonly_rootfs, Some(true));
    assert_eq!(host.cap_add, Some(vec!["NET_BIND_SERVICE".to_owned()]));
    assert!(host.tmpfs.unwrap_or_default().contains_key("/tmp"));
    let out = exec(
        &docker,
        id,
        &["sh", "-c", "touch /x 2>&1; touch /tmp/x && echo tmp-ok"],
    )
    .await;
    assert!(out.contains("Read-only file system"), "{out}");
    assert!(out.contains("tmp-ok"), "{out}");
    runtime.force_remove(&session.container_id).await.unwrap();
}

#[tokio::test]
async fn an_unreachable_engine_is_unavailable_quickly() {
    let world = TestSandboxes::new();
    let volume = world.volume_dir("chat");
    // A path with no socket, and a socket file nobody serves (connection refused).
    let gone = world.root.path().join("gone.sock");
    let stale = world.root.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    for socket in [gone, stale] {
        let config = DockerConfig {
            docker_host: Some(format!("unix://{}", socket.display())),
            ..world.config()
        };
        let runtime = DockerRuntime::new(config);
        let started = Instant::now();
        let created = runtime.create(&new_sandbox(&volume)).await;
        assert!(
            matches!(created, Err(RuntimeError::Unavailable(_))),
            "{created:?}"
        );
        assert!(matches!(
            runtime.ping().await,
            Err(RuntimeError::Unavailable(_))
        ));
        let id = ContainerId::parse("whatever").unwrap();
        assert!(matches!(
            runtime.remove_gracefully(&id).await,
            Err(RuntimeError::Unavailable(_))
        ));
        assert!(matches!(
            runtime.force_remove(&id).await,
            Err(RuntimeError::Unavailable(_))
        ));
        assert!(matches!(
            runtime.list_managed().await,
            Err(RuntimeError::Unavailable(_))
        ));
        for changed in [
            runtime.pause(&id).await,
            runtime.unpause(&id).await,
            runtime.stop(&id).await,
            runtime.start(&id, &web_profile()).await.map(drop),
        ] {
            assert!(
                matches!(changed, Err(RuntimeError::Unavailable(_))),
                "{changed:?}"
            );
        }
        // Well under engine_timeout (30 s): a refused connection is not retried until it expires.
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "took {:?}",
            started.elapsed()
        );
    }
}

#[test]
fn runtime_calls_are_timed_by_operation_and_result() {
    use metrics_util::debugging::DebuggingRecorder;
    let world = TestSandboxes::new();
    let runtime = world.runtime();
    let volume = world.volume_dir("chat");
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    // A local recorder is per thread: drive the calls on a current-thread runtime inside it.
    metrics::with_local_recorder(&recorder, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let session = runtime.create(&new_sandbox(&volume)).await.unwrap();
            let id = &session.container_id;
            runtime.pause(id).await.unwrap();
            runtime.unpause(id).await.unwrap();
            runtime.stop(id).await.unwrap();
            runtime.start(id, &web_profile()).await.unwrap();
            runtime.remove_gracefully(id).await.unwrap();
            // Gone now: timed as a failed pause.
            assert!(runtime.pause(id).await.is_err());
            runtime.force_remove(&session.container_id).await.unwrap();
            // Outside the allowed roots: refused, and timed as a failed create.
            assert!(
                runtime
                    .create(&new_sandbox(std::path::Path::new("/")))
                    .await
                    .is_err()
            );
        });
    });
    let mut seen: Vec<(String, String)> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| key.key().name() == names::RUNTIME_DURATION_SECONDS)
        .map(|(key, ..)| {
            let label = |name: &str| {
                key.key()
                    .labels()
                    .find(|l| l.key() == name)
                    .map(|l| l.value().to_owned())
                    .unwrap()
            };
            (label(names::LABEL_OPERATION), label(names::LABEL_RESULT))
        })
        .collect();
    seen.sort();
    let expected = [
        ("create", "error"),
        ("create", "ok"),
        ("delete", "ok"),
        ("pause", "error"),
        ("pause", "ok"),
        ("start", "ok"),
        ("stop", "ok"),
        ("stop_keep", "ok"),
        ("unpause", "ok"),
    ];
    assert_eq!(seen, expected.map(|(o, r)| (o.to_owned(), r.to_owned())));
}

#[tokio::test]
async fn sandboxes_join_their_egress_network_without_inter_container_traffic() {
    let world = TestSandboxes::new();
    let runtime = world.runtime();
    let mut none = web_profile();
    none.egress = sandboxd_domain::Egress::None;
    let docker = engine().await;
    let mut networks = Vec::new();
    for (name, profile) in [("a", web_profile()), ("b", web_profile()), ("c", none)] {
        let spec = sandbox_of("web", profile, &world.volume_dir(name));
        let started = runtime.create(&spec).await.unwrap();
        let inspect = docker
            .inspect_container(started.container_id.as_str(), None)
            .await
            .unwrap();
        let attached = inspect.network_settings.unwrap().networks.unwrap();
        assert_eq!(attached.len(), 1, "{attached:?}");
        networks.push(attached.into_keys().next().unwrap());
        // Published ports work on the egress network as on the default bridge.
        let endpoint = started.endpoint.unwrap();
        let (status, _) = http_get(SocketAddr::new(endpoint.ip, endpoint.port.get()), "/").await;
        assert!(status > 0);
    }
    let public = format!("{}-egress-public", world.prefix);
    assert_eq!(
        networks,
        [
            public.clone(),
            public.clone(),
            format!("{}-egress-none", world.prefix)
        ]
    );
    let inspected = docker.inspect_network(&public, None).await.unwrap();
    let options = inspected.options.unwrap();
    assert_eq!(
        options["com.docker.network.bridge.enable_icc"], "false",
        "sandboxes must not reach each other"
    );
    let bridge = &options["com.docker.network.bridge.name"];
    assert!(
        bridge.starts_with(&sandboxd_adapters::egress::bridge_prefix(&world.prefix))
            && bridge.len() <= 15,
        "{bridge}"
    );
    let labels = inspected.labels.unwrap();
    assert_eq!(labels[&format!("{}.managed-by", world.prefix)], "sandboxd");
    assert_eq!(labels[&format!("{}.egress", world.prefix)], "public");
}

#[tokio::test]
async fn the_first_creates_of_a_deployment_arriving_together_share_one_network() {
    // A fresh prefix: its egress network does not exist yet, and twenty creates race to make it.
    // Four runtimes stand for four processes of the deployment. (The engine's refusal seen in a
    // loaded CI run, "networks have same bridge name" before the winner could be inspected, did
    // not reproduce here at will; this guards the outcome: every create succeeds.)
    let world = TestSandboxes::new();
    let runtimes: Vec<_> = (0..4).map(|_| Arc::new(world.runtime())).collect();
    let creates = (0..20).map(|i| {
        let runtime = Arc::clone(&runtimes[i % runtimes.len()]);
        let spec = sandbox_of(
            "web",
            web_profile(),
            &world.volume_dir(&format!("race-{i}")),
        );
        async move { runtime.create(&spec).await }
    });
    let outcomes = futures::future::join_all(creates).await;
    for outcome in &outcomes {
        assert!(outcome.is_ok(), "{outcome:?}");
    }
    assert_eq!(world.count().await, 20);
}

/// A claimed pooled sandbox that is stopped (hibernated) and started again runs its waiter
/// again: `start` sends the claim again, so it serves its chat's volume with its identity.
#[tokio::test]
async fn a_stopped_claimed_sandbox_gets_its_claim_again_when_started() {
    let world = TestSandboxes::new();
    let runtime = DockerRuntime::new(world.pooled_config());
    let volume = world.volume_dir("chat");
    std::fs::write(volume.join("index.html"), "pooled and restarted\n").unwrap();
    let spec = new_sandbox(&volume);
    let pooled = runtime
        .start_pooled(&spec.agent_id, &spec.profile)
        .await
        .unwrap();
    let claimed = runtime.claim(pooled, &spec).await.unwrap();
    runtime.stop(&claimed.container_id).await.unwrap();
    let endpoint = runtime
        .start(&claimed.container_id, &spec.profile)
        .await
        .unwrap()
        .expect("an endpoint");
    let addr = SocketAddr::new(endpoint.ip, endpoint.port.get());
    assert_eq!(
        http_get(addr, "/").await,
        (200, "pooled and restarted\n".to_owned())
    );
    let docker = engine().await;
    let environ = exec(
        &docker,
        claimed.container_id.as_str(),
        &["sh", "-c", "cat /proc/[0-9]*/environ | tr '\\0' '\\n'"],
    )
    .await;
    assert!(
        environ.contains(&format!("SANDBOX_CHAT_ID={}", spec.chat_id)),
        "{environ}"
    );
    runtime.force_remove(&claimed.container_id).await.unwrap();
    // Released with the removal: only the slots root is left mounted.
    let left = world.mounts_left();
    assert!(left.iter().all(|m| m.ends_with("pool/slots")), "{left:?}");
}

/// A pooled profile with a numeric user gets a claim FIFO that user can read; a user name (which
/// the host cannot resolve for the image) is refused before anything starts.
#[tokio::test]
async fn a_pooled_profile_runs_as_its_numeric_user_and_a_user_name_is_refused() {
    let world = TestSandboxes::new();
    let runtime = DockerRuntime::new(world.pooled_config());
    let volume = world.volume_dir("chat");
    std::fs::write(volume.join("index.html"), "as 1000\n").unwrap();
    let mut profile = web_profile();
    profile.user = Some("1000:1000".to_owned());
    let spec = sandbox_of("web", profile.clone(), &volume);
    let pooled = runtime
        .start_pooled(&spec.agent_id, &spec.profile)
        .await
        .unwrap();
    let claimed = runtime.claim(pooled, &spec).await.unwrap();
    let endpoint = claimed.endpoint.expect("an endpoint");
    let addr = SocketAddr::new(endpoint.ip, endpoint.port.get());
    assert_eq!(http_get(addr, "/").await, (200, "as 1000\n".to_owned()));
    let docker = engine().await;
    let ids = exec(
        &docker,
        claimed.container_id.as_str(),
        &["ps", "-o", "user,args"],
    )
    .await;
    assert!(
        ids.lines()
            .any(|line| line.contains("httpd") && line.trim_start().starts_with("1000")),
        "{ids}"
    );
    runtime.force_remove(&claimed.container_id).await.unwrap();

    profile.user = Some("nobody".to_owned());
    let refused = runtime.start_pooled(&spec.agent_id, &profile).await;
    assert!(
        matches!(refused, Err(RuntimeError::Other(_))),
        "{refused:?}"
    );
    assert_eq!(world.count().await, 0);
}
