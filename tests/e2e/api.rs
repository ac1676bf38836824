//! Six of the seven RPCs through the generated tonic client against a real process, with the
//! engine's and Redis's state checked where the contract says something about them.
//! ReconcileSandboxes, whose subject is repair after trouble, is driven by `reliability`.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::AsyncCommands;
use sandboxd_api::v1;
use tonic::Code;
use tonic_types::StatusExt;

use sandboxd_testkit::{
    AppConfig, Created, SandboxRequests, TestApp, http_get, new_chat_id, spawn_app, spawn_app_with,
};

fn unix_ms(at: &prost_types::Timestamp) -> i64 {
    at.seconds * 1000 + i64::from(at.nanos) / 1_000_000
}

fn now_ms() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

/// Sleeps until `sandbox` has expired (plus a margin for the clocks' granularity).
async fn wait_until_expired(sandbox: &v1::Sandbox) {
    let expires_at = unix_ms(sandbox.expires_at.as_ref().unwrap());
    let wait = expires_at - now_ms() + 150;
    if let Ok(wait) = u64::try_from(wait) {
        tokio::time::sleep(Duration::from_millis(wait)).await;
    }
}

fn conflict_fields(status: &tonic::Status) -> String {
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    let info = status
        .get_details_error_info()
        .expect("ErrorInfo in the details");
    assert_eq!(info.reason, "SANDBOX_CONFLICT");
    assert_eq!(info.domain, "sandboxd");
    info.metadata.get("fields").cloned().unwrap_or_default()
}

#[tokio::test]
async fn create_serves_http_then_reuses_and_refuses_conflicts() {
    let app = spawn_app().await;
    let chat = new_chat_id();
    let volume = app.new_volume("chat");
    std::fs::write(
        app.volume_root.path().join("chat/index.html"),
        "hello from the volume",
    )
    .unwrap();

    let Created { sandbox, result } = app.create_ok(&chat, "default", &volume).await;
    assert_eq!(result, v1::CreateSandboxResult::Created as i32);
    assert_eq!(sandbox.chat_id, chat);
    assert_eq!(sandbox.agent_id, "default");
    assert_eq!(sandbox.volume_host_path, volume);
    let endpoint = sandbox.endpoint.clone().expect("an endpoint");
    assert_eq!(endpoint.ip, "127.0.0.1");
    // The endpoint is the container's httpd, serving the chat's volume.
    let (status, body) = http_get(&format!("{}:{}", endpoint.ip, endpoint.port), "/index.html")
        .await
        .unwrap();
    assert_eq!((status, body.as_str()), (200, "hello from the volume"));

    // The engine has exactly this container, labelled with the session.
    let containers = app.containers().await;
    assert_eq!(containers.len(), 1);
    let container = &containers[0];
    assert_eq!(container.id.as_deref(), Some(sandbox.container_id.as_str()));
    assert_eq!(
        app.label(container, "chat_id").as_deref(),
        Some(chat.as_str())
    );
    assert_eq!(
        app.label(container, "session_id").as_deref(),
        Some(sandbox.session_id.as_str())
    );
    assert_eq!(
        container.state.as_ref().map(ToString::to_string).as_deref(),
        Some("running")
    );
    // Redis has the session hash, the chat index and the expiry index.
    let mut redis = app.redis_connection().await;
    let indexed: String = redis.get(app.key(&format!("chat:{chat}"))).await.unwrap();
    assert_eq!(indexed, sandbox.session_id);
    let stored_container: String = redis
        .hget(
            app.key(&format!("session:{}", sandbox.session_id)),
            "container_id",
        )
        .await
        .unwrap();
    assert_eq!(stored_container, sandbox.container_id);
    let score: Option<i64> = redis
        .zscore(app.key("expiry"), &sandbox.session_id)
        .await
        .unwrap();
    assert_eq!(score, Some(unix_ms(sandbox.expires_at.as_ref().unwrap())));

    // The same call again: the same session.
    let Created {
        sandbox: again,
        result,
    } = app.create_ok(&chat, "default", &volume).await;
    assert_eq!(result, v1::CreateSandboxResult::Reused as i32);
    assert_eq!(again.session_id, sandbox.session_id);
    assert_eq!(again.container_id, sandbox.container_id);

    // Another agent, another volume, or both: ALREADY_EXISTS naming what differs.
    let other_volume = app.new_volume("elsewhere");
    for (agent, volume, fields) in [
        ("other", volume.as_str(), "agent_id"),
        ("default", other_volume.as_str(), "volume_host_path"),
        ("other", other_volume.as_str(), "agent_id,volume_host_path"),
    ] {
        let status = app.create(&chat, agent, volume).await.unwrap_err();
        assert_eq!(conflict_fields(&status), fields);
    }
    // Nothing was created or replaced by the refused calls.
    assert_eq!(
        app.container_ids().await,
        BTreeSet::from([sandbox.container_id.clone()])
    );
    assert_eq!(app.get(&chat).await.unwrap().session_id, sandbox.session_id);
}

#[tokio::test]
async fn an_expired_sandbox_cannot_be_extended_and_is_replaced_by_create() {
    let app = spawn_app_with(AppConfig {
        session_ttl: "2s".to_owned(),
        ..AppConfig::default()
    })
    .await;
    let chat = new_chat_id();
    let volume = app.new_volume("chat");
    let old = app.create_ok(&chat, "default", &volume).await.sandbox;
    wait_until_expired(&old).await;

    // Expired but not yet cleaned: still visible, no longer extendable.
    assert_eq!(app.get(&chat).await.unwrap().session_id, old.session_id);
    let status = app.extend(&chat, None).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");

    let Created {
        sandbox: new,
        result,
    } = app.create_ok(&chat, "default", &volume).await;
    assert_eq!(result, v1::CreateSandboxResult::Replaced as i32);
    assert_ne!(new.session_id, old.session_id);
    assert_ne!(new.container_id, old.container_id);
    assert!(!app.container_exists(&old.container_id).await);
    assert_eq!(
        app.container_ids().await,
        BTreeSet::from([new.container_id.clone()])
    );
    // The old session's data is gone; the chat points at the new one.
    let keys = app.redis_keys().await;
    assert!(!keys.contains(&app.key(&format!("session:{}", old.session_id))));
    assert!(keys.contains(&app.key(&format!("session:{}", new.session_id))));
    assert_eq!(app.get(&chat).await.unwrap().session_id, new.session_id);
}

#[tokio::test]
async fn get_returns_the_chats_sandbox_or_not_found() {
    let app = spawn_app().await;
    let chat = new_chat_id();

    let status = app.get(&chat).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let resource = status.get_details_resource_info().expect("ResourceInfo");
    assert_eq!(resource.resource_type, "sandbox.v1.Sandbox");
    assert!(resource.resource_name.contains(&chat), "{resource:?}");

    let created = app
        .create_ok(&chat, "other", &app.new_volume("v"))
        .await
        .sandbox;
    let got = app.get(&chat).await.unwrap();
    assert_eq!(got, created);
}

#[tokio::test]
async fn list_pages_through_every_session_once_and_filters_by_agent() {
    let app = spawn_app().await;
    // 25 sessions, 10 of them for `other`, created a few at a time (each starts a container).
    let mut expected_all = BTreeSet::new();
    let mut expected_other = BTreeSet::new();
    let plan: Vec<(String, &str, String)> = (0..25)
        .map(|i| {
            let agent = if i % 5 < 2 { "other" } else { "default" };
            (new_chat_id(), agent, app.new_volume(&format!("v{i}")))
        })
        .collect();
    for batch in plan.chunks(5) {
        let creates = batch
            .iter()
            .map(|(chat, agent, volume)| app.create_ok(chat, agent, volume));
        for Created { sandbox, result } in futures::future::join_all(creates).await {
            assert_eq!(result, v1::CreateSandboxResult::Created as i32);
            if sandbox.agent_id == "other" {
                expected_other.insert(sandbox.session_id.clone());
            }
            expected_all.insert(sandbox.session_id);
        }
    }
    assert_eq!((expected_all.len(), expected_other.len()), (25, 10));
    assert_eq!(app.container_ids().await.len(), 25);

    let listed_all = list_all(&app, "", 7).await;
    assert_eq!(
        listed_all.iter().map(Vec::len).collect::<Vec<_>>(),
        [7, 7, 7, 4]
    );
    assert_eq!(flatten_unique(&listed_all), expected_all);

    let listed_other = list_all(&app, "other", 7).await;
    assert_eq!(
        listed_other.iter().map(Vec::len).collect::<Vec<_>>(),
        [7, 3]
    );
    assert_eq!(flatten_unique(&listed_other), expected_other);

    // The default page size covers all 25 at once.
    let one_page = list_all(&app, "", 0).await;
    assert_eq!(one_page.len(), 1);
    assert_eq!(flatten_unique(&one_page), expected_all);
    // A filter naming no sessions gives one empty last page.
    assert_eq!(
        list_all(&app, "nobody", 7).await,
        vec![Vec::<String>::new()]
    );
}

/// Every page's session ids, following `next_page_token` until it is empty.
async fn list_all(app: &TestApp, agent_id: &str, page_size: i32) -> Vec<Vec<String>> {
    let mut pages = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = app
            .list(v1::ListSandboxesRequest {
                agent_id: agent_id.to_owned(),
                page_size,
                page_token: page_token.clone(),
                state: 0,
            })
            .await
            .unwrap();
        if !agent_id.is_empty() {
            assert!(page.sandboxes.iter().all(|s| s.agent_id == agent_id));
        }
        pages.push(page.sandboxes.into_iter().map(|s| s.session_id).collect());
        if page.next_page_token.is_empty() {
            return pages;
        }
        assert!(pages.len() < 100, "paging does not end");
        page_token = page.next_page_token;
    }
}

/// The union of the pages, asserting no session was listed twice.
fn flatten_unique(pages: &[Vec<String>]) -> BTreeSet<String> {
    let all: Vec<&String> = pages.iter().flatten().collect();
    let unique: BTreeSet<String> = all.iter().map(|s| (*s).clone()).collect();
    assert_eq!(
        unique.len(),
        all.len(),
        "a session was listed twice: {pages:?}"
    );
    unique
}

#[tokio::test]
async fn extend_moves_the_expiry_within_max_ttl() {
    let app = spawn_app_with(AppConfig {
        session_ttl: "10m".to_owned(),
        max_ttl: "2h".to_owned(),
        ..AppConfig::default()
    })
    .await;
    let chat = new_chat_id();
    let created = app
        .create_ok(&chat, "default", &app.new_volume("v"))
        .await
        .sandbox;
    let created_expiry = unix_ms(created.expires_at.as_ref().unwrap());

    let before = now_ms();
    let extended = app
        .extend(&chat, Some(Duration::from_secs(3600)))
        .await
        .unwrap();
    let expiry = unix_ms(extended.expires_at.as_ref().unwrap());
    assert!(
        expiry >= before + 3_600_000 && expiry <= now_ms() + 3_600_000,
        "{expiry}"
    );
    assert!(expiry > created_expiry);
    assert_eq!(extended.session_id, created.session_id);
    assert_eq!(extended.created_at, created.created_at);
    // The expiry index (what cleanup reads) moved too.
    let mut redis = app.redis_connection().await;
    let score: Option<i64> = redis
        .zscore(app.key("expiry"), &created.session_id)
        .await
        .unwrap();
    assert_eq!(score, Some(expiry));

    // No ttl: the configured session_ttl from now (which may shorten the lease).
    let before = now_ms();
    let reset = app.extend(&chat, None).await.unwrap();
    let expiry = unix_ms(reset.expires_at.as_ref().unwrap());
    assert!(
        expiry >= before + 600_000 && expiry <= now_ms() + 600_000,
        "{expiry}"
    );

    // Exactly max_ttl is allowed, a millisecond more is not.
    app.extend(&chat, Some(Duration::from_secs(7200)))
        .await
        .unwrap();
    let status = app
        .extend(&chat, Some(Duration::from_millis(7_200_001)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let violations = status
        .get_details_bad_request()
        .expect("BadRequest")
        .field_violations;
    assert_eq!(violations[0].field, "ttl");

    // A chat without a sandbox.
    let status = app.extend(&new_chat_id(), None).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
}

#[tokio::test]
async fn delete_removes_the_container_and_the_keys_then_reports_not_found() {
    let app = spawn_app().await;
    let chat = new_chat_id();
    let sandbox = app
        .create_ok(&chat, "default", &app.new_volume("v"))
        .await
        .sandbox;
    assert!(!app.redis_keys().await.is_empty());

    let deleted = app.delete(&chat).await.unwrap();
    assert_eq!(deleted.result, v1::DeleteSandboxResult::Deleted as i32);
    assert_eq!(deleted.session_id, sandbox.session_id);
    assert_eq!(deleted.container_id, sandbox.container_id);
    assert!(!app.container_exists(&sandbox.container_id).await);
    assert!(app.container_ids().await.is_empty());
    // No session, chat or lock key stays behind (empty index sets vanish in Redis by themselves);
    // only the event log, which keeps the creation and the deletion for the retention.
    let events = app.key("events");
    assert_eq!(app.redis_keys().await, BTreeSet::from([events]));
    assert_eq!(app.get(&chat).await.unwrap_err().code(), Code::NotFound);

    let again = app.delete(&chat).await.unwrap();
    assert_eq!(again.result, v1::DeleteSandboxResult::NotFound as i32);
    assert_eq!(
        (again.session_id.as_str(), again.container_id.as_str()),
        ("", "")
    );
}

#[tokio::test]
async fn cleanup_rpc_removes_expired_sandboxes_and_their_containers() {
    let app = spawn_app().await;
    let chats: Vec<String> = (0..3).map(|_| new_chat_id()).collect();
    let mut sandboxes = Vec::new();
    for (i, chat) in chats.iter().enumerate() {
        let sandbox = app
            .create_ok(chat, "default", &app.new_volume(&format!("v{i}")))
            .await
            .sandbox;
        sandboxes.push(sandbox);
    }
    // Every sandbox starts with the long default TTL, so a slow create cannot expire one early;
    // the first two are then shortened to expire now, the third lives on.
    for (chat, sandbox) in chats[..2].iter().zip(sandboxes.iter_mut()) {
        *sandbox = app
            .extend(chat, Some(Duration::from_millis(200)))
            .await
            .unwrap();
    }
    let kept = sandboxes[2].clone();
    for sandbox in &sandboxes[..2] {
        wait_until_expired(sandbox).await;
    }

    let report = app.cleanup().await.unwrap();
    assert_eq!((report.error_count, report.skipped_count), (0, 0));
    let cleaned: BTreeSet<String> = report.cleaned.into_iter().map(|s| s.session_id).collect();
    let expired: BTreeSet<String> = sandboxes[..2]
        .iter()
        .map(|s| s.session_id.clone())
        .collect();
    assert_eq!(cleaned, expired);

    for sandbox in &sandboxes[..2] {
        assert!(!app.container_exists(&sandbox.container_id).await);
        assert_eq!(
            app.get(&sandbox.chat_id).await.unwrap_err().code(),
            Code::NotFound
        );
    }
    assert_eq!(
        app.container_ids().await,
        BTreeSet::from([kept.container_id.clone()])
    );
    let keys = app.redis_keys().await;
    for sandbox in &sandboxes[..2] {
        assert!(
            !keys
                .iter()
                .any(|key| key.contains(&sandbox.session_id) || key.contains(&sandbox.chat_id))
        );
    }
    assert!(keys.contains(&app.key(&format!("session:{}", kept.session_id))));

    // A second pass has nothing to do.
    let report = app.cleanup().await.unwrap();
    assert!(report.cleaned.is_empty());
}
