//! The Python client (`tests/python/test_client.py`: grpcio stubs generated from `proto/` by
//! grpcio-tools, plus grpcio-health-checking) against a real server spawned here.
//!
//! scripts/test installs `tests/python/requirements.txt`; `PYTHON` overrides the interpreter.

use sandboxd_testkit::{spawn_app, workspace_root};

#[tokio::test]
async fn python_grpcio_client_creates_deletes_and_sees_serving() {
    let app = spawn_app().await;
    let volume = app.new_volume("python");
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let script = workspace_root().join("tests/python/test_client.py");
    let output = tokio::process::Command::new(&python)
        .arg(&script)
        .env("SANDBOXD_ADDR", app.grpc_addr.to_string())
        .env("SANDBOXD_VOLUME", &volume)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .await
        .unwrap_or_else(|error| panic!("cannot run {python}: {error}"));
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "{} failed ({}); install its packages with \
         `pip install -r tests/python/requirements.txt` (scripts/test does):\n{report}",
        script.display(),
        output.status
    );
    assert!(report.contains("Ran 3 tests"), "{report}");
    // The Python round left nothing behind.
    assert!(app.container_ids().await.is_empty());
}
