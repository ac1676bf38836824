//! The shared shape of the server's periodic loops (cleanup, reconcile, the fleet heartbeat): one
//! pass per period, selecting against the shutdown token between passes (a running pass is
//! allowed to finish), and failures logged once per outage — an `outage started` / `outage ended`
//! pair — instead of once per tick while Redis or Docker stays down. The warm pool's refill loop,
//! woken by claims rather than a period, shares only the outage log ([`OutageLog`]).

use std::future::Future;
use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::names;

/// When the first pass runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FirstPass {
    /// Right away (reconcile: repair what a crash left before serving for long).
    AtStart,
    /// After one period (cleanup: startup stays quick and predictable).
    AfterOnePeriod,
}

/// Runs `pass` every `interval` until `stop` is cancelled. A pass returns `Err(description)` when
/// it failed as a whole; the description of the first failure of an outage is logged.
pub(crate) async fn run_periodic<F, Fut>(
    loop_name: &'static str,
    interval: Duration,
    first: FirstPass,
    stop: CancellationToken,
    mut pass: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let start = match first {
        FirstPass::AtStart => Instant::now(),
        FirstPass::AfterOnePeriod => Instant::now() + interval,
    };
    let mut ticks = tokio::time::interval_at(start, interval);
    // A pass longer than the period delays the next one instead of running them back to back.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut outages = OutageLog::new(loop_name);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        outages.record(pass().await);
    }
}

/// Turns a stream of pass outcomes into one log line when failures start and one when they end.
#[derive(Debug)]
pub(crate) struct OutageLog {
    loop_name: &'static str,
    /// `Some` while passes keep failing: when the outage began and how many passes failed.
    current: Option<Outage>,
}

#[derive(Debug, Clone, Copy)]
struct Outage {
    started: Instant,
    failed_passes: u64,
}

/// What [`OutageLog::record`] logged, so the dedup can be tested without a log capture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Logged {
    Nothing,
    OutageStarted,
    OutageEnded { failed_passes: u64 },
}

impl OutageLog {
    #[must_use]
    pub(crate) fn new(loop_name: &'static str) -> Self {
        Self {
            loop_name,
            current: None,
        }
    }

    pub(crate) fn record(&mut self, outcome: Result<(), String>) -> Logged {
        match (outcome, self.current.as_mut()) {
            (Ok(()), None) => Logged::Nothing,
            (Ok(()), Some(outage)) => {
                let failed_passes = outage.failed_passes;
                tracing::info!(
                    name: names::BACKGROUND_OUTAGE_ENDED,
                    message = names::BACKGROUND_OUTAGE_ENDED,
                    r#loop = self.loop_name,
                    failed_passes,
                    duration_ms = u64::try_from(outage.started.elapsed().as_millis()).unwrap_or(u64::MAX),
                );
                self.current = None;
                Logged::OutageEnded { failed_passes }
            }
            (Err(error), None) => {
                tracing::warn!(
                    name: names::BACKGROUND_OUTAGE_STARTED,
                    message = names::BACKGROUND_OUTAGE_STARTED,
                    r#loop = self.loop_name,
                    error = %error,
                );
                self.current = Some(Outage {
                    started: Instant::now(),
                    failed_passes: 1,
                });
                Logged::OutageStarted
            }
            (Err(error), Some(outage)) => {
                outage.failed_passes += 1;
                tracing::debug!(
                    name: names::BACKGROUND_PASS_STILL_FAILING,
                    message = names::BACKGROUND_PASS_STILL_FAILING,
                    r#loop = self.loop_name,
                    error = %error,
                    failed_passes = outage.failed_passes,
                );
                Logged::Nothing
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn an_outage_is_logged_once_when_it_starts_and_once_when_it_ends() {
        let mut log = OutageLog::new("test");
        assert_eq!(log.record(Ok(())), Logged::Nothing);
        assert_eq!(log.record(Err("down".into())), Logged::OutageStarted);
        for _ in 0..10 {
            assert_eq!(log.record(Err("still down".into())), Logged::Nothing);
        }
        assert!(log.current.is_some(), "an outage is open");
        assert_eq!(
            log.record(Ok(())),
            Logged::OutageEnded { failed_passes: 11 }
        );
        assert_eq!(log.record(Ok(())), Logged::Nothing);
        assert_eq!(log.record(Err("again".into())), Logged::OutageStarted);
    }

    /// `run_periodic` in a task, with a pass that counts its calls and answers `outcome(n)` on
    /// the n-th (from 0); the count, the loop's stop token and its task.
    fn spawn_counted_loop(
        interval: Duration,
        first: FirstPass,
        outcome: fn(usize) -> Result<(), String>,
    ) -> (
        Arc<AtomicUsize>,
        CancellationToken,
        tokio::task::JoinHandle<()>,
    ) {
        let passes = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let counted = Arc::clone(&passes);
        let task = tokio::spawn(run_periodic(
            "test",
            interval,
            first,
            stop.clone(),
            move || {
                let n = counted.fetch_add(1, Ordering::SeqCst);
                async move { outcome(n) }
            },
        ));
        (passes, stop, task)
    }

    #[tokio::test(start_paused = true)]
    async fn the_loop_keeps_running_through_failures_and_stops_on_cancel() {
        let (passes, stop, task) =
            spawn_counted_loop(Duration::from_secs(1), FirstPass::AtStart, |n| {
                if n.is_multiple_of(3) {
                    Ok(())
                } else {
                    Err("down".into())
                }
            });
        tokio::time::sleep(Duration::from_millis(9_500)).await;
        // At start, then every second: 10 passes in 9.5 s, failures included.
        assert_eq!(passes.load(Ordering::SeqCst), 10);
        stop.cancel();
        assert!(task.await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn after_one_period_waits_for_the_first_tick() {
        let (passes, stop, task) = spawn_counted_loop(
            Duration::from_secs(5),
            FirstPass::AfterOnePeriod,
            |_| Ok(()),
        );
        tokio::time::sleep(Duration::from_millis(4_900)).await;
        assert_eq!(passes.load(Ordering::SeqCst), 0);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(passes.load(Ordering::SeqCst), 1);
        stop.cancel();
        assert!(task.await.is_ok());
    }
}
