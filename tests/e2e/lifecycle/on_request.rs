//! PauseSandbox, ResumeSandbox and TouchSandbox on request: idempotent where the contract says
//! so, refused with the documented code where the state does not allow them, and ListSandboxes
//! filtered by state. The cleanup loop is off: the test runs the pass that hibernates.

use std::time::Duration;

use sandboxd_api::v1;
use sandboxd_testkit::{SandboxRequests, TestApp, metric_samples, new_chat_id, spawn_app_with};
use tonic::Code;

use super::{
    assert_engine_agrees, assert_refused, assert_serves, lifecycle_config, list_chats, now_ms,
    serving_volume, state, unix_ms,
};

/// Sleeps until `sandbox` has expired, plus a margin for the clocks' granularity.
async fn wait_until_expired(sandbox: &v1::Sandbox) {
    let left = unix_ms(sandbox.expires_at.as_ref()) - now_ms() + 150;
    if let Ok(left) = u64::try_from(left) {
        tokio::time::sleep(Duration::from_millis(left)).await;
    }
}

/// What TouchSandbox may cost, as `/metrics` and the event log count it.
#[derive(Debug, Default, PartialEq)]
struct TouchCost {
    /// Store round trips of the touch script.
    touches: f64,
    /// Lease acquisitions.
    leases: f64,
    /// Engine calls of every kind.
    engine_calls: f64,
    /// Entries of the event log.
    events: f64,
}

impl TouchCost {
    async fn measure(app: &TestApp) -> Self {
        let samples = |name: &'static str| async move {
            metric_samples(&app.http_addr.to_string(), name)
                .await
                .expect("a scrape")
        };
        let redis = samples("sandbox_redis_command_duration_seconds_count").await;
        let of_command = |command: &str| {
            redis
                .iter()
                .filter(|(labels, _)| labels.contains(&format!("command=\"{command}\"")))
                .map(|(_, value)| value)
                .sum()
        };
        let engine = samples("sandbox_runtime_duration_seconds_count").await;
        let mut con = app.redis_connection().await;
        let events: u32 = redis::cmd("XLEN")
            .arg(app.key("events"))
            .query_async(&mut con)
            .await
            .unwrap();
        Self {
            touches: of_command("touch"),
            leases: of_command("lock_acquire"),
            engine_calls: engine.iter().map(|(_, value)| value).sum(),
            events: f64::from(events),
        }
    }

    fn minus(&self, before: &Self) -> Self {
        Self {
            touches: self.touches - before.touches,
            leases: self.leases - before.leases,
            engine_calls: self.engine_calls - before.engine_calls,
            events: self.events - before.events,
        }
    }
}

#[tokio::test]
async fn pause_and_resume_are_idempotent_and_refused_where_the_state_does_not_allow_them() {
    let sleeper = "idle_timeout = \"1s\"\non_idle = \"hibernate\"";
    let app = spawn_app_with(lifecycle_config("0s", &[("sleeper", sleeper)])).await;
    let (paused_chat, running_chat, hibernated_chat) =
        (new_chat_id(), new_chat_id(), new_chat_id());
    let volume = serving_volume(&app, "paused");
    app.create_ok(&paused_chat, "default", &volume).await;
    let running = app
        .create_ok(&running_chat, "default", &app.new_volume("running"))
        .await
        .sandbox;
    let sleeper_volume = app.new_volume("sleeper");
    let sleeping = app
        .create_ok(&hibernated_chat, "sleeper", &sleeper_volume)
        .await
        .sandbox;

    // Pause, then pause again: the same paused sandbox, nothing changed.
    let paused = app.pause(&paused_chat).await.unwrap();
    assert_eq!(state(&paused), v1::SandboxState::Paused);
    assert_engine_agrees(&app, &paused).await;
    let again = app.pause(&paused_chat).await.unwrap();
    assert_eq!(again, paused, "a second pause changes nothing");
    assert_engine_agrees(&app, &again).await;
    let refused = app.touch(&paused_chat).await.unwrap_err();
    assert_refused(&refused, Code::FailedPrecondition, None);
    assert!(refused.message().contains("paused"), "{refused:?}");

    // Resume of a running sandbox: idempotent, and activity.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let still = app.resume(&running_chat).await.unwrap();
    assert_eq!(state(&still), v1::SandboxState::Running);
    assert_eq!(still.container_id, running.container_id);
    assert!(
        unix_ms(still.last_active_at.as_ref()) > unix_ms(running.last_active_at.as_ref()),
        "a resume counts as activity"
    );
    assert_engine_agrees(&app, &still).await;

    // A touch is one store round trip: no lease, no engine call, no event.
    let before = TouchCost::measure(&app).await;
    for _ in 0..5 {
        let touched = app.touch(&running_chat).await.unwrap();
        assert_eq!(state(&touched), v1::SandboxState::Running);
    }
    let after = TouchCost::measure(&app).await;
    assert_eq!(
        after.minus(&before),
        TouchCost {
            touches: 5.0,
            ..TouchCost::default()
        }
    );

    // The cleanup pass hibernates the idle sleeper.
    wait_until_expired(&sleeping).await;
    let report = app.cleanup().await.unwrap();
    assert!(report.cleaned.is_empty(), "{report:?}");
    assert_eq!(report.suspended_sandboxes.len(), 1, "{report:?}");
    let hibernated = &report.suspended_sandboxes[0];
    assert_eq!(hibernated.chat_id, hibernated_chat);
    assert_eq!(state(hibernated), v1::SandboxState::Hibernated);
    assert_engine_agrees(&app, hibernated).await;
    for refused in [
        app.pause(&hibernated_chat).await.unwrap_err(),
        app.touch(&hibernated_chat).await.unwrap_err(),
    ] {
        assert_refused(&refused, Code::FailedPrecondition, None);
    }

    // ListSandboxes by state.
    let mut all = vec![
        paused_chat.clone(),
        running_chat.clone(),
        hibernated_chat.clone(),
    ];
    all.sort();
    for (filter, want) in [
        (v1::SandboxState::Unspecified, all),
        (v1::SandboxState::Running, vec![running_chat.clone()]),
        (v1::SandboxState::Paused, vec![paused_chat.clone()]),
        (v1::SandboxState::Hibernated, vec![hibernated_chat.clone()]),
    ] {
        assert_eq!(list_chats(&app, filter).await.unwrap(), want, "{filter:?}");
    }
    let unknown_state = app
        .list(v1::ListSandboxesRequest {
            state: 7,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_refused(&unknown_state, Code::InvalidArgument, Some("state"));

    // Resume the paused one (it serves again), then resume again: idempotent.
    let resumed = app.resume(&paused_chat).await.unwrap();
    assert_eq!(state(&resumed), v1::SandboxState::Running);
    assert_eq!(resumed.session_id, paused.session_id);
    assert_engine_agrees(&app, &resumed).await;
    assert_serves(&resumed).await;
    let twice = app.resume(&paused_chat).await.unwrap();
    assert_eq!(state(&twice), v1::SandboxState::Running);
    assert_eq!(twice.session_id, paused.session_id);
    assert_engine_agrees(&app, &twice).await;
    let touched = app.touch(&paused_chat).await.unwrap();
    assert_eq!(state(&touched), v1::SandboxState::Running);

    // The hibernated one is started again by CreateSandbox: RESUMED, the same session. Left
    // idle past its 1 s timeout (the loop is off, so it stays), it has expired: pause, resume
    // and touch are refused.
    let again = app
        .create_ok(&hibernated_chat, "sleeper", &sleeper_volume)
        .await;
    assert_eq!(again.result, v1::CreateSandboxResult::Resumed as i32);
    let woken = again.sandbox;
    assert_eq!(woken.session_id, sleeping.session_id);
    assert_eq!(woken.container_id, sleeping.container_id);
    assert_eq!(state(&woken), v1::SandboxState::Running);
    assert_engine_agrees(&app, &woken).await;
    wait_until_expired(&woken).await;
    for refused in [
        app.pause(&hibernated_chat).await.unwrap_err(),
        app.resume(&hibernated_chat).await.unwrap_err(),
        app.touch(&hibernated_chat).await.unwrap_err(),
    ] {
        assert_refused(&refused, Code::FailedPrecondition, None);
        assert!(refused.message().contains("expired"), "{refused:?}");
    }
    assert_engine_agrees(&app, &app.get(&hibernated_chat).await.unwrap()).await;

    // A chat without a sandbox, and a malformed chat id.
    let nobody = new_chat_id();
    for (what, outcome) in [
        ("pause", app.pause(&nobody).await),
        ("resume", app.resume(&nobody).await),
        ("touch", app.touch(&nobody).await),
    ] {
        let status = outcome.expect_err(what);
        assert_refused(&status, Code::NotFound, None);
    }
    for (what, outcome) in [
        ("pause", app.pause("not-a-uuid").await),
        ("resume", app.resume("not-a-uuid").await),
        ("touch", app.touch("not-a-uuid").await),
    ] {
        let status = outcome.expect_err(what);
        assert_refused(&status, Code::InvalidArgument, Some("chat_id"));
    }
}
