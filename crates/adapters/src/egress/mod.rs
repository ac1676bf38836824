//! Egress enforcement on the host, for the Docker runtime: one bridge network per egress class of
//! a deployment (inter-container traffic off, a bridge interface named from the key prefix) and
//! packet-filter rules for those bridges in chains of the deployment's own, jumped to from
//! `DOCKER-USER` (forwarded traffic) and `INPUT` (traffic to the host's own addresses).
//!
//! [`plan`] names the networks, [`rules`] writes the rules as text, [`firewall`] runs the
//! `iptables` binaries; the Docker runtime creates the networks and attaches sandboxes to them.
//! Domain names are never resolved: an allow list holds address ranges only.

mod firewall;
pub mod names;
mod plan;
mod rules;

pub use firewall::{Checked, EgressFirewall, FirewallError};
pub use plan::{EgressNetwork, EgressPlan, EgressPlanError, bridge_prefix, chain_names};
pub use rules::{Drift, owner_comment};
