//! A locker with real mutual exclusion inside one process, and lease loss on demand.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use sandboxd_domain::ChatId;
use tokio::sync::Notify;
use uuid::Uuid;

use super::{CallLog, lock};
use crate::ports::{Lease, LeaseLossFlag, LifecycleLocker, LockError};

#[derive(Debug)]
struct Held {
    token: String,
    lost: LeaseLossFlag,
}

/// Holds one token per chat; `lock` waits (up to `wait`) for release, then fails `Busy`.
pub struct InMemoryLocker {
    held: Mutex<HashMap<ChatId, Held>>,
    released: Notify,
    wait: Duration,
    calls: CallLog,
    fail_next: Mutex<Option<LockError>>,
    /// Runs at the start of every `lock` call: lets a test change the world between a read and
    /// the lock (e.g. a session extended after cleanup listed it).
    on_lock: Mutex<Option<LockHook>>,
}

type LockHook = std::sync::Arc<dyn Fn(&ChatId) + Send + Sync>;

impl std::fmt::Debug for InMemoryLocker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InMemoryLocker")
            .field("held", &lock(&self.held).len())
            .finish()
    }
}

impl InMemoryLocker {
    #[must_use]
    pub fn new(calls: CallLog) -> Self {
        Self::with_wait(calls, Duration::from_secs(5))
    }

    #[must_use]
    pub fn with_wait(calls: CallLog, wait: Duration) -> Self {
        Self {
            held: Mutex::new(HashMap::new()),
            released: Notify::new(),
            wait,
            calls,
            fail_next: Mutex::new(None),
            on_lock: Mutex::new(None),
        }
    }

    pub fn on_lock(&self, hook: impl Fn(&ChatId) + Send + Sync + 'static) {
        *lock(&self.on_lock) = Some(std::sync::Arc::new(hook));
    }

    /// The next `lock` call fails with `error`.
    pub fn fail_next(&self, error: LockError) {
        *lock(&self.fail_next) = Some(error);
    }

    /// Simulates the lease of `chat_id` expiring: the lock is free again and the holder's lease
    /// reports loss, as a Redis lease whose renewal failed would.
    pub fn expire(&self, chat_id: &ChatId) {
        if let Some(held) = lock(&self.held).remove(chat_id) {
            held.lost.mark_lost();
        }
        self.released.notify_waiters();
    }

    /// Whether `lease` is still the holder of its chat's lock (what a fenced write checks).
    #[must_use]
    pub fn is_current(&self, lease: &Lease) -> bool {
        !lease.is_lost()
            && lock(&self.held)
                .get(lease.chat_id())
                .is_some_and(|held| held.token == lease.token())
    }

    /// Whether anyone holds the chat's lock now.
    #[must_use]
    pub fn is_held(&self, chat_id: &ChatId) -> bool {
        lock(&self.held).contains_key(chat_id)
    }

    fn try_take(&self, chat_id: &ChatId) -> Option<Lease> {
        let mut held = lock(&self.held);
        if held.contains_key(chat_id) {
            return None;
        }
        let lease = Lease::new(*chat_id, Uuid::new_v4().to_string());
        held.insert(
            *chat_id,
            Held {
                token: lease.token().to_owned(),
                lost: lease.loss_flag(),
            },
        );
        Some(lease)
    }
}

#[async_trait]
impl LifecycleLocker for InMemoryLocker {
    async fn lock(&self, chat_id: &ChatId) -> Result<Lease, LockError> {
        self.calls.record(format!("locker.lock({chat_id})"));
        if let Some(error) = lock(&self.fail_next).take() {
            return Err(error);
        }
        let hook = lock(&self.on_lock).clone();
        if let Some(hook) = hook {
            hook(chat_id);
        }
        let deadline = tokio::time::Instant::now() + self.wait;
        loop {
            // Register interest before checking, so a release between the check and the
            // wait is not missed.
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if let Some(lease) = self.try_take(chat_id) {
                return Ok(lease);
            }
            if tokio::time::timeout_at(deadline, released).await.is_err() {
                return Err(LockError::Busy { waited: self.wait });
            }
        }
    }

    async fn release(&self, lease: Lease) -> Result<(), LockError> {
        self.calls
            .record(format!("locker.release({})", lease.chat_id()));
        {
            let mut held = lock(&self.held);
            if held
                .get(lease.chat_id())
                .is_some_and(|h| h.token == lease.token())
            {
                held.remove(lease.chat_id());
            }
        }
        self.released.notify_waiters();
        Ok(())
    }
}
