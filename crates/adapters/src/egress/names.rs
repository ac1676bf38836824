//! Every metric name, label value and log event name of the egress enforcement, in one place.

/// Counter: times the check found the deployment's packet-filter rules changed or missing and put
/// them back.
pub const EGRESS_RULE_REPAIRS_TOTAL: &str = "sandbox_egress_rule_repairs_total";

/// Event: the rules were installed at start (info).
pub const EVENT_RULES_INSTALLED: &str = "egress_rules_installed";
/// Event: a check found drift and reinstalled the rules (warn), with what was wrong.
pub const EVENT_RULES_REPAIRED: &str = "egress_rules_repaired";
/// Event: every profile is `open`, so no packet filter rule is installed (info).
pub const EVENT_NO_PACKET_FILTER: &str = "egress_packet_filter_not_needed";
/// Event: a bridge network of the deployment was created on the engine (info).
pub const EVENT_NETWORK_CREATED: &str = "egress_network_created";

/// HELP text of the counters above, for the exporter's `describe_counter` calls.
pub const DESCRIPTIONS: &[(&str, &str)] = &[(
    EGRESS_RULE_REPAIRS_TOTAL,
    "Times the health check found this deployment's egress packet-filter rules missing or changed and reinstalled them.",
)];
