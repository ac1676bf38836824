//! Every bad field of every RPC against the real process and stores: the right code, a
//! `BadRequest` violation naming the field, and nothing created: the set of Redis keys under the
//! test's prefix and the set of containers with its label are the same before and after.

use std::collections::BTreeSet;

use sandboxd_api::v1;
use tonic::{Code, Status};
use tonic_types::StatusExt;

use crate::helpers::{TestApp, new_chat_id, spawn_app};

/// A refused call: what it sent, and what must come back.
struct Case {
    what: String,
    call: Call,
    code: Code,
    field: &'static str,
}

enum Call {
    Create(v1::CreateSandboxRequest),
    Get(v1::GetSandboxRequest),
    List(v1::ListSandboxesRequest),
    Extend(v1::ExtendSandboxRequest),
    Delete(v1::DeleteSandboxRequest),
}

async fn send(app: &TestApp, call: Call) -> Result<(), Status> {
    let mut api = app.api.clone();
    match call {
        Call::Create(request) => api.create_sandbox(request).await.map(drop),
        Call::Get(request) => api.get_sandbox(request).await.map(drop),
        Call::List(request) => api.list_sandboxes(request).await.map(drop),
        Call::Extend(request) => api.extend_sandbox(request).await.map(drop),
        Call::Delete(request) => api.delete_sandbox(request).await.map(drop),
    }
}

/// Malformed chat ids: empty, not a UUID, not canonical (upper case, braces, no hyphens), nil.
fn bad_chat_ids(valid: &str) -> Vec<String> {
    vec![
        String::new(),
        "not-a-uuid".to_owned(),
        valid.to_uppercase(),
        format!("{{{valid}}}"),
        valid.replace('-', ""),
        "00000000-0000-0000-0000-000000000000".to_owned(),
        format!("{valid} "),
    ]
}

/// The Redis keys under the test's prefix and the containers with its label.
async fn state_snapshot(app: &TestApp) -> (BTreeSet<String>, BTreeSet<String>) {
    (app.redis_keys().await, app.container_ids().await)
}

#[tokio::test]
async fn every_bad_field_of_every_rpc_is_refused_without_touching_the_stores() {
    let app = spawn_app().await;
    // A live sandbox, so a handler that skipped validation would have something to change.
    let chat = new_chat_id();
    let volume = app.new_volume("live");
    app.api
        .clone()
        .create_sandbox(v1::CreateSandboxRequest {
            chat_id: chat.clone(),
            agent_id: "default".to_owned(),
            volume_host_path: volume.clone(),
        })
        .await
        .unwrap();
    let fresh_chat = new_chat_id();
    let fresh_volume = app.new_volume("fresh");
    // Paths that must never be mounted, whatever the policy says about roots.
    let root = app.volume_root.path().to_str().unwrap().to_owned();
    let escape = app.volume_root.path().join("escape");
    std::os::unix::fs::symlink("/etc", &escape).unwrap();
    let file = app.volume_root.path().join("a-file");
    std::fs::write(&file, "x").unwrap();

    let create = |chat_id: &str, agent_id: &str, volume: &str| {
        Call::Create(v1::CreateSandboxRequest {
            chat_id: chat_id.to_owned(),
            agent_id: agent_id.to_owned(),
            volume_host_path: volume.to_owned(),
        })
    };
    let mut cases = Vec::new();
    for bad in bad_chat_ids(&chat) {
        cases.push(Case {
            what: format!("CreateSandbox chat_id {bad:?}"),
            call: create(&bad, "default", &fresh_volume),
            code: Code::InvalidArgument,
            field: "chat_id",
        });
        for (rpc, call) in [
            (
                "GetSandbox",
                Call::Get(v1::GetSandboxRequest {
                    chat_id: bad.clone(),
                }),
            ),
            (
                "ExtendSandbox",
                Call::Extend(v1::ExtendSandboxRequest {
                    chat_id: bad.clone(),
                    ttl: None,
                }),
            ),
            (
                "DeleteSandbox",
                Call::Delete(v1::DeleteSandboxRequest {
                    chat_id: bad.clone(),
                }),
            ),
        ] {
            cases.push(Case {
                what: format!("{rpc} chat_id {bad:?}"),
                call,
                code: Code::InvalidArgument,
                field: "chat_id",
            });
        }
    }
    // Agent ids: malformed, or well-formed without a profile. Sent for the live chat too, where
    // a handler that skipped validation would answer ALREADY_EXISTS instead.
    for bad in [
        "",
        "Bad!",
        "has space",
        "UPPER",
        &"a".repeat(300),
        "unknown",
    ] {
        for target in [&chat, &fresh_chat] {
            cases.push(Case {
                what: format!("CreateSandbox agent_id {bad:?}"),
                call: create(target, bad, &fresh_volume),
                code: Code::InvalidArgument,
                field: "agent_id",
            });
        }
    }
    // Volume paths: malformed (INVALID_ARGUMENT) or refused by policy (PERMISSION_DENIED).
    let long = format!("{root}/{}", "d".repeat(5000));
    let missing = format!("{root}/does-not-exist");
    let invalid = [
        String::new(),
        "relative/dir".to_owned(),
        format!("{root}/../x"),
        format!("{root}/./x"),
        format!("{root}/nul\0byte"),
        format!("{root}//double"),
        long,
        missing,
        file.to_str().unwrap().to_owned(),
    ];
    for bad in invalid {
        cases.push(Case {
            what: format!("CreateSandbox volume_host_path {:.60?}", bad),
            call: create(&fresh_chat, "default", &bad),
            code: Code::InvalidArgument,
            field: "volume_host_path",
        });
    }
    let denied = [
        "/".to_owned(),
        "/etc".to_owned(),
        "/proc".to_owned(),
        "/var/run/docker.sock".to_owned(),
        "/tmp".to_owned(),
        root.clone(),
        escape.to_str().unwrap().to_owned(),
    ];
    for bad in denied {
        cases.push(Case {
            what: format!("CreateSandbox volume_host_path {bad:?}"),
            call: create(&fresh_chat, "default", &bad),
            code: Code::PermissionDenied,
            field: "volume_host_path",
        });
    }
    // ListSandboxes: a malformed agent filter, page sizes out of range, a forged page token.
    let list = |agent_id: &str, page_size: i32, page_token: &str| {
        Call::List(v1::ListSandboxesRequest {
            agent_id: agent_id.to_owned(),
            page_size,
            page_token: page_token.to_owned(),
        })
    };
    for (what, call, field) in [
        ("agent_id \"Bad!\"", list("Bad!", 0, ""), "agent_id"),
        ("page_size -1", list("", -1, ""), "page_size"),
        ("page_size 1001", list("", 1001, ""), "page_size"),
        ("page_size i32::MIN", list("", i32::MIN, ""), "page_size"),
        ("page_token forged", list("", 0, "forged!"), "page_token"),
    ] {
        cases.push(Case {
            what: format!("ListSandboxes {what}"),
            call,
            code: Code::InvalidArgument,
            field,
        });
    }
    // ExtendSandbox ttl: zero, negative, not normalised; on the live chat.
    for (seconds, nanos) in [(0, 0), (-1, 0), (0, -5), (1, 1_000_000_000), (1, -1)] {
        cases.push(Case {
            what: format!("ExtendSandbox ttl {seconds}s {nanos}ns"),
            call: Call::Extend(v1::ExtendSandboxRequest {
                chat_id: chat.clone(),
                ttl: Some(prost_types::Duration { seconds, nanos }),
            }),
            code: Code::InvalidArgument,
            field: "ttl",
        });
    }

    let before = state_snapshot(&app).await;
    assert_eq!(before.1.len(), 1);
    let live_expiry = app.live_sandbox(&chat).await.expires_at;
    let mut failures = Vec::new();
    for case in cases {
        match send(&app, case.call).await {
            Ok(()) => failures.push(format!("{}: accepted", case.what)),
            Err(status) => {
                let field = status
                    .get_details_bad_request()
                    .and_then(|bad| bad.field_violations.first().map(|v| v.field.clone()));
                if status.code() != case.code || field.as_deref() != Some(case.field) {
                    failures.push(format!(
                        "{}: got {:?} field {field:?} ({}), want {:?} field {}",
                        case.what,
                        status.code(),
                        status.message(),
                        case.code,
                        case.field
                    ));
                }
            }
        }
        let after = state_snapshot(&app).await;
        if after != before {
            failures.push(format!(
                "{}: changed the stores: {before:?} -> {after:?}",
                case.what
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The live sandbox is untouched (same session, same expiry).
    let live = app.live_sandbox(&chat).await;
    assert_eq!(live.expires_at, live_expiry);
    assert_eq!(live.volume_host_path, volume);
}
