//! The one table of hostile requests: every malformed or forbidden field of every RPC, with the
//! code it must get and the field its `BadRequest` violation must name. The end-to-end suite sends
//! all of it to a real process; the in-process server tests send the part the server itself
//! decides (see [`DecidedBy`]), over fakes that must then have seen no call.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use sandboxd_api::v1;
use sandboxd_api::v1::sandbox_service_client::SandboxServiceClient;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_types::StatusExt;

use crate::SandboxRequests as _;

/// Where a refusal is decided, so a test can send the cases its stack can decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecidedBy {
    /// The server's request validation, before any port is called: every stack, fakes included.
    Request,
    /// The session store (page tokens are opaque to the server): a real store.
    Store,
    /// The runtime's volume policy on the real filesystem (roots, symlinks, existence).
    VolumePolicy,
}

/// One request of the table.
#[derive(Debug, Clone)]
pub enum HostileRequest {
    Create(v1::CreateSandboxRequest),
    Get(v1::GetSandboxRequest),
    List(v1::ListSandboxesRequest),
    Extend(v1::ExtendSandboxRequest),
    Delete(v1::DeleteSandboxRequest),
    Pause(v1::PauseSandboxRequest),
    Resume(v1::ResumeSandboxRequest),
    Touch(v1::TouchSandboxRequest),
    /// Refused before the stream opens; an accepted watch is dropped at once.
    Watch(v1::WatchSandboxesRequest),
    Drain(v1::DrainNodeRequest),
}

impl HostileRequest {
    /// Sends the request; the answer's body is not needed.
    ///
    /// # Errors
    /// The status the server answered with.
    pub async fn send(self, api: &mut SandboxServiceClient<Channel>) -> Result<(), Status> {
        match self {
            Self::Create(request) => api.create_sandbox(request).await.map(drop),
            Self::Get(request) => api.get_sandbox(request).await.map(drop),
            Self::List(request) => api.list_sandboxes(request).await.map(drop),
            Self::Extend(request) => api.extend_sandbox(request).await.map(drop),
            Self::Delete(request) => api.delete_sandbox(request).await.map(drop),
            Self::Pause(request) => api.pause_sandbox(request).await.map(drop),
            Self::Resume(request) => api.resume_sandbox(request).await.map(drop),
            Self::Touch(request) => api.touch_sandbox(request).await.map(drop),
            Self::Watch(request) => api.watch_sandboxes(request).await.map(drop),
            Self::Drain(request) => api.drain_node(request).await.map(drop),
        }
    }
}

/// A refused call: what it sends, and what must come back.
#[derive(Debug, Clone)]
pub struct HostileCase {
    /// A short description for failure messages (long values are cut).
    pub what: String,
    pub request: HostileRequest,
    pub code: Code,
    /// The field the first `BadRequest` violation must name.
    pub field: &'static str,
    pub decided_by: DecidedBy,
}

impl HostileCase {
    /// What was wrong with `outcome`, or `None` when it is the refusal this case wants.
    #[must_use]
    pub fn mismatch(&self, outcome: &Result<(), Status>) -> Option<String> {
        let status = match outcome {
            Ok(()) => return Some(format!("{}: accepted", self.what)),
            Err(status) => status,
        };
        let named = status
            .get_details_bad_request()
            .and_then(|bad| bad.field_violations.first().map(|v| v.field.clone()));
        (status.code() != self.code || named.as_deref() != Some(self.field)).then(|| {
            format!(
                "{}: got {:?} field {named:?} ({:.120}), want {:?} field {}",
                self.what,
                status.code(),
                status.message(),
                self.code,
                self.field
            )
        })
    }

    /// Sends the case and returns what was wrong with the answer, if anything.
    pub async fn run(&self, api: &SandboxServiceClient<Channel>) -> Option<String> {
        let outcome = self.request.clone().send(&mut api.clone()).await;
        self.mismatch(&outcome)
    }
}

/// What the table is built around: the state the caller set up.
#[derive(Debug, Clone)]
pub struct Targets {
    /// A chat with a live sandbox: a handler that skipped validation would change or answer it.
    pub live_chat: String,
    /// A chat without a sandbox.
    pub fresh_chat: String,
    /// An existing, allowed volume directory, for cases about the other fields.
    pub fresh_volume: String,
    /// The one allowed volume root; [`prepare_volume_root`] made its fixtures.
    pub volume_root: String,
    /// A page token for an unfiltered listing, issued by the server or made by [`forged_token`].
    pub page_token: String,
    /// The server's `max_ttl`: one hour more is refused.
    pub max_ttl: Duration,
}

/// Symlinks out of the volume root and a plain file in it, which the volume cases name.
///
/// # Errors
/// When the root is not writable.
pub fn prepare_volume_root(root: &Path) -> std::io::Result<()> {
    std::os::unix::fs::symlink("/etc", root.join("escape-etc"))?;
    std::os::unix::fs::symlink("/var/run", root.join("escape-run"))?;
    std::fs::write(root.join("a-file"), "x")
}

/// A well-formed unfiltered page token after `chat` (`sbx-list-v1\n\n` and the chat, hex).
#[must_use]
pub fn forged_token(chat: &str) -> String {
    hex(&format!("sbx-list-v1\n\n{chat}"))
}

fn hex(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

/// Every case of the table.
#[must_use]
pub fn hostile_cases(targets: &Targets) -> Vec<HostileCase> {
    let mut cases = Vec::new();
    chat_id_cases(targets, &mut cases);
    agent_id_cases(targets, &mut cases);
    volume_cases(targets, &mut cases);
    ttl_cases(targets, &mut cases);
    list_cases(targets, &mut cases);
    watch_cases(targets, &mut cases);
    node_cases(&mut cases);
    cases
}

/// Malformed node ids on DrainNode (an unknown well-formed one is NOT_FOUND, not here).
fn node_cases(cases: &mut Vec<HostileCase>) {
    let huge = mib();
    for bad in ["", "-n1", "N1", "n_1", "n/1", "n1\0", huge.as_str()] {
        cases.push(refused(
            format!("DrainNode node_id {bad:.40?}"),
            HostileRequest::Drain(v1::DrainNodeRequest {
                node_id: bad.to_owned(),
                draining: true,
            }),
            "node_id",
            DecidedBy::Request,
        ));
    }
}

fn mib() -> String {
    "a".repeat(1 << 20)
}

fn create(chat_id: &str, agent_id: &str, volume: &str) -> HostileRequest {
    HostileRequest::Create(v1::CreateSandboxRequest {
        chat_id: chat_id.to_owned(),
        agent_id: agent_id.to_owned(),
        volume_host_path: volume.to_owned(),
    })
}

fn refused(
    what: String,
    request: HostileRequest,
    field: &'static str,
    decided_by: DecidedBy,
) -> HostileCase {
    HostileCase {
        what,
        request,
        code: Code::InvalidArgument,
        field,
        decided_by,
    }
}

/// Malformed chat ids (empty, not a UUID, not canonical, nil, padded, control bytes, 1 MiB) on
/// every RPC that takes one.
fn chat_id_cases(targets: &Targets, cases: &mut Vec<HostileCase>) {
    let valid = &targets.live_chat;
    let bad_ids = [
        String::new(),
        "not-a-uuid".to_owned(),
        "nope".to_owned(),
        "x".to_owned(),
        valid.to_uppercase(),
        valid.replace('-', ""),
        format!("{{{valid}}}"),
        format!("urn:uuid:{valid}"),
        "00000000-0000-0000-0000-000000000000".to_owned(),
        format!(" {valid}"),
        format!("{valid} "),
        format!("{valid}\0"),
        format!("{}\u{7}", &valid[..35]),
        mib(),
    ];
    for (index, bad) in bad_ids.iter().enumerate() {
        let what = format!("chat_id #{index} {bad:.40?}");
        let chat_id = bad.clone();
        for (rpc, request) in [
            ("Create", create(bad, "default", &targets.fresh_volume)),
            (
                "Get",
                HostileRequest::Get(v1::GetSandboxRequest {
                    chat_id: chat_id.clone(),
                }),
            ),
            (
                "Extend",
                HostileRequest::Extend(v1::ExtendSandboxRequest {
                    chat_id: chat_id.clone(),
                    ttl: None,
                }),
            ),
            (
                "Delete",
                HostileRequest::Delete(v1::DeleteSandboxRequest {
                    chat_id: chat_id.clone(),
                }),
            ),
            (
                "Pause",
                HostileRequest::Pause(v1::PauseSandboxRequest {
                    chat_id: chat_id.clone(),
                }),
            ),
            (
                "Resume",
                HostileRequest::Resume(v1::ResumeSandboxRequest {
                    chat_id: chat_id.clone(),
                }),
            ),
            (
                "Touch",
                HostileRequest::Touch(v1::TouchSandboxRequest {
                    chat_id: chat_id.clone(),
                }),
            ),
        ] {
            cases.push(refused(
                format!("{rpc} {what}"),
                request,
                "chat_id",
                DecidedBy::Request,
            ));
        }
        // An empty chat filter means every chat: only the others are malformed.
        if !bad.is_empty() {
            cases.push(refused(
                format!("Watch {what}"),
                watch("", &chat_id, ""),
                "chat_id",
                DecidedBy::Request,
            ));
        }
    }
}

/// Agent ids: malformed, or well-formed without a profile. Sent for the live chat too, where a
/// handler that skipped validation would answer ALREADY_EXISTS instead.
fn agent_id_cases(targets: &Targets, cases: &mut Vec<HostileCase>) {
    let bad_agents = [
        String::new(),
        "Bad!".to_owned(),
        "has space".to_owned(),
        "UPPER".to_owned(),
        "Default".to_owned(),
        "de\0fault".to_owned(),
        "de\tfault".to_owned(),
        "a".repeat(300),
        mib(),
        "unknown".to_owned(),
    ];
    for bad in &bad_agents {
        for (chat, which) in [(&targets.live_chat, "live"), (&targets.fresh_chat, "fresh")] {
            cases.push(refused(
                format!("Create agent_id {bad:.40?} ({which} chat)"),
                create(chat, bad, &targets.fresh_volume),
                "agent_id",
                DecidedBy::Request,
            ));
        }
    }
}

/// Volume paths: malformed (INVALID_ARGUMENT), or refused by the policy (PERMISSION_DENIED; a
/// missing directory or a file is INVALID_ARGUMENT), always for a fresh chat.
fn volume_cases(targets: &Targets, cases: &mut Vec<HostileCase>) {
    let root = &targets.volume_root;
    let malformed = [
        String::new(),
        "relative".to_owned(),
        "relative/dir".to_owned(),
        "./x".to_owned(),
        format!("{root}/../x"),
        format!("{root}/../etc"),
        format!("{root}/./x"),
        format!("{root}/a/.."),
        format!("{root}/nul\0byte"),
        format!("{root}/x\0y"),
        format!("{root}/x\ny"),
        format!("{root}//double"),
        format!("{root}/{}", "d".repeat(5000)),
        format!("/{}", mib()),
    ];
    let not_a_directory = [format!("{root}/does-not-exist"), format!("{root}/a-file")];
    let denied = [
        "/".to_owned(),
        "/etc".to_owned(),
        "/proc".to_owned(),
        "/proc/self/root".to_owned(),
        "/var/run/docker.sock".to_owned(),
        "/run/docker.sock".to_owned(),
        "/tmp".to_owned(),
        root.clone(),
        format!("{root}/escape-etc"),
        format!("{root}/escape-run"),
        format!("{root}/escape-run/docker.sock"),
    ];
    let groups = [
        (&malformed[..], Code::InvalidArgument, DecidedBy::Request),
        (
            &not_a_directory[..],
            Code::InvalidArgument,
            DecidedBy::VolumePolicy,
        ),
        (&denied[..], Code::PermissionDenied, DecidedBy::VolumePolicy),
    ];
    for (paths, code, decided_by) in groups {
        for path in paths {
            cases.push(HostileCase {
                what: format!("Create volume_host_path {path:.60?}"),
                request: create(&targets.fresh_chat, "default", path),
                code,
                field: "volume_host_path",
                decided_by,
            });
        }
    }
}

/// ExtendSandbox ttls of the live chat: zero, negative, not normalised, huge, over `max_ttl`.
fn ttl_cases(targets: &Targets, cases: &mut Vec<HostileCase>) {
    let over_max = i64::try_from(targets.max_ttl.as_secs()).unwrap_or(i64::MAX - 3600) + 3600;
    let ttls = [
        ("zero", 0, 0),
        ("-1 s", -1, 0),
        ("-5 s", -5, 0),
        ("-60 s", -60, 0),
        ("-1 ns", 0, -1),
        ("-5 ns", 0, -5),
        ("1 s -1 ns", 1, -1),
        ("1 s + 1e9 ns", 1, 1_000_000_000),
        ("1 s + 2e9 ns", 1, 2_000_000_000),
        ("i64::MAX s", i64::MAX, 0),
        ("max_ttl + 1 h", over_max, 0),
    ];
    for (what, seconds, nanos) in ttls {
        cases.push(refused(
            format!("Extend ttl {what}"),
            HostileRequest::Extend(v1::ExtendSandboxRequest {
                chat_id: targets.live_chat.clone(),
                ttl: Some(prost_types::Duration { seconds, nanos }),
            }),
            "ttl",
            DecidedBy::Request,
        ));
    }
}

/// ListSandboxes: malformed agent filters, page sizes out of range, forged page tokens.
fn list_cases(targets: &Targets, cases: &mut Vec<HostileCase>) {
    let list = |agent_id: &str, page_size: i32, page_token: &str| {
        HostileRequest::List(v1::ListSandboxesRequest {
            agent_id: agent_id.to_owned(),
            page_size,
            page_token: page_token.to_owned(),
            state: 0,
        })
    };
    for (agent, page_size) in [("Bad!", 0), ("Bad Agent", 10), ("a\0", 0)] {
        cases.push(refused(
            format!("List agent_id {agent:?}"),
            list(agent, page_size, ""),
            "agent_id",
            DecidedBy::Request,
        ));
    }
    for size in [-1, 1001, i32::MAX, i32::MIN] {
        cases.push(refused(
            format!("List page_size {size}"),
            list("", size, ""),
            "page_size",
            DecidedBy::Request,
        ));
    }
    for state in [-1, 5, 99, i32::MAX, i32::MIN] {
        cases.push(refused(
            format!("List state {state}"),
            HostileRequest::List(v1::ListSandboxesRequest {
                agent_id: String::new(),
                page_size: 0,
                page_token: String::new(),
                state,
            }),
            "state",
            DecidedBy::Request,
        ));
    }
    let token = &targets.page_token;
    for (what, agent, forged) in [
        ("not a token", "", "forged!".to_owned()),
        ("truncated", "", token[..token.len() - 2].to_owned()),
        ("odd length", "", token[..token.len() - 1].to_owned()),
        ("upper case", "", token.to_uppercase()),
        ("not hex", "", "zz".repeat(20)),
        ("1 MiB", "", mib()),
        ("of another filter", "other", token.clone()),
    ] {
        cases.push(refused(
            format!("List page_token {what}"),
            list(agent, 0, &forged),
            "page_token",
            DecidedBy::Store,
        ));
    }
}

fn watch(after: &str, chat_id: &str, agent_id: &str) -> HostileRequest {
    HostileRequest::Watch(v1::WatchSandboxesRequest {
        after: after.to_owned(),
        chat_id: chat_id.to_owned(),
        agent_id: agent_id.to_owned(),
    })
}

/// WatchSandboxes: cursors that are not `<millis>-<sequence>` (a well-formed cursor older than
/// the retention is OUT_OF_RANGE, which the lifecycle tests check), malformed agent filters.
fn watch_cases(targets: &Targets, cases: &mut Vec<HostileCase>) {
    let bad_cursors = [
        "garbage".to_owned(),
        "17".to_owned(),
        "17-".to_owned(),
        "-3".to_owned(),
        "-".to_owned(),
        "17-3-1".to_owned(),
        " 17-3".to_owned(),
        "17-3 ".to_owned(),
        "+17-3".to_owned(),
        "0x11-3".to_owned(),
        "17-99999999999999999999999".to_owned(),
        "17-3\0".to_owned(),
        targets.page_token.clone(),
        mib(),
        // Well-formed, but no event could carry it: it lies thousands of years ahead.
        "99999999999999-0".to_owned(),
    ];
    for bad in &bad_cursors {
        cases.push(refused(
            format!("Watch after {bad:.40?}"),
            watch(bad, "", ""),
            "after",
            DecidedBy::Request,
        ));
    }
    for agent in ["Bad!", "has space", "a\0", "UPPER"] {
        cases.push(refused(
            format!("Watch agent_id {agent:?}"),
            watch("", "", agent),
            "agent_id",
            DecidedBy::Request,
        ));
    }
}

/// Sets up an app for the table: a live sandbox for a new chat, a fresh chat and volume, the
/// volume root's fixtures, and a page token the server issued (or, when one session fits a page,
/// a forged one). `max_ttl` must be the app's.
pub async fn setup(app: &crate::TestApp, max_ttl: Duration) -> Targets {
    let live_chat = crate::new_chat_id();
    app.create_ok(&live_chat, "default", &app.new_volume("live"))
        .await;
    prepare_volume_root(app.volume_root.path()).expect("preparing the volume root");
    let issued = app
        .list(v1::ListSandboxesRequest {
            page_size: 1,
            ..Default::default()
        })
        .await
        .expect("listing")
        .next_page_token;
    let page_token = if issued.is_empty() {
        forged_token(&live_chat)
    } else {
        issued
    };
    Targets {
        fresh_chat: crate::new_chat_id(),
        fresh_volume: app.new_volume("fresh"),
        volume_root: app
            .volume_root
            .path()
            .to_str()
            .expect("temp dir paths are UTF-8")
            .to_owned(),
        page_token,
        max_ttl,
        live_chat,
    }
}
