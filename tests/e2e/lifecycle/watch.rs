//! WatchSandboxes against a real process: 50 watchers (unfiltered, by chat, by agent) see exactly
//! the events of a scripted sequence in order; a watcher that reconnects with its last cursor
//! gets exactly what it missed; a garbage cursor is INVALID_ARGUMENT, one older than
//! `event_retention` OUT_OF_RANGE; and every watch ends cleanly when the server drains.
//!
//! The 50-watcher test prints how long each event took from the RPC's answer to reaching every
//! watcher that wanted it (`--nocapture` shows it).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::future::join_all;
use sandboxd_api::v1;
use sandboxd_testkit::{
    AppConfig, SandboxRequests, TestApp, new_chat_id, spawn_app, spawn_app_with,
};
use tonic::{Code, Status, Streaming};

use super::{Api, assert_refused, state};

/// Generous liveness bound on any one expected event.
const DELIVERY_BOUND: Duration = Duration::from_secs(30);
/// How long a watcher that has everything it expects must then stay quiet.
const QUIET: Duration = Duration::from_millis(300);

/// What a watch is filtered by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum WatchFilter {
    All,
    Chat(String),
    Agent(String),
}

impl WatchFilter {
    fn request(&self, after: &str) -> v1::WatchSandboxesRequest {
        let (chat_id, agent_id) = match self {
            Self::All => (String::new(), String::new()),
            Self::Chat(chat) => (chat.clone(), String::new()),
            Self::Agent(agent) => (String::new(), agent.clone()),
        };
        v1::WatchSandboxesRequest {
            after: after.to_owned(),
            chat_id,
            agent_id,
        }
    }

    fn wants(&self, chat_id: &str, agent_id: &str) -> bool {
        match self {
            Self::All => true,
            Self::Chat(chat) => chat == chat_id,
            Self::Agent(agent) => agent == agent_id,
        }
    }
}

/// One open WatchSandboxes stream.
pub(super) struct Watch {
    stream: Streaming<v1::SandboxEvent>,
}

impl Watch {
    /// Opens a watch after `after` (empty: only new events); panics when refused.
    pub(super) async fn open(app: &TestApp, after: &str, filter: WatchFilter) -> Self {
        Self::open_on(&app.api, after, &filter)
            .await
            .unwrap_or_else(|status| panic!("watch {filter:?} after {after:?}: {status:?}"))
    }

    /// Opens a watch; the status when the server refuses it. Once this returns, the server has
    /// placed the watch (events appended from now on reach it).
    async fn open_on(api: &Api, after: &str, filter: &WatchFilter) -> Result<Self, Status> {
        let stream = api
            .clone()
            .watch_sandboxes(filter.request(after))
            .await?
            .into_inner();
        Ok(Self { stream })
    }

    /// The next item within `within`: an event, `Ok(None)` when the stream ended with OK, or the
    /// status it ended with. Panics when nothing comes.
    async fn next_within(&mut self, within: Duration) -> Result<Option<v1::SandboxEvent>, Status> {
        tokio::time::timeout(within, self.stream.message())
            .await
            .unwrap_or_else(|_| panic!("no event and no end of the watch within {within:?}"))
    }

    /// The next `count` events; panics when the stream fails or ends first, or is too slow.
    pub(super) async fn take(&mut self, count: usize, within: Duration) -> Vec<v1::SandboxEvent> {
        let mut events = Vec::with_capacity(count);
        while events.len() < count {
            match self.next_within(within).await {
                Ok(Some(event)) => events.push(event),
                other => panic!("after {} of {count} events: {other:?}", events.len()),
            }
        }
        events
    }

    /// Every event until none has come for `quiet`; panics when the stream ends or fails.
    pub(super) async fn take_until_quiet(&mut self, quiet: Duration) -> Vec<v1::SandboxEvent> {
        let mut events = Vec::new();
        while let Ok(item) = tokio::time::timeout(quiet, self.stream.message()).await {
            match item {
                Ok(Some(event)) => events.push(event),
                other => panic!("after {} events: {other:?}", events.len()),
            }
        }
        events
    }

    /// Asserts nothing arrives (and the stream does not end) for `quiet`.
    pub(super) async fn assert_quiet(&mut self, quiet: Duration) {
        if let Ok(item) = tokio::time::timeout(quiet, self.stream.message()).await {
            panic!("expected nothing more, got {item:?}");
        }
    }
}

/// An event as the tests compare it: type, reason, and the sandbox's chat, session, container
/// and state (after the change; for a removal, as it was).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Seen {
    kind: v1::SandboxEventType,
    reason: String,
    chat_id: String,
    session_id: String,
    container_id: String,
    state: v1::SandboxState,
}

impl Seen {
    pub(super) fn of(event: &v1::SandboxEvent) -> Self {
        let sandbox = event.sandbox.clone().unwrap_or_default();
        let kind = v1::SandboxEventType::try_from(event.r#type)
            .unwrap_or(v1::SandboxEventType::Unspecified);
        Self::expected(kind, &event.reason, &sandbox)
    }

    /// The event a change of `sandbox` (as the event must carry it) appends.
    pub(super) fn expected(
        kind: v1::SandboxEventType,
        reason: &str,
        sandbox: &v1::Sandbox,
    ) -> Self {
        Self {
            kind,
            reason: reason.to_owned(),
            chat_id: sandbox.chat_id.clone(),
            session_id: sandbox.session_id.clone(),
            container_id: sandbox.container_id.clone(),
            state: state(sandbox),
        }
    }
}

/// A cursor as an ordered pair (`<millis>-<sequence>`).
fn cursor_order(cursor: &str) -> (u64, u64) {
    let (millis, sequence) = cursor
        .split_once('-')
        .unwrap_or_else(|| panic!("cursor {cursor:?}"));
    (millis.parse().unwrap(), sequence.parse().unwrap())
}

/// Asserts the events' cursors strictly increase.
fn assert_ordered(events: &[v1::SandboxEvent]) {
    for pair in events.windows(2) {
        assert!(
            cursor_order(&pair[0].cursor) < cursor_order(&pair[1].cursor),
            "cursors out of order: {} then {}",
            pair[0].cursor,
            pair[1].cursor
        );
    }
}

/// One step of a scripted sequence: an RPC on one chat and the event it must produce.
#[derive(Debug, Clone, Copy)]
enum Action {
    Create,
    Pause,
    Resume,
    Extend,
    Delete,
}

impl Action {
    const fn event(self) -> v1::SandboxEventType {
        match self {
            Self::Create => v1::SandboxEventType::Created,
            Self::Pause => v1::SandboxEventType::Paused,
            Self::Resume => v1::SandboxEventType::Resumed,
            Self::Extend => v1::SandboxEventType::Extended,
            Self::Delete => v1::SandboxEventType::Deleted,
        }
    }
}

/// A chat of a script, with its agent and volume.
struct ScriptChat {
    chat_id: String,
    agent_id: &'static str,
    volume: String,
}

/// Runs `action` on `chat` and returns the event it must have appended, and when it answered.
async fn perform(app: &TestApp, chat: &ScriptChat, action: Action) -> (Seen, Instant) {
    let chat_id = &chat.chat_id;
    let sandbox = match action {
        Action::Create => {
            let created = app.create_ok(chat_id, chat.agent_id, &chat.volume).await;
            assert_eq!(created.result, v1::CreateSandboxResult::Created as i32);
            created.sandbox
        }
        Action::Pause => app.pause(chat_id).await.unwrap(),
        Action::Resume => app.resume(chat_id).await.unwrap(),
        Action::Extend => app
            .extend(chat_id, Some(Duration::from_secs(600)))
            .await
            .unwrap(),
        Action::Delete => {
            // The removal's event carries the sandbox as it was.
            let before = app.get(chat_id).await.unwrap();
            let deleted = app.delete(chat_id).await.unwrap();
            assert_eq!(deleted.result, v1::DeleteSandboxResult::Deleted as i32);
            assert_eq!(deleted.session_id, before.session_id);
            before
        }
    };
    let answered = Instant::now();
    let seen = Seen::expected(action.event(), "requested", &sandbox);
    (seen, answered)
}

/// Three chats: two of `default`, one of `other`.
fn script_chats(app: &TestApp) -> Vec<ScriptChat> {
    [("a", "default"), ("b", "default"), ("c", "other")]
        .into_iter()
        .map(|(name, agent_id)| ScriptChat {
            chat_id: new_chat_id(),
            agent_id,
            volume: app.new_volume(name),
        })
        .collect()
}

/// The sequence over chats 0, 1, 2: every kind of requested change, interleaved, with a chat
/// deleted and created again (a new session).
const SCRIPT: [(usize, Action); 16] = [
    (0, Action::Create),
    (1, Action::Create),
    (2, Action::Create),
    (0, Action::Pause),
    (1, Action::Extend),
    (2, Action::Pause),
    (0, Action::Resume),
    (2, Action::Extend),
    (2, Action::Resume),
    (1, Action::Pause),
    (1, Action::Delete),
    (0, Action::Extend),
    (0, Action::Delete),
    (1, Action::Create),
    (2, Action::Delete),
    (1, Action::Delete),
];

/// p-th percentile (nearest rank) of sorted durations.
fn percentile(sorted: &[Duration], p: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (sorted.len() * p).div_ceil(100).max(1);
    sorted[rank - 1]
}

/// 50 watchers, ten each unfiltered, on chat 0, on chat 2, on agent `default` and on agent
/// `other`, see exactly the scripted events meant for them, in order, with the right types,
/// reasons and sessions, and nothing else.
#[tokio::test]
async fn fifty_watchers_see_exactly_their_events_of_a_scripted_sequence_in_order() {
    let app = spawn_app().await;
    let chats = script_chats(&app);
    let filters = [
        WatchFilter::All,
        WatchFilter::Chat(chats[0].chat_id.clone()),
        WatchFilter::Chat(chats[2].chat_id.clone()),
        WatchFilter::Agent("default".to_owned()),
        WatchFilter::Agent("other".to_owned()),
    ];
    // Ten connections of five watchers each, all placed before the first step.
    let mut watches = Vec::new();
    for connection in 0..10 {
        let api = app.new_client().await;
        for index in 0..5 {
            let filter = filters[(connection * 5 + index) % filters.len()].clone();
            let watch = Watch::open_on(&api, "", &filter).await.unwrap();
            watches.push((filter, watch));
        }
    }

    // Each watcher reads in its own task until it has as many events as the script gives it.
    let expected_count = |filter: &WatchFilter| {
        SCRIPT
            .iter()
            .filter(|(chat, _)| filter.wants(&chats[*chat].chat_id, chats[*chat].agent_id))
            .count()
    };
    let readers: Vec<_> = watches
        .into_iter()
        .map(|(filter, mut watch)| {
            let count = expected_count(&filter);
            tokio::spawn(async move {
                // One at a time, so each event is stamped when it arrived.
                let mut received = Vec::with_capacity(count);
                while received.len() < count {
                    let event = watch.take(1, DELIVERY_BOUND).await.remove(0);
                    received.push((event, Arrival::now()));
                }
                watch.assert_quiet(QUIET).await;
                (filter, received)
            })
        })
        .collect();
    let mut steps = Vec::with_capacity(SCRIPT.len());
    for (chat, action) in SCRIPT {
        steps.push(perform(&app, &chats[chat], action).await);
    }
    let results = join_all(readers).await;

    let mut figures = DeliveryFigures::new(steps.len());
    for result in results {
        let (filter, received) = result.expect("a watcher task");
        let wanted: Vec<usize> = (0..steps.len())
            .filter(|step| {
                let (chat, _) = SCRIPT[*step];
                filter.wants(&chats[chat].chat_id, chats[chat].agent_id)
            })
            .collect();
        let events: Vec<v1::SandboxEvent> = received.iter().map(|(e, _)| e.clone()).collect();
        let seen: Vec<Seen> = events.iter().map(Seen::of).collect();
        let want: Vec<Seen> = wanted.iter().map(|step| steps[*step].0.clone()).collect();
        assert_eq!(seen, want, "watcher {filter:?}");
        assert_ordered(&events);
        for (step, (event, arrival)) in wanted.iter().zip(&received) {
            figures.record(*step, event, *arrival, steps[*step].1);
        }
    }
    assert_eq!(
        figures.deliveries(),
        10 * 16 + 10 * 5 + 10 * 5 + 10 * 11 + 10 * 5
    );
    println!("{}", figures.report(50));
}

/// When a watcher received an event: for the time since the RPC's answer (same process) and
/// since the event was appended (its cursor's milliseconds: Redis's clock, same host).
#[derive(Debug, Clone, Copy)]
struct Arrival {
    instant: Instant,
    wall: SystemTime,
}

impl Arrival {
    fn now() -> Self {
        Self {
            instant: Instant::now(),
            wall: SystemTime::now(),
        }
    }
}

/// Event-delivery figures over a script (printed, never asserted).
struct DeliveryFigures {
    /// Per delivery: from the append to the watcher. Not from `occurred_at`: a creation's is its
    /// `created_at`, taken before the container starts.
    from_append: Vec<Duration>,
    /// Per event: from the append until every watcher that wanted it had it.
    all_from_append: Vec<Duration>,
    /// Per event: from the RPC's answer until every watcher that wanted it had it (zero when
    /// all had it before the answer reached the client).
    all_from_answer: Vec<Duration>,
    /// Deliveries that arrived before the RPC's answer did.
    before_answer: usize,
}

impl DeliveryFigures {
    fn new(events: usize) -> Self {
        Self {
            from_append: Vec::new(),
            all_from_append: vec![Duration::ZERO; events],
            all_from_answer: vec![Duration::ZERO; events],
            before_answer: 0,
        }
    }

    fn record(
        &mut self,
        step: usize,
        event: &v1::SandboxEvent,
        arrival: Arrival,
        answered: Instant,
    ) {
        assert!(event.occurred_at.is_some(), "{event:?}");
        let appended = UNIX_EPOCH + Duration::from_millis(cursor_order(&event.cursor).0);
        let from_append = arrival.wall.duration_since(appended).unwrap_or_default();
        self.from_append.push(from_append);
        self.all_from_append[step] = self.all_from_append[step].max(from_append);
        if arrival.instant < answered {
            self.before_answer += 1;
        }
        let from_answer = arrival.instant.saturating_duration_since(answered);
        self.all_from_answer[step] = self.all_from_answer[step].max(from_answer);
    }

    fn deliveries(&self) -> usize {
        self.from_append.len()
    }

    fn report(&self, watchers: usize) -> String {
        let sorted = |values: &[Duration]| {
            let mut values = values.to_vec();
            values.sort();
            values
        };
        let (per, all, answer) = (
            sorted(&self.from_append),
            sorted(&self.all_from_append),
            sorted(&self.all_from_answer),
        );
        let max = |values: &[Duration]| values.last().copied().unwrap_or_default();
        format!(
            "watch delivery, {watchers} watchers, {} events, {} deliveries:\n  \
             append -> one watcher: p50 {:?} p99 {:?} max {:?}\n  \
             append -> every interested watcher: p50 {:?} max {:?}\n  \
             RPC answer -> every interested watcher: p50 {:?} max {:?} \
             ({} of {} deliveries arrived before the answer)",
            all.len(),
            per.len(),
            percentile(&per, 50),
            percentile(&per, 99),
            max(&per),
            percentile(&all, 50),
            max(&all),
            percentile(&answer, 50),
            max(&answer),
            self.before_answer,
            per.len(),
        )
    }
}

/// A watcher that goes away and comes back with its last cursor receives exactly the events it
/// missed (then live ones), without duplicates; filtered by chat, only that chat's. A fresh
/// watch (empty cursor) receives nothing of the past.
#[tokio::test]
async fn a_watcher_reconnecting_with_its_last_cursor_gets_exactly_what_it_missed() {
    let app = spawn_app().await;
    let chats = script_chats(&app);
    let (a, b) = (&chats[0], &chats[1]);
    let mut everything = Watch::open(&app, "", WatchFilter::All).await;
    let mut only_a = Watch::open(&app, "", WatchFilter::Chat(a.chat_id.clone())).await;

    let first = [
        perform(&app, a, Action::Create).await.0,
        perform(&app, b, Action::Create).await.0,
    ];
    let seen_all = everything.take(2, DELIVERY_BOUND).await;
    assert_eq!(seen_all.iter().map(Seen::of).collect::<Vec<_>>(), first);
    let seen_a = only_a.take(1, DELIVERY_BOUND).await;
    assert_eq!(Seen::of(&seen_a[0]), first[0]);
    let (last_all, last_a) = (seen_all[1].cursor.clone(), seen_a[0].cursor.clone());
    drop((everything, only_a));

    let mut missed = Vec::new();
    for (chat, action) in [
        (a, Action::Pause),
        (b, Action::Extend),
        (a, Action::Resume),
        (b, Action::Delete),
    ] {
        missed.push(perform(&app, chat, action).await.0);
    }

    let mut everything = Watch::open(&app, &last_all, WatchFilter::All).await;
    let mut only_a = Watch::open(&app, &last_a, WatchFilter::Chat(a.chat_id.clone())).await;
    let mut fresh = Watch::open(&app, "", WatchFilter::All).await;
    // From the first event's cursor: a replay of everything after it.
    let mut replay = Watch::open(&app, &seen_all[0].cursor, WatchFilter::All).await;
    let live = perform(&app, a, Action::Delete).await.0;

    let caught_up = everything.take(missed.len() + 1, DELIVERY_BOUND).await;
    assert_ordered(&caught_up);
    assert!(cursor_order(&caught_up[0].cursor) > cursor_order(&last_all));
    let mut want: Vec<Seen> = missed.clone();
    want.push(live.clone());
    assert_eq!(caught_up.iter().map(Seen::of).collect::<Vec<_>>(), want);

    let caught_up_a = only_a.take(3, DELIVERY_BOUND).await;
    let want_a: Vec<Seen> = want
        .iter()
        .filter(|seen| seen.chat_id == a.chat_id)
        .cloned()
        .collect();
    assert_eq!(caught_up_a.iter().map(Seen::of).collect::<Vec<_>>(), want_a);

    let from_now = fresh.take(1, DELIVERY_BOUND).await;
    assert_eq!(Seen::of(&from_now[0]), live);

    let replayed = replay.take(want.len() + 1, DELIVERY_BOUND).await;
    let mut want_replay = vec![first[1].clone()];
    want_replay.extend(want);
    assert_eq!(
        replayed.iter().map(Seen::of).collect::<Vec<_>>(),
        want_replay
    );

    for watch in [&mut everything, &mut only_a, &mut fresh, &mut replay] {
        watch.assert_quiet(QUIET).await;
    }
}

/// A cursor that is not `<millis>-<sequence>` is INVALID_ARGUMENT naming `after`; one older than
/// `event_retention` (2 s here) is OUT_OF_RANGE, and the message says to resync with
/// ListSandboxes; a recent one is accepted.
#[tokio::test]
async fn a_garbage_cursor_is_invalid_and_an_expired_one_out_of_range() {
    let app = spawn_app_with(AppConfig {
        extra_toml: "event_retention = \"2s\"\n".to_owned(),
        ..AppConfig::default()
    })
    .await;
    let chat = new_chat_id();
    let mut watch = Watch::open(&app, "", WatchFilter::All).await;
    app.create_ok(&chat, "default", &app.new_volume("cursor"))
        .await;
    let cursor = watch.take(1, DELIVERY_BOUND).await[0].cursor.clone();
    drop(watch);
    // Recent: accepted, and nothing follows it yet.
    let mut recent = Watch::open(&app, &cursor, WatchFilter::All).await;
    recent.assert_quiet(QUIET).await;

    for garbage in ["garbage", "17", "17-3-1", "-"] {
        let status = Watch::open_on(&app.api, garbage, &WatchFilter::All)
            .await
            .err()
            .unwrap_or_else(|| panic!("{garbage:?} accepted"));
        assert_refused(&status, Code::InvalidArgument, Some("after"));
    }

    tokio::time::sleep(Duration::from_millis(3000)).await;
    for old in [cursor.as_str(), "1-0"] {
        let status = Watch::open_on(&app.api, old, &WatchFilter::All)
            .await
            .err()
            .unwrap_or_else(|| panic!("{old:?} accepted after the retention"));
        assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
        assert!(
            status.message().contains("resync with ListSandboxes"),
            "{status:?}"
        );
    }
    // The resync the message asks for: list, then watch from now.
    let listed = super::list_chats(&app, v1::SandboxState::Unspecified)
        .await
        .unwrap();
    assert_eq!(listed, vec![chat]);
    Watch::open(&app, "", WatchFilter::All).await;
}

/// SIGTERM: the server drains, every open watch (unfiltered, by chat, by agent, one that has seen
/// nothing yet, one opened from a cursor) ends with OK or UNAVAILABLE rather than hanging, and
/// the process exits 0.
#[tokio::test]
async fn watches_end_cleanly_when_the_server_drains_on_sigterm() {
    let mut app = spawn_app().await;
    let chat = new_chat_id();
    let mut watches = Vec::new();
    for filter in [
        WatchFilter::All,
        WatchFilter::Chat(chat.clone()),
        WatchFilter::Agent("default".to_owned()),
        WatchFilter::Agent("other".to_owned()),
    ] {
        watches.push(Watch::open(&app, "", filter).await);
    }
    app.create_ok(&chat, "default", &app.new_volume("drain"))
        .await;
    let mut cursor = String::new();
    for watch in &mut watches[..3] {
        cursor = watch.take(1, DELIVERY_BOUND).await.remove(0).cursor;
    }
    app.pause(&chat).await.unwrap();
    for watch in &mut watches[..3] {
        watch.take(1, DELIVERY_BOUND).await;
    }
    let mut from_cursor = Watch::open(&app, &cursor, WatchFilter::All).await;
    from_cursor.take(1, DELIVERY_BOUND).await;
    watches.push(from_cursor);

    app.sigterm();
    let started = Instant::now();
    for (index, watch) in watches.iter_mut().enumerate() {
        match watch.next_within(Duration::from_secs(15)).await {
            Ok(None) => {}
            Err(status) if status.code() == Code::Unavailable => {}
            other => panic!("watch #{index} ended with {other:?}"),
        }
    }
    let ended = started.elapsed();
    let exit = app.wait_for_exit(Duration::from_secs(25)).await;
    assert_eq!(exit.code(), Some(0), "{exit}\n{}", app.log());
    println!(
        "drain: {} watches ended {ended:?} after SIGTERM",
        watches.len()
    );
}
