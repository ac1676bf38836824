//! The packet filter through the `iptables` binaries (Debian's docker.io depends on them, and they
//! drive whichever backend, nf_tables or legacy, the engine's own rules use): one listing
//! (`iptables -S`) to check, one `iptables-restore --noflush` transaction to install, so the rules
//! are never half in place.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use super::names::{EGRESS_RULE_REPAIRS_TOTAL, EVENT_RULES_INSTALLED, EVENT_RULES_REPAIRED};
use super::plan::EgressPlan;
use super::rules::{Drift, RuleSet};

/// Bound on one run of a binary: a wedged xtables lock must not hang a health check.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// Seconds the binaries wait for the xtables lock (legacy backend) before giving up.
const LOCK_WAIT_SECS: &str = "5";

/// Why the rules could not be checked or installed.
#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error("cannot run `{program}` (egress enforcement needs the iptables binaries on the PATH)")]
    Spawn {
        program: &'static str,
        source: std::io::Error,
    },
    #[error("`{program}` failed ({status}): {stderr} (is sandboxd root, with CAP_NET_ADMIN?)")]
    Failed {
        program: &'static str,
        status: String,
        stderr: String,
    },
    #[error("`{program}` did not finish within {COMMAND_TIMEOUT:?}")]
    TimedOut { program: &'static str },
    #[error(
        "the packet filter has no DOCKER-USER chain: is dockerd running with its iptables rules \
         (the default)?"
    )]
    NoDockerUserChain,
    #[error("chain {chain} is also used by another deployment ({line}); choose another key_prefix")]
    Foreign { chain: String, line: String },
    #[error("the rules still differ after installing them: {0}")]
    StillDrifting(String),
}

/// The result of a check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checked {
    Intact,
    /// The rules had drifted and were put back; what was wrong.
    Repaired(Vec<Drift>),
}

/// One deployment's egress rules on this host.
#[derive(Debug, Clone)]
pub struct EgressFirewall {
    rules: RuleSet,
    networks: usize,
}

impl EgressFirewall {
    /// The firewall for `plan`; `None` when nothing is restricted (only `open` profiles).
    #[must_use]
    pub fn new(plan: &EgressPlan) -> Option<Self> {
        plan.needs_packet_filter().then(|| Self {
            rules: RuleSet::of(plan),
            networks: plan.networks().count(),
        })
    }

    /// Puts the rules in place, idempotently: the own chains refilled, exactly one jump to each.
    ///
    /// # Errors
    /// [`FirewallError`] when the binaries are missing, refuse (not root), the engine's chain is
    /// missing, another deployment uses the chains, or the rules do not read back as written.
    pub async fn install(&self) -> Result<(), FirewallError> {
        let listing = list().await?;
        self.apply(&listing).await?;
        tracing::info!(
            name: EVENT_RULES_INSTALLED,
            forward_chain = %self.rules.forward_chain,
            input_chain = %self.rules.input_chain,
            networks = self.networks,
            message = EVENT_RULES_INSTALLED,
        );
        Ok(())
    }

    /// Compares the live rules with the plan and reinstalls them when they differ (a flushed
    /// chain, a lost jump after an engine restart, a duplicate from a concurrent start).
    ///
    /// # Errors
    /// As [`Self::install`].
    pub async fn check(&self) -> Result<Checked, FirewallError> {
        let listing = list().await?;
        let drift = self.rules.drift(&listing);
        if drift.is_empty() {
            return Ok(Checked::Intact);
        }
        self.apply(&listing).await?;
        metrics::counter!(EGRESS_RULE_REPAIRS_TOTAL).increment(1);
        tracing::warn!(
            name: EVENT_RULES_REPAIRED,
            drift = %describe(&drift),
            forward_chain = %self.rules.forward_chain,
            message = EVENT_RULES_REPAIRED,
        );
        Ok(Checked::Repaired(drift))
    }

    /// Writes the rules over `listing` (the state they are written against), then reads back.
    async fn apply(&self, listing: &str) -> Result<(), FirewallError> {
        if !listing
            .lines()
            .any(|line| line.trim_end() == "-N DOCKER-USER")
        {
            return Err(FirewallError::NoDockerUserChain);
        }
        if let Some(Drift::Foreign(line)) = self
            .rules
            .drift(listing)
            .into_iter()
            .find(|d| matches!(d, Drift::Foreign(_)))
        {
            return Err(FirewallError::Foreign {
                chain: self.rules.forward_chain.clone(),
                line,
            });
        }
        restore(&self.rules.restore_input(listing)).await?;
        let after = self.rules.drift(&list().await?);
        if after.is_empty() {
            Ok(())
        } else {
            Err(FirewallError::StillDrifting(describe(&after)))
        }
    }
}

fn describe(drift: &[Drift]) -> String {
    drift
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// `iptables -S`: every rule of the filter table, in the form the rules are written in.
async fn list() -> Result<String, FirewallError> {
    run("iptables", &["-w", LOCK_WAIT_SECS, "-S"], None).await
}

/// One atomic `iptables-restore --noflush` transaction.
async fn restore(input: &str) -> Result<(), FirewallError> {
    run(
        "iptables-restore",
        &["-w", LOCK_WAIT_SECS, "--noflush"],
        Some(input),
    )
    .await
    .map(drop)
}

async fn run(
    program: &'static str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<String, FirewallError> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| FirewallError::Spawn { program, source })?;
    let finished = async {
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(input.as_bytes()).await?;
            // Dropping the pipe closes it: the program reads to its end.
        }
        child.wait_with_output().await
    };
    let output = tokio::time::timeout(COMMAND_TIMEOUT, finished)
        .await
        .map_err(|_| FirewallError::TimedOut { program })?
        .map_err(|source| FirewallError::Spawn { program, source })?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(FirewallError::Failed {
            program,
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}
