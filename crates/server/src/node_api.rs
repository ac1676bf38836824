//! The serving half of fleet mode's node API, `sandbox.node.v1.NodeRuntime`: other nodes drive
//! this node's engine through it (their `RemoteRuntime`). Each RPC decodes its request with the
//! shared codec (`sandboxd_adapters::node::wire`), calls the runtime port, and encodes the
//! answer; a runtime error becomes its kind's status (the one mapping, [`to_status`]) with the
//! variant in an ErrorInfo, so the caller gets the same `RuntimeError` back.
//!
//! Authentication (the bearer token, mutual TLS) is the server's that serves this service.

use std::sync::Arc;

use sandboxd_adapters::node::errors::{ERROR_DOMAIN, error_info};
use sandboxd_adapters::node::wire::{self, WireError};
use sandboxd_api::node::v1 as api;
use sandboxd_api::node::v1::node_runtime_server::{NodeRuntime, NodeRuntimeServer};
use sandboxd_usecase::Profiles;
use sandboxd_usecase::ports::{RuntimeError, SandboxRuntime};
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::drain::Drain;
use crate::grpc::status::{StatusContext, invalid_field, to_status};
use crate::names;

/// The node API over this node's runtime.
#[derive(Clone)]
pub struct NodeApiService {
    runtime: Arc<dyn SandboxRuntime>,
    /// This node's agents: a create or start names the agent, and runs this node's profile of it.
    profiles: Profiles,
    /// Runs every engine call as a task of its own (see [`Self::with_drain`]).
    drain: Drain,
}

impl std::fmt::Debug for NodeApiService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeApiService")
            .field("agents", &self.profiles.iter().count())
            .finish_non_exhaustive()
    }
}

/// The node API as a tonic service over `runtime`, starting `profiles`' agents.
#[must_use]
pub fn node_runtime_server(
    runtime: Arc<dyn SandboxRuntime>,
    profiles: Profiles,
) -> NodeRuntimeServer<NodeApiService> {
    NodeRuntimeServer::new(NodeApiService::new(runtime, profiles))
}

impl NodeApiService {
    #[must_use]
    pub fn new(runtime: Arc<dyn SandboxRuntime>, profiles: Profiles) -> Self {
        Self {
            runtime,
            profiles,
            drain: Drain::new(),
        }
    }

    /// Tracks the engine calls in `drain` (the application's), so shutdown refuses new node
    /// calls and waits for running ones as it does for SandboxService calls. Without it the
    /// calls still run as tasks of their own, untracked.
    #[must_use]
    pub fn with_drain(mut self, drain: Drain) -> Self {
        self.drain = drain;
        self
    }

    /// Runs `call` on the runtime as a task: a caller that gives up (its call timeout) must not
    /// cut an engine operation in half, since the port promises that a failed create or start
    /// leaves nothing behind only when it runs to its end.
    async fn run<T, F, Fut>(&self, rpc: &'static str, call: F) -> Result<Response<T>, Status>
    where
        T: Send + 'static,
        F: FnOnce(Arc<dyn SandboxRuntime>) -> Fut,
        Fut: Future<Output = Result<T, RuntimeError>> + Send + 'static,
    {
        let work = call(Arc::clone(&self.runtime));
        self.drain
            .run(rpc, async move {
                work.await.map_err(|error| runtime_status(rpc, &error))
            })
            .await
            .map(Response::new)
    }
}

/// A request that does not decode: INVALID_ARGUMENT naming the field, or FAILED_PRECONDITION
/// naming an agent this node does not have (the nodes' configurations differ).
fn request_status(error: WireError) -> Status {
    match error {
        WireError::Field { field, problem } => invalid_field(field, problem),
        WireError::UnknownAgent(agent_id) => {
            let message = format!("agent {agent_id} is not configured on this node");
            tracing::warn!(
                name: names::NODE_API_UNKNOWN_AGENT,
                message = names::NODE_API_UNKNOWN_AGENT,
                agent_id = %agent_id,
            );
            Status::with_error_details(
                Code::FailedPrecondition,
                message.clone(),
                ErrorDetails::with_precondition_failure_violation(
                    "AGENT",
                    format!("agents/{agent_id}"),
                    message,
                ),
            )
        }
    }
}

/// A runtime error as its kind's status (which logs the cause of an unavailable or failed
/// engine, once, here where it is handled), plus the ErrorInfo naming the variant.
fn runtime_status(rpc: &'static str, error: &RuntimeError) -> Status {
    let status = to_status(error, StatusContext { rpc, chat_id: None });
    let (reason, metadata) = error_info(error);
    let mut details = status.get_error_details();
    details.set_error_info(reason, ERROR_DOMAIN, metadata);
    Status::with_error_details(status.code(), status.message(), details)
}

fn container_id(raw: &str) -> Result<sandboxd_domain::ContainerId, Status> {
    wire::decode_container_id(raw).map_err(request_status)
}

#[tonic::async_trait]
impl NodeRuntime for NodeApiService {
    async fn create(
        &self,
        request: Request<api::CreateRequest>,
    ) -> Result<Response<api::CreateResponse>, Status> {
        let spec = wire::decode_new_sandbox(request.into_inner().sandbox, &self.profiles)
            .map_err(request_status)?;
        self.run("NodeRuntime/Create", |runtime| async move {
            let started = runtime.create(&spec).await?;
            Ok(api::CreateResponse {
                container_id: started.container_id.to_string(),
                endpoint: started.endpoint.map(wire::encode_endpoint),
            })
        })
        .await
    }

    async fn remove_gracefully(
        &self,
        request: Request<api::RemoveGracefullyRequest>,
    ) -> Result<Response<api::RemoveGracefullyResponse>, Status> {
        let id = container_id(&request.into_inner().container_id)?;
        self.run("NodeRuntime/RemoveGracefully", |runtime| async move {
            runtime.remove_gracefully(&id).await?;
            Ok(api::RemoveGracefullyResponse {})
        })
        .await
    }

    async fn force_remove(
        &self,
        request: Request<api::ForceRemoveRequest>,
    ) -> Result<Response<api::ForceRemoveResponse>, Status> {
        let id = container_id(&request.into_inner().container_id)?;
        self.run("NodeRuntime/ForceRemove", |runtime| async move {
            runtime.force_remove(&id).await?;
            Ok(api::ForceRemoveResponse {})
        })
        .await
    }

    async fn inspect(
        &self,
        request: Request<api::InspectRequest>,
    ) -> Result<Response<api::InspectResponse>, Status> {
        let id = container_id(&request.into_inner().container_id)?;
        self.run("NodeRuntime/Inspect", |runtime| async move {
            let state = runtime.inspect(&id).await?;
            Ok(api::InspectResponse {
                state: wire::encode_state(state).into(),
            })
        })
        .await
    }

    async fn list_managed(
        &self,
        _request: Request<api::ListManagedRequest>,
    ) -> Result<Response<api::ListManagedResponse>, Status> {
        self.run("NodeRuntime/ListManaged", |runtime| async move {
            let containers = runtime.list_managed().await?;
            Ok(api::ListManagedResponse {
                containers: containers.iter().map(wire::encode_managed).collect(),
            })
        })
        .await
    }

    async fn list_chat(
        &self,
        request: Request<api::ListChatRequest>,
    ) -> Result<Response<api::ListChatResponse>, Status> {
        let chat_id =
            wire::decode_chat_id(&request.into_inner().chat_id).map_err(request_status)?;
        self.run("NodeRuntime/ListChat", |runtime| async move {
            let containers = runtime.list_chat(&chat_id).await?;
            Ok(api::ListChatResponse {
                containers: containers.iter().map(wire::encode_managed).collect(),
            })
        })
        .await
    }

    async fn pause(
        &self,
        request: Request<api::PauseRequest>,
    ) -> Result<Response<api::PauseResponse>, Status> {
        let id = container_id(&request.into_inner().container_id)?;
        self.run("NodeRuntime/Pause", |runtime| async move {
            runtime.pause(&id).await?;
            Ok(api::PauseResponse {})
        })
        .await
    }

    async fn unpause(
        &self,
        request: Request<api::UnpauseRequest>,
    ) -> Result<Response<api::UnpauseResponse>, Status> {
        let id = container_id(&request.into_inner().container_id)?;
        self.run("NodeRuntime/Unpause", |runtime| async move {
            runtime.unpause(&id).await?;
            Ok(api::UnpauseResponse {})
        })
        .await
    }

    async fn stop(
        &self,
        request: Request<api::StopRequest>,
    ) -> Result<Response<api::StopResponse>, Status> {
        let id = container_id(&request.into_inner().container_id)?;
        self.run("NodeRuntime/Stop", |runtime| async move {
            runtime.stop(&id).await?;
            Ok(api::StopResponse {})
        })
        .await
    }

    async fn start(
        &self,
        request: Request<api::StartRequest>,
    ) -> Result<Response<api::StartResponse>, Status> {
        let request = request.into_inner();
        let id = container_id(&request.container_id)?;
        let profile = wire::decode_agent_profile(&request.agent_id, &self.profiles)
            .map_err(request_status)?;
        self.run("NodeRuntime/Start", |runtime| async move {
            let endpoint = runtime.start(&id, &profile).await?;
            Ok(api::StartResponse {
                endpoint: endpoint.map(wire::encode_endpoint),
            })
        })
        .await
    }

    async fn runtimes(
        &self,
        _request: Request<api::RuntimesRequest>,
    ) -> Result<Response<api::RuntimesResponse>, Status> {
        self.run("NodeRuntime/Runtimes", |runtime| async move {
            Ok(wire::encode_runtimes(runtime.runtimes().await?))
        })
        .await
    }

    async fn ping(
        &self,
        _request: Request<api::PingRequest>,
    ) -> Result<Response<api::PingResponse>, Status> {
        self.run("NodeRuntime/Ping", |runtime| async move {
            runtime.ping().await?;
            Ok(api::PingResponse {})
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use sandboxd_usecase::ports::VolumeRefusal;

    #[test]
    fn a_runtime_error_keeps_its_kinds_code_and_names_its_variant() {
        let status = runtime_status(
            "Test",
            &RuntimeError::VolumeDenied(VolumeRefusal::OutsideAllowedRoots),
        );
        assert_eq!(status.code(), Code::PermissionDenied);
        let info = status.get_details_error_info().unwrap();
        assert_eq!(info.reason, "VOLUME_DENIED");
        assert_eq!(info.domain, ERROR_DOMAIN);
        assert_eq!(
            info.metadata.get("reason").map(String::as_str),
            Some("outside_allowed_roots")
        );
        assert!(
            status.get_details_bad_request().is_some(),
            "the kind's own detail stays"
        );
        let status = runtime_status("Test", &RuntimeError::Other("secret cause".into()));
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("secret"));
        assert_eq!(status.get_details_error_info().unwrap().reason, "OTHER");
    }
}
