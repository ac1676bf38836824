//! The packet-filter rules of a plan, as text: what `iptables-restore --noflush` is fed, and what
//! `iptables -S` must print back when they are in place. Pure, so every rule is unit-tested.
//!
//! Two chains of the deployment's own, jumped to once each from the top of `DOCKER-USER`
//! (forwarded traffic: the internet, other hosts, other containers) and `INPUT` (the host's own
//! addresses: the bridge gateway and every other address of the host), only for packets coming in
//! from one of the deployment's bridges (`-i sbx<tag>-+`). Replies of established connections
//! return first, so the published endpoint keeps answering. A bridge of the deployment that no
//! rule names (a network left from an older configuration) falls through to a final reject: the
//! filter fails closed.
//!
//! Every rule is written the way `iptables -S` prints it back (option order, canonical CIDRs), so
//! the check compares text.

use sandboxd_domain::{Egress, public_excluded_v4};

use super::plan::{EgressPlan, bridge_prefix, chain_names};

/// The built-in chain forwarded traffic passes first; Docker creates it and never fills it.
pub(crate) const DOCKER_USER: &str = "DOCKER-USER";
/// The built-in chain of traffic addressed to the host itself.
pub(crate) const INPUT: &str = "INPUT";

/// The first rule of both chains: replies pass (the published endpoint answers, and whatever a
/// sandbox was allowed to open gets its answers). It carries the owner's comment, so the chains
/// can be found from their own content too.
fn established(comment: &str) -> String {
    format!(
        "-m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment \"{comment}\" -j RETURN"
    )
}
/// An ICMP answer makes a refused connection fail at once instead of hanging until its timeout.
const REJECT: &str = "-j REJECT --reject-with icmp-admin-prohibited";

/// The comment every jump carries: it names the deployment, so an operator (or a test's cleanup)
/// can find what belongs to whom.
#[must_use]
pub fn owner_comment(key_prefix: &str) -> String {
    format!("sandboxd:{key_prefix}")
}

/// A jump from a built-in chain into one of ours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Jump {
    /// `DOCKER-USER` or `INPUT`.
    pub(crate) from: &'static str,
    /// The rule after `-A <from> `.
    pub(crate) spec: String,
    /// Our chain it jumps to.
    pub(crate) to: String,
}

impl Jump {
    pub(crate) fn line(&self) -> String {
        format!("-A {} {}", self.from, self.spec)
    }
}

/// The complete rule set of one deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RuleSet {
    pub(crate) forward_chain: String,
    pub(crate) input_chain: String,
    /// The rules of the forward chain, each after `-A <chain> `.
    pub(crate) forward: Vec<String>,
    pub(crate) input: Vec<String>,
    pub(crate) jumps: [Jump; 2],
    pub(crate) comment: String,
}

impl RuleSet {
    pub(crate) fn of(plan: &EgressPlan) -> Self {
        let (forward_chain, input_chain) = chain_names(plan.key_prefix());
        let comment = owner_comment(plan.key_prefix());
        let mut forward = vec![established(&comment)];
        let mut input = vec![established(&comment)];
        for network in plan.networks() {
            let bridge = &network.bridge;
            match network.egress {
                // Nothing passes; the final reject below does it.
                Egress::None => {}
                Egress::Public => {
                    for range in public_excluded_v4() {
                        forward.push(format!("-d {range} -i {bridge} {REJECT}"));
                    }
                    forward.push(format!("-i {bridge} -j RETURN"));
                }
                Egress::Allow => {
                    for range in &network.allow {
                        forward.push(format!("-d {range} -i {bridge} -j RETURN"));
                        // A listed range may hold addresses of the host itself: listed is allowed.
                        input.push(format!("-d {range} -i {bridge} -j RETURN"));
                    }
                }
                Egress::Open => {
                    forward.push(format!("-i {bridge} -j RETURN"));
                    input.push(format!("-i {bridge} -j RETURN"));
                }
            }
        }
        forward.push(REJECT.to_owned());
        input.push(REJECT.to_owned());
        let bridges = format!("{}+", bridge_prefix(plan.key_prefix()));
        let jump = |from: &'static str, to: &str| Jump {
            from,
            spec: format!("-i {bridges} -m comment --comment \"{comment}\" -j {to}"),
            to: to.to_owned(),
        };
        Self {
            jumps: [jump(DOCKER_USER, &forward_chain), jump(INPUT, &input_chain)],
            forward_chain,
            input_chain,
            forward,
            input,
            comment,
        }
    }

    /// What is wrong with the live rules in `listing` (the output of `iptables -S`).
    pub(crate) fn drift(&self, listing: &str) -> Vec<Drift> {
        let lines: Vec<&str> = listing.lines().map(str::trim_end).collect();
        let mut drift = Vec::new();
        for (chain, rules) in [
            (&self.forward_chain, &self.forward),
            (&self.input_chain, &self.input),
        ] {
            if !lines.contains(&format!("-N {chain}").as_str()) {
                drift.push(Drift::MissingChain(chain.clone()));
                continue;
            }
            let prefix = format!("-A {chain} ");
            let live: Vec<&str> = lines
                .iter()
                .filter_map(|line| line.strip_prefix(&prefix))
                .collect();
            if live != rules.iter().map(String::as_str).collect::<Vec<_>>() {
                drift.push(Drift::ChainChanged(chain.clone()));
            }
        }
        for jump in &self.jumps {
            let count = lines.iter().filter(|line| **line == jump.line()).count();
            match count {
                1 => {}
                0 => drift.push(Drift::MissingJump(jump.from)),
                n => drift.push(Drift::DuplicateJumps(jump.from, n)),
            }
            // A jump into our chain that is not ours: another deployment hashed to the same tag.
            let target = format!("-j {}", jump.to);
            if let Some(foreign) = lines.iter().find(|line| {
                line.starts_with("-A ")
                    && line.ends_with(&target)
                    && !line.contains(&format!("\"{}\"", self.comment))
            }) {
                drift.push(Drift::Foreign((*foreign).to_owned()));
            }
        }
        drift
    }

    /// The `iptables-restore --noflush` input that puts the rules in place in one transaction:
    /// both chains declared (created, or flushed when they exist) and refilled, a missing jump
    /// inserted at the top of its built-in chain, surplus jumps deleted. Nothing else is touched.
    pub(crate) fn restore_input(&self, listing: &str) -> String {
        let mut text = String::from("*filter\n");
        for chain in [&self.forward_chain, &self.input_chain] {
            text.push_str(&format!(":{chain} - [0:0]\n"));
        }
        for (chain, rules) in [
            (&self.forward_chain, &self.forward),
            (&self.input_chain, &self.input),
        ] {
            for rule in rules {
                text.push_str(&format!("-A {chain} {rule}\n"));
            }
        }
        for jump in &self.jumps {
            let count = listing
                .lines()
                .filter(|line| line.trim_end() == jump.line())
                .count();
            if count == 0 {
                text.push_str(&format!("-I {} 1 {}\n", jump.from, jump.spec));
            }
            for _ in 1..count {
                text.push_str(&format!("-D {} {}\n", jump.from, jump.spec));
            }
        }
        text.push_str("COMMIT\n");
        text
    }
}

/// One way the live rules differ from the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Drift {
    MissingChain(String),
    /// The chain exists but its rules are not exactly ours (edited, flushed, reordered).
    ChainChanged(String),
    MissingJump(&'static str),
    DuplicateJumps(&'static str, usize),
    /// A rule of someone else jumps into our chain.
    Foreign(String),
}

impl std::fmt::Display for Drift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::MissingChain(chain) => write!(f, "chain {chain} missing"),
            Self::ChainChanged(chain) => write!(f, "chain {chain} changed"),
            Self::MissingJump(from) => write!(f, "jump from {from} missing"),
            Self::DuplicateJumps(from, n) => write!(f, "{n} jumps from {from}"),
            Self::Foreign(line) => write!(f, "foreign rule `{line}`"),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use sandboxd_domain::{AgentProfile, Cidr};

    fn plan() -> EgressPlan {
        let mut profiles = Vec::new();
        for (name, egress, allow) in [
            ("n", Egress::None, vec![]),
            ("p", Egress::Public, vec![]),
            ("a", Egress::Allow, vec!["198.51.100.0/24"]),
            ("o", Egress::Open, vec![]),
        ] {
            let mut profile = AgentProfile::new("img");
            profile.egress = egress;
            profile.egress_allow = allow.into_iter().map(|c| Cidr::parse(c).unwrap()).collect();
            profiles.push((name, profile));
        }
        EgressPlan::new("test", profiles.iter().map(|(n, p)| (*n, p))).unwrap()
    }

    /// What `iptables -S` prints once `rules` are installed (plus Docker's own lines).
    fn listing(rules: &RuleSet) -> String {
        let mut text = String::from("-P INPUT ACCEPT\n-N DOCKER-USER\n");
        text.push_str(&format!(
            "-N {}\n-N {}\n",
            rules.forward_chain, rules.input_chain
        ));
        for jump in &rules.jumps {
            text.push_str(&format!("{}\n", jump.line()));
        }
        text.push_str("-A DOCKER-USER -j RETURN\n");
        for rule in &rules.forward {
            text.push_str(&format!("-A {} {rule}\n", rules.forward_chain));
        }
        for rule in &rules.input {
            text.push_str(&format!("-A {} {rule}\n", rules.input_chain));
        }
        text
    }

    #[test]
    fn each_policy_gets_its_rules_and_everything_else_is_rejected() {
        let rules = RuleSet::of(&plan());
        let forward = rules.forward.join("\n");
        let input = rules.input.join("\n");
        assert_eq!(
            rules.forward.first().unwrap(),
            &established("sandboxd:test")
        );
        assert_eq!(rules.forward.last().unwrap(), REJECT);
        assert_eq!(rules.input.last().unwrap(), REJECT);
        let bridge = |class: &str| format!("{}{class}", bridge_prefix("test"));
        assert!(!forward.contains(&bridge("none")), "none falls through");
        assert!(forward.contains(&format!("-d 169.254.0.0/16 -i {} {REJECT}", bridge("pub"))));
        assert!(forward.contains(&format!("-i {} -j RETURN", bridge("open"))));
        assert!(input.contains(&format!("-i {} -j RETURN", bridge("open"))));
        assert!(
            !input.contains(&bridge("pub")),
            "the host is not the internet"
        );
        assert!(forward.contains("-d 198.51.100.0/24 -i sbx"));
        assert!(rules.jumps[0].spec.contains("--comment \"sandboxd:test\""));
    }

    #[test]
    fn installed_rules_show_no_drift_and_every_change_is_seen() {
        let rules = RuleSet::of(&plan());
        let good = listing(&rules);
        assert_eq!(rules.drift(&good), vec![]);

        let doubled = format!("{good}{}\n", rules.jumps[0].line());
        assert_eq!(
            rules.drift(&doubled),
            vec![Drift::DuplicateJumps(DOCKER_USER, 2)]
        );
        let no_jump = good.replace(&format!("{}\n", rules.jumps[1].line()), "");
        assert_eq!(rules.drift(&no_jump), vec![Drift::MissingJump(INPUT)]);
        let edited = good.replacen(" -j RETURN\n", " -j ACCEPT\n", 2);
        assert!(!rules.drift(&edited).is_empty());
        let flushed: String = good
            .lines()
            .filter(|line| !line.starts_with(&format!("-A {} ", rules.input_chain)))
            .map(|line| format!("{line}\n"))
            .collect();
        assert_eq!(
            rules.drift(&flushed),
            vec![Drift::ChainChanged(rules.input_chain.clone())]
        );
        let foreign = format!("{good}-A INPUT -i x -j {}\n", rules.input_chain);
        assert!(matches!(rules.drift(&foreign)[..], [Drift::Foreign(_)]));
    }

    #[test]
    fn restore_input_adds_missing_jumps_and_removes_surplus_ones() {
        let rules = RuleSet::of(&plan());
        let fresh = rules.restore_input("");
        assert!(fresh.starts_with("*filter\n:SBX-"));
        assert!(fresh.ends_with("COMMIT\n"));
        assert_eq!(fresh.matches("-I DOCKER-USER 1 ").count(), 1);
        assert_eq!(fresh.matches("-I INPUT 1 ").count(), 1);

        let installed = listing(&rules);
        let refill = rules.restore_input(&installed);
        assert!(!refill.contains("-I "), "{refill}");
        let tripled = format!(
            "{installed}{}\n{}\n",
            rules.jumps[1].line(),
            rules.jumps[1].line()
        );
        assert_eq!(
            rules.restore_input(&tripled).matches("-D INPUT ").count(),
            2
        );
    }
}
