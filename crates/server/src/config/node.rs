//! The `node` section: fleet mode, switched on by `node_id` (unset: one node, exactly the
//! single-node product): this node's name, its node API's listener and advertised address, and
//! its heartbeat lease in the registry.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use sandboxd_domain::{NodeId, de_duration};
use serde::Deserialize;

use super::ConfigError;
use super::flags::Setting;

/// Shortest heartbeat TTL: three beats per TTL must each have time for a Redis round trip.
const MIN_HEARTBEAT_TTL: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct NodeSettings {
    /// This node's name in the fleet; unset = single-node mode.
    pub node_id: Option<String>,
    /// Where this node serves the internal node API (`sandbox.node.v1`) in fleet mode.
    pub node_grpc_addr: SocketAddr,
    /// `host:port` other nodes reach the node API at; unset = `node_grpc_addr` (which must then
    /// not be a wildcard address).
    pub node_advertise_addr: Option<String>,
    /// How long a registration lives without a renewal; beats come every third of it.
    #[serde(deserialize_with = "de_duration")]
    pub node_heartbeat_ttl: Duration,
    /// PEM CA bundle the other nodes' certificates chain to, when the gRPC ports speak TLS
    /// (`tls_cert_file`): the node API is served with the same TLS, and this node calls the
    /// others with it, presenting its own certificate.
    pub node_tls_ca_file: Option<PathBuf>,
}

impl Default for NodeSettings {
    fn default() -> Self {
        Self {
            node_id: None,
            node_grpc_addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 50052)),
            node_advertise_addr: None,
            node_heartbeat_ttl: Duration::from_secs(10),
            node_tls_ca_file: None,
        }
    }
}

pub(crate) const SETTINGS: &[Setting] = &[
    Setting::unset(
        "node_id",
        "NAME",
        "none, single-node mode",
        "This node's name in a fleet ([a-z0-9.-], up to 63); set = fleet mode",
    ),
    Setting::new(
        "node_grpc_addr",
        "ADDR",
        "127.0.0.1:50052",
        "Fleet mode: the internal node API's listen address",
    ),
    Setting::unset(
        "node_advertise_addr",
        "HOST:PORT",
        "node_grpc_addr",
        "Fleet mode: where other nodes reach this node's API",
    ),
    Setting::new(
        "node_heartbeat_ttl",
        "DURATION",
        "10s",
        "Fleet mode: a node not renewing its registration this long is lost",
    ),
    Setting::unset(
        "node_tls_ca_file",
        "FILE",
        "none, plaintext node calls",
        "Fleet mode with TLS: PEM CA the other nodes' certificates chain to",
    ),
];

impl NodeSettings {
    /// `tls` says whether the gRPC ports speak TLS (`tls_cert_file`): the node API then does
    /// too, and the other nodes' CA must be known.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the setting.
    pub(crate) fn validate(&self, tls: bool) -> Result<(), ConfigError> {
        let Some(raw) = &self.node_id else {
            return Ok(());
        };
        match (&self.node_tls_ca_file, tls) {
            (None, true) => {
                return Err(ConfigError::invalid(
                    "node_tls_ca_file",
                    "must be set in fleet mode when tls_cert_file is (the node API speaks TLS)",
                ));
            }
            (Some(_), false) => {
                return Err(ConfigError::invalid(
                    "node_tls_ca_file",
                    "needs tls_cert_file and tls_key_file (this node's certificate)",
                ));
            }
            (Some(ca), true) => super::server::read_pem_certificates("node_tls_ca_file", ca)?,
            (None, false) => {}
        }
        NodeId::parse(raw).map_err(|error| ConfigError::invalid("node_id", error.to_string()))?;
        if self.node_heartbeat_ttl < MIN_HEARTBEAT_TTL {
            return Err(ConfigError::invalid(
                "node_heartbeat_ttl",
                "must be at least 1s",
            ));
        }
        match &self.node_advertise_addr {
            Some(address) => {
                let valid = address.rsplit_once(':').is_some_and(|(host, port)| {
                    !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
                });
                if !valid {
                    return Err(ConfigError::invalid(
                        "node_advertise_addr",
                        "must be host:port with a non-zero port",
                    ));
                }
            }
            None if self.node_grpc_addr.ip().is_unspecified()
                || self.node_grpc_addr.port() == 0 =>
            {
                return Err(ConfigError::invalid(
                    "node_advertise_addr",
                    "must be set when node_grpc_addr is a wildcard address or port 0",
                ));
            }
            None => {}
        }
        Ok(())
    }

    /// This node's id in fleet mode; `None` in single-node mode.
    pub(crate) fn node_id(&self) -> Option<NodeId> {
        self.node_id
            .as_deref()
            .and_then(|raw| NodeId::parse(raw).ok())
    }

    /// Where other nodes reach this node's API.
    pub(crate) fn advertise_addr(&self) -> String {
        self.node_advertise_addr
            .clone()
            .unwrap_or_else(|| self.node_grpc_addr.to_string())
    }
}
