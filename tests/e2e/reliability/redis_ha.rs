//! Redis HA and managed Redis: a Sentinel failover followed by sandboxd itself, `rediss://` with a
//! configured CA (and refused when the certificate does not match), and an ACL user whose
//! password never reaches the log. Every process runs on loopback and dies with its handle.

use std::path::Path;
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use sandboxd_testkit::{
    AppConfig, RedisServer, SandboxRequests, Sentinel, TestApp, new_chat_id, spawn_app_with,
};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

const PASSWORD: &str = "s3cret-acl-pass-51d2";
/// The Redis command timeout the tests configure: bounds each failing call.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(1);
const DOWN_AFTER: Duration = Duration::from_millis(1000);
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(5);

/// An ACL user `app` with every right and `PASSWORD`. The default user keeps no password, so the
/// kit's readiness probe, the replica and the sentinels need no credentials; sandboxd logs in as
/// `app`.
fn acl_user_args() -> Vec<String> {
    [
        "--user",
        "app",
        "on",
        &format!(">{PASSWORD}"),
        "~*",
        "&*",
        "+@all",
    ]
    .map(str::to_owned)
    .to_vec()
}

fn app_config(redis_url: String, extra_toml: &str) -> AppConfig {
    AppConfig {
        redis_url: Some(redis_url),
        extra_toml: format!(
            "redis_command_timeout = \"{}ms\"\n{extra_toml}",
            COMMAND_TIMEOUT.as_millis()
        ),
        ..AppConfig::default()
    }
}

fn assert_no_password(app: &TestApp) {
    let log = app.log();
    assert!(
        !log.contains(PASSWORD),
        "the Redis password was logged:\n{log}"
    );
}

/// Primary + replica + three sentinels; SIGKILL of the primary while GetSandbox calls run.
#[tokio::test]
async fn redis_ha_sentinel_failover_is_followed_and_calls_fail_fast_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    let acl: Vec<String> = acl_user_args();
    let acl_args: Vec<&str> = acl.iter().map(String::as_str).collect();
    let mut primary = RedisServer::start_with(dir.path(), &acl_args)
        .await
        .unwrap();
    let primary_port = primary.port().to_string();
    let mut replica_args = acl_args.clone();
    replica_args.extend(["--replicaof", "127.0.0.1", &primary_port]);
    let replica = RedisServer::start_with(dir.path(), &replica_args)
        .await
        .unwrap();
    let mut sentinels = Vec::new();
    for _ in 0..3 {
        sentinels.push(
            Sentinel::start(dir.path(), primary.port(), 2, DOWN_AFTER, FAILOVER_TIMEOUT)
                .await
                .unwrap(),
        );
    }
    wait_for_topology(&sentinels).await;

    let addresses: Vec<String> = sentinels.iter().map(Sentinel::address).collect();
    let url = format!(
        "redis+sentinel://app:{PASSWORD}@{}/{}",
        addresses.join(","),
        Sentinel::MASTER_NAME
    );
    let app = spawn_app_with(app_config(url, "")).await;
    let before = new_chat_id();
    app.create_retrying(&before, "default", &app.new_volume("before"))
        .await
        .unwrap();
    wait_replicated(&primary).await;

    // Load: GetSandbox in a loop, each outcome with its latency and the time it ended.
    let load_api = app.api.clone();
    let load_chat = before.clone();
    let load = tokio::spawn(async move {
        let mut outcomes = Vec::new();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(60) {
            let sent = Instant::now();
            let code = load_api
                .get(&load_chat)
                .await
                .map_or_else(|status| status.code(), |_| Code::Ok);
            outcomes.push((sent, sent.elapsed(), code));
            if outcomes.len() > 5 && code == Code::Ok && outcomes.iter().any(|o| o.2 != Code::Ok) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        outcomes
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let killed_at = Instant::now();
    primary.stop();
    let promoted_after = loop {
        if sentinels[0].primary_port().await.unwrap() == replica.port() {
            break killed_at.elapsed();
        }
        assert!(killed_at.elapsed() < Duration::from_secs(30), "no failover");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let outcomes = load.await.unwrap();
    let first_failure = outcomes
        .iter()
        .position(|o| o.2 != Code::Ok)
        .expect("no call failed while the primary was down");
    let recovered = outcomes
        .iter()
        .skip(first_failure)
        .find(|o| o.2 == Code::Ok)
        .expect("sandboxd never followed the promotion");
    let followed_after = (recovered.0 + recovered.1).saturating_duration_since(killed_at);
    eprintln!(
        "failover: promoted {promoted_after:?} after the kill, sandboxd answered again after \
         {followed_after:?}"
    );
    assert!(
        followed_after <= promoted_after + Duration::from_secs(5),
        "followed after {followed_after:?}, promotion after {promoted_after:?}"
    );
    for (_, latency, code) in outcomes.iter().filter(|o| o.2 != Code::Ok) {
        assert_eq!(*code, Code::Unavailable, "{outcomes:?}\n{}", app.log());
        assert!(
            *latency < COMMAND_TIMEOUT + Duration::from_secs(1),
            "a call took {latency:?} during the failover"
        );
    }

    // Afterwards: the session written before survived, and creates and gets work.
    app.get(&before).await.unwrap();
    let after = new_chat_id();
    app.create_retrying(&after, "default", &app.new_volume("after"))
        .await
        .unwrap();
    app.get(&after).await.unwrap();
    app.wait_for_health(ServingStatus::Serving).await;
    assert_no_password(&app);
}

/// Until one sentinel knows the other two and the replica (a failover needs both).
async fn wait_for_topology(sentinels: &[Sentinel]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut ready = true;
        for sentinel in sentinels {
            // A sentinel busy rewriting its config may miss the kit's reply timeout: ask again.
            let known = sentinel.known_peers().await.ok();
            ready &= known == Some((sentinels.len() - 1, 1));
        }
        if ready {
            return;
        }
        assert!(Instant::now() < deadline, "the sentinels never met");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// WAIT until the replica has every write so far (replication is asynchronous).
async fn wait_replicated(primary: &RedisServer) {
    let client = redis::Client::open(format!(
        "redis://app:{PASSWORD}@127.0.0.1:{}",
        primary.port()
    ))
    .unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    // Short WAITs: redis-rs gives up on a reply after 500 ms by default.
    for _ in 0..50 {
        let acknowledged: i64 = redis::cmd("WAIT")
            .arg(1)
            .arg(200)
            .query_async(&mut con)
            .await
            .unwrap();
        if acknowledged == 1 {
            return;
        }
    }
    panic!("the replica did not acknowledge");
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// Writes a server certificate for `names` signed by `issuer`; returns (cert, key) paths.
fn server_cert(
    dir: &Path,
    file: &str,
    issuer: &CertifiedIssuer<'static, KeyPair>,
    names: &[&str],
) -> (String, String) {
    let params =
        CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    let cert_path = dir.join(format!("{file}.crt"));
    let key_path = dir.join(format!("{file}.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (
        cert_path.display().to_string(),
        key_path.display().to_string(),
    )
}

/// A redis-server with a TLS port serving `cert` (plain port for the kit's readiness probe) and
/// the ACL user; returns it with its TLS port.
async fn tls_redis(dir: &Path, cert: &(String, String), ca_file: &str) -> (RedisServer, u16) {
    let tls_port = sandboxd_testkit::redis::free_port().unwrap();
    let tls_port_arg = tls_port.to_string();
    let acl = acl_user_args();
    let mut args = vec![
        "--tls-port",
        &tls_port_arg,
        "--tls-cert-file",
        &cert.0,
        "--tls-key-file",
        &cert.1,
        "--tls-ca-cert-file",
        ca_file,
        "--tls-auth-clients",
        "no",
    ];
    args.extend(acl.iter().map(String::as_str));
    let server = RedisServer::start_with(dir, &args).await.unwrap();
    (server, tls_port)
}

/// rediss:// with the configured CA works; a certificate from another CA, or for another host
/// name, is refused: NOT_SERVING, UNAVAILABLE, and the log says why without the password.
#[tokio::test]
async fn redis_ha_tls_with_a_configured_ca_and_refusal_of_a_mismatching_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let good_ca = ca("sandboxd test redis CA");
    let rogue_ca = ca("somebody else's CA");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, good_ca.pem()).unwrap();
    let ca_path = ca_file.display().to_string();
    let toml = format!(
        "redis_ca_file = {}\n",
        sandboxd_testkit::app_config::toml_string(&ca_path)
    );

    let good = server_cert(dir.path(), "good", &good_ca, &["127.0.0.1"]);
    let (_server, port) = tls_redis(dir.path(), &good, &ca_path).await;
    let app = spawn_app_with(app_config(
        format!("rediss://app:{PASSWORD}@127.0.0.1:{port}"),
        &toml,
    ))
    .await;
    let chat = new_chat_id();
    app.create_retrying(&chat, "default", &app.new_volume("tls"))
        .await
        .unwrap();
    app.get(&chat).await.unwrap();
    assert_no_password(&app);
    drop(app);

    let rogue = server_cert(dir.path(), "rogue", &rogue_ca, &["127.0.0.1"]);
    let wrong_host = server_cert(dir.path(), "wrong-host", &good_ca, &["redis.example.org"]);
    for (case, cert) in [("another CA", rogue), ("another host name", wrong_host)] {
        let (_server, port) = tls_redis(dir.path(), &cert, &ca_path).await;
        let app = spawn_app_with(AppConfig {
            wait_for_serving: false,
            ..app_config(format!("rediss://app:{PASSWORD}@127.0.0.1:{port}"), &toml)
        })
        .await;
        let deadline = Instant::now() + Duration::from_secs(20);
        while !app.log().contains("redis_unreachable") {
            assert!(
                Instant::now() < deadline,
                "{case}: no reason logged\n{}",
                app.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            app.health_status("").await.unwrap(),
            ServingStatus::NotServing,
            "{case}"
        );
        let status = app.get(&new_chat_id()).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{case}: {status:?}");
        let log = app.log();
        assert!(
            log.lines()
                .any(|line| line.contains("redis_unreachable") && line.contains("certificate")),
            "{case}: the log does not say the certificate was refused\n{log}"
        );
        assert_no_password(&app);
    }
}

/// An ACL user with a password in the URL works; a wrong password is refused (NOT_SERVING), and
/// neither password reaches the log.
#[tokio::test]
async fn redis_ha_acl_user_and_password_work_and_are_never_logged() {
    let dir = tempfile::tempdir().unwrap();
    let acl = acl_user_args();
    let acl_args: Vec<&str> = acl.iter().map(String::as_str).collect();
    let server = RedisServer::start_with(dir.path(), &acl_args)
        .await
        .unwrap();
    let app = spawn_app_with(app_config(
        format!("redis://app:{PASSWORD}@127.0.0.1:{}", server.port()),
        "",
    ))
    .await;
    let chat = new_chat_id();
    app.create_retrying(&chat, "default", &app.new_volume("acl"))
        .await
        .unwrap();
    app.get(&chat).await.unwrap();
    assert!(app.log().contains("redis://app:***@"), "{}", app.log());
    assert_no_password(&app);
    drop(app);

    let wrong = "wrong-pass-9c1e";
    let app = spawn_app_with(AppConfig {
        wait_for_serving: false,
        ..app_config(
            format!("redis://app:{wrong}@127.0.0.1:{}", server.port()),
            "",
        )
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !app.log().contains("redis_unreachable") {
        assert!(Instant::now() < deadline, "no reason logged\n{}", app.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        app.health_status("").await.unwrap(),
        ServingStatus::NotServing
    );
    let log = app.log();
    assert!(
        !log.contains(wrong),
        "the wrong password was logged:\n{log}"
    );
}
