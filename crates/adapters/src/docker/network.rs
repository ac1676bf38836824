//! The deployment's bridge networks on the engine, one per egress class (see
//! `crate::egress::plan`): created on first use, idempotently, with inter-container traffic off
//! (sandboxes never reach each other) and the bridge interface named so the packet filter can
//! match it. Labelled like containers (`{prefix}.managed-by`), never removed by sandboxd: running
//! sandboxes may be attached.

use std::collections::HashMap;

use bollard::Docker;
use bollard::models::NetworkCreateRequest;
use sandboxd_usecase::ports::RuntimeError;

use super::engine::{engine_error, is_not_found, other};
use super::labels::LabelKeys;
use crate::egress::EgressNetwork;
use crate::egress::names::EVENT_NETWORK_CREATED;

/// After a refused creation, how often and how far apart the network is looked for (another
/// process's creation finishing): about a second in all.
const CONCURRENT_CREATION_CHECKS: usize = 10;
const CONCURRENT_CREATION_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);

/// The engine option naming the bridge interface on the host.
const BRIDGE_NAME_OPTION: &str = "com.docker.network.bridge.name";
/// The engine option that, set to false, drops traffic between containers of one bridge.
const ICC_OPTION: &str = "com.docker.network.bridge.enable_icc";

/// Makes sure `network` exists with the bridge name the rules match.
pub(super) async fn ensure(
    docker: &Docker,
    network: &EgressNetwork,
    labels: &LabelKeys,
) -> Result<(), RuntimeError> {
    if exists_as_planned(docker, network).await? {
        return Ok(());
    }
    let request = NetworkCreateRequest {
        name: network.name.clone(),
        driver: Some("bridge".to_owned()),
        internal: Some(false),
        // Sandboxes get no IPv6 address: the rules are IPv4 only.
        enable_ipv6: Some(false),
        options: Some(HashMap::from([
            (BRIDGE_NAME_OPTION.to_owned(), network.bridge.clone()),
            (ICC_OPTION.to_owned(), "false".to_owned()),
        ])),
        labels: Some(labels.for_network(network.egress)),
        ..Default::default()
    };
    match docker.create_network(request).await {
        Ok(_) => {
            tracing::info!(
                name: EVENT_NETWORK_CREATED,
                network = %network.name,
                bridge = %network.bridge,
                egress = %network.egress,
                message = EVENT_NETWORK_CREATED,
            );
            Ok(())
        }
        // Another process of the deployment created it meanwhile: the engine refuses a second
        // bridge of the same name, so it exists now, as planned or not. The engine reserves the
        // bridge before the network can be inspected by name: give the other creation a moment.
        Err(error) => {
            for _ in 0..CONCURRENT_CREATION_CHECKS {
                if exists_as_planned(docker, network).await? {
                    return Ok(());
                }
                tokio::time::sleep(CONCURRENT_CREATION_PAUSE).await;
            }
            Err(engine_error(error))
        }
    }
}

/// Whether the network exists; an error when it exists with another bridge name (rules would not
/// match its traffic) or with inter-container traffic on.
async fn exists_as_planned(docker: &Docker, network: &EgressNetwork) -> Result<bool, RuntimeError> {
    let inspected = match docker.inspect_network(&network.name, None).await {
        Ok(inspected) => inspected,
        Err(error) if is_not_found(&error) => return Ok(false),
        Err(error) => return Err(engine_error(error)),
    };
    let options = inspected.options.unwrap_or_default();
    let bridge = options.get(BRIDGE_NAME_OPTION).map(String::as_str);
    let icc = options.get(ICC_OPTION).map(String::as_str);
    if bridge == Some(network.bridge.as_str()) && icc == Some("false") {
        Ok(true)
    } else {
        Err(other(format!(
            "network {} exists with bridge {bridge:?} and {ICC_OPTION} {icc:?}, not bridge {} \
             without inter-container traffic: remove it (docker network rm) once no container \
             uses it",
            network.name, network.bridge
        )))
    }
}
