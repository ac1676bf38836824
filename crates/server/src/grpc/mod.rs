//! The `sandbox.v1.SandboxService` handlers. They only translate: parse every field into domain
//! values (a bad field is INVALID_ARGUMENT naming it, and nothing is touched), run the use case as
//! a tracked task, and map its error kind through [`status::status_for`].

pub mod convert;
mod reconcile;
pub(crate) mod status;

use std::sync::Arc;
use std::time::Duration;

use sandboxd_api::v1;
use sandboxd_api::v1::sandbox_service_server::SandboxService;
use sandboxd_usecase::ports::ListQuery;
use sandboxd_usecase::{
    AdmissionPolicy, CleanupExpiredSandboxes, CleanupOptions, CreateResult, CreateSandbox,
    CreateSandboxCommand, DeleteResult, DeleteSandbox, DeleteSandboxCommand, EventHub,
    ExtendSandbox, ExtendSandboxCommand, GetSandbox, ListSandboxes, NodeDirectory, Nodes,
    PauseSandbox, Ports, Profiles, ReconcileOptions, ReconcileSandboxes, RefillPool, ResumeSandbox,
    TouchSandbox, UseCaseError, WatchRequest,
};
use tonic::{Request, Response, Status};

use crate::drain::Drain;
use crate::fleet::Fleet;
use status::status_for;

/// What the handlers need from the configuration.
#[derive(Debug, Clone)]
pub(crate) struct ServiceSettings {
    pub session_ttl: Duration,
    pub max_ttl: Duration,
    pub cleanup: CleanupOptions,
    pub reconcile: ReconcileOptions,
    /// The agent profiles CreateSandbox may start.
    pub profiles: Profiles,
    /// How far back a WatchSandboxes cursor may point.
    pub event_retention: Duration,
    /// Quotas and the engine-create bound of CreateSandbox.
    pub admission: AdmissionPolicy,
    /// Which node this is, and the registry in fleet mode.
    pub fleet: Fleet,
    /// This node's capacity (its `max_sandboxes`; 0 = unbounded), as ListNodes shows it.
    pub node_capacity: u32,
}

/// Events one watcher may fall behind the shared reader before it catches up from the store.
const WATCH_BUFFER: usize = 1024;

/// The use cases behind the RPCs, built once from the ports.
#[derive(Debug, Clone)]
pub(crate) struct UseCases {
    pub create: CreateSandbox,
    pub get: GetSandbox,
    pub list: ListSandboxes,
    pub extend: ExtendSandbox,
    pub delete: DeleteSandbox,
    pub cleanup: CleanupExpiredSandboxes,
    pub reconcile: ReconcileSandboxes,
    pub pause: PauseSandbox,
    pub resume: ResumeSandbox,
    pub touch: TouchSandbox,
    /// The process's event reader and its watchers (the app runs the reader).
    pub events: Arc<EventHub>,
    /// Keeps `create`'s warm pool full (the app runs it when a profile pools).
    pub refill: Arc<RefillPool>,
    /// ListNodes and DrainNode.
    pub nodes: Nodes,
    /// Which node runs a session, and whether it is lost (for the answers' `node_id`, `state`).
    pub directory: NodeDirectory,
}

impl UseCases {
    #[must_use]
    pub(crate) fn new(ports: &Ports, settings: &ServiceSettings) -> Self {
        let create = CreateSandbox::new(
            ports.clone(),
            settings.profiles.clone(),
            settings.session_ttl,
        )
        .with_admission(settings.admission);
        Self {
            nodes: Nodes::new(
                ports.clone(),
                settings.fleet.directory.clone(),
                settings
                    .fleet
                    .node
                    .as_ref()
                    .map(|node| Arc::clone(&node.registry)),
                settings.node_capacity,
            ),
            directory: settings.fleet.directory.clone(),
            refill: Arc::new(create.refill_pool()),
            create,
            get: GetSandbox::new(ports.clone()),
            list: ListSandboxes::new(ports.clone()),
            extend: ExtendSandbox::new(ports.clone(), settings.session_ttl, settings.max_ttl),
            delete: DeleteSandbox::new(ports.clone()),
            cleanup: CleanupExpiredSandboxes::new(
                ports.clone(),
                settings.profiles.clone(),
                settings.session_ttl,
                settings.cleanup,
            ),
            reconcile: ReconcileSandboxes::new(ports.clone(), settings.reconcile),
            pause: PauseSandbox::new(
                ports.clone(),
                settings.profiles.clone(),
                settings.session_ttl,
            ),
            resume: ResumeSandbox::new(
                ports.clone(),
                settings.profiles.clone(),
                settings.session_ttl,
            ),
            touch: TouchSandbox::new(ports.clone()),
            events: EventHub::new(
                Arc::clone(&ports.events),
                Arc::clone(&ports.clock),
                settings.event_retention,
                WATCH_BUFFER,
            ),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct SandboxGrpcService {
    use_cases: Arc<UseCases>,
    drain: Drain,
}

impl SandboxGrpcService {
    #[must_use]
    pub(crate) fn new(use_cases: Arc<UseCases>, drain: Drain) -> Self {
        Self { use_cases, drain }
    }

    /// The part every handler shares: runs `use_case` as a tracked task ([`Drain::run`]) and
    /// maps its error through [`status_for`] in `rpc`'s context, naming `chat` when it has one.
    async fn run<T, E, Work>(
        &self,
        rpc: &'static str,
        chat: Option<String>,
        use_case: impl FnOnce(Arc<UseCases>) -> Work,
    ) -> Result<T, Status>
    where
        Work: Future<Output = Result<T, E>> + Send + 'static,
        E: UseCaseError,
        T: Send + 'static,
    {
        let work = use_case(Arc::clone(&self.use_cases));
        self.drain
            .run(rpc, async move {
                work.await.map_err(status_for(rpc, chat.as_deref()))
            })
            .await
    }
}

const fn create_result(result: CreateResult) -> v1::CreateSandboxResult {
    match result {
        CreateResult::Created => v1::CreateSandboxResult::Created,
        CreateResult::Reused => v1::CreateSandboxResult::Reused,
        CreateResult::Replaced => v1::CreateSandboxResult::Replaced,
        CreateResult::Resumed => v1::CreateSandboxResult::Resumed,
    }
}

/// The stream WatchSandboxes answers with.
type EventStream = crate::drain::TrackedStream<v1::SandboxEvent>;

#[tonic::async_trait]
impl SandboxService for SandboxGrpcService {
    async fn create_sandbox(
        &self,
        request: Request<v1::CreateSandboxRequest>,
    ) -> Result<Response<v1::CreateSandboxResponse>, Status> {
        let request = request.into_inner();
        let command = CreateSandboxCommand {
            chat_id: convert::chat_id(&request.chat_id)?,
            agent_id: convert::agent_id(&request.agent_id)?,
            volume_host_path: convert::volume_host_path(&request.volume_host_path)?,
        };
        let chat = command.chat_id.to_string();
        let output = self
            .run("CreateSandbox", Some(chat), |use_cases| async move {
                use_cases.create.execute(command).await
            })
            .await?;
        Ok(Response::new(v1::CreateSandboxResponse {
            sandbox: Some(convert::sandbox(&output.session, &self.use_cases.directory)),
            result: create_result(output.result).into(),
        }))
    }

    async fn get_sandbox(
        &self,
        request: Request<v1::GetSandboxRequest>,
    ) -> Result<Response<v1::GetSandboxResponse>, Status> {
        let chat_id = convert::chat_id(&request.into_inner().chat_id)?;
        let chat = chat_id.to_string();
        let session = self
            .run("GetSandbox", Some(chat), |use_cases| async move {
                use_cases.get.execute(chat_id).await
            })
            .await?;
        Ok(Response::new(v1::GetSandboxResponse {
            sandbox: Some(convert::sandbox(&session, &self.use_cases.directory)),
        }))
    }

    async fn list_sandboxes(
        &self,
        request: Request<v1::ListSandboxesRequest>,
    ) -> Result<Response<v1::ListSandboxesResponse>, Status> {
        let request = request.into_inner();
        let filter = convert::state_filter(request.state)?;
        let query = ListQuery {
            agent_id: convert::agent_filter(&request.agent_id)?,
            state: filter.stored(),
            page_size: convert::page_size(request.page_size)?,
            page_token: convert::page_token(request.page_token),
        };
        let page = self
            .run("ListSandboxes", None, |use_cases| async move {
                use_cases.list.execute(query).await
            })
            .await?;
        let directory = &self.use_cases.directory;
        Ok(Response::new(v1::ListSandboxesResponse {
            // LOST is not stored: its page is the stored page's lost sessions (maybe fewer).
            sandboxes: page
                .sessions
                .iter()
                .filter(|session| filter.keeps(directory.is_lost(session.node_id.as_ref())))
                .map(|session| convert::sandbox(session, directory))
                .collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }

    async fn extend_sandbox(
        &self,
        request: Request<v1::ExtendSandboxRequest>,
    ) -> Result<Response<v1::ExtendSandboxResponse>, Status> {
        let request = request.into_inner();
        let command = ExtendSandboxCommand {
            chat_id: convert::chat_id(&request.chat_id)?,
            ttl: convert::ttl(request.ttl)?,
        };
        let chat = command.chat_id.to_string();
        let session = self
            .run("ExtendSandbox", Some(chat), |use_cases| async move {
                use_cases.extend.execute(command).await
            })
            .await?;
        Ok(Response::new(v1::ExtendSandboxResponse {
            sandbox: Some(convert::sandbox(&session, &self.use_cases.directory)),
        }))
    }

    async fn delete_sandbox(
        &self,
        request: Request<v1::DeleteSandboxRequest>,
    ) -> Result<Response<v1::DeleteSandboxResponse>, Status> {
        let chat_id = convert::chat_id(&request.into_inner().chat_id)?;
        let chat = chat_id.to_string();
        let output = self
            .run("DeleteSandbox", Some(chat), |use_cases| async move {
                use_cases
                    .delete
                    .execute(DeleteSandboxCommand { chat_id })
                    .await
            })
            .await?;
        let result = match output.result {
            DeleteResult::Deleted => v1::DeleteSandboxResult::Deleted,
            DeleteResult::NotFound => v1::DeleteSandboxResult::NotFound,
        };
        Ok(Response::new(v1::DeleteSandboxResponse {
            result: result.into(),
            session_id: output
                .session_id
                .map(|id| id.to_string())
                .unwrap_or_default(),
            container_id: output
                .container_id
                .map(|id| id.to_string())
                .unwrap_or_default(),
        }))
    }

    async fn cleanup_expired_sandboxes(
        &self,
        _request: Request<v1::CleanupExpiredSandboxesRequest>,
    ) -> Result<Response<v1::CleanupExpiredSandboxesResponse>, Status> {
        let report = self
            .run("CleanupExpiredSandboxes", None, |use_cases| async move {
                use_cases.cleanup.execute().await
            })
            .await?;
        Ok(Response::new(v1::CleanupExpiredSandboxesResponse {
            cleaned: report
                .cleaned
                .iter()
                .map(|session| convert::sandbox(session, &self.use_cases.directory))
                .collect(),
            error_count: i32::try_from(report.error_count).unwrap_or(i32::MAX),
            skipped_count: i32::try_from(report.skipped_count).unwrap_or(i32::MAX),
            suspended_sandboxes: report
                .suspended
                .iter()
                .map(|session| convert::sandbox(session, &self.use_cases.directory))
                .collect(),
        }))
    }

    async fn reconcile_sandboxes(
        &self,
        _request: Request<v1::ReconcileSandboxesRequest>,
    ) -> Result<Response<v1::ReconcileSandboxesResponse>, Status> {
        let report = self
            .run("ReconcileSandboxes", None, |use_cases| async move {
                use_cases.reconcile.execute().await
            })
            .await?;
        Ok(Response::new(reconcile::response(
            &report,
            &self.use_cases.directory,
        )))
    }

    async fn pause_sandbox(
        &self,
        request: Request<v1::PauseSandboxRequest>,
    ) -> Result<Response<v1::PauseSandboxResponse>, Status> {
        let chat_id = convert::chat_id(&request.into_inner().chat_id)?;
        let session = self
            .run(
                "PauseSandbox",
                Some(chat_id.to_string()),
                |use_cases| async move { use_cases.pause.execute(chat_id).await },
            )
            .await?;
        Ok(Response::new(v1::PauseSandboxResponse {
            sandbox: Some(convert::sandbox(&session, &self.use_cases.directory)),
        }))
    }

    async fn resume_sandbox(
        &self,
        request: Request<v1::ResumeSandboxRequest>,
    ) -> Result<Response<v1::ResumeSandboxResponse>, Status> {
        let chat_id = convert::chat_id(&request.into_inner().chat_id)?;
        let session = self
            .run(
                "ResumeSandbox",
                Some(chat_id.to_string()),
                |use_cases| async move { use_cases.resume.execute(chat_id).await },
            )
            .await?;
        Ok(Response::new(v1::ResumeSandboxResponse {
            sandbox: Some(convert::sandbox(&session, &self.use_cases.directory)),
        }))
    }

    async fn touch_sandbox(
        &self,
        request: Request<v1::TouchSandboxRequest>,
    ) -> Result<Response<v1::TouchSandboxResponse>, Status> {
        let chat_id = convert::chat_id(&request.into_inner().chat_id)?;
        let session = self
            .run(
                "TouchSandbox",
                Some(chat_id.to_string()),
                |use_cases| async move { use_cases.touch.execute(chat_id).await },
            )
            .await?;
        Ok(Response::new(v1::TouchSandboxResponse {
            sandbox: Some(convert::sandbox(&session, &self.use_cases.directory)),
        }))
    }

    type WatchSandboxesStream = EventStream;

    async fn watch_sandboxes(
        &self,
        request: Request<v1::WatchSandboxesRequest>,
    ) -> Result<Response<Self::WatchSandboxesStream>, Status> {
        let request = request.into_inner();
        let watch = WatchRequest {
            after: convert::cursor(&request.after)?,
            chat_id: convert::chat_filter(&request.chat_id)?,
            agent_id: convert::agent_filter(&request.agent_id)?,
        };
        // Opening is a tracked call (refused once draining); the stream is tracked too, and runs
        // until the hub closes in the drain, the drain's grace ends it, or the client goes away.
        let events = self
            .run("WatchSandboxes", None, |use_cases| async move {
                use_cases.events.watch(watch).await
            })
            .await?;
        let directory = self.use_cases.directory.clone();
        let stream = tokio_stream::StreamExt::map(events, move |item| {
            item.map(|event| convert::event(&event, &directory))
                .map_err(|error| status_for("WatchSandboxes", None)(error))
        });
        Ok(Response::new(self.drain.stream(stream)?))
    }

    async fn list_nodes(
        &self,
        _request: Request<v1::ListNodesRequest>,
    ) -> Result<Response<v1::ListNodesResponse>, Status> {
        let nodes = self
            .run("ListNodes", None, |use_cases| async move {
                use_cases.nodes.list().await
            })
            .await?;
        Ok(Response::new(v1::ListNodesResponse {
            nodes: nodes.iter().map(convert::node).collect(),
        }))
    }

    async fn drain_node(
        &self,
        request: Request<v1::DrainNodeRequest>,
    ) -> Result<Response<v1::DrainNodeResponse>, Status> {
        let request = request.into_inner();
        let node_id = convert::node_id(&request.node_id)?;
        let draining = request.draining;
        let node = self
            .run("DrainNode", None, |use_cases| async move {
                use_cases.nodes.drain(&node_id, draining).await
            })
            .await?;
        Ok(Response::new(v1::DrainNodeResponse {
            node: Some(convert::node(&node)),
        }))
    }
}
