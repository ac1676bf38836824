//! The real binary with a Redis password in `redis_url` and an auth token, logging JSON at
//! `trace` while its Redis is unreachable (so connection errors are logged too): neither secret
//! appears anywhere in its output. Once with a plain `redis://` URL, once with a
//! `redis+sentinel://` URL whose sentinels are unreachable.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Read as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const REDIS_PASSWORD: &str = "hunter2-redis-7c41";
const TOKEN: &str = "tok-b93e0d51aa6f";

#[test]
fn secrets_never_reach_the_logs() {
    let port = closed_port();
    assert_secrets_stay_out(
        &format!("redis://default:{REDIS_PASSWORD}@127.0.0.1:{port}/0"),
        "redis://default:***@",
    );
}

#[test]
fn secrets_in_a_sentinel_url_never_reach_the_logs() {
    let (first, second) = (closed_port(), closed_port());
    assert_secrets_stay_out(
        &format!("redis+sentinel://app:{REDIS_PASSWORD}@127.0.0.1:{first},127.0.0.1:{second}/main"),
        "redis+sentinel://app:***@",
    );
}

/// A port nobody listens on: every Redis attempt fails and is logged.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs the binary with `redis_url` for a few seconds; the log shows the URL as `redacted` and
/// neither secret.
fn assert_secrets_stay_out(redis_url: &str, redacted: &str) {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sandboxd"))
        .args([
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--cleanup-interval",
            "1s",
            "--redis-url",
            redis_url,
            "--auth-token-file",
            token_file.to_str().unwrap(),
        ])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("RUST_LOG", "trace")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Several health checks and cleanup passes fail against the closed port meanwhile.
    std::thread::sleep(Duration::from_secs(3));
    let pid = child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("sandboxd did not exit after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut output = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut output)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut output)
        .unwrap();
    assert!(status.success(), "{status:?}\n{output}");
    assert!(output.contains("sandboxd_starting"), "{output}");
    assert!(output.contains(redacted), "{output}");
    assert!(output.contains("redis_unreachable"), "{output}");
    assert!(
        !output.contains(REDIS_PASSWORD),
        "the Redis password was logged"
    );
    assert!(!output.contains(TOKEN), "the auth token was logged");
}
