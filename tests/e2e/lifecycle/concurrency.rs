//! PauseSandbox, ResumeSandbox and DeleteSandbox racing on the same chats, running or
//! hibernated: every answer is one of the documented codes, and afterwards each chat's session
//! and its container agree (or both are gone), its events form one unbroken chain of
//! transitions ending in that state, and there is no stray container and nothing for a
//! reconcile pass to repair.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use sandboxd_api::v1;
use sandboxd_testkit::{SandboxRequests, TestApp, new_chat_id, spawn_app_with};
use tokio::sync::Barrier;
use tonic::Code;

use super::watch::{Watch, WatchFilter};
use super::{Api, assert_engine_agrees, lifecycle_config, now_ms, state, unix_ms};

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
async fn hibernate(app: &TestApp, sandboxes: &[v1::Sandbox]) {
    let latest = sandboxes
        .iter()
        .map(|sandbox| unix_ms(sandbox.expires_at.as_ref()))
        .max()
        .unwrap_or_default();
    if let Ok(wait) = u64::try_from(latest - now_ms() + 150) {
        tokio::time::sleep(Duration::from_millis(wait)).await;
    }
    let report = app.cleanup().await.unwrap();
    assert_eq!(
        report.suspended_sandboxes.len(),
        sandboxes.len(),
        "{report:?}"
    );
    for sandbox in &report.suspended_sandboxes {
        assert_eq!(state(sandbox), v1::SandboxState::Hibernated);
    }
}

/// Asserts the chat's events are one chain of transitions, each starting from the state the
/// previous one left (a creation from none, a deletion from the state it reports), ending in
/// `last` (`None`: deleted).
fn assert_event_chain(chat: &str, events: &[v1::SandboxEvent], last: Option<v1::SandboxState>) {
    use v1::SandboxEventType as Type;
    use v1::SandboxState as State;
    let mut current: Option<State> = None;
    let mut session = String::new();
    for event in events {
        let sandbox = event.sandbox.clone().unwrap_or_default();
        if sandbox.chat_id != chat {
            continue;
        }
        let kind = Type::try_from(event.r#type).unwrap_or(Type::Unspecified);
        let after = state(&sandbox);
        let allowed = match kind {
            Type::Created => current.is_none() && after == State::Running,
            Type::Paused => current == Some(State::Running) && after == State::Paused,
            Type::Hibernated => current == Some(State::Running) && after == State::Hibernated,
            Type::Resumed => {
                matches!(current, Some(State::Paused | State::Hibernated))
                    && after == State::Running
            }
            Type::Deleted => current == Some(after) && sandbox.session_id == session,
            _ => false,
        };
        assert!(
            allowed,
            "chat {chat}: {kind:?} ({after:?}) after {current:?}; events:\n{events:#?}"
        );
        session = sandbox.session_id;
        current = (kind != Type::Deleted).then_some(after);
    }
    assert_eq!(current, last, "chat {chat}: the last event's state");
}

async fn send(api: &Api, chat_id: &str, call: Call) -> Code {
    let outcome = match call {
        Call::Pause => api.pause(chat_id).await.map(drop),
        Call::Resume => api.resume(chat_id).await.map(drop),
        Call::Delete => api.delete(chat_id).await.map(drop),
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
        let mut watch = Watch::open(&app, "", WatchFilter::All).await;
        let mut sleepers = Vec::new();
        for (index, chat) in chats.iter().enumerate() {
            let agent = if index < 2 { "default" } else { "sleeper" };
            let volume = app.new_volume(&format!("r{round}c{index}"));
            let created = app.create_ok(chat, agent, &volume).await;
            if index >= 2 {
                sleepers.push(created.sandbox);
            }
        }
        hibernate(&app, &sleepers).await;
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

        // Each chat: its session's state is its container's, or both are gone; and its events
        // form one unbroken chain ending in that state.
        let events = watch.take_until_quiet(Duration::from_millis(500)).await;
        let mut kept = BTreeSet::new();
        for chat in &chats {
            let current = app.get(chat).await;
            assert_event_chain(chat, &events, current.as_ref().ok().map(state));
            match current {
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
        let report = app.reconcile().await.unwrap();
        assert_eq!(
            report,
            v1::ReconcileSandboxesResponse::default(),
            "nothing to repair after round {round}"
        );
        for chat in &chats {
            app.delete(chat).await.unwrap();
        }
    }
    assert!(app.container_ids().await.is_empty());
    println!("concurrent pause/resume/delete answers: {codes:?}");
}
