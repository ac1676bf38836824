//! Tests of the configuration as a whole: layering of file, environment and flags, defaults,
//! and the checks each section runs on load.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::result_large_err)]
use std::path::Path;
use std::time::Duration;

use sandboxd_domain::AgentId;

use super::*;
use flags::ShownDefault;

fn no_env() -> (Env, Env) {
    (
        Env::prefixed("SANDBOXD_TEST_UNSET_").only(&[]),
        Env::raw().only(&[]),
    )
}

fn load(cli: &Cli) -> Result<Config, ConfigError> {
    let (sandboxd, raw) = no_env();
    Config::load_with_env(cli, sandboxd, raw)
}

fn write(dir: &Path, body: &str) -> PathBuf {
    let path = dir.join("sandboxd.toml");
    std::fs::write(&path, body).unwrap();
    path
}

/// A command line that names only the configuration file `path`.
fn cli_reading(path: PathBuf) -> Cli {
    Cli {
        config: Some(path),
        ..Cli::default()
    }
}

/// A command line reading a configuration file that holds `body`, in a temporary directory
/// that lives as long as the returned handle.
fn cli_with_file(body: &str) -> (tempfile::TempDir, Cli) {
    let dir = tempfile::tempdir().unwrap();
    let cli = cli_reading(write(dir.path(), body));
    (dir, cli)
}

/// `cli`'s file with `flags` parsed as the command line would be.
fn with_flags(cli: &Cli, flags: &[&str]) -> Cli {
    let mut flagged =
        Cli::try_parse_from(std::iter::once("sandboxd").chain(flags.iter().copied())).unwrap();
    flagged.config.clone_from(&cli.config);
    flagged
}

#[test]
fn defaults_match_the_design_table() {
    let config = load(&Cli::default()).unwrap();
    assert_eq!(config.server.grpc_addr.to_string(), "127.0.0.1:50051");
    assert_eq!(config.server.http_addr.to_string(), "127.0.0.1:9090");
    assert_eq!(config.lifecycle.session_ttl, Duration::from_secs(1800));
    assert_eq!(config.lifecycle.max_ttl, Duration::from_secs(86400));
    assert_eq!(config.lifecycle.cleanup_interval, Duration::from_secs(30));
    assert_eq!(config.lifecycle.cleanup_concurrency, 8);
    assert_eq!(config.lifecycle.reconcile_interval, Duration::from_secs(15));
    assert_eq!(config.lifecycle.reconcile_grace, Duration::from_secs(120));
    assert_eq!(config.lifecycle.adoption_grace, Duration::from_secs(600));
    assert_eq!(config.redis.lock_ttl, Duration::from_secs(10));
    assert_eq!(config.redis.lock_wait, Duration::from_secs(5));
    assert!(config.docker.allowed_volume_roots.is_empty());
    assert_eq!(config.telemetry.log_format, LogFormat::Text);
    assert!(!config.telemetry.log_spans);
}

#[test]
fn the_defaults_help_shows_are_the_real_defaults() {
    let mut args = vec!["sandboxd".to_owned()];
    for setting in settings() {
        if let ShownDefault::Value(value) = setting.default {
            args.push(format!("--{}", setting.key.replace('_', "-")));
            args.push(value.to_owned());
        }
    }
    let cli = Cli::try_parse_from(&args).unwrap();
    assert_eq!(load(&cli).unwrap(), Config::default());
    assert_eq!(load(&Cli::default()).unwrap(), Config::default());
}

#[test]
fn every_declared_setting_is_read_by_a_section() {
    // A declared key that no section reads would be accepted, then ignored. No setting takes
    // a table, so a section that reads the key refuses one there.
    for setting in settings() {
        let table = figment::util::map![setting.key => figment::util::map!["x" => 1]];
        let figment = Figment::from(figment::providers::Serialized::defaults(table));
        let refusals = [
            figment.extract::<ServerSettings>().err(),
            figment.extract::<RedisSettings>().err(),
            figment.extract::<LifecycleSettings>().err(),
            figment.extract::<DockerSettings>().err(),
            figment.extract::<TelemetrySettings>().err(),
            figment.extract::<AdmissionSettings>().err(),
            figment.extract::<NodeSettings>().err(),
        ];
        let readers = refusals
            .iter()
            .flatten()
            .filter(|error| error.path.first().map(String::as_str) == Some(setting.key))
            .count();
        assert_eq!(readers, 1, "{}", setting.key);
        if let Some(fallback) = setting.env_fallback {
            assert_eq!(fallback.to_lowercase(), setting.key);
        }
    }
}

#[test]
fn log_spans_is_a_boolean_from_file_env_or_flag() {
    let (_dir, cli) = cli_with_file("log_spans = true\n[agents.default]\nimage = \"x\"\n");
    figment::Jail::expect_with(|jail| {
        // Only what the test sets: a developer's own SANDBOXD_* variables must not leak in.
        jail.clear_env();
        assert!(Config::load(&cli).unwrap().telemetry.log_spans);
        jail.set_env("SANDBOXD_LOG_SPANS", "false");
        assert!(!Config::load(&cli).unwrap().telemetry.log_spans);
        let flagged = with_flags(&cli, &["--log-spans", "true"]);
        assert!(Config::load(&flagged).unwrap().telemetry.log_spans);
        jail.set_env("SANDBOXD_LOG_SPANS", "sometimes");
        let message = Config::load(&cli).unwrap_err().to_string();
        assert!(message.contains("`log_spans`"), "{message}");
        Ok(())
    });
}

#[test]
fn file_then_env_then_flags_override_in_order() {
    let (dir, cli) = cli_with_file(
        "session_ttl = \"10m\"\nmax_ttl = \"1h\"\nkey_prefix = \"file\"\nallowed_volume_roots = [\"../vols\", \"/abs\"]\n[agents.default]\nimage = \"x\"\n",
    );
    let config = load(&cli).unwrap();
    assert_eq!(config.lifecycle.session_ttl, Duration::from_secs(600));
    assert_eq!(config.redis.key_prefix, "file");
    assert_eq!(
        config.docker.allowed_volume_roots[0],
        dir.path().parent().unwrap().join("vols")
    );
    assert_eq!(config.docker.allowed_volume_roots[1], PathBuf::from("/abs"));
    assert_eq!(
        config
            .agents
            .by_agent_id()
            .iter()
            .map(|(id, _)| id.clone())
            .collect::<Vec<_>>(),
        vec![AgentId::parse("default").unwrap()]
    );

    figment::Jail::expect_with(|jail| {
        // Only what the test sets: a developer's own SANDBOXD_* variables must not leak in.
        jail.clear_env();
        jail.set_env("SANDBOXD_KEY_PREFIX", "env");
        jail.set_env("SANDBOXD_AGENTS__PY__IMAGE", "python");
        jail.set_env("DOCKER_HOST", "unix:///run/other.sock");
        let config = Config::load(&cli).unwrap();
        assert_eq!(config.redis.key_prefix, "env");
        assert_eq!(config.agents.names().count(), 2);
        assert_eq!(
            config.docker.docker_host.as_deref(),
            Some("unix:///run/other.sock")
        );
        jail.set_env("SANDBOXD_DOCKER_HOST", "unix:///run/mine.sock");
        assert_eq!(
            Config::load(&cli).unwrap().docker.docker_host.as_deref(),
            Some("unix:///run/mine.sock")
        );
        let flagged = with_flags(&cli, &["--key-prefix", "flag"]);
        assert_eq!(Config::load(&flagged).unwrap().redis.key_prefix, "flag");
        jail.set_env("SANDBOXD_SESSION_TTL", "forever");
        let message = Config::load(&cli).unwrap_err().to_string();
        assert!(
            message.contains("`session_ttl`") && message.contains("SANDBOXD_SESSION_TTL"),
            "{message}"
        );
        Ok(())
    });

    let cli = with_flags(&cli, &["--key-prefix", "flag", "--session-ttl", "90s"]);
    let config = load(&cli).unwrap();
    assert_eq!(config.redis.key_prefix, "flag");
    assert_eq!(config.lifecycle.session_ttl, Duration::from_secs(90));
    let message = load(&with_flags(&cli, &["--max-ttl", "never"]))
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("`max_ttl`") && message.contains("flag --max-ttl"),
        "{message}"
    );
}

#[test]
fn bad_settings_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("session_ttl = \"soon\"", "session_ttl"),
        ("grpc_addr = \"nowhere\"", "grpc_addr"),
        ("nonsense = 1", "nonsense"),
        ("max_ttl = \"1m\"", "max_ttl"),
        ("cleanup_concurrency = 0", "cleanup_concurrency"),
        ("key_prefix = \"Bad Prefix\"", "key_prefix"),
        ("redis_url = \"http://x\"", "redis_url"),
        (
            "allowed_volume_roots = [\"/a/../b\"]",
            "allowed_volume_roots[0]",
        ),
        ("stop_grace = \"1m\"", "engine_timeout"),
        ("[agents.Bad]\nimage = \"x\"", "agents.Bad"),
        ("lock_wait = \"0s\"", "lock_wait"),
        ("reconcile_grace = \"10s\"", "reconcile_grace"),
        (
            "reconcile_grace = \"30s\"\n[agents.slow]\nimage = \"x\"\nready_timeout = \"25s\"",
            "reconcile_grace",
        ),
        ("reconcile_interval = \"often\"", "reconcile_interval"),
        ("[agents.a]\nimage = \"x\"\nmemroy = 1", "memroy"),
        ("[agents.a]\nimage = \"x\"\ncpus = 0.0", "agents.a.cpus"),
        ("lock_ttl = \"0s\"", "lock_ttl"),
        ("docker_host = \"/var/run/docker.sock\"", "docker_host"),
        (
            "[agents.a]\nimage = \"x\"\negress = \"allow\"",
            "agents.a.egress_allow",
        ),
        (
            "[agents.a]\nimage = \"x\"\negress_allow = [\"10.0.0.0/8\"]",
            "agents.a.egress_allow",
        ),
        (
            "[agents.a]\nimage = \"x\"\negress = \"allow\"\negress_allow = [\"10.0.0.1/8\"]",
            "egress_allow",
        ),
        // Sandboxes get no IPv6 address: a range they could never reach is refused at start.
        (
            "[agents.v6]\nimage = \"x\"\negress = \"allow\"\negress_allow = [\"2001:db8::/32\"]",
            "agents.v6.egress_allow",
        ),
        ("[agents.a]\nimage = \"x\"\negress = \"internet\"", "egress"),
        ("node_id = \"Node_1\"", "node_id"),
        (
            "node_id = \"n1\"\nnode_heartbeat_ttl = \"500ms\"",
            "node_heartbeat_ttl",
        ),
        (
            "node_id = \"n1\"\nnode_grpc_addr = \"0.0.0.0:50052\"",
            "node_advertise_addr",
        ),
        (
            "node_id = \"n1\"\nnode_advertise_addr = \"10.0.0.1\"",
            "node_advertise_addr",
        ),
        (
            "node_id = \"n1\"\nnode_tls_ca_file = \"/etc/hostname\"",
            "node_tls_ca_file",
        ),
    ];
    for (body, setting) in cases {
        let cli = cli_reading(write(dir.path(), body));
        let message = load(&cli).unwrap_err().to_string();
        assert!(message.contains(setting), "{body:?}: {message}");
    }
    let cli = cli_reading(dir.path().join("missing.toml"));
    assert!(load(&cli).unwrap_err().to_string().contains("missing.toml"));
    figment::Jail::expect_with(|jail| {
        // Only what the test sets: a developer's own SANDBOXD_* variables must not leak in.
        jail.clear_env();
        jail.set_env("SANDBOXD_NONSENSE", "1");
        let message = Config::load(&Cli::default()).unwrap_err().to_string();
        assert!(
            message.contains("`nonsense`") && message.contains("environment"),
            "{message}"
        );
        Ok(())
    });
}

#[test]
fn a_full_file_becomes_the_adapters_configurations() {
    let (_dir, cli) = cli_with_file(
        r#"
        key_prefix = "sbx"
        stop_grace = "3s"
        lock_ttl = "4s"
        allowed_volume_roots = ["/srv/chats"]

        [agents.default]
        image = "sandboxd/busybox:local"
        port = 8080

        [agents."py3.12"]
        image = "python:3.12"
        "#,
    );
    let config = load(&cli).unwrap();
    let docker = config.docker_config();
    assert_eq!(docker.key_prefix, "sbx");
    assert_eq!(docker.stop_grace, Duration::from_secs(3));
    assert_eq!(
        docker.allowed_volume_roots,
        vec![PathBuf::from("/srv/chats")]
    );
    assert_eq!(
        config
            .agents
            .by_agent_id()
            .iter()
            .map(|(id, _)| id.as_str().to_owned())
            .collect::<Vec<_>>(),
        vec!["default", "py3.12"]
    );
    let redis = config.redis_config();
    assert_eq!(redis.key_prefix, "sbx");
    assert_eq!(redis.lock_ttl, Duration::from_secs(4));
}

#[test]
fn the_example_file_loads() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/sandboxd.example.toml");
    let cli = cli_reading(example);
    let config = load(&cli).unwrap();
    assert!(config.agents.names().next().is_some());
    // The example says `egress = "public"`, which is also the default.
    let plan = config.egress_plan().unwrap();
    assert!(plan.needs_packet_filter());
    assert!(
        plan.networks()
            .all(|network| network.egress == sandboxd_domain::Egress::Public)
    );
}

#[test]
fn comma_separated_roots() {
    let cli = Cli::try_parse_from(["sandboxd", "--allowed-volume-roots", "/a, /b"]).unwrap();
    let config = load(&cli).unwrap();
    assert_eq!(
        config.docker.allowed_volume_roots,
        vec![PathBuf::from("/a"), PathBuf::from("/b")]
    );
}

#[test]
fn flags_are_checked_for_their_kind_by_the_parser() {
    for args in [
        ["sandboxd", "--cleanup-concurrency", "many"],
        ["sandboxd", "--log-spans", "maybe"],
        ["sandboxd", "--log-format", "xml"],
        ["sandboxd", "--no-such-flag", "1"],
    ] {
        assert!(Cli::try_parse_from(args).is_err(), "{args:?}");
    }
    let cli = Cli::try_parse_from([
        "sandboxd",
        "--log-format",
        "json",
        "--cleanup-concurrency",
        "3",
    ])
    .unwrap();
    let config = load(&cli).unwrap();
    assert_eq!(config.telemetry.log_format, LogFormat::Json);
    assert_eq!(config.lifecycle.cleanup_concurrency, 3);
}

#[test]
fn help_lists_every_setting_with_its_environment_variable() {
    let help = Cli::command().render_long_help().to_string();
    for key in [
        "grpc_addr",
        "http_addr",
        "redis_url",
        "key_prefix",
        "session_ttl",
        "max_ttl",
        "cleanup_interval",
        "cleanup_concurrency",
        "reconcile_interval",
        "reconcile_grace",
        "adoption_grace",
        "lock_ttl",
        "lock_wait",
        "allowed_volume_roots",
        "docker_host",
        "publish_host_ip",
        "stop_grace",
        "engine_timeout",
        "drain_timeout",
        "auth_token_file",
        "tls_cert_file",
        "tls_key_file",
        "tls_client_ca_file",
        "log_format",
        "log_spans",
        "redis_command_timeout",
        "redis_ca_file",
        "pool_root",
        "pool_waiter",
        "node_id",
        "node_grpc_addr",
        "node_advertise_addr",
        "node_heartbeat_ttl",
        "node_tls_ca_file",
    ] {
        assert!(
            help.contains(&format!("--{}", key.replace('_', "-"))),
            "{key}"
        );
        let env = if key == "docker_host" {
            "DOCKER_HOST".to_owned()
        } else {
            format!("SANDBOXD_{}", key.to_uppercase())
        };
        assert!(help.contains(&env), "{env}");
    }
    assert_eq!(settings().count(), 37);
}

#[test]
fn a_pool_needs_a_static_waiter_and_absolute_pool_paths() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("waiter.sh");
    std::fs::write(&script, "#!/bin/sh\n").unwrap();
    let not_executable = dir.path().join("plain");
    std::fs::write(&not_executable, [0x7f, b'E', b'L', b'F', 2, 1]).unwrap();
    // This test binary is an executable, dynamically linked ELF: not usable in a sandbox.
    let dynamic = std::env::current_exe().unwrap();
    let pooled = "[agents.web]\nimage = \"x\"\npool_size = 2\n";
    let cases = [
        (pooled.to_owned(), "must be set: agents.web.pool_size"),
        (
            format!("pool_waiter = \"{}\"\n{pooled}", script.display()),
            "not a 64-bit little-endian ELF",
        ),
        (
            format!("pool_waiter = \"{}\"\n{pooled}", not_executable.display()),
            "not an executable file",
        ),
        (
            format!("pool_waiter = \"{}\"\n{pooled}", dynamic.display()),
            "dynamically linked",
        ),
        (
            format!(
                "pool_waiter = \"{}\"\n{pooled}",
                dir.path().join("missing").display()
            ),
            "cannot read",
        ),
        (
            "pool_waiter = \"relative/waiter\"".to_owned(),
            "pool_waiter",
        ),
        ("pool_root = \"relative/pool\"".to_owned(), "pool_root"),
    ];
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    for (body, wanted) in cases {
        let cli = cli_reading(write(dir.path(), &body));
        let message = load(&cli).unwrap_err().to_string();
        assert!(message.contains(wanted), "{body:?}: {message}");
    }
    // Without a pooled profile the waiter is not needed, and the default root is absolute.
    let cli = cli_reading(write(dir.path(), "[agents.web]\nimage = \"x\"\n"));
    let config = load(&cli).unwrap();
    assert_eq!(
        config.docker_config().pool.root,
        PathBuf::from("/var/lib/sandboxd/pool")
    );
}

#[test]
fn fleet_mode_is_off_without_node_id_and_takes_its_settings_with_it() {
    let config = load(&Cli::default()).unwrap();
    assert_eq!(config.node.node_id(), None);
    let (_dir, cli) = cli_with_file(
        "node_id = \"n1\"\nnode_grpc_addr = \"0.0.0.0:50052\"\nnode_advertise_addr = \"10.0.0.1:50052\"\nnode_heartbeat_ttl = \"3s\"\n",
    );
    let config = load(&cli).unwrap();
    assert_eq!(
        config.node.node_id().map(|id| id.to_string()).as_deref(),
        Some("n1")
    );
    assert_eq!(config.node.advertise_addr(), "10.0.0.1:50052");
    assert_eq!(config.node.node_heartbeat_ttl, Duration::from_secs(3));
    let (_dir, cli) = cli_with_file("node_id = \"n2\"\nnode_grpc_addr = \"10.0.0.2:50052\"\n");
    assert_eq!(load(&cli).unwrap().node.advertise_addr(), "10.0.0.2:50052");
}
