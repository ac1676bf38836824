//! What a sandboxd installs on the host for its egress policies, found and removed from outside
//! (the kit never depends on the layers it tests): its bridge networks, labelled like its
//! containers (`{prefix}.managed-by=sandboxd`), and its packet-filter chains, each jump and each
//! chain's first rule carrying the comment `sandboxd:{prefix}`.

use std::collections::{BTreeSet, HashMap};

use bollard::Docker;
use bollard::query_parameters::ListNetworksOptionsBuilder;
use tokio::process::Command;

use crate::{Error, Result};

/// The comment sandboxd puts on the rules of the deployment `prefix`.
#[must_use]
pub fn owner_comment(prefix: &str) -> String {
    format!("sandboxd:{prefix}")
}

/// Removes every network carrying `filter` (`label` or `label=value`); returns how many. A network
/// still in use (a container attached) is an error.
///
/// # Errors
/// When the engine refuses a listing or a removal.
pub async fn remove_networks(docker: &Docker, filter: &str) -> Result<usize> {
    let filters = HashMap::from([("label", vec![filter.to_owned()])]);
    let options = ListNetworksOptionsBuilder::new().filters(&filters).build();
    let mut removed = 0;
    for network in docker.list_networks(Some(options)).await? {
        let Some(id) = network.id else { continue };
        match docker.remove_network(&id).await {
            Ok(())
            | Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => removed += 1,
            Err(error) => return Err(error.into()),
        }
    }
    Ok(removed)
}

/// The filter-table rules (`iptables -S` lines) that carry `comment`, and the chains they belong
/// to or jump into (those whose names start with `SBX-`).
async fn owned_rules(comment: &str) -> Result<(Vec<String>, BTreeSet<String>)> {
    let listing = iptables(&["-w", "5", "-S"]).await?;
    let quoted = format!("--comment \"{comment}\"");
    let mut jumps = Vec::new();
    let mut chains = BTreeSet::new();
    for line in listing.lines().filter(|line| line.contains(&quoted)) {
        let mut words = line.split_whitespace();
        let (Some("-A"), Some(chain)) = (words.next(), words.next()) else {
            continue;
        };
        if chain.starts_with("SBX-") {
            chains.insert(chain.to_owned());
        } else {
            jumps.push(line.to_owned());
            if let Some(target) = line.rsplit_once(" -j ").map(|(_, target)| target.trim()) {
                chains.insert(target.to_owned());
            }
        }
    }
    Ok((jumps, chains))
}

/// Removes the packet-filter jumps and chains of the deployment `prefix`; returns how many rules
/// and chains it removed.
///
/// # Errors
/// When `iptables` fails.
pub async fn remove_rules(prefix: &str) -> Result<usize> {
    let (jumps, chains) = owned_rules(&owner_comment(prefix)).await?;
    for jump in &jumps {
        // `-A CHAIN spec` → `-D CHAIN spec`; the comment holds no spaces, so its quotes can go.
        let spec = jump.replacen("-A ", "-D ", 1).replace('"', "");
        let mut args = vec!["-w", "5"];
        args.extend(spec.split_whitespace());
        iptables(&args).await?;
    }
    for chain in &chains {
        iptables(&["-w", "5", "-F", chain]).await?;
        iptables(&["-w", "5", "-X", chain]).await?;
    }
    Ok(jumps.len() + chains.len())
}

/// Every deployment prefix that has rules on this host (from the comments), for sweeps.
///
/// # Errors
/// When `iptables` fails.
pub async fn prefixes_with_rules() -> Result<BTreeSet<String>> {
    let listing = iptables(&["-w", "5", "-S"]).await?;
    Ok(listing
        .lines()
        .filter_map(|line| line.split_once("--comment \"sandboxd:"))
        .filter_map(|(_, rest)| rest.split_once('"'))
        .map(|(prefix, _)| prefix.to_owned())
        .collect())
}

/// How many filter-table lines of `iptables -S` mention the deployment `prefix`'s chains or
/// carry its comment: what a restart must leave unchanged.
///
/// # Errors
/// When `iptables` fails.
pub async fn rule_lines(prefix: &str) -> Result<Vec<String>> {
    let (_, chains) = owned_rules(&owner_comment(prefix)).await?;
    let listing = iptables(&["-w", "5", "-S"]).await?;
    let quoted = format!("\"{}\"", owner_comment(prefix));
    Ok(listing
        .lines()
        .filter(|line| {
            line.contains(&quoted) || line.split_whitespace().any(|word| chains.contains(word))
        })
        .map(str::to_owned)
        .collect())
}

async fn iptables(args: &[&str]) -> Result<String> {
    let output = Command::new("iptables").args(args).output().await?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(Error::Failed(format!(
            "iptables {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}
