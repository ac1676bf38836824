//! PauseSandbox, ResumeSandbox and DeleteSandbox racing on the same chats, running or
//! hibernated: every answer is one of the documented codes, and afterwards each chat's session
//! and its container agree (or both are gone), with no stray container and nothing for a
//! reconcile pass to repair.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use sandboxd_api::v1;
use sandboxd_testkit::{new_chat_id, spawn_app_with};
use tokio::sync::Barrier;
use tonic::Code;

use super::{
    Api, assert_engine_agrees, create, get, lifecycle_config, now_ms, pause, resume, state, unix_ms,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Call {
    Pause,
    Resume,
    Delete,
}

/// 20 calls for one chat, shuffled: 10 pauses and 10 resumes, or 8, 8 and 4 deletes.
fn calls_for(with_deletes: bool, rng: &mut StdRng) -> Vec<Call> {
    let (each, deletes) = if with_deletes { (8, 4) } else { (10, 0) };
    let mut calls: Vec<Call> = [
        (Call::Pause, each),
        (Call::Resume, each),
        (Call::Delete, deletes),
    ]
    .into_iter()
    .flat_map(|(call, count)| std::iter::repeat_n(call, count))
    .collect();
    calls.shuffle(rng);
    calls
}

/// Waits until the idle `sandboxes` have expired and runs the cleanup pass that hibernates them.
async fn hibernate(api: &Api, sandboxes: &[v1::Sandbox]) {
    let latest = sandboxes
        .iter()
        .map(|sandbox| unix_ms(sandbox.expires_at.as_ref()))
        .max()
        .unwrap_or_default();
    if let Ok(wait) = u64::try_from(latest - now_ms() + 150) {
        tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
    }
    let report = api
        .clone()
        .cleanup_expired_sandboxes(v1::CleanupExpiredSandboxesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        report.suspended_sandboxes.len(),
        sandboxes.len(),
        "{report:?}"
    );
    for sandbox in &report.suspended_sandboxes {
        assert_eq!(state(sandbox), v1::SandboxState::Hibernated);
    }
}

async fn send(api: &Api, chat_id: &str, call: Call) -> Code {
    let outcome = match call {
        Call::Pause => pause(api, chat_id).await.map(drop),
        Call::Resume => resume(api, chat_id).await.map(drop),
        Call::Delete => api
            .clone()
            .delete_sandbox(v1::DeleteSandboxRequest {
                chat_id: chat_id.to_owned(),
            })
            .await
            .map(drop),
    };
    outcome.err().map_or(Code::Ok, |status| status.code())
}

/// Two rounds of four chats, 20 calls each, all 80 released at once from four connections: two
/// chats running, two hibernated (a resume starts the container and waits for its endpoint, and
/// with a 1 s idle timeout and no cleanup loop the resumed sandbox soon expires, so later calls
/// are refused); one of each kind only paused and resumed, the other also deleted.
#[tokio::test]
async fn racing_pause_resume_and_delete_leave_each_session_and_container_agreeing() {
    let sleeper = "idle_timeout = \"1s\"\non_idle = \"hibernate\"";
    let app = spawn_app_with(lifecycle_config("0s", &[("sleeper", sleeper)])).await;
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(app.new_client().await);
    }
    let mut rng = StdRng::seed_from_u64(16);
    let mut codes: BTreeMap<(Call, String), usize> = BTreeMap::new();
    for round in 0..2 {
        let chats: Vec<String> = (0..4).map(|_| new_chat_id()).collect();
        let mut sleepers = Vec::new();
        for (index, chat) in chats.iter().enumerate() {
            let agent = if index < 2 { "default" } else { "sleeper" };
            let volume = app.new_volume(&format!("r{round}c{index}"));
            let created = create(&app, chat, agent, &volume).await;
            if index >= 2 {
                sleepers.push(created.sandbox.expect("a sandbox"));
            }
        }
        hibernate(&app.api, &sleepers).await;
        let mut plan = Vec::new();
        for (index, chat) in chats.iter().enumerate() {
            for call in calls_for(index % 2 == 1, &mut rng) {
                plan.push((chat.clone(), call));
            }
        }
        let barrier = Arc::new(Barrier::new(plan.len()));
        let tasks: Vec<_> = plan
            .into_iter()
            .enumerate()
            .map(|(index, (chat, call))| {
                let api = clients[index % clients.len()].clone();
                let barrier = Arc::clone(&barrier);
                tokio::spawn(async move {
                    barrier.wait().await;
                    (call, send(&api, &chat, call).await)
                })
            })
            .collect();
        for task in tasks {
            let (call, code) = task.await.expect("a call task");
            assert!(
                matches!(
                    code,
                    Code::Ok | Code::NotFound | Code::FailedPrecondition | Code::Aborted
                ),
                "{call:?} answered {code:?}\n{}",
                app.log()
            );
            *codes.entry((call, format!("{code:?}"))).or_default() += 1;
        }

        // Each chat: its session's state is its container's, or both are gone.
        let mut kept = BTreeSet::new();
        for chat in &chats {
            match get(&app.api, chat).await {
                Ok(sandbox) => {
                    assert_engine_agrees(&app, &sandbox).await;
                    kept.insert(sandbox.container_id);
                }
                Err(status) => {
                    assert_eq!(status.code(), Code::NotFound, "{status:?}");
                    let left = app
                        .containers()
                        .await
                        .into_iter()
                        .filter(|c| app.label(c, "chat_id").as_deref() == Some(chat.as_str()))
                        .count();
                    assert_eq!(left, 0, "chat {chat} has no session but containers");
                }
            }
        }
        // No stray: the engine has exactly the sessions' containers.
        assert_eq!(app.container_ids().await, kept, "round {round}");
        let report = app
            .api
            .clone()
            .reconcile_sandboxes(v1::ReconcileSandboxesRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            report,
            v1::ReconcileSandboxesResponse::default(),
            "nothing to repair after round {round}"
        );
        for chat in &chats {
            app.api
                .clone()
                .delete_sandbox(v1::DeleteSandboxRequest {
                    chat_id: chat.clone(),
                })
                .await
                .unwrap();
        }
    }
    assert!(app.container_ids().await.is_empty());
    println!("concurrent pause/resume/delete answers: {codes:?}");
}
