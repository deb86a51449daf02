//! Drift from the healthy reference: catches slow degradation that an adaptive baseline learns
//! as normal.
//!
//! A series first spends a *commissioning* period learning its healthy reference (mean and
//! spread of its readings, and how far a smoothed deviation from them wanders in healthy
//! operation). The reference is then frozen: readings are compared with what the series was
//! like when it was known to be healthy, not with what it was like a few minutes ago, so a
//! ramp cannot drag the reference along as it climbs. Afterwards the reference follows only
//! very slowly, and only while the series is plainly healthy (its smoothed deviation below half
//! the alarm level), so seasons and slow wear-in are followed but a fault is never learned.
//!
//! The statistic is an EWMA of the z-score against the reference (Roberts' EWMA chart): noise
//! averages out, a lasting shift of level or a steady climb adds up, and the alarm level sits
//! `margin` times beyond the largest smoothed excursion seen while commissioning, so it is
//! calibrated on the series' own healthy behaviour (its noise, its autocorrelation, its load
//! cycles) rather than on a textbook distribution.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{calibrate, Anomaly, FaultKind, SeriesDetector};
use crate::settings::Invalid;

/// `[detect.drift]`: the healthy-reference drift detector.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DriftConfig {
    /// Run the detector on every series.
    pub enabled: bool,
    /// Readings a series spends learning its healthy reference before it may report ...
    pub reference_readings: u32,
    /// ... and at least this much event time, so the reference spans the device's duty and
    /// load cycles, whatever its reporting rate.
    #[serde(with = "humantime_serde")]
    pub reference_for: Duration,
    /// Weight of the newest reading in the smoothed deviation (0 < lambda <= 1): smaller
    /// averages more readings (about 2/lambda), so it sees smaller shifts, a little later.
    pub lambda: f64,
    /// The alarm sits this many times beyond the largest smoothed deviation of commissioning.
    pub margin: f64,
    /// Half-life, in readings, of the reference's slow adaptation while healthy (0: frozen).
    pub adapt_half_life: f64,
}

impl Default for DriftConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            reference_readings: 360,
            reference_for: Duration::from_secs(24 * 3600),
            lambda: 0.1,
            margin: 2.0,
            adapt_half_life: 20_000.0,
        }
    }
}

impl DriftConfig {
    /// Checks the values, naming the offending key.
    pub fn validate(&self) -> Result<(), Invalid> {
        let key = |k: &str| format!("detect.drift.{k}");
        if !(self.lambda > 0.0 && self.lambda <= 1.0) {
            return Err(Invalid::new(key("lambda"), "must be in (0, 1]"));
        }
        if !(self.margin >= 1.0 && self.margin.is_finite()) {
            return Err(Invalid::new(key("margin"), "must be at least 1"));
        }
        if self.reference_readings < 20 {
            return Err(Invalid::new(key("reference_readings"), "must be at least 20"));
        }
        if !(self.adapt_half_life >= 0.0 && self.adapt_half_life.is_finite()) {
            return Err(Invalid::new(key("adapt_half_life"), "must be 0 (frozen) or a positive number of readings"));
        }
        Ok(())
    }
}

/// Commissioning readings kept as they are, at most: a short commissioning is replayed exactly;
/// a longer one is calibrated from its [`Excursions`], in constant memory.
const COMMISSIONING_KEPT: usize = 20_000;
/// The alarm level is never below this many standard deviations of the smoothed statistic of
/// independent noise: a perfectly smooth commissioning does not make the detector hair-trigger.
const MIN_SIGMAS: f64 = 4.0;

/// Commissioning's smoothed excursions, in constant memory, for any reference mean.
///
/// The smoothed deviation after reading `t` is `e_t = (L_t - m·W_t) / s`, where `L_t` is the
/// EWMA of the readings started at 0, `W_t = 1 - (1-λ)^t` its total weight, and `m`, `s` the
/// reference mean and spread, which are known only at the end. The largest `|e_t|` over
/// commissioning is then the largest of `L - m·W` over the points `(W_t, L_t)`, and of its
/// negative: both are reached at a vertex of the points' convex hull, which is all that is
/// kept. `W_t` only grows and stops changing once `(1-λ)^t` vanishes (after about `37/λ`
/// readings), so each hull holds at most that many vertices, usually a handful.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Excursions {
    /// Readings summarised.
    count: u64,
    /// The first reading: levels are kept relative to it, for precision.
    origin: f64,
    level: f64,
    weight: f64,
    min: f64,
    max: f64,
    /// Upper and lower convex hull of `(W_t, L_t)` from the end of the burn-in on, by `W`.
    upper: Vec<[f64; 2]>,
    lower: Vec<[f64; 2]>,
}

impl Excursions {
    fn push(&mut self, value: f64, lambda: f64, burn_in: usize) {
        if self.count == 0 {
            self.origin = value;
            (self.min, self.max) = (value, value);
        }
        (self.min, self.max) = (self.min.min(value), self.max.max(value));
        self.level += lambda * ((value - self.origin) - self.level);
        self.weight += lambda * (1.0 - self.weight);
        if self.count >= burn_in as u64 {
            let p = [self.weight, self.level];
            hull_push(&mut self.upper, p, 1.0);
            hull_push(&mut self.lower, p, -1.0);
        }
        self.count += 1;
    }

    /// Whether it summarises all of `n` (> 0) readings: not an empty one, nor one restored from
    /// a state that kept the readings themselves.
    fn covers(&self, n: u64) -> bool {
        self.count > 0 && self.count == n
    }

    /// The last smoothed deviation and the largest one after the burn-in, against `mean`
    /// and `spread`.
    fn against(&self, mean: f64, spread: f64) -> (f64, f64) {
        let m = mean - self.origin;
        let dev = |p: &[f64; 2]| p[1] - m * p[0];
        let high = self.upper.iter().map(dev).fold(f64::NEG_INFINITY, f64::max);
        let low = self.lower.iter().map(dev).fold(f64::INFINITY, f64::min);
        let widest = high.max(-low).max(0.0) / spread;
        ((self.level - m * self.weight) / spread, widest)
    }
}

/// Adds `p` (its `x` not below any vertex's) to a monotone-chain hull: `side` 1 keeps the
/// upper hull, -1 the lower one.
fn hull_push(hull: &mut Vec<[f64; 2]>, p: [f64; 2], side: f64) {
    if let Some(last) = hull.last() {
        if p[0] <= last[0] {
            // Same weight (it stopped changing): only the more extreme level counts.
            if side * (p[1] - last[1]) <= 0.0 {
                return;
            }
            hull.pop();
        }
    }
    while let [.., a, b] = hull[..] {
        let cross = (b[0] - a[0]) * (p[1] - a[1]) - (b[1] - a[1]) * (p[0] - a[0]);
        if side * cross >= 0.0 {
            hull.pop();
        } else {
            break;
        }
    }
    hull.push(p);
}

/// The frozen healthy reference of a series.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Reference {
    pub mean: f64,
    pub spread: f64,
    /// Smoothed |z| at which the detector alarms.
    pub threshold: f64,
    /// Lowest and highest reading of commissioning: the healthy envelope.
    pub min: f64,
    pub max: f64,
}

/// Drift detector state of one series (serialisable, so it survives a restart).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Drift {
    lambda: f64,
    margin: f64,
    reference_readings: u32,
    #[serde(default)]
    reference_for_ms: i64,
    /// Event time of the first commissioning reading.
    #[serde(default)]
    first_ts: Option<i64>,
    adapt_alpha: f64,
    min_relative_spread: f64,
    /// The first commissioning readings, while the EWMA's burn-in still depends on how many
    /// there will be (summarised into `excursions` after that, and cleared). Most of a stored
    /// state while it lasts, so it is stored compressed.
    #[serde(default, with = "super::packed")]
    commissioning: Vec<f64>,
    /// Every commissioning reading's smoothed excursion, summarised.
    #[serde(default)]
    excursions: Excursions,
    n: u64,
    sum: f64,
    sum_sq: f64,
    reference: Option<Reference>,
    /// Sensitivity factor from false alarms (applied to the threshold).
    #[serde(default = "one")]
    widening: f64,
    ewma: f64,
    last_score: f64,
}

fn one() -> f64 {
    1.0
}

impl Drift {
    pub fn new(config: &DriftConfig, min_relative_spread: f64) -> Drift {
        let adapt_alpha =
            if config.adapt_half_life > 0.0 { 1.0 - 0.5f64.powf(1.0 / config.adapt_half_life) } else { 0.0 };
        Drift {
            lambda: config.lambda.clamp(1e-3, 1.0),
            margin: config.margin.max(1.0),
            reference_readings: config.reference_readings.max(20),
            reference_for_ms: config.reference_for.as_millis() as i64,
            first_ts: None,
            adapt_alpha,
            min_relative_spread,
            commissioning: Vec::new(),
            excursions: Excursions::default(),
            n: 0,
            sum: 0.0,
            sum_sq: 0.0,
            reference: None,
            widening: 1.0,
            ewma: 0.0,
            last_score: 0.0,
        }
    }

    /// The healthy reference, once commissioning is over.
    pub fn reference(&self) -> Option<&Reference> {
        self.reference.as_ref()
    }

    /// Takes a reading known to be healthy (commissioning or a recorded healthy run).
    pub fn learn(&mut self, value: f64) {
        if self.reference.is_some() {
            return;
        }
        self.n += 1;
        self.sum += value;
        self.sum_sq += value * value;
        let (lambda, burn_in) = (self.lambda, self.burn_in());
        if self.excursions.covers(self.n - 1) {
            self.excursions.push(value, lambda, burn_in);
        } else if self.commissioning.len() < COMMISSIONING_KEPT {
            if self.commissioning.is_empty() {
                self.commissioning.reserve_exact(4 * burn_in);
            }
            self.commissioning.push(value);
            if self.commissioning.len() as u64 == self.n && self.n >= 4 * burn_in as u64 {
                // From here on the burn-in is fixed: the excursions alone calibrate exactly.
                for v in std::mem::take(&mut self.commissioning) {
                    self.excursions.push(v, lambda, burn_in);
                }
            }
        }
    }

    /// Readings the EWMA needs to forget its start, at most (a quarter of a short commissioning).
    fn burn_in(&self) -> usize {
        (2.0 / self.lambda) as usize
    }

    /// Ends commissioning: fixes the reference and calibrates the alarm level on the readings
    /// seen. Does nothing before a few readings were learned.
    pub fn freeze(&mut self) {
        if self.reference.is_some() || self.n < 10 {
            return;
        }
        let n = self.n as f64;
        let mean = self.sum / n;
        let var = (self.sum_sq / n - mean * mean).max(0.0) * n / (n - 1.0);
        let spread = var.sqrt().max(mean.abs() * self.min_relative_spread).max(1e-9);
        let (e, widest, (min, max)) = if !self.excursions.covers(self.n) {
            // Replay commissioning against the final reference; skip the EWMA's burn-in.
            let burn_in = self.burn_in().min(self.commissioning.len() / 4);
            let mut e = 0.0;
            let mut widest = 0.0f64;
            for (i, v) in self.commissioning.iter().enumerate() {
                e += self.lambda * ((v - mean) / spread - e);
                if i >= burn_in {
                    widest = widest.max(e.abs());
                }
            }
            let range = self
                .commissioning
                .iter()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
            (e, widest, range)
        } else {
            let (e, widest) = self.excursions.against(mean, spread);
            (e, widest, (self.excursions.min, self.excursions.max))
        };
        let noise_sigma = (self.lambda / (2.0 - self.lambda)).sqrt();
        let threshold = (self.margin * widest).max(MIN_SIGMAS * noise_sigma);
        self.reference = Some(Reference { mean, spread, threshold, min, max });
        self.ewma = e;
        self.commissioning = Vec::new();
        self.excursions = Excursions::default();
    }

    /// The reading's z-score against the reference and the smoothed deviation after it.
    fn smoothed(&mut self, r: &Reference, value: f64) -> (f64, f64) {
        let z = (value - r.mean) / r.spread;
        // Bounded per step, so one wild reading (a spike is the baseline's business) moves the
        // smoothed deviation by at most a few thresholds.
        let step = z.clamp(-20.0 * r.threshold, 20.0 * r.threshold);
        self.ewma += self.lambda * (step - self.ewma);
        (z, self.ewma)
    }
}

impl SeriesDetector for Drift {
    fn observe(&mut self, ts: i64, value: f64) -> Option<Anomaly> {
        if self.reference.is_none() {
            self.learn(value);
            let since = ts - *self.first_ts.get_or_insert(ts);
            if self.n >= u64::from(self.reference_readings) && since >= self.reference_for_ms {
                self.freeze();
            }
            return None;
        }
        let r = self.reference?;
        let (z, e) = self.smoothed(&r, value);
        let threshold = r.threshold * self.widening;
        let ratio = e.abs() / threshold;
        self.last_score = calibrate(ratio);
        if ratio < 0.5 && self.adapt_alpha > 0.0 {
            // Plainly healthy: let the reference follow very slowly.
            if let Some(r) = self.reference.as_mut() {
                r.mean += self.adapt_alpha * (value - r.mean);
            }
        }
        (ratio > 1.0).then(|| {
            Anomaly::new(FaultKind::Drift, "drift", ts, value, self.last_score)
                .with_level(r.mean, r.spread, z)
                .with_bound(r.mean + e.signum() * threshold * r.spread)
                .with_history(self.n)
        })
    }

    fn learn(&mut self, _ts: i64, value: f64) {
        Drift::learn(self, value);
    }

    fn end_learning(&mut self) {
        self.freeze();
    }

    fn desensitize(&mut self, factor: f64) {
        self.widening *= factor.max(1.0);
    }

    fn last_score(&self) -> f64 {
        self.last_score
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use rand_distr::{Distribution, Normal};

    /// The defaults, with commissioning counted in readings only (the tests' clock is 1 ms).
    fn per_reading() -> DriftConfig {
        DriftConfig { reference_for: Duration::ZERO, ..DriftConfig::default() }
    }

    fn noise(seed: u64) -> impl FnMut() -> f64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let n = Normal::new(0.0, 1.0).unwrap_or_else(|_| unreachable!());
        move || n.sample(&mut rng)
    }

    #[test]
    fn healthy_noise_with_a_load_cycle_stays_quiet() {
        let mut d = Drift::new(&per_reading(), 0.0);
        let mut n = noise(1);
        for i in 0..20_000 {
            let load = (i as f64 / 60.0 * std::f64::consts::TAU).sin();
            let v = 3.0 + 0.2 * load + 0.1 * n();
            assert!(d.observe(i, v).is_none(), "false alarm at {i}");
        }
    }

    #[test]
    fn a_slow_ramp_is_flagged_early_in_its_climb() {
        // Vibration at 3 mm/s climbs to 15 mm/s over 2 h at one reading per 10 s (720 readings).
        let mut d = Drift::new(&per_reading(), 0.0);
        let mut n = noise(2);
        for i in 0..1000 {
            d.observe(i, 3.0 + 0.3 * n());
        }
        let mut flagged = None;
        for k in 0..720 {
            let v = 3.0 + 12.0 * k as f64 / 720.0 + 0.3 * n();
            if d.observe(1000 + k, v).is_some() {
                flagged = Some(k);
                break;
            }
        }
        let k = flagged.expect("the ramp was never flagged");
        assert!(k < 72, "flagged only after {k} of 720 readings of the climb");
    }

    #[test]
    fn the_reference_is_not_dragged_by_a_ramp() {
        let mut d = Drift::new(&per_reading(), 0.0);
        let mut n = noise(3);
        for i in 0..400 {
            d.observe(i, 50.0 + n());
        }
        for k in 0..5000 {
            d.observe(400 + k, 50.0 + k as f64 * 0.01 + n());
        }
        let r = d.reference().copied().expect("frozen");
        assert!((r.mean - 50.0).abs() < 0.5, "reference followed the ramp to {}", r.mean);
        assert!(d.observe(10_000, 100.0).is_some(), "still alarming at the top of the ramp");
    }

    #[test]
    fn learning_covers_a_whole_healthy_recording_and_state_round_trips() {
        let mut d = Drift::new(&per_reading(), 0.0);
        let mut n = noise(4);
        for i in 0..1000 {
            SeriesDetector::learn(&mut d, i, 10.0 + n());
        }
        assert!(d.reference().is_none(), "learning does not end by itself");
        d.end_learning();
        let r = d.reference().copied().expect("frozen");
        assert!((r.mean - 10.0).abs() < 0.2 && (r.spread - 1.0).abs() < 0.2, "{r:?}");
        let json = serde_json::to_string(&d).unwrap_or_default();
        let mut back: Drift = serde_json::from_str(&json).expect("round trip");
        // JSON keeps f64 to within the last bit, not bit for bit.
        let b = back.reference().copied().expect("restored reference");
        assert!((b.mean - r.mean).abs() < 1e-12 && (b.threshold - r.threshold).abs() < 1e-12, "{b:?}");
        let (x, y) = (d.observe(1001, 14.0), back.observe(1001, 14.0));
        assert_eq!(x.is_some(), y.is_some());
        assert!((d.last_score() - back.last_score()).abs() < 1e-9);
    }

    /// The alarm level as a full replay of every commissioning reading computes it.
    fn replayed_threshold(values: &[f64], config: &DriftConfig) -> f64 {
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        let var = (values.iter().map(|v| v * v).sum::<f64>() / n - mean * mean).max(0.0) * n / (n - 1.0);
        let spread = var.sqrt().max(1e-9);
        let burn_in = ((2.0 / config.lambda) as usize).min(values.len() / 4);
        let (mut e, mut widest) = (0.0f64, 0.0f64);
        for (i, v) in values.iter().enumerate() {
            e += config.lambda * ((v - mean) / spread - e);
            if i >= burn_in {
                widest = widest.max(e.abs());
            }
        }
        (config.margin * widest).max(MIN_SIGMAS * (config.lambda / (2.0 - config.lambda)).sqrt())
    }

    #[test]
    fn calibration_in_constant_memory_matches_a_full_replay() {
        let mut n = noise(5);
        let shapes: Vec<(&str, Vec<f64>)> = vec![
            ("noise", (0..5000).map(|_| 3.0 + 0.1 * n()).collect()),
            ("load cycle", (0..5000).map(|i| 20.0 + (i as f64 / 90.0).sin() + 0.2 * n()).collect()),
            ("settling ramp", (0..3000).map(|i| 50.0 + 5.0 * (-(i as f64) / 400.0).exp() + n()).collect()),
            ("large level, tiny noise", (0..3000).map(|_| 1.0e6 + 0.01 * n()).collect()),
            ("short", (0..60).map(|_| 7.0 + n()).collect()),
        ];
        for lambda in [0.1, 0.02, 1.0] {
            let config = DriftConfig { lambda, ..per_reading() };
            for (name, values) in &shapes {
                let mut d = Drift::new(&config, 0.0);
                for (i, v) in values.iter().enumerate() {
                    SeriesDetector::learn(&mut d, i as i64, *v);
                }
                let kept = serde_json::to_vec(&d).map(|j| j.len()).unwrap_or(usize::MAX);
                d.end_learning();
                let got = d.reference().map(|r| r.threshold).expect("frozen");
                let want = replayed_threshold(values, &config);
                assert!((got - want).abs() <= 1e-6 * want, "{name}, lambda {lambda}: {got} vs {want}");
                if values.len() > 1000 {
                    assert!(kept < 16 * 1024, "{name}, lambda {lambda}: {kept} bytes kept while commissioning");
                }
            }
        }
    }
}
