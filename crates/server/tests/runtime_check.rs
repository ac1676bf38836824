//! The start-time runtime check, in process over the fakes: a profile naming a runtime the
//! engine lacks stops the build with the profile and the runtime named; an engine that does not
//! answer at start defers the check (NOT_SERVING meanwhile), and the deferred check either lets
//! the server serve or stops it the same way.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/in_process.rs"]
mod in_process;

use std::time::{Duration, Instant};

use in_process::{Served, quiet_config, serve};
use metrics_exporter_prometheus::PrometheusBuilder;
use sandboxd_domain::AgentProfile;
use sandboxd_server::auth::BearerAuth;
use sandboxd_server::config::Config;
use sandboxd_server::{Application, Dependencies};
use sandboxd_usecase::ports::RuntimeError;
use sandboxd_usecase::testing::{Fakes, RuntimeOp};
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// Port-0 listeners, no background loops, a plain `default` profile and a `gvisor` profile
/// naming `runsc`.
fn config_with_runsc_profile() -> Config {
    let mut config = quiet_config(&["default"]);
    let mut gvisor = AgentProfile::new("sandboxd/busybox:local");
    gvisor.runtime = Some("runsc".to_owned());
    config.agents.insert("gvisor", gvisor);
    config
}

fn unavailable() -> RuntimeError {
    RuntimeError::Unavailable("engine down (injected)".into())
}

async fn health(served: &Served) -> Option<ServingStatus> {
    let channel = Channel::from_shared(format!("http://{}", served.addr))
        .ok()?
        .connect()
        .await
        .ok()?;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .ok()?;
    ServingStatus::try_from(response.into_inner().status).ok()
}

async fn wait_for_health(served: &Served, want: ServingStatus, within: Duration) {
    let deadline = Instant::now() + within;
    while health(served).await != Some(want) {
        assert!(Instant::now() < deadline, "health never became {want:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_profile_naming_a_runtime_the_engine_lacks_stops_the_start_naming_both() {
    let fakes = Fakes::default();
    let deps = Dependencies {
        ports: fakes.ports(),
        metrics: PrometheusBuilder::new().build_recorder().handle(),
        auth: BearerAuth::default(),
        egress: None,
        fleet: sandboxd_server::Fleet::single(fakes.directory.clone()),
    };
    let refused = Application::build(&config_with_runsc_profile(), deps)
        .await
        .expect_err("the fake engine has only runc");
    let message = format!("{refused:#}");
    assert!(message.contains("`agents.gvisor.runtime`"), "{message}");
    assert!(message.contains("\"runsc\""), "{message}");
    assert!(message.contains("(it has: runc)"), "{message}");
    assert_eq!(fakes.calls.calls_of("runtime."), ["runtime.runtimes"]);
}

#[tokio::test]
async fn registered_runtimes_pass_and_profiles_without_one_cost_no_engine_call() {
    let fakes = Fakes::default();
    fakes.runtime.set_runtimes(["runc", "runsc"]);
    let served = serve(&config_with_runsc_profile(), fakes.ports()).await;
    wait_for_health(&served, ServingStatus::Serving, Duration::from_secs(5)).await;
    assert_eq!(
        fakes.calls.calls_of("runtime.runtimes"),
        ["runtime.runtimes"]
    );
    served.shutdown.cancel();
    served.server.await.unwrap().unwrap();

    let mut plain = config_with_runsc_profile();
    plain.agents = sandboxd_server::config::AgentProfiles::default();
    plain
        .agents
        .insert("default", AgentProfile::new("sandboxd/busybox:local"));
    let fakes = Fakes::default();
    let served = serve(&plain, fakes.ports()).await;
    wait_for_health(&served, ServingStatus::Serving, Duration::from_secs(5)).await;
    assert!(fakes.calls.calls_of("runtime.runtimes").is_empty());
    served.shutdown.cancel();
    served.server.await.unwrap().unwrap();
}

#[tokio::test]
async fn an_engine_down_at_start_defers_the_check_and_serving_waits_for_it() {
    let fakes = Fakes::default();
    fakes.runtime.set_runtimes(["runc", "runsc"]);
    // The check at start and the deferred check's first try find the engine down.
    fakes.runtime.fail_next(RuntimeOp::Runtimes, unavailable());
    fakes.runtime.fail_next(RuntimeOp::Runtimes, unavailable());
    let served = serve(&config_with_runsc_profile(), fakes.ports()).await;

    // The pings answer, but the runtimes are not checked yet.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(health(&served).await, Some(ServingStatus::NotServing));
    // The next try (one health interval later) passes.
    wait_for_health(&served, ServingStatus::Serving, Duration::from_secs(5)).await;
    assert_eq!(fakes.calls.calls_of("runtime.runtimes").len(), 3);
    served.shutdown.cancel();
    served.server.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_deferred_check_that_finds_the_runtime_missing_stops_the_server_naming_both() {
    let fakes = Fakes::default();
    fakes.runtime.fail_next(RuntimeOp::Runtimes, unavailable());
    let served = serve(&config_with_runsc_profile(), fakes.ports()).await;

    let stopped = tokio::time::timeout(Duration::from_secs(10), served.server)
        .await
        .expect("the server stops once the engine answers")
        .unwrap();
    let message = format!("{:#}", stopped.expect_err("a missing runtime is an error"));
    assert!(message.contains("`agents.gvisor.runtime`"), "{message}");
    assert!(message.contains("\"runsc\""), "{message}");
}
