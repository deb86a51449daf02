//! Novelty: a series drawing a shape, level or extreme it has not drawn before.
//!
//! Four causal views of one series, each cheap enough for the hot path:
//!
//! - **A, shape**: k-nearest-neighbour distance of the last `lag` readings to the lag vectors of
//!   the last `memory` readings, turned into a tail probability by a [`Likelihood`] step.
//! - **B, slow shape**: the same on means of blocks of 4 readings, which sees slower patterns
//!   and is less distracted by reading-to-reading noise.
//! - **C, level shift**: the mean of the last 20 readings against the 500 before them.
//! - **D, new extreme**: a reading beyond everything seen so far by more than a margin of the range.
//!
//! It fires when A or B reaches the threshold (in `-log10 p`), or on C or D; after firing it stays
//! quiet for a refractory period, because the evidence has already been accumulated: one
//! report per episode is what a technician wants. Scores of readings inside the refractory period
//! are still computed and reported, only the anomaly is held back.
//!
//! The parameters were chosen on the Numenta Anomaly Benchmark (see `BENCHMARKS.md`).

use std::collections::VecDeque;

use super::config::NoveltyConfig;
use super::knn::LagKnn;
use super::likelihood::{Likelihood, WindowStats};
use super::{calibrate, Anomaly, FaultKind, SeriesDetector};

/// Readings averaged into one block for view B.
const BLOCK: usize = 4;
/// Raw-score steps view A's likelihood averages.
const ROW_SHORT: usize = 5;
/// Reference steps the likelihoods need (after warm-up) before they report anything.
const ROW_MIN_HISTORY: u64 = 50;
const BLOCK_MIN_HISTORY: u64 = 5;
/// Level shift: recent window and the reference window before it, in readings.
const LEVEL_RECENT: usize = 20;
const LEVEL_REFERENCE: usize = 500;
/// Readings before the level-shift view speaks.
const LEVEL_MIN_READINGS: u64 = (LEVEL_RECENT + 20) as u64;

/// Streaming novelty detector over one series (see the module docs).
pub struct Novelty {
    config: NoveltyConfig,
    /// Readings seen.
    seen: u64,
    min: f64,
    max: f64,
    row_knn: LagKnn,
    row_likelihood: Likelihood,
    block: Vec<f64>,
    block_knn: LagKnn,
    block_likelihood: Likelihood,
    level_recent: VecDeque<f64>,
    /// Readings on their way from the recent window into the reference window.
    level_delay: VecDeque<f64>,
    level_reference: WindowStats,
    /// Index of the last reading that fired.
    last_alert: Option<u64>,
    last_score: f64,
}

/// What the detector computed for one reading.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NoveltyScore {
    /// `max(A, B)` in `-log10 p`.
    pub evidence: f64,
    /// Signed level-shift z (C), 0 before it has enough readings.
    pub level_z: f64,
    /// Excess beyond the previous extremes, as a fraction of the previous range (D).
    pub excess: f64,
    /// Whether the detector fired (after the refractory period).
    pub fired: bool,
}

impl Novelty {
    pub fn new(config: &NoveltyConfig) -> Novelty {
        let c = config;
        let block_memory = (c.memory / 2).max(1);
        Novelty {
            config: c.clone(),
            seen: 0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            row_knn: LagKnn::new(c.lag, c.memory, c.neighbours, c.lag),
            row_likelihood: Likelihood::new(ROW_SHORT, c.memory, c.warmup_readings, ROW_MIN_HISTORY),
            block: Vec::with_capacity(BLOCK),
            block_knn: LagKnn::new(c.lag, block_memory, c.neighbours, c.lag),
            block_likelihood: Likelihood::new(1, c.memory / BLOCK, c.warmup_readings / BLOCK as u64, BLOCK_MIN_HISTORY),
            level_recent: VecDeque::with_capacity(LEVEL_RECENT + 1),
            level_delay: VecDeque::with_capacity(LEVEL_RECENT + 1),
            level_reference: WindowStats::new(LEVEL_REFERENCE),
            last_alert: None,
            last_score: 0.0,
        }
    }

    /// Scores the next reading; the pure detector, without anomaly reporting.
    pub fn score(&mut self, x: f64) -> NoveltyScore {
        let t = self.seen;
        self.seen += 1;
        let c = &self.config;
        // D: excess over the range of the readings before this one.
        let mut excess = 0.0;
        if t > 0 {
            let range = (self.max - self.min).max(1e-12);
            excess = 0.0f64.max(x - self.max).max(self.min - x) / range;
        }
        self.min = self.min.min(x);
        self.max = self.max.max(x);
        let new_extreme = t >= c.warmup_readings && excess > c.new_extreme_margin;
        // A
        let row = self.row_likelihood.update(self.row_knn.update(x));
        // B, at the end of each block
        let mut block = 0.0;
        self.block.push(x);
        if self.block.len() == BLOCK {
            let mean = self.block.iter().sum::<f64>() / BLOCK as f64;
            self.block.clear();
            block = self.block_likelihood.update(self.block_knn.update(mean));
        }
        // C
        self.level_recent.push_back(x);
        if self.level_recent.len() > LEVEL_RECENT {
            self.level_recent.pop_front();
        }
        self.level_delay.push_back(x);
        if self.level_delay.len() > LEVEL_RECENT {
            if let Some(old) = self.level_delay.pop_front() {
                self.level_reference.push(old);
            }
        }
        let mut level_z = 0.0;
        if t >= LEVEL_MIN_READINGS {
            if let Some((mean, var)) = self.level_reference.mean_var() {
                let recent = self.level_recent.iter().sum::<f64>() / self.level_recent.len() as f64;
                let sd = var.sqrt().max(1e-3 * (self.max - self.min).max(1e-12));
                level_z = (recent - mean) / sd;
            }
        }
        let level_shift = level_z.abs() >= c.level_shift_z;
        let evidence = row.max(block);
        let wants = evidence >= c.threshold || new_extreme || level_shift;
        let rested = match self.last_alert {
            Some(last) => t - last > c.refractory_readings,
            None => true,
        };
        let fired = wants && rested;
        if fired {
            self.last_alert = Some(t);
        }
        let mut score = calibrate(evidence / c.threshold);
        if t >= LEVEL_MIN_READINGS {
            score = score.max(calibrate(level_z.abs() / c.level_shift_z));
        }
        if t >= c.warmup_readings && c.new_extreme_margin > 0.0 {
            score = score.max(calibrate(excess / c.new_extreme_margin));
        }
        self.last_score = score;
        NoveltyScore { evidence, level_z, excess, fired }
    }

    /// The lowest and highest of the recent readings before the current one.
    fn recent_range(&self) -> (f64, f64) {
        let before_current = self.level_recent.len().saturating_sub(1);
        self.level_reference
            .values()
            .chain(self.level_recent.iter().take(before_current).copied())
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)))
    }
}

impl SeriesDetector for Novelty {
    fn observe(&mut self, ts: i64, value: f64) -> Option<Anomaly> {
        if !value.is_finite() {
            return None;
        }
        let s = self.score(value);
        if !s.fired {
            return None;
        }
        let (lo, hi) = self.recent_range();
        let (mid, half) = if lo <= hi { ((lo + hi) / 2.0, (hi - lo) / 2.0) } else { (value, 0.0) };
        Some(
            Anomaly::new(FaultKind::Pattern, "novelty", ts, value, self.last_score)
                .with_level(mid, half, s.level_z)
                .with_bound(10f64.powf(-s.evidence))
                .with_history(self.row_knn.stored() as u64),
        )
    }

    fn last_score(&self) -> f64 {
        self.last_score
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic noisy daily cycle, 288 readings a day.
    fn series(n: usize) -> Vec<f64> {
        let mut state: u64 = 42;
        (0..n)
            .map(|i| {
                state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                let noise = (state >> 11) as f64 / (1u64 << 53) as f64 - 0.5;
                10.0 + 3.0 * (i as f64 * std::f64::consts::TAU / 288.0).sin() + 0.3 * noise
            })
            .collect()
    }

    fn scores(xs: &[f64]) -> Vec<NoveltyScore> {
        let mut d = Novelty::new(&NoveltyConfig::default());
        xs.iter().map(|&x| d.score(x)).collect()
    }

    /// The reference implementation (a Python prototype, the spec of this port) fires at rows
    /// 3001, 3102, 3203 and 5500 of this series: a level shift that lasts 200 rows (re-reported
    /// after each refractory period), a change of period that stays below the threshold, and a
    /// spike. The series uses only exact arithmetic so both implementations see the same numbers.
    #[test]
    fn fires_on_the_same_rows_as_the_reference_implementation() {
        let mut state: u64 = 42;
        let xs: Vec<f64> = (0..6000usize)
            .map(|i| {
                state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                let noise = (state >> 11) as f64 / (1u64 << 53) as f64 - 0.5;
                let period = if (4500..4600).contains(&i) { 144 } else { 288 };
                let tri = ((i % period) as f64 / (period as f64 / 2.0) - 1.0).abs();
                let mut x = 10.0 + 3.0 * tri + 0.3 * noise;
                if (3000..3200).contains(&i) {
                    x += 2.0;
                }
                if i == 5500 {
                    x += 9.0;
                }
                x
            })
            .collect();
        let fired: Vec<usize> = scores(&xs).iter().enumerate().filter(|(_, s)| s.fired).map(|(i, _)| i).collect();
        assert_eq!(fired, vec![3001, 3102, 3203, 5500]);
    }

    #[test]
    fn future_readings_cannot_change_past_scores() {
        let mut xs = series(4000);
        xs[3000] += 8.0;
        let full = scores(&xs);
        let prefix = scores(&xs[..2500]);
        assert_eq!(&full[..2500], &prefix[..]);
    }

    #[test]
    fn quiet_on_a_clean_cycle_and_fires_once_on_a_spike() {
        let mut xs = series(4000);
        for x in &mut xs[3000..3006] {
            *x += 6.0;
        }
        let s = scores(&xs);
        let fired: Vec<usize> = s.iter().enumerate().filter(|(_, s)| s.fired).map(|(i, _)| i).collect();
        assert_eq!(fired, vec![3000], "{fired:?}");
    }

    #[test]
    fn reports_a_calibrated_pattern_anomaly_with_its_context() {
        let mut xs = series(3200);
        xs[3100] = 30.0;
        let mut d = Novelty::new(&NoveltyConfig::default());
        let hits: Vec<Anomaly> = xs.iter().enumerate().filter_map(|(i, &x)| d.observe(i as i64 * 300_000, x)).collect();
        assert_eq!(hits.len(), 1, "{hits:?}");
        let a = &hits[0];
        assert_eq!((a.kind, a.ts), (FaultKind::Pattern, 3100 * 300_000));
        assert!(a.score > 0.5 && a.score <= 1.0, "{a:?}");
        let (mid, half) = (a.expected.unwrap_or_default(), a.spread.unwrap_or_default());
        assert!((mid - half) > 6.0 && (mid + half) < 14.0, "recent range {a:?}");
        assert_eq!(a.history, Some(2000));
    }

    #[test]
    fn the_refractory_period_holds_back_anomalies_but_not_scores() {
        let mut xs = series(3400);
        xs[3000] = 30.0;
        xs[3050] = 60.0;
        let s = scores(&xs);
        assert!(s[3000].fired && !s[3050].fired);
        assert!(s[3050].excess > 0.5, "the second spike is still scored: {:?}", s[3050]);
    }
}
