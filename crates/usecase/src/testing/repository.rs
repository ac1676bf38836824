//! An in-memory session store with the same contract as the Redis one (fenced writes, ordered
//! expiry index, stable paging), plus failure injection.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use sandboxd_domain::{ChatId, SandboxSession, SessionId, Timestamp};

use super::{CallLog, InMemoryLocker, InjectedFailures, lock};
use crate::ports::{
    ActiveCount, Lease, ListQuery, RepositoryError, SessionPage, SessionRepository,
};

/// Repository methods, for failure injection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RepoOp {
    GetActiveByChatId,
    GetBySessionId,
    Save,
    Delete,
    Extend,
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
}

#[derive(Debug)]
pub struct InMemorySessionRepository {
    state: Mutex<State>,
    /// Decides fencing: a write is applied only while its lease is this locker's current one.
    locker: Arc<InMemoryLocker>,
    calls: CallLog,
    failures: InjectedFailures<RepoOp, RepositoryError>,
}

impl InMemorySessionRepository {
    #[must_use]
    pub fn new(locker: Arc<InMemoryLocker>, calls: CallLog) -> Self {
        Self {
            state: Mutex::new(State::default()),
            locker,
            calls,
            failures: InjectedFailures::default(),
        }
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
    let agent = query.agent_id.as_ref().map_or("", |a| a.as_str());
    format!("mem1.{agent}.{last}")
}

fn decode_token(query: &ListQuery, token: &str) -> Result<String, RepositoryError> {
    let agent = query.agent_id.as_ref().map_or("", |a| a.as_str());
    let rest = token
        .strip_prefix("mem1.")
        .and_then(|rest| rest.strip_prefix(agent))
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
    ) -> Result<ActiveCount, RepositoryError> {
        let mut state = self.enter_fenced(
            RepoOp::Save,
            format!("repository.save({})", session.session_id),
            lease,
        )?;
        put(&mut state, session.clone());
        Ok(state.sessions.len() as ActiveCount)
    }

    async fn delete(
        &self,
        lease: &Lease,
        session: &SandboxSession,
    ) -> Result<ActiveCount, RepositoryError> {
        let mut state = self.enter_fenced(
            RepoOp::Delete,
            format!("repository.delete({})", session.session_id),
            lease,
        )?;
        remove(&mut state, &session.session_id);
        Ok(state.sessions.len() as ActiveCount)
    }

    async fn extend(
        &self,
        lease: &Lease,
        session_id: &SessionId,
        expires_at: Timestamp,
    ) -> Result<Option<SandboxSession>, RepositoryError> {
        let mut state = self.enter_fenced(
            RepoOp::Extend,
            format!("repository.extend({session_id})"),
            lease,
        )?;
        let Some(mut session) = state.sessions.get(session_id).cloned() else {
            return Ok(None);
        };
        session.expires_at = expires_at;
        put(&mut state, session.clone());
        Ok(Some(session))
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
