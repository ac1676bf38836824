//! Profiles as operators write them: defaults, every refusal naming its field, the derived
//! lifetimes.

#![allow(clippy::unwrap_used, clippy::expect_used)]
use super::*;

fn valid_profile() -> AgentProfile {
    let mut profile = AgentProfile::new("sandboxd/busybox:local");
    profile.port = Some(8080);
    profile
}

#[test]
fn a_profile_may_not_set_the_identity_environment() {
    let mut profile = valid_profile();
    profile
        .env
        .insert("SANDBOX_SESSION_ID".to_owned(), "forged".to_owned());
    let error = profile.validate("agents.py").unwrap_err();
    assert_eq!(error.setting, "agents.py.env");
    assert!(error.reason.contains("SANDBOX_SESSION_ID"), "{error}");
}

#[test]
fn byte_sizes_accept_docker_style_units() {
    assert_eq!(ByteSize::parse("256m"), Ok(ByteSize(256 << 20)));
    assert_eq!(ByteSize::parse("1G"), Ok(ByteSize(1 << 30)));
    assert_eq!(ByteSize::parse("64kib"), Ok(ByteSize(64 << 10)));
    assert_eq!(ByteSize::parse("1048576"), Ok(ByteSize(1 << 20)));
    assert_eq!(ByteSize::parse("10b"), Ok(ByteSize(10)));
    for bad in ["", "m", "12x", "1.5g", "-1m", "99999999999999999999g"] {
        assert!(ByteSize::parse(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn a_toml_profile_deserialises_with_defaults_filled_in() {
    let profiles: BTreeMap<String, AgentProfile> = toml::from_str(
        r#"
        [default]
        image = "sandboxd/busybox:local"
        port = 8080
        memory = "256m"
        cpus = 0.5
        cap_add = ["CAP_NET_BIND_SERVICE"]
        ready_timeout = "1500ms"
        env = { LANG = "C.UTF-8" }

        ["py3.12"]
        image = "python:3.12"
        memory = 134217728
        command = ["sleep", "3600"]
        "#,
    )
    .unwrap();
    let default = &profiles["default"];
    default.validate("agents.default").unwrap();
    assert_eq!(default.memory, ByteSize(256 << 20));
    assert_eq!(default.nano_cpus(), 500_000_000);
    assert_eq!(default.mount_target, "/workspace");
    assert_eq!(
        default.normalised_cap_add(),
        vec!["NET_BIND_SERVICE".to_owned()]
    );
    assert_eq!(default.ready_timeout, Duration::from_millis(1500));
    assert_eq!(default.effective_probe(), ReadyProbe::Http);
    let python = &profiles["py3.12"];
    python.validate("agents.py3.12").unwrap();
    assert_eq!(python.memory, ByteSize(128 << 20));
    assert_eq!(python.effective_probe(), ReadyProbe::None);
    assert_eq!(python.pids_limit, 256);
}

#[test]
fn unknown_profile_keys_and_bad_durations_fail_at_load() {
    assert!(toml::from_str::<AgentProfile>("image = \"x\"\nmemroy = 1").is_err());
    assert!(toml::from_str::<AgentProfile>("image = \"x\"\nready_timeout = \"soon\"").is_err());
    assert!(toml::from_str::<AgentProfile>("port = 80").is_err());
}

#[test]
fn validation_names_the_offending_setting() {
    type Mutation = Box<dyn Fn(&mut AgentProfile)>;
    let cases: Vec<(Mutation, &str)> = vec![
        (Box::new(|p| p.image = String::new()), "agents.a.image"),
        (Box::new(|p| p.command = Some(vec![])), "agents.a.command"),
        (Box::new(|p| p.port = Some(0)), "agents.a.port"),
        (
            Box::new(|p| p.mount_target = "workspace".into()),
            "agents.a.mount_target",
        ),
        (
            Box::new(|p| p.mount_target = "/".into()),
            "agents.a.mount_target",
        ),
        (Box::new(|p| p.memory = ByteSize(1024)), "agents.a.memory"),
        (Box::new(|p| p.cpus = 0.0), "agents.a.cpus"),
        (Box::new(|p| p.cpus = f64::NAN), "agents.a.cpus"),
        (Box::new(|p| p.pids_limit = 0), "agents.a.pids_limit"),
        (
            Box::new(|p| p.cap_add = vec!["ALL".into()]),
            "agents.a.cap_add",
        ),
        (
            Box::new(|p| p.cap_add = vec!["net admin".into()]),
            "agents.a.cap_add",
        ),
        (
            Box::new(|p| {
                p.env
                    .insert("A=B".into(), "x".into())
                    .map(drop)
                    .unwrap_or(())
            }),
            "agents.a.env",
        ),
        (
            Box::new(|p| {
                p.port = None;
                p.ready_probe = Some(ReadyProbe::Http);
            }),
            "agents.a.ready_probe",
        ),
        (
            Box::new(|p| p.ready_timeout = Duration::ZERO),
            "agents.a.ready_timeout",
        ),
        (
            Box::new(|p| p.egress = Egress::Allow),
            "agents.a.egress_allow",
        ),
        (
            Box::new(|p| p.egress_allow = vec![Cidr::parse("10.0.0.0/8").unwrap()]),
            "agents.a.egress_allow",
        ),
    ];
    for (mutate, setting) in cases {
        let mut profile = valid_profile();
        mutate(&mut profile);
        let error = profile.validate("agents.a").expect_err(setting);
        assert_eq!(error.setting, setting, "{error}");
    }
    valid_profile().validate("agents.a").unwrap();
    let mut no_port = valid_profile();
    no_port.port = None;
    no_port.ready_probe = Some(ReadyProbe::None);
    no_port.validate("agents.a").unwrap();
}

#[test]
fn egress_defaults_to_public_and_allow_takes_a_cidr_list() {
    let profile: AgentProfile = toml::from_str("image = \"x\"").unwrap();
    assert_eq!(profile.egress, Egress::Public);
    assert!(profile.egress_allow.is_empty());
    profile.validate("agents.a").unwrap();

    let allow: AgentProfile = toml::from_str(
        "image = \"x\"\negress = \"allow\"\negress_allow = [\"198.51.100.0/24\", \"2001:db8::/32\"]",
    )
    .unwrap();
    allow.validate("agents.a").unwrap();
    assert_eq!(allow.egress_allow[0].to_string(), "198.51.100.0/24");

    for policy in ["none", "open"] {
        let profile: AgentProfile =
            toml::from_str(&format!("image = \"x\"\negress = \"{policy}\"")).unwrap();
        profile.validate("agents.a").unwrap();
    }
}

#[test]
fn bad_egress_values_fail_at_load() {
    for body in [
        "egress = \"internet\"",
        "egress = \"allow\"\negress_allow = [\"10.0.0.1/8\"]",
        "egress = \"allow\"\negress_allow = [\"example.com\"]",
        "egress = \"allow\"\negress_allow = \"10.0.0.0/8\"",
    ] {
        let parsed = toml::from_str::<AgentProfile>(&format!("image = \"x\"\n{body}"));
        assert!(parsed.is_err(), "{body}");
    }
}

#[test]
fn the_pool_is_off_unless_asked_and_bounded_when_asked() {
    let profile: AgentProfile = toml::from_str("image = \"x\"").unwrap();
    assert_eq!(profile.pool_size, 0);
    profile.validate("agents.a").unwrap();

    let pooled: AgentProfile =
        toml::from_str("image = \"x\"\npool_size = 4\nmax_sandboxes = 10").unwrap();
    pooled.validate("agents.a").unwrap();
    let mut under_runc = pooled.clone();
    under_runc.runtime = Some("runc".to_owned());
    under_runc.validate("agents.a").unwrap();

    let mut too_big = pooled.clone();
    too_big.max_sandboxes = None;
    too_big.pool_size = MAX_POOL_SIZE + 1;
    let mut over_quota = pooled.clone();
    over_quota.pool_size = 11;
    for bad in [too_big, over_quota] {
        let error = bad.validate("agents.a").unwrap_err();
        assert_eq!(error.setting, "agents.a.pool_size", "{error}");
    }
    assert!(toml::from_str::<AgentProfile>("image = \"x\"\npool_size = -1").is_err());
}

#[test]
fn a_pool_under_gvisor_is_refused_and_names_the_runtime() {
    let mut profile = valid_profile();
    profile.runtime = Some("runsc".to_owned());
    profile.validate("agents.a").unwrap();
    profile.pool_size = 1;
    let error = profile.validate("agents.a").unwrap_err();
    assert_eq!(error.setting, "agents.a.pool_size");
    assert!(error.reason.contains("runsc"), "{error}");
}
