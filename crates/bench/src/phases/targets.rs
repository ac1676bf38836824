//! The targets, judged on the figures the phases measured.

use super::{
    COLD, DEFAULT_CLEANUP_CONCURRENCY, DELETE, FLOOR_CREATE, FLOOR_PAUSE, FLOOR_REMOVE,
    FLOOR_UNPAUSE, PAUSE, RESUME, REUSE, REUSE_RATE, cleanup_rate, floor_stop_rate, pool,
};
use crate::Plan;
use crate::report::{Report, Target};
use crate::stats::ms;

/// The targets, judged on this run's figures.
pub(super) fn targets(plan: &Plan, report: &mut Report) {
    let p50 = |name: &str| report.summary(name).map(|s| ms(s.p50));
    let mut targets = vec![
        ratio_target(
            "CreateSandbox cold p50 <= 1.05 x floor create+start+ready p50",
            p50(COLD),
            p50(FLOOR_CREATE),
            1.05,
        ),
        ratio_target(
            "DeleteSandbox p50 <= 1.05 x floor forced removal p50",
            p50(DELETE),
            p50(FLOOR_REMOVE),
            1.05,
        ),
        overhead_target(
            "PauseSandbox p50 <= 1.1 x floor engine pause p50 + 1 ms",
            p50(PAUSE),
            p50(FLOOR_PAUSE),
        ),
        overhead_target(
            "ResumeSandbox p50 <= 1.1 x floor engine unpause p50 + 1 ms",
            p50(RESUME),
            p50(FLOOR_UNPAUSE),
        ),
    ];
    let reuse = p50(REUSE);
    targets.push(Target {
        target: "CreateSandbox reuse p50 <= 0.5 ms".to_owned(),
        measured: reuse.map_or_else(|| "-".to_owned(), |v| format!("{v:.3} ms")),
        met: reuse.map(|v| v <= 0.5),
    });
    let rate = report.value(REUSE_RATE);
    targets.push(Target {
        target: format!("reuse >= 5000 calls/s from {} clients", plan.clients),
        measured: rate.map_or_else(|| "-".to_owned(), |v| format!("{v:.0} calls/s")),
        met: rate.map(|v| v >= 5000.0),
    });
    let c = DEFAULT_CLEANUP_CONCURRENCY;
    let (ours, raw) = (
        report.value(&cleanup_rate(c)),
        report.value(&floor_stop_rate(c)),
    );
    let sequential = report.value(&cleanup_rate(1));
    targets.push(Target {
        target: format!(
            "cleanup of {} @{c} >= 0.9 x raw engine rate @{c}, and faster than @1",
            plan.cleanup_sessions
        ),
        measured: match (ours, raw, sequential) {
            (Some(o), Some(r), Some(s)) => {
                format!("{:.3}x raw; {o:.1} vs {s:.1} stops/s sequential", o / r)
            }
            _ => "-".to_owned(),
        },
        met: match (ours, raw, sequential) {
            (Some(o), Some(r), Some(s)) => Some(o >= 0.9 * r && o > s),
            _ => None,
        },
    });
    let pooled = report.summary(pool::POOLED).map(|s| (ms(s.p50), ms(s.p99)));
    targets.push(Target {
        target: "CreateSandbox from the pool p50 <= 10 ms and p99 <= 25 ms".to_owned(),
        measured: pooled.map_or_else(
            || "-".to_owned(),
            |(p50, p99)| format!("p50 {p50:.2} ms, p99 {p99:.2} ms"),
        ),
        met: pooled.map(|(p50, p99)| p50 <= 10.0 && p99 <= 25.0),
    });
    let speedup = report.value(pool::COLD_OVER_POOLED);
    targets.push(Target {
        target: "CreateSandbox from the pool >= 20 x faster than cold (p50)".to_owned(),
        measured: speedup.map_or_else(|| "-".to_owned(), |v| format!("{v:.1} x")),
        met: speedup.map(|v| v >= 20.0),
    });
    let burst = report.summary(pool::POOL_BURST).map(|s| ms(s.max));
    targets.push(Target {
        target: "a burst of 32 creates on a pool of 32: every answer <= 100 ms".to_owned(),
        measured: burst.map_or_else(|| "-".to_owned(), |v| format!("max {v:.1} ms")),
        met: burst.map(|v| v <= 100.0),
    });
    let (refill, engine) = (
        report.value(pool::POOL_REFILL_RATE),
        report.value(pool::FLOOR_CREATE_START_RATE),
    );
    targets.push(Target {
        target: "pool refill >= 0.9 x the engine's create+start rate".to_owned(),
        measured: match (refill, engine) {
            (Some(r), Some(e)) => format!("{:.3}x ({r:.2} vs {e:.2} /s)", r / e),
            _ => "-".to_owned(),
        },
        met: match (refill, engine) {
            (Some(r), Some(e)) => Some(r >= 0.9 * e),
            _ => None,
        },
    });
    let n = plan.rss_sessions;
    let rss = report.value(&format!("sandboxd peak RSS with {n} sessions (VmHWM)"));
    targets.push(Target {
        target: format!("sandboxd RSS <= 50 MiB with {n} sessions (peak, VmHWM)"),
        measured: rss.map_or_else(|| "-".to_owned(), |v| format!("{v:.1} MiB")),
        met: rss.map(|v| v <= 50.0),
    });
    report.targets = targets;
}

/// `ours <= bound x floor`, both in ms; `None`s (not measured) leave it undecided.
fn ratio_target(target: &str, ours: Option<f64>, floor: Option<f64>, bound: f64) -> Target {
    let ratio = ours.zip(floor).map(|(ours, floor)| ours / floor);
    Target {
        target: target.to_owned(),
        measured: ratio.map_or_else(|| "-".to_owned(), |r| format!("{r:.3}x")),
        met: ratio.map(|r| r <= bound),
    }
}

/// The bound for pause and resume, `ours <= 1.1 x floor + 1 ms` (both in ms): a tenth of
/// the engine's call plus a millisecond for the store round trips around it.
fn overhead_target(target: &str, ours: Option<f64>, floor: Option<f64>) -> Target {
    const FACTOR: f64 = 1.1;
    const PLUS_MS: f64 = 1.0;
    let pair = ours.zip(floor);
    Target {
        target: target.to_owned(),
        measured: pair.map_or_else(
            || "-".to_owned(),
            |(ours, floor)| format!("{:.3}x, {:+.3} ms", ours / floor, ours - floor),
        ),
        met: pair.map(|(ours, floor)| ours <= FACTOR * floor + PLUS_MS),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pause_and_resume_may_take_a_tenth_more_than_the_engine_plus_a_millisecond() {
        let met = |ours: f64, floor: f64| overhead_target("t", Some(ours), Some(floor)).met;
        assert_eq!(met(11.9, 10.0), Some(true));
        assert_eq!(met(12.1, 10.0), Some(false));
        assert_eq!(
            met(1.5, 0.5),
            Some(true),
            "a fast engine call leaves the millisecond"
        );
        assert_eq!(overhead_target("t", None, Some(10.0)).met, None);
        let measured = overhead_target("t", Some(11.0), Some(10.0)).measured;
        assert_eq!(measured, "1.100x, +1.000 ms");
    }
}
