//! In-flight call tracking for graceful shutdown: every SandboxService call runs as a tracked
//! task, so shutdown can refuse new calls and wait (bounded) for the running ones.
//!
//! Running the use case in its own task also means a client that hangs up mid-create does not
//! cancel it between "container started" and "session saved": the work completes or fails as a
//! whole, exactly as if the client had stayed.

use std::future::Future;

use tokio_util::task::TaskTracker;
use tonic::Status;
use tracing::Instrument as _;

use crate::names;

#[derive(Debug, Clone, Default)]
pub struct Drain {
    tracker: TaskTracker,
}

impl Drain {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `work` as a tracked task and returns its output; UNAVAILABLE once draining started
    /// (clients retry elsewhere), INTERNAL if the task panicked.
    pub async fn run<T, F>(&self, rpc: &'static str, work: F) -> Result<T, Status>
    where
        F: Future<Output = Result<T, Status>> + Send + 'static,
        T: Send + 'static,
    {
        // A task spawned after `close` is still tracked, so this check cannot lose a call: the
        // worst case is one call accepted just as draining begins, and `wait` waits for it.
        if self.tracker.is_closed() {
            return Err(Status::unavailable("the server is shutting down"));
        }
        // The task carries the caller's span (the RPC's server span), so the use-case span is
        // its child and log lines name the call they belong to.
        match self.tracker.spawn(work.in_current_span()).await {
            Ok(outcome) => outcome,
            Err(join_error) => {
                tracing::error!(
                    name: names::RPC_TASK_FAILED,
                    message = names::RPC_TASK_FAILED,
                    rpc,
                    error = %join_error,
                );
                Err(Status::internal("internal error"))
            }
        }
    }

    /// Refuses new calls from now on.
    pub fn start(&self) {
        self.tracker.close();
    }

    /// Calls still running.
    #[must_use]
    pub fn in_flight(&self) -> usize {
        self.tracker.len()
    }

    /// Resolves once draining started and every tracked call has finished.
    pub async fn wait(&self) {
        self.tracker.wait().await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn draining_refuses_new_calls_and_waits_for_running_ones() {
        let drain = Drain::new();
        let running = {
            let drain = drain.clone();
            tokio::spawn(async move {
                drain
                    .run("slow", async {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Ok(7)
                    })
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        drain.start();
        let refused = drain.run("late", async { Ok(1) }).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unavailable);
        tokio::time::timeout(Duration::from_secs(2), drain.wait())
            .await
            .unwrap();
        assert_eq!(running.await.unwrap().unwrap(), 7);
    }

    #[tokio::test]
    async fn a_panicking_call_becomes_internal() {
        let drain = Drain::new();
        let status = drain
            .run::<(), _>("boom", async { panic!("bug") })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Internal);
    }
}
