//! The server's background work, started through one path ([`Background`]) and stopped in one
//! order. Periodic passes (cleanup, reconcile, the fleet heartbeat) share one loop: one pass per
//! period, selecting against the shutdown token between passes (a running pass is allowed to
//! finish), and failures logged once per outage — an `outage started` / `outage ended` pair —
//! instead of once per tick while Redis or Docker stays down. Tasks with a loop of their own (the
//! refill, woken by claims; the health checks; the event reader; the deferred runtime check) are
//! registered the same way and share the outage log ([`OutageLog`]) where they have outages.

use std::future::Future;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::names;

/// Every background task of the server: registered here, stopped together by [`Self::stop`] and
/// joined by [`Self::join`] in the order they were registered (the shutdown order).
#[derive(Debug)]
pub(crate) struct Background {
    stop: CancellationToken,
    tasks: Vec<(&'static str, JoinHandle<()>)>,
    /// Where a task whose failure must end the server reports it ([`Fatal`]).
    fatal: mpsc::UnboundedSender<anyhow::Error>,
}

/// The failures of [`Background::fallible`] tasks, for the server to end on.
#[derive(Debug)]
pub(crate) struct Fatal(mpsc::UnboundedReceiver<anyhow::Error>);

impl Fatal {
    /// The first failure; never resolves when there is none.
    pub(crate) async fn next(&mut self) -> anyhow::Error {
        match self.0.recv().await {
            Some(error) => error,
            None => std::future::pending().await,
        }
    }
}

impl Background {
    pub(crate) fn new() -> (Self, Fatal) {
        let (fatal, failures) = mpsc::unbounded_channel();
        let background = Self {
            stop: CancellationToken::new(),
            tasks: Vec::new(),
            fatal,
        };
        (background, Fatal(failures))
    }

    /// Runs `pass` every `interval` (see [`run_periodic`]); an interval of zero registers
    /// nothing (the setting's way to turn a loop off).
    pub(crate) fn periodic<F, Fut>(
        &mut self,
        loop_name: &'static str,
        interval: Duration,
        first: FirstPass,
        pass: F,
    ) where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        if interval.is_zero() {
            return;
        }
        let stop = self.stop.clone();
        self.spawn(
            loop_name,
            run_periodic(loop_name, interval, first, stop, pass),
        );
    }

    /// A task with a loop of its own, given the token that stops it.
    pub(crate) fn task<Fut>(
        &mut self,
        name: &'static str,
        make: impl FnOnce(CancellationToken) -> Fut,
    ) where
        Fut: Future<Output = ()> + Send + 'static,
    {
        let task = make(self.stop.clone());
        self.spawn(name, task);
    }

    /// A task whose failure ends the server: it is reported through [`Fatal`].
    pub(crate) fn fallible<Fut, E>(
        &mut self,
        name: &'static str,
        make: impl FnOnce(CancellationToken) -> Fut,
    ) where
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<anyhow::Error>,
    {
        let task = make(self.stop.clone());
        let fatal = self.fatal.clone();
        self.spawn(name, async move {
            if let Err(error) = task.await {
                // The receiver lives as long as the server; a send after it is gone has nobody
                // left to stop.
                let _ = fatal.send(error.into());
            }
        });
    }

    fn spawn(&mut self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks.push((name, tokio::spawn(task)));
    }

    /// Tells every task to stop (a running pass finishes).
    pub(crate) fn stop(&self) {
        self.stop.cancel();
    }

    /// Waits for every task, in the order they were registered; a task that panicked is logged.
    pub(crate) async fn join(self) {
        for (name, task) in self.tasks {
            if let Err(error) = task.await {
                tracing::error!(
                    name: names::BACKGROUND_TASK_FAILED,
                    message = names::BACKGROUND_TASK_FAILED,
                    task = name,
                    error = %error,
                );
            }
        }
    }
}

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

    #[tokio::test(start_paused = true)]
    async fn one_builder_runs_passes_and_tasks_and_stops_them_all() {
        let (mut background, _fatal) = Background::new();
        let passes = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&passes);
        background.periodic(
            "counted",
            Duration::from_secs(1),
            FirstPass::AtStart,
            move || {
                counted.fetch_add(1, Ordering::SeqCst);
                async { Ok(()) }
            },
        );
        let disabled = Arc::new(AtomicUsize::new(0));
        let never = Arc::clone(&disabled);
        background.periodic("off", Duration::ZERO, FirstPass::AtStart, move || {
            never.fetch_add(1, Ordering::SeqCst);
            async { Ok(()) }
        });
        let ended = Arc::new(AtomicUsize::new(0));
        let seen = Arc::clone(&ended);
        background.task("own loop", move |stop| async move {
            stop.cancelled().await;
            seen.fetch_add(1, Ordering::SeqCst);
        });
        assert_eq!(
            background.tasks.len(),
            2,
            "an interval of zero registers nothing"
        );
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        assert_eq!(passes.load(Ordering::SeqCst), 3);
        background.stop();
        tokio::time::timeout(Duration::from_secs(1), background.join())
            .await
            .unwrap_or_else(|_| panic!("the tasks did not stop"));
        assert_eq!(ended.load(Ordering::SeqCst), 1, "the task saw the stop");
        assert_eq!(disabled.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_fallible_tasks_failure_is_fatal_and_a_panic_does_not_stop_the_join() {
        let (mut background, mut fatal) = Background::new();
        background.task("panics", |_| async { panic!("bug") });
        background.fallible("fails", |_| async {
            Err(anyhow::anyhow!("runtime missing"))
        });
        background.fallible("passes", |_| async { Ok::<(), anyhow::Error>(()) });
        let error = tokio::time::timeout(Duration::from_secs(1), fatal.next())
            .await
            .unwrap_or_else(|_| panic!("no failure reported"));
        assert_eq!(error.to_string(), "runtime missing");
        tokio::time::timeout(Duration::from_secs(1), background.join())
            .await
            .unwrap_or_else(|_| panic!("the join stopped at the panicked task"));
        let quiet = tokio::time::timeout(Duration::from_millis(50), fatal.next()).await;
        assert!(quiet.is_err(), "one failure, one report");
    }
}
