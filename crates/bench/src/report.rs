//! The benchmark's results: latency rows (min / p50 / p99 against a named floor row), scalar rows
//! (throughputs, pass times, memory) and the targets, printed as a table and as JSON.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use crate::stats::{Summary, SummaryMillis, ms};

/// One latency figure and, for sandboxd figures, the floor row it is compared with.
#[derive(Debug, Clone)]
pub(crate) struct LatencyRow {
    pub name: String,
    pub floor: Option<String>,
    pub summary: Option<Summary>,
}

/// One single-valued figure (a rate, a pass time, a size), optionally against a floor scalar.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ScalarRow {
    pub name: String,
    pub value: f64,
    pub unit: &'static str,
    pub floor: Option<String>,
}

/// An issue target and whether this run met it (`None`: not measured in this run).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Target {
    pub target: String,
    pub measured: String,
    pub met: Option<bool>,
}

/// Everything one run measured.
#[derive(Debug, Default)]
pub(crate) struct Report {
    pub run: serde_json::Map<String, serde_json::Value>,
    pub latency: Vec<LatencyRow>,
    pub scalars: Vec<ScalarRow>,
    pub targets: Vec<Target>,
}

impl Report {
    pub(crate) fn latency(&mut self, name: &str, floor: Option<&str>, samples: &[Duration]) {
        self.latency.push(LatencyRow {
            name: name.to_owned(),
            floor: floor.map(str::to_owned),
            summary: Summary::of(samples),
        });
    }

    pub(crate) fn scalar(
        &mut self,
        name: &str,
        value: f64,
        unit: &'static str,
        floor: Option<&str>,
    ) {
        self.scalars.push(ScalarRow {
            name: name.to_owned(),
            value,
            unit,
            floor: floor.map(str::to_owned),
        });
    }

    #[must_use]
    pub(crate) fn summary(&self, name: &str) -> Option<Summary> {
        self.latency
            .iter()
            .find(|row| row.name == name)
            .and_then(|row| row.summary)
    }

    #[must_use]
    pub(crate) fn value(&self, name: &str) -> Option<f64> {
        self.scalars
            .iter()
            .find(|row| row.name == name)
            .map(|row| row.value)
    }

    /// `p50(row) / p50(floor)`, with the min and p99 ratios alike.
    fn latency_ratio(&self, row: &LatencyRow) -> Option<Ratios> {
        let floor = self.summary(row.floor.as_deref()?)?;
        let summary = row.summary?;
        let ratio = |a: Duration, b: Duration| (!b.is_zero()).then(|| ms(a) / ms(b));
        Some(Ratios {
            min: ratio(summary.min, floor.min)?,
            p50: ratio(summary.p50, floor.p50)?,
            p99: ratio(summary.p99, floor.p99)?,
        })
    }

    fn scalar_ratio(&self, row: &ScalarRow) -> Option<f64> {
        let floor = self.value(row.floor.as_deref()?)?;
        (floor != 0.0).then(|| row.value / floor)
    }

    /// The console table.
    #[must_use]
    pub(crate) fn table(&self) -> String {
        let mut out = String::new();
        let width = self
            .latency
            .iter()
            .map(|row| row.name.len())
            .chain(self.scalars.iter().map(|row| row.name.len()))
            .max()
            .unwrap_or(10)
            .max(10);
        let _ = writeln!(
            out,
            "{:<width$} {:>6} {:>10} {:>10} {:>10}   {:>7} {:>7} {:>7}  floor",
            "latency", "n", "min", "p50", "p99", "x min", "x p50", "x p99"
        );
        for row in &self.latency {
            let Some(summary) = row.summary else {
                let _ = writeln!(out, "{:<width$} {:>6}  (not measured)", row.name, 0);
                continue;
            };
            let ratios = self.latency_ratio(row);
            let ratio = |pick: fn(&Ratios) -> f64| {
                ratios
                    .as_ref()
                    .map_or_else(|| "-".to_owned(), |r| format!("{:.3}", pick(r)))
            };
            let _ = writeln!(
                out,
                "{:<width$} {:>6} {:>10} {:>10} {:>10}   {:>7} {:>7} {:>7}  {}",
                row.name,
                summary.count,
                human(summary.min),
                human(summary.p50),
                human(summary.p99),
                ratio(|r| r.min),
                ratio(|r| r.p50),
                ratio(|r| r.p99),
                row.floor.as_deref().unwrap_or(""),
            );
        }
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{:<width$} {:>14} {:>8}  floor",
            "figure", "value", "x floor"
        );
        for row in &self.scalars {
            let ratio = self
                .scalar_ratio(row)
                .map_or_else(|| "-".to_owned(), |r| format!("{r:.3}"));
            let _ = writeln!(
                out,
                "{:<width$} {:>14} {:>8}  {}",
                row.name,
                format!("{:.1} {}", row.value, row.unit),
                ratio,
                row.floor.as_deref().unwrap_or(""),
            );
        }
        if !self.targets.is_empty() {
            let _ = writeln!(out);
            let _ = writeln!(out, "targets (issue 9):");
            for target in &self.targets {
                let verdict = match target.met {
                    Some(true) => "MET    ",
                    Some(false) => "NOT MET",
                    None => "n/a    ",
                };
                let _ = writeln!(
                    out,
                    "  {verdict}  {}  (measured: {})",
                    target.target, target.measured
                );
            }
        }
        out
    }

    /// The JSON document written by `--json FILE`.
    #[must_use]
    pub(crate) fn json(&self) -> serde_json::Value {
        #[derive(Serialize)]
        struct LatencyJson<'a> {
            name: &'a str,
            floor: Option<&'a str>,
            #[serde(flatten)]
            summary: Option<SummaryMillis>,
            ratio: Option<Ratios>,
        }
        #[derive(Serialize)]
        struct ScalarJson<'a> {
            #[serde(flatten)]
            row: &'a ScalarRow,
            ratio: Option<f64>,
        }
        let latency: Vec<_> = self
            .latency
            .iter()
            .map(|row| LatencyJson {
                name: &row.name,
                floor: row.floor.as_deref(),
                summary: row.summary.map(|s| s.millis()),
                ratio: self.latency_ratio(row),
            })
            .collect();
        let scalars: Vec<_> = self
            .scalars
            .iter()
            .map(|row| ScalarJson {
                row,
                ratio: self.scalar_ratio(row),
            })
            .collect();
        serde_json::json!({
            "run": self.run,
            "latency": latency,
            "scalars": scalars,
            "targets": self.targets,
        })
    }
}

/// A sandboxd figure divided by its floor, at three points of the distribution.
#[derive(Debug, Clone, Copy, Serialize)]
struct Ratios {
    min: f64,
    p50: f64,
    p99: f64,
}

/// `123.4ms`, `56.7µs`: three significant figures are plenty for these latencies.
#[must_use]
pub(crate) fn human(duration: Duration) -> String {
    let micros = duration.as_secs_f64() * 1e6;
    if micros < 1000.0 {
        format!("{micros:.1}µs")
    } else if micros < 1e6 {
        format!("{:.2}ms", micros / 1e3)
    } else {
        format!("{:.3}s", micros / 1e6)
    }
}
