//! Fleet mode's node API end to end in process: the serving half (`node_runtime_server` over the
//! fake runtime, behind the bearer token) on port 0, driven by the client half
//! (`sandboxd_adapters::node::RemoteRuntime`). Every port method that travels must agree with
//! the fake it reaches, and every `RuntimeError` must come back as itself.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sandboxd_adapters::node::{NodeClientTls, RemoteNodeConfig, RemoteRuntime};
use sandboxd_api::node::v1 as api;
use sandboxd_api::node::v1::node_runtime_client::NodeRuntimeClient;
use sandboxd_domain::{AgentId, AgentProfile, ChatId, ContainerId, SessionId, VolumePath};
use sandboxd_server::auth::BearerAuth;
use sandboxd_server::node_runtime_server;
use sandboxd_usecase::Profiles;
use sandboxd_usecase::ports::{
    ContainerState, NewSandbox, RuntimeError, SandboxLabels, SandboxRuntime, VolumeRefusal,
};
use sandboxd_usecase::testing::{CallLog, FakeRuntime, RuntimeOp};
use time::OffsetDateTime;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::service::InterceptorLayer;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic_types::StatusExt;

const TOKEN: &str = "node-s3cret";

/// One node serving its node API over the fake engine, until dropped.
struct ServingNode {
    addr: SocketAddr,
    fake: Arc<FakeRuntime>,
    calls: CallLog,
    profiles: Profiles,
    shutdown: CancellationToken,
    server: Option<JoinHandle<()>>,
}

impl Drop for ServingNode {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

/// The profiles both nodes are configured with: two agents with different profiles, so a
/// profile names one agent.
fn profiles() -> Profiles {
    let mut web = AgentProfile::new("sandboxd/web:local");
    web.port = Some(8080);
    web.ready_timeout = Duration::from_secs(2);
    let other = AgentProfile::new("sandboxd/other:local");
    Profiles::new([(agent("web"), web), (agent("other"), other)])
}

fn agent(name: &str) -> AgentId {
    AgentId::parse(name).unwrap()
}

/// Serves the node API over a fresh fake on 127.0.0.1:0, with `profiles`, behind [`TOKEN`].
async fn spawn_node(profiles: Profiles) -> ServingNode {
    spawn_node_with(profiles, None).await
}

/// [`spawn_node`], over TLS when `tls` is set.
async fn spawn_node_with(profiles: Profiles, tls: Option<ServerTlsConfig>) -> ServingNode {
    let calls = CallLog::default();
    let fake = Arc::new(FakeRuntime::new(calls.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let auth = BearerAuth::new(Some(TOKEN.to_owned()));
    let shutdown = CancellationToken::new();
    let server = tokio::spawn({
        let service = node_runtime_server(fake.clone(), profiles.clone());
        let stop = shutdown.clone();
        async move {
            let mut builder = Server::builder();
            if let Some(tls) = tls {
                builder = builder.tls_config(tls).unwrap();
            }
            builder
                .layer(InterceptorLayer::new(move |request| auth.check(request)))
                .add_service(service)
                .serve_with_incoming_shutdown(TcpIncoming::from(listener), stop.cancelled_owned())
                .await
                .unwrap();
        }
    });
    ServingNode {
        addr,
        fake,
        calls,
        profiles,
        shutdown,
        server: Some(server),
    }
}

impl ServingNode {
    /// A client of this node presenting `token`, knowing the same agents.
    fn remote(&self, token: Option<&str>) -> RemoteRuntime {
        remote_at(self.addr, token, self.profiles.clone())
    }

    /// A spec of `agent_id` with this node's profile of it.
    fn spec(&self, agent_id: &str) -> NewSandbox {
        let agent_id = agent(agent_id);
        // Nanoseconds included: the labels must come out exactly as they went in.
        let created_at = OffsetDateTime::now_utc();
        NewSandbox {
            node_id: None,
            session_id: SessionId::new_random(),
            chat_id: ChatId::from_uuid(uuid::Uuid::new_v4()),
            profile: self.profiles.get(&agent_id).unwrap().clone(),
            agent_id,
            volume_host_path: VolumePath::parse("/srv/chats/one").unwrap(),
            created_at,
            expires_at: created_at + Duration::from_secs(1800),
        }
    }
}

fn remote_at(addr: SocketAddr, token: Option<&str>, profiles: Profiles) -> RemoteRuntime {
    remote_over(addr, token, profiles, None)
}

fn remote_over(
    addr: SocketAddr,
    token: Option<&str>,
    profiles: Profiles,
    tls: Option<NodeClientTls>,
) -> RemoteRuntime {
    RemoteRuntime::new(
        RemoteNodeConfig {
            address: addr.to_string(),
            token: token.map(Arc::from),
            tls,
            connect_timeout: Duration::from_secs(2),
            call_timeout: Duration::from_secs(5),
        },
        profiles,
    )
    .unwrap()
}

/// The whole error chain, as the calling node would log it.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[tokio::test]
async fn a_create_reaches_the_engine_with_the_specs_labels_and_every_state_change_agrees() {
    let node = spawn_node(profiles()).await;
    let remote = node.remote(Some(TOKEN));
    let spec = node.spec("web");

    let started = remote.create(&spec).await.unwrap();
    assert_eq!(node.fake.running(), vec![started.container_id.clone()]);
    let engine = node.fake.list_managed().await.unwrap();
    assert_eq!(engine[0].labels, SandboxLabels::of(&spec));
    assert_eq!(engine[0].endpoint, started.endpoint);
    assert!(started.endpoint.is_some());
    let id = started.container_id.clone();

    // Each state change lands on the fake, and inspect reports what the fake has.
    remote.pause(&id).await.unwrap();
    assert_eq!(node.fake.state_of(&id), ContainerState::Paused);
    assert_eq!(remote.inspect(&id).await.unwrap(), ContainerState::Paused);
    remote.unpause(&id).await.unwrap();
    assert_eq!(node.fake.state_of(&id), ContainerState::Running);
    assert_eq!(remote.inspect(&id).await.unwrap(), ContainerState::Running);
    remote.stop(&id).await.unwrap();
    assert_eq!(node.fake.state_of(&id), ContainerState::Stopped);
    assert_eq!(remote.inspect(&id).await.unwrap(), ContainerState::Stopped);
    let endpoint = remote.start(&id, &spec.profile).await.unwrap();
    assert_eq!(node.fake.state_of(&id), ContainerState::Running);
    assert!(endpoint.is_some());
    assert_ne!(
        endpoint, started.endpoint,
        "the fake publishes anew on start"
    );

    // The listings are the engine's, container for container.
    let second = remote.create(&node.spec("other")).await.unwrap();
    let mut listed = remote.list_managed().await.unwrap();
    let mut engine = node.fake.list_managed().await.unwrap();
    listed.sort_by(|a, b| a.container_id.cmp(&b.container_id));
    engine.sort_by(|a, b| a.container_id.cmp(&b.container_id));
    assert_eq!(listed, engine);
    assert_eq!(listed.len(), 2);
    assert_eq!(
        remote.list_chat(&spec.chat_id).await.unwrap(),
        node.fake.list_chat(&spec.chat_id).await.unwrap()
    );
    assert_eq!(remote.list_chat(&spec.chat_id).await.unwrap().len(), 1);
    assert_eq!(
        remote.list_managed().await.unwrap()[0].session(),
        Some(
            spec.clone()
                .into_session(sandboxd_usecase::ports::StartedSandbox {
                    container_id: id.clone(),
                    endpoint,
                })
        ),
        "a reconcile on the calling node can rebuild the session"
    );
    assert_eq!(
        remote.runtimes().await.unwrap(),
        node.fake.runtimes().await.unwrap()
    );
    remote.ping().await.unwrap();

    remote.remove_gracefully(&id).await.unwrap();
    remote.force_remove(&second.container_id).await.unwrap();
    assert!(node.fake.running().is_empty());
    assert_eq!(remote.inspect(&id).await.unwrap(), ContainerState::Gone);
    assert!(
        node.calls
            .calls_of("runtime.")
            .iter()
            .any(|call| call == &format!("runtime.remove_gracefully({id})")),
        "a graceful removal stays graceful across the hop"
    );
}

#[tokio::test]
async fn every_runtime_error_arrives_as_the_same_variant() {
    let node = spawn_node(profiles()).await;
    let remote = node.remote(Some(TOKEN));
    let spec = node.spec("web");
    let id = remote.create(&spec).await.unwrap().container_id;

    node.fake.fail_next(
        RuntimeOp::Create,
        RuntimeError::VolumeInvalid(VolumeRefusal::DoesNotExist),
    );
    let error = remote.create(&node.spec("web")).await.unwrap_err();
    assert!(
        matches!(
            error,
            RuntimeError::VolumeInvalid(VolumeRefusal::DoesNotExist)
        ),
        "{error:?}"
    );

    node.fake.fail_next(
        RuntimeOp::Create,
        RuntimeError::VolumeDenied(VolumeRefusal::OutsideAllowedRoots),
    );
    let error = remote.create(&node.spec("web")).await.unwrap_err();
    assert!(
        matches!(
            error,
            RuntimeError::VolumeDenied(VolumeRefusal::OutsideAllowedRoots)
        ),
        "{error:?}"
    );

    node.fake.fail_next(
        RuntimeOp::Create,
        RuntimeError::ImageNotFound("sandboxd/web:local".to_owned()),
    );
    let error = remote.create(&node.spec("web")).await.unwrap_err();
    assert!(
        matches!(&error, RuntimeError::ImageNotFound(image) if image == "sandboxd/web:local"),
        "{error:?}"
    );

    node.fake
        .fail_next(RuntimeOp::Pause, RuntimeError::Vanished);
    let error = remote.pause(&id).await.unwrap_err();
    assert!(matches!(error, RuntimeError::Vanished), "{error:?}");
    // And as the fake decides it by itself: an unknown container.
    let never = ContainerId::parse("never-existed").unwrap();
    let error = remote.unpause(&never).await.unwrap_err();
    assert!(matches!(error, RuntimeError::Vanished), "{error:?}");

    remote.stop(&id).await.unwrap();
    node.fake.fail_next(
        RuntimeOp::Start,
        RuntimeError::NotReady(Duration::from_millis(2500)),
    );
    let error = remote.start(&id, &spec.profile).await.unwrap_err();
    assert!(
        matches!(error, RuntimeError::NotReady(timeout) if timeout == Duration::from_millis(2500)),
        "{error:?}"
    );

    node.fake.fail_next(
        RuntimeOp::Ping,
        RuntimeError::Unavailable("engine socket refused at /run/docker.sock".into()),
    );
    let error = remote.ping().await.unwrap_err();
    assert!(matches!(error, RuntimeError::Unavailable(_)), "{error:?}");

    node.fake.fail_next(
        RuntimeOp::ListManaged,
        RuntimeError::Other("engine answered 500 for secret reasons".into()),
    );
    let error = remote.list_managed().await.unwrap_err();
    assert!(matches!(error, RuntimeError::Other(_)), "{error:?}");
    assert!(
        !chain(&error).contains("secret"),
        "causes stay on the serving node: {}",
        chain(&error)
    );

    // Nothing was created by the failed creates; the one sandbox is still there.
    assert_eq!(node.fake.running(), vec![id]);
}

#[tokio::test]
async fn a_wrong_or_missing_token_is_refused_before_the_engine_as_other() {
    let node = spawn_node(profiles()).await;
    for token in [Some("not-the-token"), None] {
        let error = node.remote(token).ping().await.unwrap_err();
        assert!(
            matches!(error, RuntimeError::Other(_)),
            "{token:?}: {error:?}"
        );
        assert!(
            chain(&error).contains("Unauthenticated"),
            "{}",
            chain(&error)
        );
        assert!(!chain(&error).contains(TOKEN));
    }
    assert!(node.calls.calls_of("runtime.").is_empty());
    node.remote(Some(TOKEN)).ping().await.unwrap();
}

#[tokio::test]
async fn an_agent_the_serving_node_does_not_have_is_refused() {
    let node = spawn_node(profiles()).await;
    // The calling node knows one more agent than the serving node (configurations drifted).
    let mut ghost_profile = AgentProfile::new("sandboxd/ghost:local");
    ghost_profile.port = Some(9090);
    let mut caller_profiles: Vec<_> = node
        .profiles
        .iter()
        .map(|(id, profile)| (id.clone(), profile.clone()))
        .collect();
    caller_profiles.push((agent("ghost"), ghost_profile.clone()));
    let remote = remote_at(node.addr, Some(TOKEN), Profiles::new(caller_profiles));

    let mut spec = node.spec("web");
    spec.agent_id = agent("ghost");
    spec.profile = Arc::new(ghost_profile.clone());
    let error = remote.create(&spec).await.unwrap_err();
    assert!(matches!(error, RuntimeError::Other(_)), "{error:?}");
    assert!(
        chain(&error).contains("FailedPrecondition"),
        "{}",
        chain(&error)
    );
    assert!(chain(&error).contains("agent ghost"), "{}", chain(&error));

    let id = remote.create(&node.spec("web")).await.unwrap().container_id;
    let error = remote.start(&id, &ghost_profile).await.unwrap_err();
    assert!(matches!(error, RuntimeError::Other(_)), "{error:?}");
    assert!(chain(&error).contains("agent ghost"), "{}", chain(&error));

    // A profile no agent of the calling node has cannot even be named.
    let error = remote
        .start(&id, &AgentProfile::new("unconfigured:local"))
        .await
        .unwrap_err();
    assert!(matches!(error, RuntimeError::Other(_)), "{error:?}");
    assert!(
        node.calls.calls_of("runtime.start").is_empty(),
        "no start reached the engine"
    );
}

#[tokio::test]
async fn a_request_that_does_not_decode_is_invalid_argument_naming_the_field() {
    let node = spawn_node(profiles()).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", node.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let bearer: tonic::metadata::MetadataValue<_> = format!("Bearer {TOKEN}").parse().unwrap();
    let mut client =
        NodeRuntimeClient::with_interceptor(channel, move |mut request: tonic::Request<()>| {
            request
                .metadata_mut()
                .insert("authorization", bearer.clone());
            Ok(request)
        });

    let status = client
        .pause(api::PauseRequest {
            container_id: "no spaces allowed".to_owned(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        status.get_details_bad_request().unwrap().field_violations[0].field,
        "container_id"
    );

    let status = client
        .create(api::CreateRequest { sandbox: None })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        status.get_details_bad_request().unwrap().field_violations[0].field,
        "sandbox"
    );

    let status = client
        .list_chat(api::ListChatRequest {
            chat_id: "not-a-uuid".to_owned(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        status.get_details_bad_request().unwrap().field_violations[0].field,
        "chat_id"
    );

    let status = client
        .start(api::StartRequest {
            container_id: "abc".to_owned(),
            agent_id: "ghost".to_owned(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains("ghost"), "{status:?}");
    assert!(node.calls.calls_of("runtime.").is_empty());
}

#[tokio::test]
async fn an_unreachable_node_is_unavailable_and_building_its_client_does_not_block() {
    let addr = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    };
    let remote = remote_at(addr, Some(TOKEN), profiles());
    let error = remote.ping().await.unwrap_err();
    assert!(matches!(error, RuntimeError::Unavailable(_)), "{error:?}");
    assert!(!format!("{remote:?}").contains(TOKEN));
}

/// A CA and a leaf it signed for `usage`, as PEM: (CA, certificate, key).
fn signed(names: &[&str], usage: rcgen::ExtendedKeyUsagePurpose) -> (String, String, String) {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap())
        .unwrap();
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
            .unwrap();
    params.extended_key_usages = vec![usage];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca).unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}

#[tokio::test]
async fn a_node_behind_mutual_tls_is_reached_with_the_nodes_identity_only() {
    let (server_ca, server_cert, server_key) = signed(
        &["node-2.internal"],
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
    );
    let (client_ca, client_cert, client_key) =
        signed(&["node-1"], rcgen::ExtendedKeyUsagePurpose::ClientAuth);
    let node = spawn_node_with(
        profiles(),
        Some(
            ServerTlsConfig::new()
                .identity(Identity::from_pem(&server_cert, &server_key))
                .client_ca_root(Certificate::from_pem(&client_ca)),
        ),
    )
    .await;
    let tls = |identity: Option<(Vec<u8>, Vec<u8>)>| NodeClientTls {
        ca_pem: server_ca.clone().into_bytes(),
        identity,
        // The node is dialled by IP; its certificate names it.
        domain: Some("node-2.internal".to_owned()),
    };
    let identity = Some((
        client_cert.clone().into_bytes(),
        client_key.clone().into_bytes(),
    ));

    let remote = remote_over(
        node.addr,
        Some(TOKEN),
        node.profiles.clone(),
        Some(tls(identity)),
    );
    remote.ping().await.unwrap();
    let started = remote.create(&node.spec("web")).await.unwrap();
    assert_eq!(node.fake.running(), vec![started.container_id]);

    // Without a client certificate the handshake fails: the node is unreachable to it.
    let anonymous = remote_over(
        node.addr,
        Some(TOKEN),
        node.profiles.clone(),
        Some(tls(None)),
    );
    let error = anonymous.ping().await.unwrap_err();
    assert!(matches!(error, RuntimeError::Unavailable(_)), "{error:?}");
    // Plain HTTP/2 to a TLS port gets no answer either.
    let plain = remote_at(node.addr, Some(TOKEN), node.profiles.clone());
    assert!(plain.ping().await.is_err());
    assert_eq!(node.calls.calls_of("runtime.ping").len(), 1);
}
