//! Anomaly likelihood: turns a raw score stream into a tail probability, so that one threshold
//! serves series whose raw scores live on very different scales.

use std::collections::VecDeque;

/// Smallest standard deviation assumed for the reference distribution. Raw scores are in units of
/// the series' range, so this keeps a perfectly regular series from alarming on rounding noise.
const STD_FLOOR: f64 = 0.01;

/// Mean and variance of the last `capacity` values pushed.
///
/// Running sums make each push O(1); they are recomputed from the window once per `capacity`
/// pushes so floating-point error cannot build up over a long-running series.
#[derive(Debug, Clone)]
pub struct WindowStats {
    capacity: usize,
    values: VecDeque<f64>,
    sum: f64,
    sum_sq: f64,
    since_recompute: usize,
}

impl WindowStats {
    pub fn new(capacity: usize) -> WindowStats {
        let capacity = capacity.max(1);
        WindowStats {
            capacity,
            values: VecDeque::with_capacity(capacity + 1),
            sum: 0.0,
            sum_sq: 0.0,
            since_recompute: 0,
        }
    }

    pub fn push(&mut self, v: f64) {
        self.values.push_back(v);
        self.sum += v;
        self.sum_sq += v * v;
        if self.values.len() > self.capacity {
            if let Some(old) = self.values.pop_front() {
                self.sum -= old;
                self.sum_sq -= old * old;
            }
        }
        self.since_recompute += 1;
        if self.since_recompute >= self.capacity {
            self.since_recompute = 0;
            self.sum = self.values.iter().sum();
            self.sum_sq = self.values.iter().map(|v| v * v).sum();
        }
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The values in the window, oldest first.
    pub fn values(&self) -> impl Iterator<Item = f64> + '_ {
        self.values.iter().copied()
    }

    /// Mean and (population) variance; `None` while empty.
    pub fn mean_var(&self) -> Option<(f64, f64)> {
        if self.values.is_empty() {
            return None;
        }
        let n = self.values.len() as f64;
        let mean = self.sum / n;
        Some((mean, (self.sum_sq / n - mean * mean).max(0.0)))
    }
}

/// Numenta-style anomaly likelihood over a raw score stream.
///
/// At each step the mean of the last `short` raw scores is compared with the distribution of those
/// means over the last `long` steps (the current one included). The result is `-log10` of the
/// Gaussian upper-tail probability: 0 for ordinary steps, 3.5 for a one-in-3000 step. It stays 0
/// for the first `warmup + min_history` steps, while the reference is still being learned.
#[derive(Debug, Clone)]
pub struct Likelihood {
    short: VecDeque<f64>,
    short_len: usize,
    reference: WindowStats,
    warmup: u64,
    min_history: u64,
    step: u64,
}

impl Likelihood {
    pub fn new(short: usize, long: usize, warmup: u64, min_history: u64) -> Likelihood {
        let short_len = short.max(1);
        Likelihood {
            short: VecDeque::with_capacity(short_len + 1),
            short_len,
            reference: WindowStats::new(long),
            warmup,
            min_history,
            step: 0,
        }
    }

    /// Takes the next raw score and returns `-log10(p)` of its short-window mean.
    pub fn update(&mut self, raw: f64) -> f64 {
        let step = self.step;
        self.step += 1;
        self.short.push_back(raw);
        if self.short.len() > self.short_len {
            self.short.pop_front();
        }
        let m = self.short.iter().sum::<f64>() / self.short.len() as f64;
        if step < self.warmup {
            return 0.0;
        }
        self.reference.push(m);
        if step < self.warmup + self.min_history {
            return 0.0;
        }
        let Some((mean, var)) = self.reference.mean_var() else { return 0.0 };
        let sd = var.sqrt().max(STD_FLOOR);
        -upper_tail((m - mean) / sd).max(1e-300).log10()
    }
}

/// Upper-tail probability of the standard normal distribution, `Q(z) = erfc(z / √2) / 2`.
pub fn upper_tail(z: f64) -> f64 {
    0.5 * libm::erfc(z / std::f64::consts::SQRT_2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upper_tail_matches_known_values() {
        // Q(z) from Python's 0.5 * math.erfc(z / sqrt(2)).
        for (z, want) in [
            (0.0, 0.5),
            (1.0, 0.158_655_253_931_457_05),
            (3.5, 2.326_290_790_355_250_4e-4),
            (8.0, 6.220_960_574_271_819e-16),
        ] {
            let got = upper_tail(z);
            assert!(((got - want) / want).abs() < 1e-12, "Q({z}) = {got}, want {want}");
        }
    }

    #[test]
    fn window_stats_forget_old_values_and_do_not_drift() {
        let mut w = WindowStats::new(3);
        for v in [100.0, 1.0, 2.0, 3.0] {
            w.push(v);
        }
        let (mean, var) = w.mean_var().unwrap_or_default();
        assert!((mean - 2.0).abs() < 1e-12 && (var - 2.0 / 3.0).abs() < 1e-12, "{mean} {var}");
        let mut long = WindowStats::new(10);
        for i in 0..100_000 {
            long.push(1e3 + f64::from(i % 7) + 0.1);
        }
        let (_, var) = long.mean_var().unwrap_or_default();
        let exact: f64 = {
            let tail: Vec<f64> = (99_990..100_000).map(|i| f64::from(i % 7) + 0.1).collect();
            let m = tail.iter().sum::<f64>() / 10.0;
            tail.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / 10.0
        };
        assert!((var - exact).abs() < 1e-6, "{var} vs {exact}");
    }

    #[test]
    fn likelihood_is_quiet_while_warming_up_and_loud_on_a_jump() {
        let mut l = Likelihood::new(1, 200, 10, 5);
        for i in 0..15 {
            assert_eq!(l.update(1.0 + f64::from(i % 3) * 0.01), 0.0, "step {i} is warm-up");
        }
        let mut last = 0.0;
        for i in 0..300 {
            last = l.update(1.0 + f64::from(i % 3) * 0.01);
        }
        assert!(last < 1.0, "ordinary step scored {last}");
        let jump = l.update(2.0);
        assert!(jump > 10.0, "jump scored {jump}");
    }
}
