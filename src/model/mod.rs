//! Learned per-device models: a device's metrics seen together, so a broken relation between
//! them (current up while discharge temperature falls) is noticed even when each metric stays
//! inside its own normal range.
//!
//! - [`features`]: value, delta and rolling mean per metric, standardised with training stats.
//! - [`pca`]: PCA reconstruction error (linfa-reduction).
//! - [`gmm`]: Gaussian mixture density (linfa-clustering).
//! - [`trainer`]: fits models on stored history in the background and hands them to the core.
//! - [`commands`]: `fieldwatch train` and `fieldwatch models`.
//!
//! Every model's raw output is calibrated on its training data to the common 0..1 score of the
//! per-series detectors (0.5 = alarm), so one incident policy serves all of them.

pub mod commands;
pub mod features;
pub mod gmm;
pub mod pca;
pub mod trainer;

use ndarray::Array2;
use serde::{Deserialize, Serialize};

pub use features::{FeatureKind, FeatureSpec, FeatureState};
use gmm::GmmBody;
use pca::PcaBody;

/// Format version of a stored model; a model of another version is refitted, not loaded.
pub const MODEL_VERSION: u32 = 1;
/// Share of the (time-ordered) training vectors held out to measure false alarms.
const HELD_OUT: f64 = 0.2;
/// The alarm sits this far above the highest score of the fitting data: healthy history never
/// reaches it, and an alarm means "unlike anything seen in normal operation".
const ALARM_MARGIN: f64 = 1.1;

/// Why a model could not be fitted or loaded.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{have} training vectors, need at least {need}")]
    TooFewVectors { have: usize, need: usize },
    #[error("model fit failed: {0}")]
    Fit(String),
}

/// Which model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    Pca,
    Gmm,
}

impl ModelKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelKind::Pca => "pca",
            ModelKind::Gmm => "gmm",
        }
    }
}

/// A dense row-major matrix that serialises as shape + numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Matrix {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f64>,
}

impl Matrix {
    pub fn from_rows(rows: usize, cols: usize, data: Vec<f64>) -> Matrix {
        Matrix { rows, cols, data }
    }

    pub fn row(&self, i: usize) -> &[f64] {
        self.data.get(i * self.cols..(i + 1) * self.cols).unwrap_or(&[])
    }
}

/// The fitted numbers of one model kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum ModelBody {
    Pca(PcaBody),
    Gmm(GmmBody),
}

/// How raw scores map to 0..1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// Median raw score of the fitting data: "its usual level".
    pub median: f64,
    /// Raw score that maps to 0.5 (the alarm).
    pub threshold: f64,
}

impl Calibration {
    /// 0 at or below the usual level, 0.5 at the threshold, ~0.94 at twice as far.
    pub fn score(&self, raw: f64) -> f64 {
        let span = (self.threshold - self.median).max(1e-12);
        let excess = ((raw - self.median) / span).max(0.0);
        if excess.is_finite() {
            crate::detect::calibrate(excess)
        } else {
            1.0
        }
    }
}

/// How well a model did on data it was and was not fitted on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Validation {
    /// Raw score quantiles of the fitting data: q50, q99, q99.5, max.
    pub q50: f64,
    pub q99: f64,
    pub q995: f64,
    pub max: f64,
    /// Vectors held out (the most recent part of the window).
    pub held_out: usize,
    /// Share of held-out vectors at or above the alarm threshold: the false-alarm rate to expect.
    pub held_out_alarm_rate: f64,
}

/// A fitted model of one device, as stored and scored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceModel {
    pub version: u32,
    pub device: String,
    pub kind: ModelKind,
    pub spec: FeatureSpec,
    /// Standardisation: per feature mean and standard deviation of the training data.
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
    pub body: ModelBody,
    /// Event times of the first and last training vector.
    pub window_from: i64,
    pub window_to: i64,
    pub fitted_at: i64,
    /// Vectors the model was fitted on.
    pub n_samples: usize,
    pub calibration: Calibration,
    pub validation: Validation,
}

/// What a model says about one vector.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelVerdict {
    pub raw: f64,
    /// Calibrated 0..1.
    pub score: f64,
    /// Metrics contributing most, most unusual first.
    pub contributors: Vec<String>,
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

impl DeviceModel {
    /// Fits a model on raw feature vectors (time order), holding out the most recent part to
    /// measure the false-alarm rate.
    pub fn fit(
        kind: ModelKind,
        device: &str,
        spec: FeatureSpec,
        vectors: &[Vec<f64>],
        window: (i64, i64),
        fitted_at: i64,
        min_vectors: usize,
    ) -> Result<DeviceModel, ModelError> {
        let d = spec.dim();
        let vectors: Vec<&Vec<f64>> = vectors.iter().filter(|v| v.len() == d).collect();
        if vectors.len() < min_vectors.max(10) {
            return Err(ModelError::TooFewVectors { have: vectors.len(), need: min_vectors.max(10) });
        }
        let split = ((vectors.len() as f64) * (1.0 - HELD_OUT)) as usize;
        let (fit_part, held) = vectors.split_at(split);
        let n = fit_part.len() as f64;
        let mut mean = vec![0.0; d];
        for v in fit_part {
            for (m, x) in mean.iter_mut().zip(v.iter()) {
                *m += x / n;
            }
        }
        let mut std = vec![0.0; d];
        for v in fit_part {
            for ((s, x), m) in std.iter_mut().zip(v.iter()).zip(&mean) {
                *s += (x - m) * (x - m) / n;
            }
        }
        let std: Vec<f64> = std.iter().map(|s| if s.sqrt() > 1e-9 { s.sqrt() } else { 1.0 }).collect();
        let z = |v: &[f64]| -> Vec<f64> { v.iter().zip(&mean).zip(&std).map(|((x, m), s)| (x - m) / s).collect() };
        let rows: Vec<f64> = fit_part.iter().flat_map(|v| z(v)).collect();
        let x = Array2::from_shape_vec((fit_part.len(), d), rows).map_err(|e| ModelError::Fit(e.to_string()))?;
        let body = match kind {
            ModelKind::Pca => ModelBody::Pca(PcaBody::fit(&x)?),
            ModelKind::Gmm => ModelBody::Gmm(GmmBody::fit(&x)?),
        };
        let mut model = DeviceModel {
            version: MODEL_VERSION,
            device: device.to_string(),
            kind,
            spec,
            mean: mean.clone(),
            std: std.clone(),
            body,
            window_from: window.0,
            window_to: window.1,
            fitted_at,
            n_samples: fit_part.len(),
            calibration: Calibration { median: 0.0, threshold: 1.0 },
            validation: Validation { q50: 0.0, q99: 0.0, q995: 0.0, max: 0.0, held_out: 0, held_out_alarm_rate: 0.0 },
        };
        let mut train: Vec<f64> = x.rows().into_iter().map(|r| model.raw_standardised(&r.to_vec()).0).collect();
        train.sort_by(f64::total_cmp);
        let (q50, max) = (quantile(&train, 0.5), quantile(&train, 1.0));
        let threshold = q50 + ALARM_MARGIN * (max - q50).max(1e-9);
        model.calibration = Calibration { median: q50, threshold };
        let alarms = held.iter().filter(|v| model.raw_standardised(&z(v)).0 >= threshold).count();
        model.validation = Validation {
            q50,
            q99: quantile(&train, 0.99),
            q995: quantile(&train, 0.995),
            max,
            held_out: held.len(),
            held_out_alarm_rate: alarms as f64 / held.len().max(1) as f64,
        };
        Ok(model)
    }

    fn raw_standardised(&self, z: &[f64]) -> (f64, Vec<f64>) {
        match &self.body {
            ModelBody::Pca(p) => p.score(z),
            ModelBody::Gmm(g) => g.score(z),
        }
    }

    /// Scores one raw feature vector (from [`FeatureState::push`]).
    pub fn score(&self, features: &[f64]) -> ModelVerdict {
        let z: Vec<f64> = features.iter().zip(&self.mean).zip(&self.std).map(|((x, m), s)| (x - m) / s).collect();
        let (raw, parts) = self.raw_standardised(&z);
        let mut per_metric: Vec<(f64, &str)> = Vec::new();
        for (i, p) in parts.iter().enumerate() {
            let m = self.spec.metric_of(i);
            match per_metric.iter_mut().find(|(_, name)| *name == m) {
                Some(e) => e.0 += p,
                None => per_metric.push((*p, m)),
            }
        }
        per_metric.sort_by(|a, b| b.0.total_cmp(&a.0));
        ModelVerdict {
            raw,
            score: if raw.is_nan() { 1.0 } else { self.calibration.score(raw) },
            contributors: per_metric.iter().take(2).map(|(_, m)| m.to_string()).collect(),
        }
    }

    /// How far above its usual level a raw score is, in words for a technician.
    pub fn describe_level(detector: &str, raw: f64, usual: f64) -> String {
        match detector {
            "pca" if usual > 0.0 => format!("PCA reconstruction error {:.1}× its usual level", raw / usual),
            "gmm" => format!("Gaussian-mixture log-density {:.1} below its usual level", raw - usual),
            _ => format!("{detector} score {raw:.2} against a usual {usual:.2}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use rand_distr::{Distribution, Normal};

    /// Two metrics that move together (a shared load), with noise.
    fn correlated(n: usize, seed: u64) -> Vec<[f64; 2]> {
        let mut rng = StdRng::seed_from_u64(seed);
        let noise = Normal::new(0.0, 0.1).unwrap_or_else(|_| unreachable!());
        (0..n)
            .map(|i| {
                let load = (i as f64 / 60.0).sin();
                [10.0 + load + noise.sample(&mut rng), 70.0 + 2.0 * load + noise.sample(&mut rng)]
            })
            .collect()
    }

    fn features(values: &[[f64; 2]], spec: &FeatureSpec) -> Vec<Vec<f64>> {
        let mut s = FeatureState::default();
        values.iter().filter_map(|v| s.push(spec, v)).collect()
    }

    #[test]
    fn both_kinds_flag_a_broken_relation_and_not_normal_data() {
        let spec = FeatureSpec::new(vec!["current".into(), "temp".into()]);
        let train = features(&correlated(5000, 1), &spec);
        for kind in [ModelKind::Pca, ModelKind::Gmm] {
            let model = DeviceModel::fit(kind, "d", spec.clone(), &train, (0, 1), 0, 1000).unwrap();
            assert!(model.validation.held_out_alarm_rate < 0.01, "{kind:?}: {:?}", model.validation);
            let normal = features(&correlated(2000, 2), &spec);
            let max_normal = normal.iter().map(|f| model.score(f).score).fold(0.0, f64::max);
            assert!(max_normal < 0.5, "{kind:?}: normal data scored {max_normal}");
            // The relation breaks: temperature falls as current rises, each inside its range.
            let broken: Vec<[f64; 2]> = correlated(2000, 3)
                .iter()
                .enumerate()
                .map(|(i, v)| [v[0], 70.0 - 2.0 * (i as f64 / 60.0).sin()])
                .collect();
            let verdicts: Vec<ModelVerdict> = features(&broken, &spec).iter().map(|f| model.score(f)).collect();
            let alarms = verdicts.iter().filter(|v| v.score >= 0.5).count();
            assert!(alarms > verdicts.len() / 3, "{kind:?}: {alarms} of {}", verdicts.len());
            let top = verdicts.iter().max_by(|a, b| a.raw.total_cmp(&b.raw)).map(|v| v.contributors[0].clone());
            assert!(top.is_some());
        }
    }

    #[test]
    fn too_little_history_is_an_error() {
        let spec = FeatureSpec::new(vec!["a".into()]);
        let err = DeviceModel::fit(ModelKind::Pca, "d", spec, &[vec![1.0, 0.0, 1.0]], (0, 0), 0, 1000).unwrap_err();
        assert!(matches!(err, ModelError::TooFewVectors { have: 1, need: 1000 }));
    }
}
