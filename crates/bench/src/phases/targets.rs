//! The targets, judged on the figures the phases measured.

use super::{
    COLD, DEFAULT_CLEANUP_CONCURRENCY, DELETE, FLOOR_CREATE, FLOOR_REMOVE, REUSE, REUSE_RATE,
    cleanup_rate, floor_stop_rate,
};
use crate::Plan;
use crate::report::Report;
use crate::stats::ms;

/// The targets, judged on this run's figures.
pub(super) fn targets(plan: &Plan, report: &mut Report) {
    let p50 = |name: &str| report.summary(name).map(|s| ms(s.p50));
    let mut targets = Vec::new();
    let mut ratio_target = |target: &str, a: Option<f64>, b: Option<f64>, bound: f64| {
        let ratio = a.zip(b).map(|(a, b)| a / b);
        targets.push(crate::report::Target {
            target: target.to_owned(),
            measured: ratio.map_or_else(|| "-".to_owned(), |r| format!("{r:.3}x")),
            met: ratio.map(|r| r <= bound),
        });
    };
    ratio_target(
        "CreateSandbox cold p50 <= 1.05 x floor create+start+ready p50",
        p50(COLD),
        p50(FLOOR_CREATE),
        1.05,
    );
    ratio_target(
        "DeleteSandbox p50 <= 1.05 x floor forced removal p50",
        p50(DELETE),
        p50(FLOOR_REMOVE),
        1.05,
    );
    let reuse = p50(REUSE);
    targets.push(crate::report::Target {
        target: "CreateSandbox reuse p50 <= 0.5 ms".to_owned(),
        measured: reuse.map_or_else(|| "-".to_owned(), |v| format!("{v:.3} ms")),
        met: reuse.map(|v| v <= 0.5),
    });
    let rate = report.value(REUSE_RATE);
    targets.push(crate::report::Target {
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
    targets.push(crate::report::Target {
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
    let n = plan.rss_sessions;
    let rss = report.value(&format!("sandboxd peak RSS with {n} sessions (VmHWM)"));
    targets.push(crate::report::Target {
        target: format!("sandboxd RSS <= 50 MiB with {n} sessions (peak, VmHWM)"),
        measured: rss.map_or_else(|| "-".to_owned(), |v| format!("{v:.1} MiB")),
        met: rss.map(|v| v <= 50.0),
    });
    report.targets = targets;
}
