//! Latency samples and percentiles.

use std::time::Duration;

/// Latency samples in microseconds.
#[derive(Debug, Clone, Default)]
pub struct Latencies {
    samples_us: Vec<u64>,
    sorted: bool,
}

impl Latencies {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one sample.
    pub fn record(&mut self, d: Duration) {
        self.samples_us.push(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        self.sorted = false;
    }

    /// Adds every sample of `other`.
    pub fn merge(&mut self, other: Latencies) {
        self.samples_us.extend(other.samples_us);
        self.sorted = false;
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.samples_us.len()
    }

    /// No samples.
    pub fn is_empty(&self) -> bool {
        self.samples_us.is_empty()
    }

    fn sort(&mut self) {
        if !self.sorted {
            self.samples_us.sort_unstable();
            self.sorted = true;
        }
    }

    /// The `q`-quantile (0.0..=1.0, nearest rank), or `None` without samples.
    pub fn quantile(&mut self, q: f64) -> Option<Duration> {
        self.sort();
        let n = self.samples_us.len();
        if n == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * n as f64).ceil() as usize).clamp(1, n);
        self.samples_us.get(rank - 1).map(|us| Duration::from_micros(*us))
    }

    /// Largest sample.
    pub fn max(&mut self) -> Option<Duration> {
        self.quantile(1.0)
    }

    /// The `q`-quantile in milliseconds, three decimals (`-` without
    /// samples), for `RESULT` lines.
    pub fn quantile_ms(&mut self, q: f64) -> String {
        self.quantile(q).map_or("-".into(), |d| format!("{:.3}", d.as_secs_f64() * 1e3))
    }

    /// `p50 / p99 / max` in milliseconds, for reports.
    pub fn summary_ms(&mut self) -> String {
        let f = |d: Option<Duration>| d.map_or("-".to_string(), |d| format!("{:.2}", d.as_secs_f64() * 1e3));
        let (p50, p99, max) = (self.quantile(0.50), self.quantile(0.99), self.max());
        format!("p50 {} ms, p99 {} ms, max {} ms", f(p50), f(p99), f(max))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_nearest_rank() {
        let mut l = Latencies::new();
        assert_eq!(l.quantile(0.5), None);
        for i in 1..=100u64 {
            l.record(Duration::from_micros(i));
        }
        assert_eq!(l.quantile(0.5), Some(Duration::from_micros(50)));
        assert_eq!(l.quantile(0.99), Some(Duration::from_micros(99)));
        assert_eq!(l.max(), Some(Duration::from_micros(100)));
        assert_eq!(l.quantile(0.0), Some(Duration::from_micros(1)));
    }
}
