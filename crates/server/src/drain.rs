//! In-flight call tracking for graceful shutdown: every SandboxService call runs as a tracked
//! task and every streaming response is a tracked stream, so shutdown can refuse new calls, wait
//! (bounded) for the running ones and the open streams, and then end the streams still open.
//!
//! Running the use case in its own task also means a client that hangs up mid-create does not
//! cancel it between "container started" and "session saved": the work completes or fails as a
//! whole, exactly as if the client had stayed.

use std::future::Future;
use std::pin::Pin;

use futures::{Stream, StreamExt as _};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tokio_util::task::task_tracker::TaskTrackerToken;
use tonic::Status;
use tracing::Instrument as _;

use crate::names;

/// A streaming response as a tracked call ([`Drain::stream`]).
pub(crate) type TrackedStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[derive(Debug, Clone, Default)]
pub struct Drain {
    tracker: TaskTracker,
    /// Cancelled once the drain's grace is over: the streams still open end then.
    streams_end: CancellationToken,
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
            return Err(shutting_down());
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

    /// `stream` as a tracked call: refused (UNAVAILABLE) once draining started, otherwise
    /// counted in [`Self::in_flight`] and waited for by [`Self::wait`] until it ends or its client
    /// goes away; [`Self::end_streams`] ends it with a last UNAVAILABLE item, so a client can
    /// tell a shutdown from a normal end and reconnect elsewhere.
    ///
    /// # Errors
    /// UNAVAILABLE once draining started.
    pub fn stream<T, S>(&self, stream: S) -> Result<TrackedStream<T>, Status>
    where
        S: Stream<Item = Result<T, Status>> + Send + 'static,
        T: Send + 'static,
    {
        if self.tracker.is_closed() {
            return Err(shutting_down());
        }
        let open = OpenStream {
            stream: Box::pin(stream),
            end: self.streams_end.clone(),
            _tracked: self.tracker.token(),
            ended: false,
        };
        Ok(Box::pin(futures::stream::unfold(open, OpenStream::next)))
    }

    /// Refuses new calls from now on.
    pub fn start(&self) {
        self.tracker.close();
    }

    /// Ends every stream still open (the drain's grace is over).
    pub fn end_streams(&self) {
        self.streams_end.cancel();
    }

    /// Calls still running and streams still open.
    #[must_use]
    pub fn in_flight(&self) -> usize {
        self.tracker.len()
    }

    /// Resolves once draining started and every tracked call and stream has finished.
    pub async fn wait(&self) {
        self.tracker.wait().await;
    }
}

fn shutting_down() -> Status {
    Status::unavailable("the server is shutting down")
}

/// The state of a tracked stream: counted by the tracker for as long as it lives (it is dropped
/// when the stream ends or its client goes away).
struct OpenStream<T> {
    stream: TrackedStream<T>,
    end: CancellationToken,
    _tracked: TaskTrackerToken,
    /// Whether the shutdown item was sent: nothing follows it.
    ended: bool,
}

impl<T> OpenStream<T> {
    async fn next(mut self) -> Option<(Result<T, Status>, Self)> {
        if self.ended {
            return None;
        }
        tokio::select! {
            // An item ready at the same moment as the end goes first: nothing already produced
            // is lost.
            biased;
            item = self.stream.next() => item.map(|item| (item, self)),
            () = self.end.cancelled() => {
                self.ended = true;
                Some((Err(shutting_down()), self))
            }
        }
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
    async fn an_open_stream_is_waited_for_until_it_ends() {
        let drain = Drain::new();
        let (sender, receiver) = tokio::sync::mpsc::channel::<Result<u32, Status>>(4);
        let mut stream = drain
            .stream(tokio_stream::wrappers::ReceiverStream::new(receiver))
            .unwrap();
        assert_eq!(drain.in_flight(), 1, "an open stream is in flight");
        drain.start();
        let refused = drain.stream(futures::stream::empty::<Result<u32, Status>>());
        assert_eq!(
            refused.err().map(|s| s.code()),
            Some(tonic::Code::Unavailable)
        );
        sender.send(Ok(1)).await.unwrap();
        assert_eq!(
            stream.next().await.unwrap().unwrap(),
            1,
            "still served while draining"
        );
        let waiting = tokio::time::timeout(Duration::from_millis(50), drain.wait()).await;
        assert!(waiting.is_err(), "the drain waits for the open stream");
        drop(sender);
        assert!(stream.next().await.is_none());
        drop(stream);
        tokio::time::timeout(Duration::from_secs(2), drain.wait())
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn ending_the_streams_closes_them_with_unavailable_and_the_drain_completes() {
        let drain = Drain::new();
        let mut endless = drain
            .stream(futures::stream::pending::<Result<u32, Status>>())
            .unwrap();
        let mut ready = drain
            .stream(futures::stream::iter([Ok(7)]).chain(futures::stream::pending()))
            .unwrap();
        drain.start();
        drain.end_streams();
        assert_eq!(
            ready.next().await.unwrap().unwrap(),
            7,
            "what was ready goes first"
        );
        for stream in [&mut endless, &mut ready] {
            let last = stream.next().await.unwrap().unwrap_err();
            assert_eq!(last.code(), tonic::Code::Unavailable);
            assert!(
                stream.next().await.is_none(),
                "nothing after the shutdown item"
            );
        }
        drop((endless, ready));
        tokio::time::timeout(Duration::from_secs(2), drain.wait())
            .await
            .unwrap();
        assert_eq!(drain.in_flight(), 0);
    }

    #[tokio::test]
    async fn a_client_that_goes_away_frees_its_stream() {
        let drain = Drain::new();
        let stream = drain
            .stream(futures::stream::pending::<Result<u32, Status>>())
            .unwrap();
        assert_eq!(drain.in_flight(), 1);
        drop(stream);
        assert_eq!(drain.in_flight(), 0);
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
