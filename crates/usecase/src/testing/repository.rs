//! An in-memory session store with the same contract as the Redis one (fenced writes, ordered
//! expiry index, stable paging), plus failure injection.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use sandboxd_domain::{
    AgentId, ChatId, EventCursor, EventNote, SandboxEvent, SandboxSession, SandboxState, SessionId,
    Timestamp,
};

use super::{CallLog, InMemoryLocker, InjectedFailures, lock};
use crate::ports::{
    ActiveCount, Change, EventLog, Lease, Limits, ListQuery, QuotaLimit, RepositoryError,
    Reservation, SessionPage, SessionRepository, StateCounts, TouchMatch,
};

/// Repository methods, for failure injection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RepoOp {
    GetActiveByChatId,
    GetBySessionId,
    Save,
    Delete,
    Update,
    Touch,
    Reserve,
    Release,
    AppendEvent,
    CountByState,
    ListExpired,
    CountActive,
    List,
    Ping,
}

#[derive(Debug, Default)]
struct State {
    sessions: HashMap<SessionId, SandboxSession>,
    chats: HashMap<ChatId, SessionId>,
    /// (expires_at, session_id): the expiry index, ordered like a sorted set by score then member.
    expiry: BTreeSet<(Timestamp, SessionId)>,
    /// session_id text -> id: the ordered index behind paging (lexicographic, like ZRANGEBYLEX).
    ordered: BTreeMap<String, SessionId>,
    /// The event log, oldest first.
    events: Vec<SandboxEvent>,
    /// Admission reservations in flight: id -> (agent, when it frees itself).
    reservations: BTreeMap<SessionId, (AgentId, Timestamp)>,
}

impl State {
    /// Appends like the store's scripts: in the same critical section as the change.
    fn append(&mut self, note: &EventNote, session: &SandboxSession) {
        let millis = u64::try_from(note.at.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
        let cursor = match self.events.last() {
            Some(last) if last.cursor.millis >= millis => EventCursor {
                millis: last.cursor.millis,
                sequence: last.cursor.sequence + 1,
            },
            _ => EventCursor {
                millis,
                sequence: 0,
            },
        };
        self.events.push(SandboxEvent {
            cursor,
            kind: note.kind,
            reason: note.reason,
            occurred_at: note.at,
            session: session.clone(),
        });
    }

    /// A fenced change applies only while the stored session still expires as decided on.
    fn fence_holds(&self, session_id: &SessionId, change: &Change) -> bool {
        change.expect_expires_at.is_none_or(|expected| {
            self.sessions
                .get(session_id)
                .is_some_and(|stored| stored.expires_at == expected)
        })
    }
}

#[derive(Debug)]
pub struct InMemorySessionRepository {
    state: Mutex<State>,
    /// Decides fencing: a write is applied only while its lease is this locker's current one.
    locker: Arc<InMemoryLocker>,
    calls: CallLog,
    failures: InjectedFailures<RepoOp, RepositoryError>,
    /// Wakes `wait_after` callers on every append.
    appended: tokio::sync::Notify,
}

impl InMemorySessionRepository {
    #[must_use]
    pub fn new(locker: Arc<InMemoryLocker>, calls: CallLog) -> Self {
        Self {
            state: Mutex::new(State::default()),
            locker,
            calls,
            failures: InjectedFailures::default(),
            appended: tokio::sync::Notify::new(),
        }
    }

    /// The event log so far (test assertions).
    #[must_use]
    pub fn events(&self) -> Vec<SandboxEvent> {
        lock(&self.state).events.clone()
    }

    /// The next call of `op` fails with `error` (queued: several calls fail in order).
    pub fn fail_next(&self, op: RepoOp, error: RepositoryError) {
        self.failures.push(op, error);
    }

    /// Stores a session directly, bypassing leases (test setup).
    pub fn insert(&self, session: SandboxSession) {
        let mut state = lock(&self.state);
        put(&mut state, session);
    }

    /// Removes a session directly, bypassing leases (another replica's delete, in tests).
    pub fn remove_direct(&self, session_id: &SessionId) {
        remove(&mut lock(&self.state), session_id);
    }

    /// Adds an expiry-index entry without a session (a stale entry, as TTL expiry leaves).
    pub fn insert_stale_index_entry(&self, expires_at: Timestamp, session_id: SessionId) {
        lock(&self.state).expiry.insert((expires_at, session_id));
    }

    /// Every stored session, by session id (test assertions).
    #[must_use]
    pub fn all(&self) -> Vec<SandboxSession> {
        let state = lock(&self.state);
        let mut all: Vec<_> = state.sessions.values().cloned().collect();
        all.sort_by_key(|s| s.session_id);
        all
    }

    /// Number of expiry-index entries (test assertions on stale entries).
    #[must_use]
    pub fn expiry_index_len(&self) -> usize {
        lock(&self.state).expiry.len()
    }

    fn enter(&self, op: RepoOp, call: String) -> Result<(), RepositoryError> {
        self.failures.enter(&self.calls, op, call)
    }

    /// A write: recorded, failed if injected, then refused unless `lease` is still current.
    fn enter_fenced(
        &self,
        op: RepoOp,
        call: String,
        lease: &Lease,
    ) -> Result<MutexGuard<'_, State>, RepositoryError> {
        self.enter(op, call)?;
        if self.locker.is_current(lease) {
            Ok(lock(&self.state))
        } else {
            Err(RepositoryError::LeaseLost)
        }
    }
}

fn put(state: &mut State, session: SandboxSession) {
    if let Some(previous) = state.sessions.get(&session.session_id) {
        state
            .expiry
            .remove(&(previous.expires_at, previous.session_id));
    }
    state.chats.insert(session.chat_id, session.session_id);
    state
        .expiry
        .insert((session.expires_at, session.session_id));
    state
        .ordered
        .insert(session.session_id.to_string(), session.session_id);
    state.sessions.insert(session.session_id, session);
}

fn remove(state: &mut State, session_id: &SessionId) {
    if let Some(stored) = state.sessions.remove(session_id) {
        state.expiry.remove(&(stored.expires_at, stored.session_id));
        if state.chats.get(&stored.chat_id) == Some(session_id) {
            state.chats.remove(&stored.chat_id);
        }
    }
    state.expiry.retain(|(_, id)| id != session_id);
    state.ordered.remove(&session_id.to_string());
}

/// Page tokens name the filter and the last id returned, so a token of another query is refused.
fn encode_token(query: &ListQuery, last: &SessionId) -> String {
    format!("mem1.{}.{last}", filter_of(query))
}

fn filter_of(query: &ListQuery) -> String {
    let agent = query.agent_id.as_ref().map_or("", |a| a.as_str());
    let state = query.state.map_or("", SandboxState::as_str);
    format!("{agent}@{state}")
}

fn decode_token(query: &ListQuery, token: &str) -> Result<String, RepositoryError> {
    let filter = filter_of(query);
    let rest = token
        .strip_prefix("mem1.")
        .and_then(|rest| rest.strip_prefix(filter.as_str()))
        .and_then(|rest| rest.strip_prefix('.'))
        .ok_or(RepositoryError::InvalidPageToken)?;
    let last = SessionId::parse(rest).map_err(|_| RepositoryError::InvalidPageToken)?;
    Ok(last.to_string())
}

#[async_trait]
impl SessionRepository for InMemorySessionRepository {
    async fn get_current_by_chat_id(
        &self,
        chat_id: &ChatId,
    ) -> Result<Option<SandboxSession>, RepositoryError> {
        self.enter(
            RepoOp::GetActiveByChatId,
            format!("repository.get_current_by_chat_id({chat_id})"),
        )?;
        let state = lock(&self.state);
        Ok(state
            .chats
            .get(chat_id)
            .and_then(|id| state.sessions.get(id))
            .cloned())
    }

    async fn get_by_session_id(
        &self,
        session_id: &SessionId,
    ) -> Result<Option<SandboxSession>, RepositoryError> {
        self.enter(
            RepoOp::GetBySessionId,
            format!("repository.get_by_session_id({session_id})"),
        )?;
        Ok(lock(&self.state).sessions.get(session_id).cloned())
    }

    async fn save(
        &self,
        lease: &Lease,
        session: &SandboxSession,
        note: &EventNote,
    ) -> Result<ActiveCount, RepositoryError> {
        let mut state = self.enter_fenced(
            RepoOp::Save,
            format!("repository.save({})", session.session_id),
            lease,
        )?;
        put(&mut state, session.clone());
        state.append(note, session);
        self.appended.notify_waiters();
        Ok(state.sessions.len() as ActiveCount)
    }

    async fn delete(
        &self,
        lease: &Lease,
        session: &SandboxSession,
        change: &Change,
    ) -> Result<ActiveCount, RepositoryError> {
        let mut state = self.enter_fenced(
            RepoOp::Delete,
            format!("repository.delete({})", session.session_id),
            lease,
        )?;
        if !state.fence_holds(&session.session_id, change) {
            return Err(RepositoryError::Changed);
        }
        if let Some(stored) = state.sessions.get(&session.session_id).cloned() {
            remove(&mut state, &session.session_id);
            state.append(&change.note, &stored);
            self.appended.notify_waiters();
        }
        remove(&mut state, &session.session_id);
        Ok(state.sessions.len() as ActiveCount)
    }

    async fn update(
        &self,
        lease: &Lease,
        session: &SandboxSession,
        change: &Change,
    ) -> Result<Option<SandboxSession>, RepositoryError> {
        let mut state = self.enter_fenced(
            RepoOp::Update,
            format!("repository.update({})", session.session_id),
            lease,
        )?;
        if !state.fence_holds(&session.session_id, change) {
            return Err(RepositoryError::Changed);
        }
        let Some(stored) = state.sessions.get(&session.session_id).cloned() else {
            return Ok(None);
        };
        if &stored.chat_id != lease.chat_id() {
            return Err(RepositoryError::LeaseLost);
        }
        let updated = SandboxSession {
            state: session.state,
            expires_at: session.expires_at,
            last_active_at: session.last_active_at,
            endpoint: session.endpoint,
            ..stored
        };
        put(&mut state, updated.clone());
        state.append(&change.note, &updated);
        self.appended.notify_waiters();
        Ok(Some(updated))
    }

    async fn touch(
        &self,
        chat_id: &ChatId,
        now: Timestamp,
        only_if: Option<TouchMatch<'_>>,
    ) -> Result<Option<SandboxSession>, RepositoryError> {
        self.enter(RepoOp::Touch, format!("repository.touch({chat_id})"))?;
        let mut state = lock(&self.state);
        let Some(current) = state
            .chats
            .get(chat_id)
            .and_then(|id| state.sessions.get(id))
            .cloned()
        else {
            return Ok(None);
        };
        let matches = only_if.is_none_or(|m| {
            &current.agent_id == m.agent_id && &current.volume_host_path == m.volume_host_path
        });
        if current.state == SandboxState::Running && current.is_live_at(now) && matches {
            let touched = current.touched_at(now);
            put(&mut state, touched.clone());
            return Ok(Some(touched));
        }
        Ok(Some(current))
    }

    async fn append_event(
        &self,
        session: &SandboxSession,
        note: &EventNote,
    ) -> Result<(), RepositoryError> {
        self.enter(
            RepoOp::AppendEvent,
            format!("repository.append_event({})", session.session_id),
        )?;
        lock(&self.state).append(note, session);
        self.appended.notify_waiters();
        Ok(())
    }

    async fn reserve(
        &self,
        reservation: &Reservation,
        limits: Limits,
        now: Timestamp,
    ) -> Result<Result<(), QuotaLimit>, RepositoryError> {
        self.enter(
            RepoOp::Reserve,
            format!("repository.reserve({})", reservation.session_id),
        )?;
        let mut state = lock(&self.state);
        state.reservations.retain(|_, (_, until)| *until > now);
        let replaced = reservation
            .replacing
            .and_then(|id| state.sessions.get(&id))
            .map(|s| s.agent_id.clone());
        let total =
            state.sessions.len() + state.reservations.len() - usize::from(replaced.is_some());
        if let Some(limit) = limits.deployment
            && total >= limit as usize
        {
            return Ok(Err(QuotaLimit::Deployment(limit)));
        }
        let agent = &reservation.agent_id;
        let of_agent = state
            .sessions
            .values()
            .filter(|s| &s.agent_id == agent)
            .count()
            + state
                .reservations
                .values()
                .filter(|(a, _)| a == agent)
                .count()
            - usize::from(replaced.as_ref() == Some(agent));
        if let Some(limit) = limits.agent
            && of_agent >= limit as usize
        {
            return Ok(Err(QuotaLimit::Agent(limit)));
        }
        state.reservations.insert(
            reservation.session_id,
            (reservation.agent_id.clone(), reservation.expires_at),
        );
        Ok(Ok(()))
    }

    async fn release(&self, reservation: &Reservation) -> Result<(), RepositoryError> {
        self.enter(
            RepoOp::Release,
            format!("repository.release({})", reservation.session_id),
        )?;
        lock(&self.state)
            .reservations
            .remove(&reservation.session_id);
        Ok(())
    }

    async fn count_by_state(&self) -> Result<StateCounts, RepositoryError> {
        self.enter(RepoOp::CountByState, "repository.count_by_state".to_owned())?;
        let state = lock(&self.state);
        let mut counts = StateCounts::default();
        for session in state.sessions.values() {
            match session.state {
                SandboxState::Running => counts.running += 1,
                SandboxState::Paused => counts.paused += 1,
                SandboxState::Hibernated => counts.hibernated += 1,
            }
        }
        Ok(counts)
    }

    async fn list_expired(
        &self,
        now: Timestamp,
        limit: usize,
    ) -> Result<Vec<SandboxSession>, RepositoryError> {
        self.enter(RepoOp::ListExpired, "repository.list_expired".to_owned())?;
        let mut state = lock(&self.state);
        let due: Vec<(Timestamp, SessionId)> = state
            .expiry
            .iter()
            .take_while(|(at, _)| *at <= now)
            .copied()
            .collect();
        let mut expired = Vec::new();
        for entry in due {
            if expired.len() == limit {
                break;
            }
            match state.sessions.get(&entry.1) {
                Some(session) => expired.push(session.clone()),
                None => {
                    state.expiry.remove(&entry);
                }
            }
        }
        Ok(expired)
    }

    async fn count_active(&self) -> Result<ActiveCount, RepositoryError> {
        self.enter(RepoOp::CountActive, "repository.count_active".to_owned())?;
        Ok(lock(&self.state).sessions.len() as ActiveCount)
    }

    async fn list(&self, query: &ListQuery) -> Result<SessionPage, RepositoryError> {
        self.enter(RepoOp::List, "repository.list".to_owned())?;
        let after = query
            .page_token
            .as_deref()
            .map(|t| decode_token(query, t))
            .transpose()?;
        let state = lock(&self.state);
        let range = match &after {
            Some(last) => state
                .ordered
                .range::<String, _>((std::ops::Bound::Excluded(last), std::ops::Bound::Unbounded)),
            None => state.ordered.range::<String, _>(..),
        };
        let mut sessions = Vec::new();
        let mut more = false;
        for id in range.map(|(_, id)| id) {
            let Some(session) = state.sessions.get(id) else {
                continue;
            };
            if query
                .agent_id
                .as_ref()
                .is_some_and(|a| a != &session.agent_id)
                || query.state.is_some_and(|s| s != session.state)
            {
                continue;
            }
            if sessions.len() == query.page_size {
                more = true;
                break;
            }
            sessions.push(session.clone());
        }
        let next_page_token = match sessions.last() {
            Some(last) if more => Some(encode_token(query, &last.session_id)),
            _ => None,
        };
        Ok(SessionPage {
            sessions,
            next_page_token,
        })
    }

    async fn ping(&self) -> Result<(), RepositoryError> {
        self.enter(RepoOp::Ping, "repository.ping".to_owned())
    }
}

#[async_trait]
impl EventLog for InMemorySessionRepository {
    async fn read_after(
        &self,
        after: Option<EventCursor>,
        limit: usize,
    ) -> Result<Vec<SandboxEvent>, RepositoryError> {
        let state = lock(&self.state);
        Ok(state
            .events
            .iter()
            .filter(|event| after.is_none_or(|after| event.cursor > after))
            .take(limit)
            .cloned()
            .collect())
    }

    async fn wait_after(
        &self,
        after: Option<EventCursor>,
        limit: usize,
        block: Duration,
    ) -> Result<Vec<SandboxEvent>, RepositoryError> {
        let appended = self.appended.notified();
        let ready = self.read_after(after, limit).await?;
        if !ready.is_empty() {
            return Ok(ready);
        }
        let _ = tokio::time::timeout(block, appended).await;
        self.read_after(after, limit).await
    }

    async fn last_cursor(&self) -> Result<Option<EventCursor>, RepositoryError> {
        Ok(lock(&self.state).events.last().map(|event| event.cursor))
    }
}
