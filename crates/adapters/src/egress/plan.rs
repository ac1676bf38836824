//! Which bridge network a sandbox of a profile joins, and what the packet filter must do for each:
//! pure naming and planning, shared by the Docker runtime (which attaches containers) and the
//! firewall (which writes rules matching the bridges' interface names).
//!
//! One network per egress class of a deployment: `none`, `public`, `open`, and one per distinct
//! `allow` list. Names derive from the key prefix, so two deployments on one host never share a
//! network, a bridge or a chain.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use sandboxd_domain::{AgentProfile, Cidr, Egress};

/// Linux limits interface names to 15 bytes (IFNAMSIZ - 1).
const MAX_BRIDGE_NAME: usize = 15;

/// FNV-1a, 64 bits: a stable hash (std's `DefaultHasher` may change between Rust releases, and
/// these names outlive a binary).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The deployment's short tag: six hex digits of its key prefix's hash.
fn deployment_tag(key_prefix: &str) -> String {
    format!("{:06x}", fnv1a(key_prefix.as_bytes()) >> 40)
}

/// Every bridge of this deployment starts with this (`sbx1a2b3c-`): the packet-filter jumps match
/// it with `-i <prefix>+`.
#[must_use]
pub fn bridge_prefix(key_prefix: &str) -> String {
    format!("sbx{}-", deployment_tag(key_prefix))
}

/// The deployment's own chain names: (forwarded traffic, traffic to the host).
#[must_use]
pub fn chain_names(key_prefix: &str) -> (String, String) {
    let tag = deployment_tag(key_prefix);
    (format!("SBX-{tag}-FWD"), format!("SBX-{tag}-IN"))
}

/// One bridge network of the deployment and the policy enforced on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressNetwork {
    /// The engine's network name: `{key_prefix}-egress-{class}`.
    pub name: String,
    /// The bridge interface on the host, named so rules can match it (at most 15 bytes).
    pub bridge: String,
    pub egress: Egress,
    /// The ranges of an `allow` network, sorted and without duplicates; empty otherwise.
    pub allow: Vec<Cidr>,
}

impl EgressNetwork {
    /// The network a sandbox of `profile` joins in the deployment `key_prefix`.
    #[must_use]
    pub fn of(key_prefix: &str, profile: &AgentProfile) -> Self {
        let mut allow = profile.egress_allow.clone();
        allow.sort();
        allow.dedup();
        let class = match profile.egress {
            Egress::None => "none".to_owned(),
            Egress::Public => "pub".to_owned(),
            Egress::Open => "open".to_owned(),
            // Same list, same network, in any profile and across restarts.
            Egress::Allow => format!("a{}", allow_tag(&allow)),
        };
        let bridge = format!("{}{class}", bridge_prefix(key_prefix));
        debug_assert!(bridge.len() <= MAX_BRIDGE_NAME, "{bridge}");
        let long_class = match profile.egress {
            Egress::Public => "public".to_owned(),
            Egress::Allow => format!("allow-{}", allow_tag(&allow)),
            _ => class,
        };
        Self {
            name: format!("{key_prefix}-egress-{long_class}"),
            bridge,
            egress: profile.egress,
            allow,
        }
    }
}

/// Four hex digits naming an allow list (sorted, deduplicated).
fn allow_tag(allow: &[Cidr]) -> String {
    let mut text = String::new();
    for cidr in allow {
        let _ = write!(text, "{cidr},");
    }
    format!("{:04x}", fnv1a(text.as_bytes()) >> 48)
}

/// A profile the egress enforcement cannot honour, named by its setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid setting `{setting}`: {reason}")]
pub struct EgressPlanError {
    pub setting: String,
    pub reason: String,
}

/// Every network the configured profiles need, by engine name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressPlan {
    key_prefix: String,
    networks: BTreeMap<String, EgressNetwork>,
}

impl EgressPlan {
    /// The plan for `profiles` (`(agent id, profile)`, validated already).
    ///
    /// # Errors
    /// [`EgressPlanError`] for an IPv6 range in `egress_allow` (sandboxes get no IPv6 address, so
    /// it could never be reached), or two different allow lists whose network names collide.
    pub fn new<'a>(
        key_prefix: &str,
        profiles: impl IntoIterator<Item = (&'a str, &'a AgentProfile)>,
    ) -> Result<Self, EgressPlanError> {
        let mut networks: BTreeMap<String, EgressNetwork> = BTreeMap::new();
        for (agent, profile) in profiles {
            let setting = format!("agents.{agent}.egress_allow");
            if let Some(v6) = profile.egress_allow.iter().find(|cidr| !cidr.is_ipv4()) {
                return Err(EgressPlanError {
                    setting,
                    reason: format!(
                        "{v6} is IPv6; sandboxes get no IPv6 address, so it could never be reached"
                    ),
                });
            }
            let network = EgressNetwork::of(key_prefix, profile);
            match networks.get(&network.name) {
                Some(known) if known.allow != network.allow => {
                    return Err(EgressPlanError {
                        setting,
                        reason: format!(
                            "its network name collides with another allow list's ({}): reorder or \
                             extend one list",
                            network.name
                        ),
                    });
                }
                Some(_) => {}
                None => {
                    networks.insert(network.name.clone(), network);
                }
            }
        }
        Ok(Self {
            key_prefix: key_prefix.to_owned(),
            networks,
        })
    }

    #[must_use]
    pub fn key_prefix(&self) -> &str {
        &self.key_prefix
    }

    /// The networks, in name order.
    pub fn networks(&self) -> impl Iterator<Item = &EgressNetwork> {
        self.networks.values()
    }

    /// Whether any network restricts anything: with only `open` profiles no packet filter is
    /// touched.
    #[must_use]
    pub fn needs_packet_filter(&self) -> bool {
        self.networks()
            .any(|network| network.egress != Egress::Open)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn profile(egress: Egress, allow: &[&str]) -> AgentProfile {
        let mut profile = AgentProfile::new("img");
        profile.egress = egress;
        profile.egress_allow = allow.iter().map(|raw| Cidr::parse(raw).unwrap()).collect();
        profile
    }

    #[test]
    fn names_fit_the_engine_and_the_kernel_and_differ_per_deployment() {
        let longest_prefix = "a".repeat(64);
        for prefix in ["sandboxd", "e2e-123-abcdef01", longest_prefix.as_str()] {
            for p in [
                profile(Egress::None, &[]),
                profile(Egress::Public, &[]),
                profile(Egress::Open, &[]),
                profile(Egress::Allow, &["10.0.0.0/8"]),
            ] {
                let network = EgressNetwork::of(prefix, &p);
                assert!(network.bridge.len() <= MAX_BRIDGE_NAME, "{network:?}");
                assert!(network.bridge.starts_with(&bridge_prefix(prefix)));
                assert!(network.name.starts_with(prefix));
            }
        }
        let public = profile(Egress::Public, &[]);
        assert_ne!(
            EgressNetwork::of("one", &public).bridge,
            EgressNetwork::of("two", &public).bridge
        );
        assert_eq!(
            EgressNetwork::of("sandboxd", &public).name,
            "sandboxd-egress-public"
        );
        let (forward, input) = chain_names("sandboxd");
        assert!(
            forward.starts_with("SBX-") && forward.len() <= 28,
            "{forward}"
        );
        assert!(input.ends_with("-IN"), "{input}");
    }

    #[test]
    fn the_same_allow_list_in_any_order_is_one_network() {
        let a = profile(Egress::Allow, &["10.0.0.0/8", "198.51.100.0/24"]);
        let b = profile(Egress::Allow, &["198.51.100.0/24", "10.0.0.0/8"]);
        let c = profile(Egress::Allow, &["198.51.100.0/24"]);
        let plan = EgressPlan::new("p", [("a", &a), ("b", &b), ("c", &c)]).unwrap();
        assert_eq!(plan.networks().count(), 2);
        assert!(plan.needs_packet_filter());
    }

    #[test]
    fn open_only_needs_no_packet_filter_and_ipv6_ranges_are_refused() {
        let open = profile(Egress::Open, &[]);
        let plan = EgressPlan::new("p", [("a", &open)]).unwrap();
        assert!(!plan.needs_packet_filter());
        let v6 = profile(Egress::Allow, &["2001:db8::/32"]);
        let error = EgressPlan::new("p", [("web", &v6)]).unwrap_err();
        assert_eq!(error.setting, "agents.web.egress_allow");
    }
}
