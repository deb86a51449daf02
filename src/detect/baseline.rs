//! Streaming baseline: an exponentially weighted mean and spread, robust to the outliers it flags.

use serde::{Deserialize, Serialize};

use super::{calibrate, Anomaly, FaultKind, SeriesDetector};

/// Robust z-score over an EWMA baseline with a warm-up.
///
/// During warm-up the level and spread are plain running averages (every reading weighs the
/// same); afterwards they decay with the configured half-life. A reading is folded into the
/// baseline only after clipping it to the alarm band, so one spike cannot drag the baseline
/// along, while a lasting level change is still absorbed over a few half-lives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    warmup: u32,
    alpha: f64,
    threshold: f64,
    min_relative_spread: f64,
    n: u32,
    mean: f64,
    var: f64,
    /// Calibrated score of the last reading, reported also when it is below the threshold.
    last_score: f64,
}

impl Baseline {
    pub fn new(warmup: u32, half_life: f64, threshold: f64, min_relative_spread: f64) -> Baseline {
        Baseline {
            warmup: warmup.max(2),
            alpha: 1.0 - 0.5f64.powf(1.0 / half_life.max(1.0)),
            threshold,
            min_relative_spread,
            n: 0,
            mean: 0.0,
            var: 0.0,
            last_score: 0.0,
        }
    }

    fn spread(&self) -> f64 {
        self.var.sqrt().max(self.mean.abs() * self.min_relative_spread).max(1e-9)
    }

    /// The current level and spread, once warmed up.
    pub fn level(&self) -> Option<(f64, f64)> {
        (self.n >= self.warmup).then(|| (self.mean, self.spread()))
    }
}

impl SeriesDetector for Baseline {
    fn desensitize(&mut self, factor: f64) {
        self.threshold *= factor.max(1.0);
    }

    fn observe(&mut self, ts: i64, value: f64) -> Option<Anomaly> {
        if self.n < self.warmup {
            // Welford's running mean and variance, equal weights.
            self.n += 1;
            let d = value - self.mean;
            self.mean += d / f64::from(self.n);
            self.var += (d * (value - self.mean) - self.var) / f64::from(self.n);
            return None;
        }
        let spread = self.spread();
        let z = (value - self.mean) / spread;
        let band = self.threshold * spread;
        self.last_score = calibrate(z.abs() / self.threshold);
        let anomaly = (z.abs() > self.threshold).then(|| {
            Anomaly::new(FaultKind::Deviation, "baseline", ts, value, self.last_score).with_level(self.mean, spread, z)
        });
        let clipped = self.mean + (value - self.mean).clamp(-band, band);
        let d = clipped - self.mean;
        self.mean += self.alpha * d;
        self.var = (1.0 - self.alpha) * (self.var + self.alpha * d * d);
        anomaly
    }

    fn last_score(&self) -> f64 {
        self.last_score
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noisy(i: u32) -> f64 {
        // Deterministic noise in [-1, 1].
        ((i.wrapping_mul(2_654_435_761) >> 16) % 2001) as f64 / 1000.0 - 1.0
    }

    #[test]
    fn quiet_during_warmup_and_on_normal_noise() {
        let mut b = Baseline::new(30, 100.0, 5.0, 0.0);
        for i in 0..2000 {
            assert!(b.observe(i64::from(i), 70.0 + noisy(i)).is_none(), "false alarm at {i}");
        }
    }

    #[test]
    fn a_spike_is_flagged_and_does_not_move_the_baseline() {
        let mut b = Baseline::new(30, 100.0, 5.0, 0.0);
        for i in 0..500 {
            b.observe(i64::from(i), 70.0 + noisy(i));
        }
        let a = b.observe(500, 95.0).expect("spike");
        assert_eq!(a.kind, FaultKind::Deviation);
        assert!(a.score > 0.9 && a.z.unwrap() > 5.0, "{a:?}");
        let (level, _) = b.level().unwrap();
        assert!((level - 70.0).abs() < 1.0, "baseline dragged to {level}");
    }
}
