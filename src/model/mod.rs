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

pub mod config;
pub mod features;
pub mod gmm;
pub mod pca;
pub mod trainer;

use ndarray::Array2;
use serde::{Deserialize, Serialize};

pub use features::{FeatureKind, FeatureSpec, FeatureState};
use gmm::GmmBody;
use pca::PcaBody;

pub use config::ModelsConfig;

/// Format version of a stored model; a model of another version is refitted, not loaded.
pub const MODEL_VERSION: u32 = 2;
/// One block of training vectors in this many is held out to measure false alarms (20 %).
const HELD_OUT_EVERY: usize = 5;

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
    /// Every model kind.
    pub const ALL: [ModelKind; 2] = [ModelKind::Pca, ModelKind::Gmm];

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

/// How one (smoothed) raw statistic maps to 0..1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// Median of the smoothed statistic on the fitting data: "its usual level".
    pub median: f64,
    /// Value that maps to 0.5 (the alarm).
    pub threshold: f64,
}

impl Calibration {
    /// 0 at or below the usual level, 0.5 at the threshold, ~0.94 at twice as far.
    pub fn score(&self, raw: f64) -> f64 {
        let span = (self.threshold - self.median).max(1e-12);
        let excess = ((raw - self.median) / span).max(0.0);
        if excess.is_finite() {
            crate::score::calibrate(excess)
        } else {
            1.0
        }
    }
}

/// How well a model did on data it was and was not fitted on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Validation {
    /// Quantiles of the primary smoothed statistic on the fitting data: q50, q99, q99.5, max.
    pub q50: f64,
    pub q99: f64,
    pub q995: f64,
    pub max: f64,
    /// Vectors held out (every fifth block of the window).
    pub held_out: usize,
    /// Held-out vectors at or above the alarm.
    #[serde(default)]
    pub held_out_alarms: usize,
    /// Share of held-out vectors at or above the alarm: the false-alarm rate to expect.
    pub held_out_alarm_rate: f64,
}

/// How a model is fitted and calibrated (from `[detect.models]`).
#[derive(Debug, Clone, PartialEq)]
pub struct FitParams {
    /// Vectors needed at least.
    pub min_vectors: usize,
    /// The alarm sits this many times beyond the largest smoothed statistic of the fitting data.
    pub margin: f64,
    /// EWMA weight of the newest vector in the smoothed statistics (1 = no smoothing).
    pub smoothing: f64,
    /// Share of the variance the PCA's kept components explain.
    pub explained_variance: f64,
    /// Whether Hotelling's T² (distance along the known relations) raises alarms, or only
    /// the residual off them does.
    pub t2_alarms: bool,
    /// A model whose held-out alarm rate exceeds this raises no incident.
    pub max_held_out_alarm_rate: f64,
}

impl FitParams {
    pub fn of(config: &ModelsConfig) -> FitParams {
        FitParams {
            min_vectors: config.min_training_vectors,
            margin: config.margin,
            smoothing: config.smoothing,
            explained_variance: config.explained_variance,
            t2_alarms: config.t2_alarms,
            max_held_out_alarm_rate: config.max_held_out_alarm_rate,
        }
    }
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
    /// EWMA weight of the smoothed statistics.
    pub smoothing: f64,
    /// One per statistic the body computes (PCA: residual Q, then T²; GMM: −log-likelihood);
    /// the first is the primary one shown to people.
    pub calibration: Vec<Calibration>,
    /// How many of the statistics (from the first) raise alarms; the others are evidence.
    #[serde(default = "one")]
    pub alarming: usize,
    pub validation: Validation,
    /// Why the model raises no incident, as judged when it was fitted (see [`DeviceModel::distrust`]).
    #[serde(default)]
    pub untrusted: Option<String>,
}

/// What a model says about one vector.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelVerdict {
    /// The primary smoothed statistic.
    pub raw: f64,
    /// Calibrated 0..1: the highest of the statistics.
    pub score: f64,
    /// Metrics contributing most, most unusual first.
    pub contributors: Vec<String>,
    /// Which statistic scored highest (0 = the primary one).
    pub statistic: usize,
}

/// The streaming side of a model: the smoothed statistics of one device's vector stream.
#[derive(Debug, Clone, Default)]
pub struct Smoothed {
    values: Option<Vec<f64>>,
}

impl Smoothed {
    /// Folds in the raw statistics of the next vector and returns the smoothed ones.
    pub fn push(&mut self, lambda: f64, raw: &[f64]) -> &[f64] {
        let lambda = lambda.clamp(1e-3, 1.0);
        match &mut self.values {
            Some(v) if v.len() == raw.len() => {
                for (s, r) in v.iter_mut().zip(raw) {
                    // A NaN statistic (a broken input) alarms; it must not poison the state.
                    let r = if r.is_finite() { *r } else { f64::MAX / 4.0 };
                    *s += lambda * (r - *s);
                }
            }
            _ => self.values = Some(raw.to_vec()),
        }
        self.values.as_deref().unwrap_or(&[])
    }
}

/// Calibrates each statistic on its smoothed values: the alarm `margin` times beyond the
/// largest value above the median. Returns the calibrations and each statistic's sorted values.
fn calibrate<'a>(smoothed: impl Iterator<Item = &'a [f64]>, margin: f64) -> (Vec<Calibration>, Vec<Vec<f64>>) {
    let mut per_stat: Vec<Vec<f64>> = Vec::new();
    let expected = smoothed.size_hint().1.unwrap_or(0);
    for s in smoothed {
        if per_stat.is_empty() {
            per_stat = (0..s.len()).map(|_| Vec::with_capacity(expected)).collect();
        }
        for (list, v) in per_stat.iter_mut().zip(s) {
            list.push(*v);
        }
    }
    for list in &mut per_stat {
        list.sort_by(f64::total_cmp);
    }
    let calibration = per_stat
        .iter()
        .map(|sorted| {
            let (q50, max) = (quantile(sorted, 0.5), quantile(sorted, 1.0));
            Calibration { median: q50, threshold: q50 + margin * (max - q50).max(1e-9) }
        })
        .collect();
    (calibration, per_stat)
}

fn one() -> usize {
    1
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
    #[allow(clippy::too_many_arguments)]
    pub fn fit(
        kind: ModelKind,
        device: &str,
        spec: FeatureSpec,
        vectors: &[Vec<f64>],
        window: (i64, i64),
        fitted_at: i64,
        params: &FitParams,
    ) -> Result<DeviceModel, ModelError> {
        let d = spec.dim();
        let vectors: Vec<&Vec<f64>> = vectors.iter().filter(|v| v.len() == d).collect();
        let need = params.min_vectors.max(10);
        if vectors.len() < need {
            return Err(ModelError::TooFewVectors { have: vectors.len(), need });
        }
        // Held out: every fifth block of consecutive vectors, so the check covers every
        // operating point of the window (and blocks keep autocorrelated neighbours together).
        let block = (vectors.len() / 50).max(10);
        let is_held = |i: usize| (i / block) % HELD_OUT_EVERY == HELD_OUT_EVERY - 1;
        let fit_part: Vec<&Vec<f64>> =
            vectors.iter().enumerate().filter(|(i, _)| !is_held(*i)).map(|(_, v)| *v).collect();
        let held_n = vectors.len() - fit_part.len();
        let n = fit_part.len() as f64;
        let mut mean = vec![0.0; d];
        for v in &fit_part {
            for (m, x) in mean.iter_mut().zip(v.iter()) {
                *m += x / n;
            }
        }
        let mut std = vec![0.0; d];
        for v in &fit_part {
            for ((s, x), m) in std.iter_mut().zip(v.iter()).zip(&mean) {
                *s += (x - m) * (x - m) / (n - 1.0).max(1.0);
            }
        }
        let std: Vec<f64> = std.iter().map(|s| if s.sqrt() > 1e-9 { s.sqrt() } else { 1.0 }).collect();
        let z = |v: &[f64]| -> Vec<f64> { v.iter().zip(&mean).zip(&std).map(|((x, m), s)| (x - m) / s).collect() };
        let rows: Vec<f64> = fit_part.iter().flat_map(|v| z(v)).collect();
        let x = Array2::from_shape_vec((fit_part.len(), d), rows).map_err(|e| ModelError::Fit(e.to_string()))?;
        let body = match kind {
            ModelKind::Pca => ModelBody::Pca(PcaBody::fit(&x, params.explained_variance)?),
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
            smoothing: params.smoothing,
            calibration: Vec::new(),
            alarming: if params.t2_alarms { 2 } else { 1 },
            validation: Validation {
                q50: 0.0,
                q99: 0.0,
                q995: 0.0,
                max: 0.0,
                held_out: 0,
                held_out_alarms: 0,
                held_out_alarm_rate: 0.0,
            },
            untrusted: None,
        };
        // Smoothed statistics over the whole window in time order; calibrate on the fitting
        // vectors, count alarms on the held-out ones, then calibrate the model as used on all
        // of them (all of it is healthy history).
        let burn_in = ((2.0 / params.smoothing.max(1e-3)) as usize).min(vectors.len() / 4);
        let mut smoother = Smoothed::default();
        // One row of `width` smoothed statistics per vector, in one allocation: a `Vec` per
        // vector took three times the memory, the largest part of a long history's fit.
        let width = vectors.first().map_or(1, |v| model.statistics(&z(v)).0.len());
        let mut flat: Vec<f64> = Vec::with_capacity(vectors.len() * width);
        for v in &vectors {
            let raw = model.statistics(&z(v)).0;
            flat.extend_from_slice(smoother.push(params.smoothing, &raw));
        }
        let series = || flat.chunks_exact(width.max(1));
        let (calibration, fit_sorted) = calibrate(
            series().enumerate().filter(|(i, _)| *i >= burn_in && !is_held(*i)).map(|(_, s)| s),
            params.margin,
        );
        model.calibration = calibration;
        let alarms = series().enumerate().filter(|(i, s)| is_held(*i) && model.judge(s, &[]).score >= 0.5).count();
        let primary = fit_sorted.first().map(Vec::as_slice).unwrap_or(&[]);
        model.validation = Validation {
            q50: quantile(primary, 0.5),
            q99: quantile(primary, 0.99),
            q995: quantile(primary, 0.995),
            max: quantile(primary, 1.0),
            held_out: held_n,
            held_out_alarms: alarms,
            held_out_alarm_rate: alarms as f64 / held_n.max(1) as f64,
        };
        model.calibration = calibrate(series().skip(burn_in), params.margin).0;
        model.untrusted = model.distrust(params.max_held_out_alarm_rate);
        Ok(model)
    }

    /// The raw statistics of a standardised vector, and each feature's share of the primary one.
    fn statistics(&self, z: &[f64]) -> (Vec<f64>, Vec<f64>) {
        match &self.body {
            ModelBody::Pca(p) => {
                let (q, t2, parts) = p.score(z);
                (vec![q, t2], parts)
            }
            ModelBody::Gmm(g) => {
                let (nll, parts) = g.score(z);
                (vec![nll], parts)
            }
        }
    }

    /// The raw statistics of one raw feature vector (from [`FeatureState::push`]), to be
    /// smoothed by the caller, and each feature's share of the primary one.
    pub fn raw(&self, features: &[f64]) -> (Vec<f64>, Vec<f64>) {
        let z: Vec<f64> = features.iter().zip(&self.mean).zip(&self.std).map(|((x, m), s)| (x - m) / s).collect();
        self.statistics(&z)
    }

    /// Judges smoothed statistics: the highest calibrated score, and the metrics that
    /// contributed most (from `parts`, per feature).
    pub fn judge(&self, smoothed: &[f64], parts: &[f64]) -> ModelVerdict {
        let mut best = (0.0f64, 0usize);
        for (i, (v, c)) in smoothed.iter().zip(&self.calibration).take(self.alarming.max(1)).enumerate() {
            let s = if v.is_nan() { 1.0 } else { c.score(*v) };
            if s > best.0 {
                best = (s, i);
            }
        }
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
            raw: smoothed.first().copied().unwrap_or(0.0),
            score: best.0,
            contributors: per_metric.iter().take(2).map(|(_, m)| m.to_string()).collect(),
            statistic: best.1,
        }
    }

    /// Scores one vector on its own, without smoothing history (tests, benches, one-off checks).
    pub fn score(&self, features: &[f64]) -> ModelVerdict {
        let (raw, parts) = self.raw(features);
        self.judge(&raw, &parts)
    }

    /// Why this model may not raise incidents, if it may not: its held-out alarm rate says it
    /// would cry wolf. The bound allows at least one alarmed vector, so a small held-out set is
    /// not condemned by a single one.
    pub fn distrust(&self, max_held_out_alarm_rate: f64) -> Option<String> {
        let v = &self.validation;
        let rate = v.held_out_alarm_rate;
        let allowed = (max_held_out_alarm_rate * v.held_out as f64).ceil().max(1.0) as usize;
        (v.held_out_alarms > allowed || (v.held_out_alarms == 0 && rate > max_held_out_alarm_rate)).then(|| {
            format!(
                "held-out alarm rate {:.1} % exceeds {:.1} %: scored, but raises no incident until a refit does better",
                rate * 100.0,
                max_held_out_alarm_rate * 100.0
            )
        })
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

    fn params(min_vectors: usize) -> FitParams {
        FitParams {
            min_vectors,
            margin: 2.0,
            smoothing: 0.2,
            explained_variance: 0.9,
            t2_alarms: false,
            max_held_out_alarm_rate: 0.01,
        }
    }

    /// Scores a stream of vectors as the core does: smoothed statistics.
    fn stream(model: &DeviceModel, features: &[Vec<f64>]) -> Vec<ModelVerdict> {
        let mut s = Smoothed::default();
        features
            .iter()
            .map(|f| {
                let (raw, parts) = model.raw(f);
                let smoothed = s.push(model.smoothing, &raw).to_vec();
                model.judge(&smoothed, &parts)
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
            let model = DeviceModel::fit(kind, "d", spec.clone(), &train, (0, 1), 0, &params(1000)).unwrap();
            assert!(model.validation.held_out_alarm_rate < 0.01, "{kind:?}: {:?}", model.validation);
            let normal = features(&correlated(2000, 2), &spec);
            let max_normal = stream(&model, &normal).iter().map(|v| v.score).fold(0.0, f64::max);
            assert!(max_normal < 0.5, "{kind:?}: normal data scored {max_normal}");
            // The relation breaks: temperature falls as current rises, each inside its range.
            let broken: Vec<[f64; 2]> = correlated(2000, 3)
                .iter()
                .enumerate()
                .map(|(i, v)| [v[0], 70.0 - 2.0 * (i as f64 / 60.0).sin()])
                .collect();
            let verdicts = stream(&model, &features(&broken, &spec));
            let alarms = verdicts.iter().filter(|v| v.score >= 0.5).count();
            assert!(alarms > verdicts.len() / 3, "{kind:?}: {alarms} of {}", verdicts.len());
            let top = verdicts.iter().max_by(|a, b| a.raw.total_cmp(&b.raw)).map(|v| v.contributors[0].clone());
            assert!(top.is_some());
        }
    }

    #[test]
    fn too_little_history_is_an_error() {
        let spec = FeatureSpec::new(vec!["a".into()]);
        let err =
            DeviceModel::fit(ModelKind::Pca, "d", spec, &[vec![1.0, 0.0, 1.0]], (0, 0), 0, &params(1000)).unwrap_err();
        assert!(matches!(err, ModelError::TooFewVectors { have: 1, need: 1000 }));
    }
}
