//! Typed calls of the sandbox API for tests (zero-to-production's `app.post_subscriptions(body)`):
//! `app.create(chat, agent, volume)`, `app.get(chat)`, `app.pause(chat)`, ... instead of a
//! request struct and a `.clone()...into_inner()` chain in every test.
//!
//! [`SandboxRequests`] is implemented by a [`TestApp`], a [`Peer`] and a bare client (a test's
//! extra connection, or one moved into a task), so the same calls work on each. Every call
//! answers the RPC's `Result`, for tests that check a refusal; [`SandboxRequests::create_ok`] and
//! [`SandboxRequests::live_sandbox`] panic with the server's log instead, for the many tests whose
//! subject is what comes after. ListSandboxes takes its request as it is (filters, paging and
//! state are what its tests vary); a request a test builds on purpose (hostile input, metadata,
//! an oversized message) goes through the client itself.

use std::future::Future;
use std::time::{Duration, Instant};

use sandboxd_api::v1;
use sandboxd_api::v1::sandbox_service_client::SandboxServiceClient;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::app::{Peer, TestApp};

/// How long [`SandboxRequests::create_retrying`] retries ABORTED before answering it.
const RETRY_ABORTED_FOR: Duration = Duration::from_secs(60);

/// A CreateSandbox that succeeded: its sandbox and its result, a `v1::CreateSandboxResult` as the
/// wire carries it (an `i32`), so tests compare it as they compare the raw response's.
#[derive(Debug, Clone, PartialEq)]
pub struct Created {
    pub sandbox: v1::Sandbox,
    pub result: i32,
}

/// Writes a call whose request names one chat and whose OK answer carries its sandbox: the body is
/// the same for each but the request type and the client's method.
macro_rules! chat_call {
    ($(#[$doc:meta])* $name:ident => $method:ident($request:ident)) => {
        $(#[$doc])*
        fn $name(&self, chat_id: &str) -> impl Future<Output = Result<v1::Sandbox, Status>> + Send {
            let request = v1::$request {
                chat_id: chat_id.to_owned(),
            };
            let mut client = self.client();
            async move {
                let response = client.$method(request).await?.into_inner();
                Ok(sandbox_of(stringify!($name), chat_id, response.sandbox))
            }
        }
    };
}

/// The sandbox API's calls with typed arguments, on anything that has a client of it.
///
/// The futures are `Send`, so a call can run in a spawned task.
pub trait SandboxRequests: Sync {
    /// A client of the server (cheap: a clone shares the connection).
    fn client(&self) -> SandboxServiceClient<Channel>;

    /// What the server has logged so far, for panic messages; empty for a bare client.
    fn server_log(&self) -> String {
        String::new()
    }

    /// CreateSandbox: the response, or the status it was refused with.
    fn create(
        &self,
        chat_id: &str,
        agent_id: &str,
        volume: &str,
    ) -> impl Future<Output = Result<v1::CreateSandboxResponse, Status>> + Send {
        let request = v1::CreateSandboxRequest {
            chat_id: chat_id.to_owned(),
            agent_id: agent_id.to_owned(),
            volume_host_path: volume.to_owned(),
        };
        let mut client = self.client();
        async move { Ok(client.create_sandbox(request).await?.into_inner()) }
    }

    /// CreateSandbox that must succeed; panics with the server's log when refused.
    fn create_ok(
        &self,
        chat_id: &str,
        agent_id: &str,
        volume: &str,
    ) -> impl Future<Output = Created> + Send {
        async move {
            let response = self
                .create(chat_id, agent_id, volume)
                .await
                .unwrap_or_else(|status| {
                    panic!("create {chat_id}: {status:?}\n{}", self.server_log())
                });
            Created {
                sandbox: sandbox_of("create", chat_id, response.sandbox),
                result: response.result,
            }
        }
    }

    /// CreateSandbox, retrying ABORTED (the chat's lease is held) for up to a minute, as the
    /// contract says clients should; any other answer, or ABORTED after that, is returned.
    fn create_retrying(
        &self,
        chat_id: &str,
        agent_id: &str,
        volume: &str,
    ) -> impl Future<Output = Result<v1::CreateSandboxResponse, Status>> + Send {
        async move {
            let deadline = Instant::now() + RETRY_ABORTED_FOR;
            loop {
                match self.create(chat_id, agent_id, volume).await {
                    Err(status) if status.code() == Code::Aborted && Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    outcome => return outcome,
                }
            }
        }
    }

    chat_call! {
        /// GetSandbox: the chat's sandbox, or the status (NOT_FOUND when there is none).
        get => get_sandbox(GetSandboxRequest)
    }

    /// GetSandbox that must find the chat's sandbox; panics with the server's log otherwise.
    fn live_sandbox(&self, chat_id: &str) -> impl Future<Output = v1::Sandbox> + Send {
        async move {
            self.get(chat_id)
                .await
                .unwrap_or_else(|status| panic!("get {chat_id}: {status:?}\n{}", self.server_log()))
        }
    }

    /// ExtendSandbox by `ttl` (`None`: the configured session TTL from now).
    fn extend(
        &self,
        chat_id: &str,
        ttl: Option<Duration>,
    ) -> impl Future<Output = Result<v1::Sandbox, Status>> + Send {
        let request = v1::ExtendSandboxRequest {
            chat_id: chat_id.to_owned(),
            ttl: ttl.map(|ttl| {
                prost_types::Duration::try_from(ttl)
                    .unwrap_or_else(|error| panic!("ttl {ttl:?} on the wire: {error}"))
            }),
        };
        let mut client = self.client();
        async move {
            let response = client.extend_sandbox(request).await?.into_inner();
            Ok(sandbox_of("extend", chat_id, response.sandbox))
        }
    }

    /// DeleteSandbox: the response (DELETED or NOT_FOUND), or the status.
    fn delete(
        &self,
        chat_id: &str,
    ) -> impl Future<Output = Result<v1::DeleteSandboxResponse, Status>> + Send {
        let request = v1::DeleteSandboxRequest {
            chat_id: chat_id.to_owned(),
        };
        let mut client = self.client();
        async move { Ok(client.delete_sandbox(request).await?.into_inner()) }
    }

    chat_call! {
        /// PauseSandbox: the paused sandbox, or the status.
        pause => pause_sandbox(PauseSandboxRequest)
    }

    chat_call! {
        /// ResumeSandbox: the running sandbox, or the status.
        resume => resume_sandbox(ResumeSandboxRequest)
    }

    chat_call! {
        /// TouchSandbox: the sandbox with its activity recorded, or the status.
        touch => touch_sandbox(TouchSandboxRequest)
    }

    /// One page of ListSandboxes; the request names the filter, page size and token
    /// (`..Default::default()` for the rest).
    fn list(
        &self,
        request: v1::ListSandboxesRequest,
    ) -> impl Future<Output = Result<v1::ListSandboxesResponse, Status>> + Send {
        let mut client = self.client();
        async move { Ok(client.list_sandboxes(request).await?.into_inner()) }
    }

    /// Every session, following ListSandboxes' pages (of 1000) to the last.
    fn all_sandboxes(&self) -> impl Future<Output = Result<Vec<v1::Sandbox>, Status>> + Send {
        async move {
            let mut sandboxes = Vec::new();
            let mut page_token = String::new();
            loop {
                let page = self
                    .list(v1::ListSandboxesRequest {
                        page_size: 1000,
                        page_token,
                        ..Default::default()
                    })
                    .await?;
                sandboxes.extend(page.sandboxes);
                if page.next_page_token.is_empty() {
                    return Ok(sandboxes);
                }
                page_token = page.next_page_token;
            }
        }
    }

    /// CleanupExpiredSandboxes: one pass of the cleanup, as the background loop runs it.
    fn cleanup(
        &self,
    ) -> impl Future<Output = Result<v1::CleanupExpiredSandboxesResponse, Status>> + Send {
        let mut client = self.client();
        async move {
            let request = v1::CleanupExpiredSandboxesRequest {};
            Ok(client
                .cleanup_expired_sandboxes(request)
                .await?
                .into_inner())
        }
    }

    /// ReconcileSandboxes: one pass of the reconciler, as the background loop runs it.
    fn reconcile(
        &self,
    ) -> impl Future<Output = Result<v1::ReconcileSandboxesResponse, Status>> + Send {
        let mut client = self.client();
        async move {
            let request = v1::ReconcileSandboxesRequest {};
            Ok(client.reconcile_sandboxes(request).await?.into_inner())
        }
    }
}

/// The sandbox of an OK answer, which always carries one; panics (a server bug) when it does not.
fn sandbox_of(rpc: &str, chat_id: &str, sandbox: Option<v1::Sandbox>) -> v1::Sandbox {
    sandbox.unwrap_or_else(|| panic!("{rpc} {chat_id}: no sandbox in the OK answer"))
}

impl SandboxRequests for SandboxServiceClient<Channel> {
    fn client(&self) -> SandboxServiceClient<Channel> {
        self.clone()
    }
}

impl SandboxRequests for TestApp {
    fn client(&self) -> SandboxServiceClient<Channel> {
        self.api.clone()
    }

    fn server_log(&self) -> String {
        self.log()
    }
}

impl SandboxRequests for Peer {
    fn client(&self) -> SandboxServiceClient<Channel> {
        self.api.clone()
    }

    fn server_log(&self) -> String {
        self.log()
    }
}
