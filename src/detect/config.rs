//! `[detect]`: the streaming detectors of every series.

use std::time::Duration;

use serde::Deserialize;

use crate::model::ModelsConfig;
use crate::settings::{bad, Invalid};

/// A fixed limit for one metric (any device), or for one device's metric.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitConfig {
    pub metric: String,
    /// Only this device; absent means every device.
    pub device: Option<String>,
    pub min: Option<f64>,
    pub max: Option<f64>,
}

/// Streaming detectors.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectConfig {
    /// Readings a series needs before its baseline may raise anomalies.
    pub warmup_readings: u32,
    /// Half-life of the baseline, in readings.
    pub baseline_half_life: f64,
    /// Deviation, in robust standard deviations, above which a reading is anomalous.
    pub z_threshold: f64,
    /// Smallest spread the baseline assumes, relative to its level, so a near-constant series
    /// does not alarm on noise in the last digit.
    pub min_relative_spread: f64,
    /// A series that repeats the same value this long is reported as stuck.
    #[serde(with = "humantime_serde")]
    pub flatline_after: Duration,
    /// ... and at least this many identical readings in a row.
    pub flatline_readings: u32,
    pub limits: Vec<LimitConfig>,
    /// Run the baseline (z-score) detector on every series.
    pub baseline: bool,
    /// Run the flatline (stuck sensor) detector on every series.
    pub flatline: bool,
    /// Drift from each series' healthy reference (slow degradation).
    pub drift: crate::detect::DriftConfig,
    /// The context reference: each metric against what the rest of its device and the time
    /// of day predict, learnt while the device commissions.
    pub context: crate::detect::ContextConfig,
    /// The novelty detector: unusual shapes, level shifts and new extremes.
    pub novelty: NoveltyConfig,
    /// Learned per-device models over all of a device's metrics.
    pub models: ModelsConfig,
}

impl Default for DetectConfig {
    fn default() -> Self {
        Self {
            warmup_readings: 60,
            baseline_half_life: 300.0,
            z_threshold: 5.0,
            min_relative_spread: 0.002,
            flatline_after: Duration::from_secs(300),
            flatline_readings: 30,
            limits: Vec::new(),
            baseline: true,
            flatline: true,
            drift: crate::detect::DriftConfig::default(),
            context: crate::detect::ContextConfig::default(),
            novelty: NoveltyConfig::default(),
            models: ModelsConfig::default(),
        }
    }
}

/// The novelty detector (`detect::Novelty`). The defaults are the values measured on the
/// Numenta Anomaly Benchmark; the window sizes not listed here are derived from `memory` and
/// `warmup_readings`.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NoveltyConfig {
    pub enabled: bool,
    /// Evidence needed to report, as `-log10 p` of the reading's pattern (3.5: p ≤ 3.2e-4).
    pub threshold: f64,
    /// Readings in the shape compared with the past.
    pub lag: usize,
    /// Past shapes kept per series; the detector's state is about 36 bytes per unit of `memory`.
    pub memory: usize,
    /// Nearest past shapes averaged into the distance.
    pub neighbours: usize,
    /// Readings a series needs before the detector may report.
    pub warmup_readings: u64,
    /// Readings after a report during which the detector holds back further reports.
    pub refractory_readings: u64,
    /// Level shift: mean of the last 20 readings against the 500 before, in standard deviations.
    pub level_shift_z: f64,
    /// New extreme: a reading beyond everything seen by more than this fraction of the range.
    pub new_extreme_margin: f64,
}

impl Default for NoveltyConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            threshold: 3.5,
            lag: 8,
            memory: 2000,
            neighbours: 3,
            warmup_readings: 100,
            refractory_readings: 100,
            level_shift_z: 4.0,
            new_extreme_margin: 0.10,
        }
    }
}

impl NoveltyConfig {
    /// Checks the values; returns the offending key (below `detect.novelty`) and why.
    pub fn validate(&self) -> Result<(), Invalid> {
        let bad = |key: &str, reason: &str| Err(Invalid::new(format!("detect.novelty.{key}"), reason.to_string()));
        if !(self.threshold.is_finite() && self.threshold > 0.0) {
            return bad("threshold", "must be a positive number (-log10 of a probability, e.g. 3.5)");
        }
        if !(1..=64).contains(&self.lag) {
            return bad("lag", "must be between 1 and 64 readings");
        }
        if !(100..=100_000).contains(&self.memory) {
            return bad("memory", "must be between 100 and 100000 readings");
        }
        if self.neighbours == 0 || self.neighbours.saturating_mul(10) > self.memory {
            return bad("neighbours", "must be at least 1 and at most a tenth of `memory`");
        }
        if self.warmup_readings < 8 {
            return bad("warmup_readings", "must be at least 8");
        }
        if !(self.level_shift_z.is_finite() && self.level_shift_z > 0.0) {
            return bad("level_shift_z", "must be a positive number");
        }
        if !(self.new_extreme_margin.is_finite() && self.new_extreme_margin > 0.0) {
            return bad("new_extreme_margin", "must be a positive fraction of the range, e.g. 0.1");
        }
        Ok(())
    }
}

impl DetectConfig {
    /// Checks what types alone cannot; names the offending key.
    pub fn validate(&self) -> Result<(), Invalid> {
        let d = self;
        if !(d.z_threshold.is_finite() && d.z_threshold > 0.0) {
            return bad("detect.z_threshold", "must be a positive number");
        }
        if !(d.baseline_half_life.is_finite() && d.baseline_half_life >= 1.0) {
            return bad("detect.baseline_half_life", "must be at least 1 reading");
        }
        if !(d.min_relative_spread.is_finite() && d.min_relative_spread >= 0.0) {
            return bad("detect.min_relative_spread", "must be zero or positive");
        }
        if d.flatline_readings < 2 {
            return bad("detect.flatline_readings", "must be at least 2");
        }
        for (i, l) in d.limits.iter().enumerate() {
            if l.min.is_none() && l.max.is_none() {
                return Err(Invalid::new(format!("detect.limits[{i}]"), "set `min`, `max` or both"));
            }
            if let (Some(lo), Some(hi)) = (l.min, l.max) {
                if lo >= hi {
                    return Err(Invalid::new(format!("detect.limits[{i}].min"), "must be below `max`"));
                }
            }
        }
        d.novelty.validate()?;
        d.drift.validate()?;
        d.context.validate()?;
        d.models.validate()?;
        Ok(())
    }
}
