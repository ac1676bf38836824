//! The create request of a sandbox container: one hardened base for every sandbox, completed
//! in one of two ways. A cold sandbox gets the chat's volume, the chat's identity in its env and
//! the chat's labels. A pooled sandbox (issue 18, see `docs/design.md`, "Warm pool") gets an empty
//! slot bound `rslave` instead of the volume, the static waiter as its entrypoint, its claim
//! directory, and pool labels. The identity reaches it later, in the claim.
//!
//! Everything that limits what a sandbox can do is in [`hardened`], so the two cannot drift apart.

use std::collections::HashMap;
use std::net::IpAddr;

use bollard::models::{
    ContainerCreateBody, HostConfig, Mount, MountBindOptions, MountBindOptionsPropagationEnum,
    MountType, PortBinding,
};
use sandboxd_domain::AgentProfile;

/// Where the waiter binary appears inside a pooled sandbox (bind-mounted read-only).
pub const WAITER_IN_SANDBOX: &str = "/.sandboxd/pool-waiter";
/// Where a pooled sandbox's claim directory appears (read-only: the waiter only reads its FIFO).
pub const CLAIM_DIR_IN_SANDBOX: &str = "/.sandboxd/claim";

/// Scratch space when the root filesystem is read-only: programs expect a writable /tmp.
const READ_ONLY_TMPFS_OPTIONS: &str = "rw,nosuid,nodev,size=64m";

/// The host side of a sandbox, the same for cold and pooled ones.
#[derive(Debug, Clone, Copy)]
pub struct HostSide<'a> {
    /// The profile's egress network (`EgressNetwork::name`), already ensured.
    pub network: &'a str,
    /// The host address the profile's port is published on.
    pub publish_host_ip: IpAddr,
    /// The engine's stop grace, in whole seconds.
    pub stop_timeout_secs: i32,
}

/// The host paths a pooled sandbox is bound from. All must exist before the create: typed
/// mounts make the engine refuse a missing source instead of creating it.
#[derive(Debug, Clone, Copy)]
pub struct PooledMounts<'a> {
    /// The empty slot (under the `rshared` slots root) that the chat's volume is attached onto.
    pub slot: &'a str,
    /// The static `pool-waiter` binary.
    pub waiter: &'a str,
    /// The directory holding the claim FIFO (`ClaimChannel::dir`).
    pub claim_dir: &'a str,
}

/// The hardened base of every sandbox: no privilege, every capability dropped but the profile's,
/// no new privileges, the profile's limits (memory without swap, CPU, pids), an init as PID 1,
/// the profile's read-only root (with a /tmp tmpfs) and OCI runtime, the egress network, the
/// published port, and `workspace` (the mount at the profile's target) followed by `extra_mounts`.
///
/// Command, entrypoint, env and labels are left unset: they are what differs.
#[must_use]
pub fn hardened(
    profile: &AgentProfile,
    host: HostSide<'_>,
    workspace: Mount,
    extra_mounts: Vec<Mount>,
) -> ContainerCreateBody {
    let port_key = profile.port.map(|port| format!("{port}/tcp"));
    // validate() bounds memory to i64.
    let memory = i64::try_from(profile.memory.0).unwrap_or(i64::MAX);
    let cap_add = profile.normalised_cap_add();
    let mut mounts = vec![workspace];
    mounts.extend(extra_mounts);
    let host_config = HostConfig {
        privileged: Some(false),
        cap_drop: Some(vec!["ALL".to_owned()]),
        cap_add: (!cap_add.is_empty()).then_some(cap_add),
        security_opt: Some(vec!["no-new-privileges".to_owned()]),
        pids_limit: Some(profile.pids_limit),
        memory: Some(memory),
        // Equal to memory: no swap on top of the limit.
        memory_swap: Some(memory),
        nano_cpus: Some(profile.nano_cpus()),
        // An init as PID 1 forwards SIGTERM and reaps zombies; a bare busybox PID 1 ignores
        // SIGTERM, so every graceful stop would wait out the whole grace.
        init: Some(true),
        readonly_rootfs: Some(profile.read_only_rootfs),
        tmpfs: profile
            .read_only_rootfs
            .then(|| HashMap::from([("/tmp".to_owned(), READ_ONLY_TMPFS_OPTIONS.to_owned())])),
        runtime: profile.runtime.clone(),
        mounts: Some(mounts),
        // The profile's egress network: no inter-container traffic, and the packet filter's
        // rules for its bridge. Published ports work on it as on the default bridge.
        network_mode: Some(host.network.to_owned()),
        port_bindings: port_key.clone().map(|key| {
            HashMap::from([(
                key,
                Some(vec![PortBinding {
                    host_ip: Some(host.publish_host_ip.to_string()),
                    // Empty: the engine picks a free ephemeral port, read back by inspect.
                    host_port: Some(String::new()),
                }]),
            )])
        }),
        ..Default::default()
    };
    ContainerCreateBody {
        image: Some(profile.image.clone()),
        user: profile.user.clone(),
        exposed_ports: port_key.map(|key| vec![key]),
        stop_timeout: Some(i64::from(host.stop_timeout_secs)),
        host_config: Some(host_config),
        ..Default::default()
    }
}

/// A cold sandbox: the chat's volume (`volume_source`, checked and canonical) at the profile's
/// target, the profile's command, `env` (the profile's plus the identity) and the chat's labels.
#[must_use]
pub fn cold(
    profile: &AgentProfile,
    host: HostSide<'_>,
    volume_source: &str,
    env: Vec<String>,
    labels: HashMap<String, String>,
) -> ContainerCreateBody {
    let workspace = bind(volume_source, &profile.mount_target, false, None);
    ContainerCreateBody {
        cmd: profile.command.clone(),
        env: Some(env),
        labels: Some(labels),
        ..hardened(profile, host, workspace, Vec::new())
    }
}

/// A pooled sandbox, waiting for its claim: the empty slot bound `rslave` at the profile's
/// target (so a volume attached onto the slot later appears inside), the waiter and the claim
/// directory bound read-only, the waiter as entrypoint with `default_command` after `--`, the
/// profile's env only (the identity comes in the claim), and `labels` (the pool's).
///
/// `default_command` must be complete: the engine drops the image's `Cmd` when the request sets
/// an entrypoint, so it is the profile's command, or else the image's entrypoint and command.
#[must_use]
pub fn pooled(
    profile: &AgentProfile,
    host: HostSide<'_>,
    mounts: PooledMounts<'_>,
    default_command: Vec<String>,
    labels: HashMap<String, String>,
) -> ContainerCreateBody {
    let workspace = bind(
        mounts.slot,
        &profile.mount_target,
        false,
        Some(MountBindOptionsPropagationEnum::RSLAVE),
    );
    let extra_mounts = vec![
        bind(mounts.waiter, WAITER_IN_SANDBOX, true, None),
        bind(mounts.claim_dir, CLAIM_DIR_IN_SANDBOX, true, None),
    ];
    let mut entrypoint = vec![
        WAITER_IN_SANDBOX.to_owned(),
        format!("{CLAIM_DIR_IN_SANDBOX}/{}", crate::pool::claim::FIFO_NAME),
        "--".to_owned(),
    ];
    entrypoint.extend(default_command);
    ContainerCreateBody {
        entrypoint: Some(entrypoint),
        env: Some(profile_env(profile)),
        labels: Some(labels),
        ..hardened(profile, host, workspace, extra_mounts)
    }
}

/// The profile's environment as `KEY=VALUE`, in the profile's (sorted) order.
#[must_use]
pub fn profile_env(profile: &AgentProfile) -> Vec<String> {
    profile
        .env
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect()
}

/// A typed bind mount (not `Binds`): the engine refuses a missing source instead of creating it,
/// and paths with ':' or ',' cannot be misparsed.
fn bind(
    source: &str,
    target: &str,
    read_only: bool,
    propagation: Option<MountBindOptionsPropagationEnum>,
) -> Mount {
    Mount {
        target: Some(target.to_owned()),
        source: Some(source.to_owned()),
        typ: Some(MountType::BIND),
        read_only: Some(read_only),
        bind_options: propagation.map(|propagation| MountBindOptions {
            propagation: Some(propagation),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::collections::BTreeMap;
    use std::net::Ipv4Addr;

    use super::*;

    fn host() -> HostSide<'static> {
        HostSide {
            network: "sbx-egress-public",
            publish_host_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            stop_timeout_secs: 10,
        }
    }

    fn profile() -> AgentProfile {
        let mut profile = AgentProfile::new("img");
        profile.port = Some(8080);
        profile.read_only_rootfs = true;
        profile.cap_add = vec!["NET_BIND_SERVICE".to_owned()];
        profile.command = Some(vec!["serve".to_owned()]);
        profile.env = BTreeMap::from([("A".to_owned(), "1".to_owned())]);
        profile
    }

    fn without_mounts(mut body: ContainerCreateBody) -> HostConfig {
        let mut host_config = body.host_config.take().unwrap();
        host_config.mounts = None;
        host_config
    }

    #[test]
    fn cold_and_pooled_sandboxes_share_every_hardening_setting() {
        let profile = profile();
        let cold = cold(&profile, host(), "/srv/v", vec![], HashMap::new());
        let mounts = PooledMounts {
            slot: "/run/p/slots/s",
            waiter: "/usr/lib/sandboxd/pool-waiter",
            claim_dir: "/run/p/claims/s",
        };
        let pooled = pooled(
            &profile,
            host(),
            mounts,
            vec!["serve".into()],
            HashMap::new(),
        );
        assert_eq!(cold.image, pooled.image);
        assert_eq!(cold.user, pooled.user);
        assert_eq!(cold.exposed_ports, pooled.exposed_ports);
        assert_eq!(cold.stop_timeout, pooled.stop_timeout);
        let hardening = without_mounts(cold.clone());
        assert_eq!(hardening, without_mounts(pooled.clone()));
        assert_eq!(hardening.cap_drop, Some(vec!["ALL".to_owned()]));
        assert_eq!(hardening.init, Some(true));
        assert_eq!(hardening.network_mode.as_deref(), Some("sbx-egress-public"));
        assert!(hardening.tmpfs.unwrap().contains_key("/tmp"));
    }

    #[test]
    fn a_pooled_sandbox_waits_on_its_slot_with_the_profiles_env_only() {
        let profile = profile();
        let mounts = PooledMounts {
            slot: "/run/p/slots/s",
            waiter: "/usr/lib/sandboxd/pool-waiter",
            claim_dir: "/run/p/claims/s",
        };
        let body = pooled(
            &profile,
            host(),
            mounts,
            vec!["serve".into()],
            HashMap::new(),
        );
        assert_eq!(
            body.entrypoint.unwrap(),
            [
                "/.sandboxd/pool-waiter",
                "/.sandboxd/claim/claim",
                "--",
                "serve"
            ]
        );
        assert_eq!(body.cmd, None);
        assert_eq!(body.env.unwrap(), ["A=1"]);
        let mounts = body.host_config.unwrap().mounts.unwrap();
        let described: Vec<_> = mounts
            .iter()
            .map(|m| {
                (
                    m.source.as_deref().unwrap(),
                    m.target.as_deref().unwrap(),
                    m.read_only.unwrap(),
                    m.bind_options.as_ref().and_then(|o| o.propagation),
                )
            })
            .collect();
        assert_eq!(
            described,
            [
                (
                    "/run/p/slots/s",
                    "/workspace",
                    false,
                    Some(MountBindOptionsPropagationEnum::RSLAVE)
                ),
                (
                    "/usr/lib/sandboxd/pool-waiter",
                    "/.sandboxd/pool-waiter",
                    true,
                    None
                ),
                ("/run/p/claims/s", "/.sandboxd/claim", true, None),
            ]
        );
    }
}
