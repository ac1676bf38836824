//! Latency samples and their summary (min / p50 / p99 / max / mean), with nearest-rank
//! percentiles so every reported figure is a latency that was actually observed.

use std::time::Duration;

use serde::Serialize;

/// Summary of one series of latencies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Summary {
    pub count: usize,
    pub min: Duration,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
    pub mean: Duration,
}

impl Summary {
    /// `None` for an empty series: a figure that was not measured is reported as missing, never 0.
    #[must_use]
    pub(crate) fn of(samples: &[Duration]) -> Option<Self> {
        let mut sorted = samples.to_vec();
        sorted.sort_unstable();
        let (&min, &max) = (sorted.first()?, sorted.last()?);
        let total: Duration = sorted.iter().sum();
        let count = sorted.len();
        // Lossless for any realistic sample count; saturate rather than panic on absurd ones.
        let mean = total / u32::try_from(count).unwrap_or(u32::MAX);
        Some(Self {
            count,
            min,
            p50: percentile(&sorted, 50.0)?,
            p99: percentile(&sorted, 99.0)?,
            max,
            mean,
        })
    }

    /// The figures in milliseconds, for the JSON output.
    #[must_use]
    pub(crate) fn millis(&self) -> SummaryMillis {
        SummaryMillis {
            count: self.count,
            min_ms: ms(self.min),
            p50_ms: ms(self.p50),
            p99_ms: ms(self.p99),
            max_ms: ms(self.max),
            mean_ms: ms(self.mean),
        }
    }
}

/// [`Summary`] as fractional milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub(crate) struct SummaryMillis {
    pub count: usize,
    pub min_ms: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

/// Fractional milliseconds.
#[must_use]
pub(crate) fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

/// Nearest-rank percentile of an ascending series: the smallest sample with at least `p`% of the
/// samples at or below it. `None` for an empty series or `p` outside 0..=100.
#[must_use]
pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() || !(0.0..=100.0).contains(&p) {
        return None;
    }
    let n = sorted.len();
    // rank = ceil(p/100 * n), at least 1; computed in f64 (exact for the counts used here).
    #[allow(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss
    )]
    let rank = ((p / 100.0) * n as f64).ceil() as usize;
    sorted.get(rank.clamp(1, n) - 1).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn millis(values: &[u64]) -> Vec<Duration> {
        values.iter().map(|v| Duration::from_millis(*v)).collect()
    }

    #[test]
    fn nearest_rank_percentiles() {
        let sorted = millis(&(1..=100).collect::<Vec<_>>());
        assert_eq!(percentile(&sorted, 50.0), Some(Duration::from_millis(50)));
        assert_eq!(percentile(&sorted, 99.0), Some(Duration::from_millis(99)));
        assert_eq!(percentile(&sorted, 100.0), Some(Duration::from_millis(100)));
        assert_eq!(percentile(&sorted, 0.0), Some(Duration::from_millis(1)));
        // Few samples: p99 is the largest, p50 the lower middle (nearest rank, no interpolation).
        let few = millis(&[10, 20, 30, 40]);
        assert_eq!(percentile(&few, 50.0), Some(Duration::from_millis(20)));
        assert_eq!(percentile(&few, 99.0), Some(Duration::from_millis(40)));
        let one = millis(&[7]);
        assert_eq!(percentile(&one, 50.0), Some(Duration::from_millis(7)));
        assert_eq!(percentile(&one, 99.0), Some(Duration::from_millis(7)));
    }

    #[test]
    fn out_of_range_or_empty_is_none() {
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&millis(&[1]), 101.0), None);
        assert_eq!(percentile(&millis(&[1]), -1.0), None);
        assert_eq!(percentile(&millis(&[1]), f64::NAN), None);
        assert_eq!(Summary::of(&[]), None);
    }

    #[test]
    fn summary_sorts_unordered_input() {
        let summary = Summary::of(&millis(&[30, 10, 20, 40, 50])).map(|s| {
            (
                s.count,
                s.min.as_millis(),
                s.p50.as_millis(),
                s.p99.as_millis(),
                s.max.as_millis(),
                s.mean.as_millis(),
            )
        });
        assert_eq!(summary, Some((5, 10, 30, 50, 50, 30)));
    }

    #[test]
    fn millis_are_fractional() {
        let summary = Summary::of(&[Duration::from_micros(1500)]).map(|s| s.millis());
        assert_eq!(summary.map(|m| m.p50_ms), Some(1.5));
    }
}
