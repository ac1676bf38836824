//! WatchSandboxes: lifecycle events to many watchers from one reader per process.
//!
//! The [`EventHub`]'s reader waits on the event log and broadcasts what it reads. A watcher
//! subscribes to the broadcast first, then reads the log from its own cursor up to the present,
//! then takes broadcast events, skipping those at or before its cursor: nothing appended after
//! the subscription can be missed (the reader broadcasts it later) and nothing before it either
//! (the catch-up read sees it). A watcher that falls behind the broadcast's buffer catches up
//! from the log by its own cursor again, so a slow watcher loses nothing and slows no other.

mod telemetry;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::Stream;
use sandboxd_domain::{AgentId, ChatId, EventCursor, SandboxEvent};
use tokio::sync::{broadcast, watch};
use tracing::Instrument;

use crate::error::{ErrorKind, PortError, UseCaseError};
use crate::ports::{Clock, EventLog, RepositoryError};
use telemetry::metric;

/// Events read from the log per call.
const PAGE: usize = 256;
/// How long one wait of the reader lasts; shutdown is noticed between waits.
const READER_WAIT: Duration = Duration::from_secs(1);
/// How far ahead of this process's clock a cursor may lie (the store's clock stamps events).
const CLOCK_SKEW_MS: i128 = 60_000;
/// The reader's pause after a failed read (Redis down), so an outage is not a busy loop.
const READER_RETRY: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The cursor is older than the event retention: the events after it may be gone.
    #[error("the cursor is older than the event retention")]
    CursorExpired,
    /// The cursor lies ahead of every event the log could hold: no event ever carried it.
    #[error("the cursor lies in the future")]
    CursorAhead,
    /// A port failed; its kind, label and message are the port error's.
    #[error(transparent)]
    Port(#[from] PortError),
}

// A port call's own error becomes `Port` through `?`.
impl From<RepositoryError> for WatchError {
    fn from(error: RepositoryError) -> Self {
        Self::Port(error.into())
    }
}

impl UseCaseError for WatchError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::CursorExpired => ErrorKind::OutOfRange,
            Self::CursorAhead => ErrorKind::InvalidArgument { field: "after" },
            Self::Port(error) => error.kind(),
        }
    }

    fn metric_label(&self) -> &'static str {
        match self {
            Self::CursorExpired => "cursor_expired",
            Self::CursorAhead => "cursor_ahead",
            Self::Port(error) => error.metric_label(),
        }
    }

    fn client_message(&self) -> String {
        match self {
            Self::CursorExpired => "the cursor is older than the event retention; resync with \
                                    ListSandboxes and watch with an empty cursor"
                .to_owned(),
            Self::CursorAhead => {
                "lies in the future: pass the cursor of an event you received".to_owned()
            }
            Self::Port(error) => error.client_message(),
        }
    }

    fn result_label(&self) -> &'static str {
        match self {
            Self::CursorExpired => "cursor_expired",
            Self::CursorAhead => "cursor_ahead",
            Self::Port(_) => "error",
        }
    }
}

/// What a watcher asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchRequest {
    /// After this event; `None` for only events appended from now on.
    pub after: Option<EventCursor>,
    pub chat_id: Option<ChatId>,
    pub agent_id: Option<AgentId>,
}

impl WatchRequest {
    fn wants(&self, event: &SandboxEvent) -> bool {
        self.chat_id
            .is_none_or(|chat| event.session.chat_id == chat)
            && self
                .agent_id
                .as_ref()
                .is_none_or(|agent| &event.session.agent_id == agent)
    }
}

/// The process's one event reader and its watchers.
pub struct EventHub {
    log: Arc<dyn EventLog>,
    clock: Arc<dyn Clock>,
    retention: Duration,
    sender: broadcast::Sender<Arc<SandboxEvent>>,
    /// `true` once the hub is closed: every watch ends and the reader stops.
    closed: watch::Sender<bool>,
    watchers: Arc<AtomicUsize>,
}

impl std::fmt::Debug for EventHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventHub")
            .field("retention", &self.retention)
            .field("watchers", &self.watchers.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl EventHub {
    /// `buffer` events are kept per watcher before it must catch up from the log.
    #[must_use]
    pub fn new(
        log: Arc<dyn EventLog>,
        clock: Arc<dyn Clock>,
        retention: Duration,
        buffer: usize,
    ) -> Arc<Self> {
        let (sender, _) = broadcast::channel(buffer.max(1));
        let (closed, _) = watch::channel(false);
        Arc::new(Self {
            log,
            clock,
            retention,
            sender,
            closed,
            watchers: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// Ends every watch and the reader (the shutdown drain).
    pub fn close(&self) {
        self.closed.send_replace(true);
    }

    /// The reader: broadcasts every event appended after its start, until [`Self::close`].
    /// Read failures are retried; the first of an outage is logged.
    pub async fn run_reader(self: Arc<Self>) {
        let mut closed = self.closed.subscribe();
        let mut last: Option<Option<EventCursor>> = None;
        let mut failing = false;
        while !*closed.borrow() {
            let read = match last {
                // Start at the present: older events are served by each watcher's catch-up.
                None => self.log.last_cursor().await.map(|cursor| {
                    last = Some(cursor);
                    Vec::new()
                }),
                Some(after) => self.log.wait_after(after, PAGE, READER_WAIT).await,
            };
            match read {
                Ok(events) => {
                    failing = false;
                    for event in events {
                        last = Some(Some(event.cursor));
                        // No receiver is fine: nobody watches.
                        let _ = self.sender.send(Arc::new(event));
                    }
                }
                Err(error) => {
                    if !failing {
                        telemetry::log_event_reader_failed(error.metric_label());
                    }
                    failing = true;
                    tokio::select! {
                        () = tokio::time::sleep(READER_RETRY) => {}
                        _ = closed.changed() => {}
                    }
                }
            }
        }
    }

    /// Opens a watch: the events after the request's cursor (or from now), filtered, in log
    /// order, until the hub closes or the log fails (the last item is then the error).
    ///
    /// # Errors
    /// `CursorExpired` for a cursor older than the retention; `Port` when the log cannot
    /// be read to find the present.
    pub async fn watch(
        self: &Arc<Self>,
        request: WatchRequest,
    ) -> Result<impl Stream<Item = Result<SandboxEvent, PortError>> + Send + use<>, WatchError>
    {
        let span = telemetry::watch_span(request.after.map(|c| c.to_string()).as_deref());
        let opened = self.open(&request).instrument(span.clone()).await;
        let outcome = opened.as_ref().map(|_| "opened");
        telemetry::finish(&span, metric::WATCH_TOTAL, outcome);
        let start = opened?;
        let watcher = Watcher {
            hub: Arc::clone(self),
            receiver: self.sender.subscribe(),
            closed: self.closed.subscribe(),
            request,
            last: start,
            backlog: std::collections::VecDeque::new(),
            catching_up: true,
            failed: false,
            _count: WatcherCount::new(Arc::clone(&self.watchers)),
        };
        Ok(futures::stream::unfold(watcher, |mut watcher| async move {
            let item = watcher.next().await?;
            Some((item, watcher))
        }))
    }

    /// Where a new watch starts: its cursor, checked against the retention, or the present.
    async fn open(&self, request: &WatchRequest) -> Result<Option<EventCursor>, WatchError> {
        match request.after {
            Some(cursor) => {
                let now_ms = self.clock.now().unix_timestamp_nanos() / 1_000_000;
                let oldest_kept =
                    now_ms - i128::try_from(self.retention.as_millis()).unwrap_or(i128::MAX);
                if i128::from(cursor.millis) < oldest_kept {
                    return Err(WatchError::CursorExpired);
                }
                // Events carry the store's clock; a minute covers the skew between clocks.
                if i128::from(cursor.millis) > now_ms + CLOCK_SKEW_MS {
                    return Err(WatchError::CursorAhead);
                }
                Ok(Some(cursor))
            }
            None => Ok(self.log.last_cursor().await?),
        }
    }
}

/// Keeps the watcher gauge right however a stream ends (dropped by a client that went away).
struct WatcherCount(Arc<AtomicUsize>);

impl WatcherCount {
    fn new(count: Arc<AtomicUsize>) -> Self {
        telemetry::set_watchers(count.fetch_add(1, Ordering::Relaxed) + 1);
        Self(count)
    }
}

impl Drop for WatcherCount {
    fn drop(&mut self) {
        telemetry::set_watchers(self.0.fetch_sub(1, Ordering::Relaxed).saturating_sub(1));
    }
}

/// One open watch.
struct Watcher {
    hub: Arc<EventHub>,
    receiver: broadcast::Receiver<Arc<SandboxEvent>>,
    closed: watch::Receiver<bool>,
    request: WatchRequest,
    /// The last event delivered or skipped by the filter; `None` before the first of the log.
    last: Option<EventCursor>,
    /// Read from the log, not yet delivered.
    backlog: std::collections::VecDeque<SandboxEvent>,
    /// Reading the log until it has nothing after `last`, before taking the broadcast.
    catching_up: bool,
    /// The log failed; the error was the last item.
    failed: bool,
    _count: WatcherCount,
}

impl Watcher {
    /// The next wanted event; `None` once the hub closed; an error ends the watch.
    async fn next(&mut self) -> Option<Result<SandboxEvent, PortError>> {
        loop {
            if self.failed || *self.closed.borrow() {
                return None;
            }
            if let Some(event) = self.backlog.pop_front() {
                self.last = Some(event.cursor);
                if self.request.wants(&event) {
                    telemetry::count_events_delivered(1);
                    return Some(Ok(event));
                }
                continue;
            }
            if self.catching_up {
                match self.hub.log.read_after(self.last, PAGE).await {
                    Ok(events) if events.is_empty() => self.catching_up = false,
                    Ok(events) => self.backlog.extend(events),
                    Err(error) => {
                        // The stream ends after the error.
                        self.failed = true;
                        return Some(Err(error.into()));
                    }
                }
                continue;
            }
            tokio::select! {
                received = self.receiver.recv() => match received {
                    Ok(event) => {
                        if self.last.is_none_or(|last| event.cursor > last) {
                            self.backlog.push_back((*event).clone());
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        telemetry::log_watch_lagged(missed);
                        self.catching_up = true;
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
                changed = self.closed.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                }
            }
        }
    }
}
