//! Idleness, driven by the background cleanup loop (every 500 ms here): a sandbox left alone for
//! its `idle_timeout` is paused (`on_idle = "pause"`) or hibernated (`"hibernate"`), activity
//! holds that off, CreateSandbox or ResumeSandbox bring it back as it was, and `max_lifetime`
//! ends it however active it is.

use std::time::{Duration, Instant};

use sandboxd_api::v1;
use sandboxd_testkit::{SandboxRequests, docker, new_chat_id, spawn_app_with};
use tonic::Code;

use super::watch::{Seen, Watch, WatchFilter};
use super::{
    assert_engine_agrees, assert_refused, assert_serves, lifecycle_config, list_chats, now_ms,
    serving_volume, state, unix_ms, wait_for_state,
};

const PAUSING: &str = "idle_timeout = \"3s\"\non_idle = \"pause\"";
/// Long enough for a slow machine to see a PAUSED sandbox, short enough for a test.
const WITHIN: Duration = Duration::from_secs(20);

/// `idle_timeout = "3s"`, `on_idle = "pause"`: the idle sandbox is frozen by the engine, and a
/// CreateSandbox for it answers RESUMED with the same session and container, serving again. A
/// sandbox touched every second meanwhile stays RUNNING well past 3 s, and pauses once the
/// touches stop.
#[tokio::test]
async fn an_idle_sandbox_is_paused_and_create_resumes_it_while_a_touched_one_runs_on() {
    let app = spawn_app_with(lifecycle_config("500ms", &[("napper", PAUSING)])).await;
    let idle_chat = new_chat_id();
    let idle_volume = serving_volume(&app, "idle");
    let busy_chat = new_chat_id();
    let busy_volume = serving_volume(&app, "busy");
    let mut idle_events = Watch::open(&app, "", WatchFilter::Chat(idle_chat.clone())).await;

    let created = app.create_ok(&idle_chat, "napper", &idle_volume).await;
    assert_eq!(created.result, v1::CreateSandboxResult::Created as i32);
    let sandbox = created.sandbox;
    assert_eq!(state(&sandbox), v1::SandboxState::Running);
    assert!(sandbox.max_expires_at.is_none(), "no max_lifetime, no cap");
    let created_ms = unix_ms(sandbox.created_at.as_ref());
    assert_eq!(unix_ms(sandbox.last_active_at.as_ref()), created_ms);
    assert_eq!(unix_ms(sandbox.expires_at.as_ref()), created_ms + 3000);
    assert_serves(&sandbox).await;
    let busy = app.create_ok(&busy_chat, "napper", &busy_volume).await;
    let busy_started = Instant::now();

    // Touched every second for 6 s (twice the idle timeout), in the background.
    let api = app.api.clone();
    let chat = busy_chat.clone();
    let toucher = tokio::spawn(async move {
        let mut answers = Vec::new();
        while busy_started.elapsed() < Duration::from_secs(6) {
            answers.push(api.touch(&chat).await);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        answers
    });

    let paused = wait_for_state(&app, &idle_chat, v1::SandboxState::Paused, WITHIN).await;
    assert_eq!(paused.session_id, sandbox.session_id);
    assert_eq!(paused.container_id, sandbox.container_id);
    assert_eq!(
        paused.endpoint, sandbox.endpoint,
        "a frozen container keeps its port"
    );
    assert_eq!(
        unix_ms(paused.last_active_at.as_ref()),
        created_ms,
        "nothing was active"
    );
    // Kept for the default paused_retention (24 h) from when it went idle.
    assert_eq!(
        unix_ms(paused.expires_at.as_ref()),
        created_ms + 3000 + 24 * 3600 * 1000
    );
    assert_engine_agrees(&app, &paused).await;
    assert_eq!(
        list_chats(&app, v1::SandboxState::Paused).await.unwrap(),
        vec![idle_chat.clone()]
    );
    // Activity is refused on a paused sandbox: it must be resumed.
    let refused = app.touch(&idle_chat).await.unwrap_err();
    assert_refused(&refused, Code::FailedPrecondition, None);

    for (index, answer) in toucher.await.unwrap().into_iter().enumerate() {
        let touched = answer.unwrap_or_else(|status| panic!("touch #{index}: {status:?}"));
        assert_eq!(state(&touched), v1::SandboxState::Running, "touch #{index}");
    }
    assert!(busy_started.elapsed() >= Duration::from_secs(6));
    let still_running = app.get(&busy_chat).await.unwrap();
    assert_eq!(state(&still_running), v1::SandboxState::Running);
    assert_eq!(still_running.session_id, busy.sandbox.session_id);
    assert_engine_agrees(&app, &still_running).await;

    // The idle one comes back through CreateSandbox: RESUMED, same session and container.
    let again = app.create_ok(&idle_chat, "napper", &idle_volume).await;
    assert_eq!(again.result, v1::CreateSandboxResult::Resumed as i32);
    assert_eq!(again.result, 4, "the wire value of RESUMED");
    let resumed = again.sandbox;
    assert_eq!(resumed.session_id, sandbox.session_id);
    assert_eq!(resumed.container_id, sandbox.container_id);
    assert_eq!(state(&resumed), v1::SandboxState::Running);
    assert!(unix_ms(resumed.last_active_at.as_ref()) > created_ms);
    assert_engine_agrees(&app, &resumed).await;
    assert_serves(&resumed).await;

    // Left alone, the formerly touched one pauses too.
    let busy_paused = wait_for_state(&app, &busy_chat, v1::SandboxState::Paused, WITHIN).await;
    assert_engine_agrees(&app, &busy_paused).await;

    let events = idle_events.take(3, WITHIN).await;
    let seen: Vec<Seen> = events.iter().map(Seen::of).collect();
    assert_eq!(
        seen,
        vec![
            Seen::expected(v1::SandboxEventType::Created, "requested", &sandbox),
            Seen::expected(v1::SandboxEventType::Paused, "idle", &paused),
            Seen::expected(v1::SandboxEventType::Resumed, "requested", &resumed),
        ]
    );
    // The refused touch appended nothing.
    idle_events.assert_quiet(Duration::from_millis(300)).await;
}

/// `max_lifetime = "6s"` with `idle_timeout = "3s"`: touches keep the sandbox running past its
/// idle timeout but not past its cap, where the cleanup removes it (not pauses it) with an
/// EXPIRED event whose reason is `max_lifetime`. ExtendSandbox beyond the cap is refused.
#[tokio::test]
async fn max_lifetime_ends_a_sandbox_however_often_it_is_touched() {
    let capped = "idle_timeout = \"3s\"\nmax_lifetime = \"6s\"\non_idle = \"pause\"";
    let app = spawn_app_with(lifecycle_config("500ms", &[("capped", capped)])).await;
    let chat = new_chat_id();
    let mut watch = Watch::open(&app, "", WatchFilter::Chat(chat.clone())).await;

    let sandbox = app
        .create_ok(&chat, "capped", &serving_volume(&app, "capped"))
        .await
        .sandbox;
    let created_ms = unix_ms(sandbox.created_at.as_ref());
    let cap_ms = unix_ms(sandbox.max_expires_at.as_ref());
    assert_eq!(cap_ms, created_ms + 6000);

    let beyond = app
        .extend(&chat, Some(Duration::from_secs(3600)))
        .await
        .unwrap_err();
    assert_refused(&beyond, Code::InvalidArgument, Some("ttl"));

    // Touch every 500 ms until the sandbox is gone.
    let started = Instant::now();
    let mut running_past_idle = 0;
    let mut expired_answers = 0;
    loop {
        assert!(
            started.elapsed() < WITHIN,
            "still there after {WITHIN:?}\n{}",
            app.log()
        );
        match app.touch(&chat).await {
            Ok(touched) => {
                assert_eq!(state(&touched), v1::SandboxState::Running);
                assert!(unix_ms(touched.expires_at.as_ref()) <= cap_ms);
                if now_ms() > created_ms + 3500 {
                    running_past_idle += 1;
                }
            }
            // Past the cap, before the cleanup's next pass.
            Err(status) if status.code() == Code::FailedPrecondition => expired_answers += 1,
            Err(status) if status.code() == Code::NotFound => break,
            Err(status) => panic!("touch: {status:?}"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(now_ms() >= cap_ms, "removed before its cap\n{}", app.log());
    assert!(
        running_past_idle >= 2,
        "touches kept it running past its idle timeout only {running_past_idle} times"
    );
    assert!(!app.container_exists(&sandbox.container_id).await);
    assert!(app.container_ids().await.is_empty());

    // Removed as it was: running. Touches, the refused extension and the refused touches past
    // the cap appended nothing.
    let events = watch.take(2, WITHIN).await;
    assert_eq!(
        events.iter().map(Seen::of).collect::<Vec<_>>(),
        vec![
            Seen::expected(v1::SandboxEventType::Created, "requested", &sandbox),
            Seen::expected(v1::SandboxEventType::Expired, "max_lifetime", &sandbox),
        ],
        "{expired_answers} touches answered FAILED_PRECONDITION"
    );
    watch.assert_quiet(Duration::from_millis(300)).await;
}

/// `on_idle = "hibernate"`: the idle sandbox's container is stopped, not removed; ResumeSandbox
/// starts it and answers its endpoint (which may have changed), which serves, and a file
/// written into the container's own filesystem (not the volume) before is still there.
#[tokio::test]
async fn a_hibernated_sandbox_keeps_its_filesystem_and_resume_starts_it_serving() {
    let hibernating = "idle_timeout = \"3s\"\non_idle = \"hibernate\"\npaused_retention = \"1h\"";
    let app = spawn_app_with(lifecycle_config("500ms", &[("sleeper", hibernating)])).await;
    let chat = new_chat_id();
    let mut watch = Watch::open(&app, "", WatchFilter::Chat(chat.clone())).await;
    let sandbox = app
        .create_ok(&chat, "sleeper", &serving_volume(&app, "sleeper"))
        .await
        .sandbox;
    let container = sandbox.container_id.clone();
    let written = docker::exec(
        &app.docker,
        &container,
        &[
            "/bin/sh",
            "-c",
            "echo kept-across-hibernation > /marker && cat /marker",
        ],
    )
    .await
    .unwrap();
    assert_eq!(written.trim(), "kept-across-hibernation");

    let hibernated = wait_for_state(&app, &chat, v1::SandboxState::Hibernated, WITHIN).await;
    assert_eq!(hibernated.session_id, sandbox.session_id);
    assert_eq!(hibernated.container_id, container);
    assert!(
        hibernated.endpoint.is_none(),
        "a stopped container publishes nothing"
    );
    assert_eq!(
        unix_ms(hibernated.expires_at.as_ref()),
        unix_ms(sandbox.expires_at.as_ref()) + 3600 * 1000,
        "kept for paused_retention from when it went idle"
    );
    assert_engine_agrees(&app, &hibernated).await;
    assert!(
        app.container_exists(&container).await,
        "stopped, not removed"
    );
    assert_eq!(
        list_chats(&app, v1::SandboxState::Hibernated)
            .await
            .unwrap(),
        vec![chat.clone()]
    );

    let resumed = app.resume(&chat).await.unwrap();
    // Activity, so the 3 s idle timeout starts again from here: the checks below fit in it.
    assert_eq!(state(&resumed), v1::SandboxState::Running);
    assert_eq!(resumed.session_id, sandbox.session_id);
    assert_eq!(resumed.container_id, container);
    assert_engine_agrees(&app, &resumed).await;
    assert_serves(&resumed).await;
    let kept = docker::exec(&app.docker, &container, &["cat", "/marker"])
        .await
        .unwrap();
    assert_eq!(kept.trim(), "kept-across-hibernation");
    // The answer carried the endpoint of now; GetSandbox agrees.
    let current = app.get(&chat).await.unwrap();
    assert_eq!(current.endpoint, resumed.endpoint);
    println!(
        "hibernate: endpoint port before {:?}, after resume {:?}",
        sandbox.endpoint.as_ref().map(|e| e.port),
        resumed.endpoint.as_ref().map(|e| e.port)
    );

    let events = watch.take(3, WITHIN).await;
    assert_eq!(
        events.iter().map(Seen::of).collect::<Vec<_>>(),
        vec![
            Seen::expected(v1::SandboxEventType::Created, "requested", &sandbox),
            Seen::expected(v1::SandboxEventType::Hibernated, "idle", &hibernated),
            Seen::expected(v1::SandboxEventType::Resumed, "requested", &resumed),
        ]
    );
    let endpoint_in_event = |index: usize| {
        events[index]
            .sandbox
            .as_ref()
            .and_then(|sandbox| sandbox.endpoint.clone())
    };
    assert_eq!(endpoint_in_event(1), None);
    assert_eq!(endpoint_in_event(2), resumed.endpoint);
}

/// `paused_retention = "2s"`: a sandbox paused because it went idle and never resumed is
/// removed once its retention has passed, with an EXPIRED event whose reason is `retention`.
#[tokio::test]
async fn a_paused_sandbox_is_removed_after_its_paused_retention() {
    let brief = "idle_timeout = \"1s\"\non_idle = \"pause\"\npaused_retention = \"2s\"";
    let app = spawn_app_with(lifecycle_config("500ms", &[("brief", brief)])).await;
    let chat = new_chat_id();
    let mut watch = Watch::open(&app, "", WatchFilter::Chat(chat.clone())).await;
    let sandbox = app
        .create_ok(&chat, "brief", &app.new_volume("brief"))
        .await
        .sandbox;
    let paused = wait_for_state(&app, &chat, v1::SandboxState::Paused, WITHIN).await;
    assert_eq!(
        unix_ms(paused.expires_at.as_ref()),
        unix_ms(sandbox.expires_at.as_ref()) + 2000
    );

    let started = Instant::now();
    while app.get(&chat).await.is_ok() {
        assert!(started.elapsed() < WITHIN, "never removed\n{}", app.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(now_ms() >= unix_ms(paused.expires_at.as_ref()));
    assert!(!app.container_exists(&sandbox.container_id).await);
    let events = watch.take(3, WITHIN).await;
    assert_eq!(
        events.iter().map(Seen::of).collect::<Vec<_>>(),
        vec![
            Seen::expected(v1::SandboxEventType::Created, "requested", &sandbox),
            Seen::expected(v1::SandboxEventType::Paused, "idle", &paused),
            Seen::expected(v1::SandboxEventType::Expired, "retention", &paused),
        ]
    );
    watch.assert_quiet(Duration::from_millis(300)).await;
}
