//! [`RedisLeaseLocker`]: per-chat leases as `SET NX PX` keys with random tokens, renewed in the
//! background and released by compare-and-delete.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use rand::Rng;
use redis::Value;
use sandboxd_domain::ChatId;
use sandboxd_usecase::ports::{Lease, LeaseLossFlag, LifecycleLocker, LockError};
use tokio::task::JoinHandle;

use super::RedisStore;
use super::client::RedisClient;
use super::config::millis;
use super::names::{self, command, lock_result};
use super::scripts;

/// First pause between attempts on a busy lock; doubles up to [`MAX_BACKOFF`], each pause
/// jittered so waiters of one chat do not retry in lockstep.
const MIN_BACKOFF: Duration = Duration::from_millis(5);
const MAX_BACKOFF: Duration = Duration::from_millis(200);

/// The lease locker on Redis.
#[derive(Debug, Clone)]
pub struct RedisLeaseLocker {
    store: RedisStore,
}

/// Stops the renewal task when the lease is dropped (released or abandoned).
#[derive(Debug)]
struct RenewalGuard(JoinHandle<()>);

impl Drop for RenewalGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl RedisLeaseLocker {
    #[must_use]
    pub fn new(store: RedisStore) -> Self {
        Self { store }
    }

    /// One `SET key token NX PX ttl`: true when taken.
    async fn try_acquire(&self, key: &str, token: &str) -> Result<bool, LockError> {
        let mut con = self.store.client.connection();
        let reply: Value = self
            .store
            .client
            .run(
                command::LOCK_ACQUIRE,
                redis::cmd("SET")
                    .arg(key)
                    .arg(token)
                    .arg("NX")
                    .arg("PX")
                    .arg(millis(self.store.config.lock_ttl))
                    .query_async(&mut con),
            )
            .await?;
        Ok(!matches!(reply, Value::Nil))
    }

    fn record_wait(started: Instant, result: &'static str) {
        metrics::histogram!(names::LOCK_WAIT_SECONDS, names::LABEL_RESULT => result)
            .record(started.elapsed().as_secs_f64());
    }
}

fn jittered(backoff: Duration) -> Duration {
    let max = u64::try_from(backoff.as_micros())
        .unwrap_or(u64::MAX)
        .max(2);
    Duration::from_micros(rand::rng().random_range(max / 2..=max))
}

/// Renews every third of the TTL while the token is still ours. Marks the lease lost when the
/// token is gone, or when renewal kept failing until the key may have expired.
async fn renew_until_lost(
    client: RedisClient,
    key: String,
    token: String,
    ttl: Duration,
    lost: LeaseLossFlag,
    acquired_at: Instant,
) {
    let interval = ttl / 3;
    // When the key is known to live until: the last successful renewal (or the acquisition) was
    // sent at most this long ago.
    let mut valid_until = acquired_at + ttl;
    loop {
        tokio::time::sleep(interval).await;
        let sent_at = Instant::now();
        let mut invocation = scripts::RENEW_SCRIPT.prepare_invoke();
        invocation.key(&key).arg(&token).arg(millis(ttl));
        let mut con = client.connection();
        match client
            .run(
                command::LOCK_RENEW,
                invocation.invoke_async::<i64>(&mut con),
            )
            .await
        {
            Ok(1) => valid_until = sent_at + ttl,
            Ok(_) => {
                tracing::warn!(
                    name: names::EVENT_LEASE_LOST_TOKEN_GONE,
                    message = names::EVENT_LEASE_LOST_TOKEN_GONE,
                    lock_key = %key,
                );
                lost.mark_lost();
                return;
            }
            Err(error) => {
                // Another try fits before the key could expire: keep the lease for now.
                if Instant::now() + interval + client.timeout() < valid_until {
                    tracing::debug!(
                        name: names::EVENT_LEASE_RENEWAL_RETRY,
                        message = names::EVENT_LEASE_RENEWAL_RETRY,
                        lock_key = %key,
                        error = %error,
                    );
                    continue;
                }
                tracing::warn!(
                    name: names::EVENT_LEASE_LOST_RENEWAL_FAILED,
                    message = names::EVENT_LEASE_LOST_RENEWAL_FAILED,
                    lock_key = %key,
                    error = %error,
                );
                lost.mark_lost();
                return;
            }
        }
    }
}

#[async_trait]
impl LifecycleLocker for RedisLeaseLocker {
    async fn lock(&self, chat_id: &ChatId) -> Result<Lease, LockError> {
        let started = Instant::now();
        let wait = self.store.config.lock_wait;
        let deadline = started + wait;
        let key = self.store.keys.lock(chat_id);
        let token = uuid::Uuid::new_v4().simple().to_string();
        let mut backoff = MIN_BACKOFF;
        loop {
            let attempt_at = Instant::now();
            match self.try_acquire(&key, &token).await {
                Ok(true) => {
                    Self::record_wait(started, lock_result::ACQUIRED);
                    let lease = Lease::new(*chat_id, token.clone());
                    let renewal = tokio::spawn(renew_until_lost(
                        self.store.client.clone(),
                        key,
                        token,
                        self.store.config.lock_ttl,
                        lease.loss_flag(),
                        attempt_at,
                    ));
                    return Ok(lease.with_keepalive(RenewalGuard(renewal)));
                }
                Ok(false) => {}
                Err(error) => {
                    Self::record_wait(started, lock_result::ERROR);
                    return Err(error);
                }
            }
            let now = Instant::now();
            if now >= deadline {
                Self::record_wait(started, lock_result::BUSY);
                return Err(LockError::Busy { waited: wait });
            }
            tokio::time::sleep(jittered(backoff).min(deadline - now)).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn release(&self, lease: Lease) -> Result<(), LockError> {
        let key = self.store.keys.lock(lease.chat_id());
        let token = lease.token().to_owned();
        // Stop renewing first, so a renewal cannot race the delete.
        drop(lease);
        let mut invocation = scripts::RELEASE_SCRIPT.prepare_invoke();
        invocation.key(&key).arg(&token);
        let mut con = self.store.client.connection();
        let _released: i64 = self
            .store
            .client
            .run(command::LOCK_RELEASE, invocation.invoke_async(&mut con))
            .await?;
        Ok(())
    }
}
