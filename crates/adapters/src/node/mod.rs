//! The runtime of another node (fleet mode): [`RemoteRuntime`] implements the runtime port over
//! that node's internal API, `sandbox.node.v1.NodeRuntime` (`docs/fleet-design.md`, "Node API").
//!
//! Container ids here are the serving node's engine ids; which node to call is the use cases'
//! routing (`usecase::Engines`). A create names the agent, not the profile: the serving node
//! starts its own profile of it (every node has the same agents). The warm pool stays node-local:
//! this client implements the engine's port only, not the pool's.

pub mod errors;
pub mod wire;

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sandboxd_api::node::v1 as api;
use sandboxd_api::node::v1::node_runtime_client::NodeRuntimeClient;
use sandboxd_domain::{AgentId, AgentProfile, ChatId, ContainerId, Endpoint, VolumePath};
use sandboxd_usecase::Profiles;
use sandboxd_usecase::ports::{
    ContainerState, ManagedContainer, NewSandbox, RuntimeError, SandboxRuntime, StartedSandbox,
};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{
    Certificate, Channel, ClientTlsConfig, Endpoint as ChannelEndpoint, Identity,
};
use tonic::{Request, Status};

use errors::NodeCallError;

/// How to reach one other node's API.
#[derive(Clone)]
pub struct RemoteNodeConfig {
    /// `host:port` of the node's API (its advertised address).
    pub address: String,
    /// The deployment's bearer token, sent as `authorization: Bearer <token>`; `None` when the
    /// nodes run without one. A secret: never logged, never in `Debug`.
    pub token: Option<Arc<str>>,
    /// TLS to the node (`https`); `None` for plain HTTP/2 on a trusted network.
    pub tls: Option<NodeClientTls>,
    /// Bound on establishing a connection.
    pub connect_timeout: Duration,
    /// Bound on each call, past which the node counts as unreachable (`Unavailable`). A create
    /// or start gets the profile's `ready_timeout` on top, as it waits for readiness. Must exceed
    /// the serving engine's own per-call bound, which a graceful stop waits out.
    pub call_timeout: Duration,
}

impl std::fmt::Debug for RemoteNodeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteNodeConfig")
            .field("address", &self.address)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls)
            .field("connect_timeout", &self.connect_timeout)
            .field("call_timeout", &self.call_timeout)
            .finish()
    }
}

/// The client side of TLS to a node.
#[derive(Clone)]
pub struct NodeClientTls {
    /// PEM of the CA the node's certificate must chain to.
    pub ca_pem: Vec<u8>,
    /// PEM certificate and key this node presents (mutual TLS); `None` for server-only TLS.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// The name to verify the node's certificate against; `None` = the address's host.
    pub domain: Option<String>,
}

impl std::fmt::Debug for NodeClientTls {
    // The key is a secret; the PEMs are noise.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeClientTls")
            .field("mutual", &self.identity.is_some())
            .field("domain", &self.domain)
            .finish_non_exhaustive()
    }
}

/// Why a [`RemoteRuntime`] cannot be built (all configuration errors: nothing is dialled yet).
#[derive(Debug, thiserror::Error)]
pub enum NodeClientError {
    #[error("node address {address:?} is not a usable host:port")]
    Address {
        address: String,
        #[source]
        source: tonic::transport::Error,
    },
    /// The token has characters a header cannot carry (the error leaves the token out).
    #[error("the node API token cannot be sent in an authorization header")]
    Token,
    /// The CA PEM holds no well-formed certificate: no node could ever be verified.
    #[error("the CA for node {address} holds no PEM certificate")]
    NoCaCertificate { address: String },
    #[error("the TLS settings for node {address} are not usable")]
    Tls {
        address: String,
        #[source]
        source: tonic::transport::Error,
    },
    /// The lazy channel needs a Tokio runtime to run its connection task.
    #[error("a node client must be built inside a Tokio runtime")]
    NoRuntime,
}

/// At least one PEM `CERTIFICATE` block, every one well-formed (tonic skips what it cannot
/// parse, which would leave the client trusting nothing).
fn holds_certificates(pem: &[u8]) -> bool {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject as _;
    let mut certificates = CertificateDer::pem_slice_iter(pem).peekable();
    certificates.peek().is_some() && certificates.all(|certificate| certificate.is_ok())
}

/// Adds the bearer token to every call.
#[derive(Clone)]
struct BearerToken(Option<MetadataValue<Ascii>>);

impl Interceptor for BearerToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

type Client = NodeRuntimeClient<InterceptedService<Channel, BearerToken>>;

/// Another node's engine, through its node API.
///
/// `validate` checks nothing here: the volume policy is the same on every node and
/// CreateSandbox validates with the local engine before it places; the serving node checks
/// again at create, and its refusal comes back as the same `VolumeInvalid`/`VolumeDenied`.
#[derive(Clone)]
pub struct RemoteRuntime {
    /// The node's address, for error messages.
    node: Arc<str>,
    client: Client,
    /// To name the agent of a `start`, whose port call passes only the profile.
    profiles: Profiles,
    call_timeout: Duration,
}

impl std::fmt::Debug for RemoteRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteRuntime")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl RemoteRuntime {
    /// A client of the node at `config.address`. Connects lazily, on the first call (and again
    /// after a lost connection), so building never blocks or fails on a node that is down.
    ///
    /// # Errors
    /// [`NodeClientError`] for a bad address, token or TLS setting, or outside a Tokio runtime.
    pub fn new(config: RemoteNodeConfig, profiles: Profiles) -> Result<Self, NodeClientError> {
        let RemoteNodeConfig {
            address,
            token,
            tls,
            connect_timeout,
            call_timeout,
        } = config;
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(NodeClientError::NoRuntime);
        }
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut endpoint = ChannelEndpoint::from_shared(format!("{scheme}://{address}"))
            .map_err(|source| NodeClientError::Address {
                address: address.clone(),
                source,
            })?
            .connect_timeout(connect_timeout)
            .tcp_nodelay(true);
        if let Some(tls) = tls {
            if !holds_certificates(&tls.ca_pem) {
                return Err(NodeClientError::NoCaCertificate { address });
            }
            let mut settings =
                ClientTlsConfig::new().ca_certificate(Certificate::from_pem(tls.ca_pem));
            if let Some((cert, key)) = tls.identity {
                settings = settings.identity(Identity::from_pem(cert, key));
            }
            if let Some(domain) = tls.domain {
                settings = settings.domain_name(domain);
            }
            endpoint = endpoint
                .tls_config(settings)
                .map_err(|source| NodeClientError::Tls {
                    address: address.clone(),
                    source,
                })?;
        }
        let token = token
            .map(|token| {
                let mut value = MetadataValue::try_from(format!("Bearer {token}"))
                    .map_err(|_| NodeClientError::Token)?;
                value.set_sensitive(true);
                Ok(value)
            })
            .transpose()?;
        let client =
            NodeRuntimeClient::with_interceptor(endpoint.connect_lazy(), BearerToken(token));
        Ok(Self {
            node: Arc::from(address),
            client,
            profiles,
            call_timeout,
        })
    }

    /// Awaits one call under `timeout`, mapping every failure to the port's error.
    async fn finish<T>(
        &self,
        timeout: Duration,
        call: impl Future<Output = Result<tonic::Response<T>, Status>>,
    ) -> Result<T, RuntimeError> {
        match tokio::time::timeout(timeout, call).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(errors::runtime_error(&self.node, status)),
            Err(_elapsed) => Err(RuntimeError::Unavailable(Box::new(
                NodeCallError::TimedOut {
                    node: self.node.to_string(),
                    timeout,
                },
            ))),
        }
    }

    fn malformed(&self, source: wire::WireError) -> RuntimeError {
        RuntimeError::Other(Box::new(NodeCallError::Malformed {
            node: self.node.to_string(),
            source,
        }))
    }

    /// The configured agent whose profile is `profile`. Equal profiles are interchangeable: the
    /// serving node starts the container under its own profile of the agent either way.
    fn agent_of(&self, profile: &AgentProfile) -> Result<AgentId, RuntimeError> {
        self.profiles
            .iter()
            .find(|(_, configured)| *configured == profile)
            .map(|(agent_id, _)| agent_id.clone())
            .ok_or_else(|| {
                RuntimeError::Other(
                    "no configured agent has this profile, so no node can start it".into(),
                )
            })
    }
}

#[async_trait]
impl SandboxRuntime for RemoteRuntime {
    /// Always `Ok`: see the type's documentation.
    async fn validate(
        &self,
        _profile: &AgentProfile,
        _volume: &VolumePath,
    ) -> Result<(), RuntimeError> {
        Ok(())
    }

    async fn create(&self, spec: &NewSandbox) -> Result<StartedSandbox, RuntimeError> {
        let request = api::CreateRequest {
            sandbox: Some(wire::encode_new_sandbox(spec)),
        };
        let mut client = self.client.clone();
        let response = self
            .finish(
                self.call_timeout + spec.profile.ready_timeout,
                client.create(request),
            )
            .await?;
        let container_id = ContainerId::parse(&response.container_id).map_err(|e| {
            self.malformed(wire::WireError::Field {
                field: "container_id",
                problem: format!("is invalid: {e}"),
            })
        })?;
        Ok(StartedSandbox {
            container_id,
            endpoint: wire::decode_endpoint(response.endpoint).map_err(|e| self.malformed(e))?,
        })
    }

    async fn remove_gracefully(&self, container_id: &ContainerId) -> Result<(), RuntimeError> {
        let request = api::RemoveGracefullyRequest {
            container_id: container_id.to_string(),
        };
        let mut client = self.client.clone();
        self.finish(self.call_timeout, client.remove_gracefully(request))
            .await
            .map(drop)
    }

    async fn force_remove(&self, container_id: &ContainerId) -> Result<(), RuntimeError> {
        let request = api::ForceRemoveRequest {
            container_id: container_id.to_string(),
        };
        let mut client = self.client.clone();
        self.finish(self.call_timeout, client.force_remove(request))
            .await
            .map(drop)
    }

    async fn inspect(&self, container_id: &ContainerId) -> Result<ContainerState, RuntimeError> {
        let request = api::InspectRequest {
            container_id: container_id.to_string(),
        };
        let mut client = self.client.clone();
        let response = self
            .finish(self.call_timeout, client.inspect(request))
            .await?;
        wire::decode_state(response.state).map_err(|e| self.malformed(e))
    }

    async fn list_managed(&self) -> Result<Vec<ManagedContainer>, RuntimeError> {
        let mut client = self.client.clone();
        let response = self
            .finish(
                self.call_timeout,
                client.list_managed(api::ListManagedRequest {}),
            )
            .await?;
        wire::decode_managed_list(response.containers).map_err(|e| self.malformed(e))
    }

    async fn list_chat(&self, chat_id: &ChatId) -> Result<Vec<ManagedContainer>, RuntimeError> {
        let request = api::ListChatRequest {
            chat_id: chat_id.to_string(),
        };
        let mut client = self.client.clone();
        let response = self
            .finish(self.call_timeout, client.list_chat(request))
            .await?;
        wire::decode_managed_list(response.containers).map_err(|e| self.malformed(e))
    }

    async fn pause(&self, container_id: &ContainerId) -> Result<(), RuntimeError> {
        let request = api::PauseRequest {
            container_id: container_id.to_string(),
        };
        let mut client = self.client.clone();
        self.finish(self.call_timeout, client.pause(request))
            .await
            .map(drop)
    }

    async fn unpause(&self, container_id: &ContainerId) -> Result<(), RuntimeError> {
        let request = api::UnpauseRequest {
            container_id: container_id.to_string(),
        };
        let mut client = self.client.clone();
        self.finish(self.call_timeout, client.unpause(request))
            .await
            .map(drop)
    }

    async fn stop(&self, container_id: &ContainerId) -> Result<(), RuntimeError> {
        let request = api::StopRequest {
            container_id: container_id.to_string(),
        };
        let mut client = self.client.clone();
        self.finish(self.call_timeout, client.stop(request))
            .await
            .map(drop)
    }

    async fn start(
        &self,
        container_id: &ContainerId,
        profile: &AgentProfile,
    ) -> Result<Option<Endpoint>, RuntimeError> {
        let request = api::StartRequest {
            container_id: container_id.to_string(),
            agent_id: self.agent_of(profile)?.to_string(),
        };
        let mut client = self.client.clone();
        let response = self
            .finish(
                self.call_timeout + profile.ready_timeout,
                client.start(request),
            )
            .await?;
        wire::decode_endpoint(response.endpoint).map_err(|e| self.malformed(e))
    }

    async fn runtimes(&self) -> Result<BTreeSet<String>, RuntimeError> {
        let mut client = self.client.clone();
        let response = self
            .finish(self.call_timeout, client.runtimes(api::RuntimesRequest {}))
            .await?;
        Ok(response.runtimes.into_iter().collect())
    }

    async fn ping(&self) -> Result<(), RuntimeError> {
        let mut client = self.client.clone();
        self.finish(self.call_timeout, client.ping(api::PingRequest {}))
            .await
            .map(drop)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn config(address: &str, token: Option<&str>) -> RemoteNodeConfig {
        RemoteNodeConfig {
            address: address.to_owned(),
            token: token.map(Arc::from),
            tls: None,
            connect_timeout: Duration::from_secs(1),
            call_timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn building_needs_a_tokio_runtime() {
        let built = RemoteRuntime::new(config("10.0.0.2:7443", None), Profiles::default());
        assert!(
            matches!(built, Err(NodeClientError::NoRuntime)),
            "{built:?}"
        );
    }

    #[tokio::test]
    async fn bad_settings_are_refused_and_the_token_is_never_printed() {
        let secret = "t0ken-value";
        let built = RemoteRuntime::new(
            config("10.0.0.2:7443", Some("line\nbreak")),
            Profiles::default(),
        );
        assert!(matches!(built, Err(NodeClientError::Token)), "{built:?}");
        let built = RemoteRuntime::new(config("not a host", None), Profiles::default());
        assert!(
            matches!(built, Err(NodeClientError::Address { .. })),
            "{built:?}"
        );
        let mut with_tls = config("10.0.0.2:7443", Some(secret));
        with_tls.tls = Some(NodeClientTls {
            ca_pem: b"not a certificate".to_vec(),
            identity: None,
            domain: None,
        });
        let built = RemoteRuntime::new(with_tls.clone(), Profiles::default());
        assert!(
            matches!(built, Err(NodeClientError::NoCaCertificate { .. })),
            "{built:?}"
        );
        assert!(!format!("{with_tls:?}").contains(secret));

        let remote =
            RemoteRuntime::new(config("10.0.0.2:7443", Some(secret)), Profiles::default()).unwrap();
        assert!(!format!("{remote:?}").contains(secret));
    }
}
