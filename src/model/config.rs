//! `[detect.models]`: the learned per-device models.

use std::time::Duration;

use serde::Deserialize;

use crate::settings::Invalid;

/// `[detect.models]`: per-device models (`crate::model`) fitted in the background on stored
/// history. Off by default: a model needs `min_training_vectors` of healthy history first.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ModelsConfig {
    pub enabled: bool,
    /// Model kinds fitted per device; a device's score is the highest of them.
    pub kinds: Vec<crate::model::ModelKind>,
    /// History a model is fitted on, ending at the device's latest reading.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Every device is refitted this often (and sooner when its scores drift).
    #[serde(with = "humantime_serde")]
    pub refit_every: Duration,
    /// Complete vectors (one message with every metric) a device needs before it gets a model.
    pub min_training_vectors: usize,
    /// At most this many vectors are fitted on (evenly thinned beyond).
    pub max_training_vectors: usize,
    /// Features per metric: `value`, `delta`, `rolling_mean`.
    pub features: Vec<crate::model::FeatureKind>,
    /// The alarm sits this many times beyond the largest smoothed statistic of the fitting data.
    pub margin: f64,
    /// EWMA weight of the newest vector in the smoothed model statistics (1 = no smoothing).
    pub smoothing: f64,
    /// Share of the variance the PCA's kept components explain.
    pub explained_variance: f64,
    /// A model whose held-out alarm rate is above this is scored but raises no incident.
    pub max_held_out_alarm_rate: f64,
    /// Whether the PCA's Hotelling's T² raises alarms too (it flags an unusual operating point
    /// along the device's known relations; off, only broken relations alarm).
    pub t2_alarms: bool,
}

impl Default for ModelsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            kinds: vec![crate::model::ModelKind::Pca],
            window: Duration::from_secs(7 * 86_400),
            refit_every: Duration::from_secs(6 * 3600),
            min_training_vectors: 300,
            max_training_vectors: 100_000,
            features: vec![crate::model::FeatureKind::Value],
            margin: 2.0,
            smoothing: 0.2,
            explained_variance: 0.8,
            max_held_out_alarm_rate: 0.01,
            t2_alarms: false,
        }
    }
}

impl ModelsConfig {
    /// Checks the values; returns the offending key (below `detect.models`) and why.
    pub fn validate(&self) -> Result<(), Invalid> {
        let bad = |key: &str, reason: &str| Err(Invalid::new(format!("detect.models.{key}"), reason.to_string()));
        if self.kinds.is_empty() {
            return bad("kinds", "name at least one model kind (\"pca\", \"gmm\")");
        }
        if self.window < Duration::from_secs(600) {
            return bad("window", "must be at least 10m");
        }
        if self.refit_every < Duration::from_secs(60) {
            return bad("refit_every", "must be at least 1m");
        }
        if self.min_training_vectors < 100 {
            return bad("min_training_vectors", "must be at least 100");
        }
        if self.max_training_vectors < self.min_training_vectors {
            return bad("max_training_vectors", "must be at least min_training_vectors");
        }
        if self.features.is_empty() {
            return bad("features", "name at least one feature (\"value\", \"delta\", \"rolling_mean\")");
        }
        if !(self.margin >= 1.0 && self.margin.is_finite()) {
            return bad("margin", "must be at least 1");
        }
        if !(self.smoothing > 0.0 && self.smoothing <= 1.0) {
            return bad("smoothing", "must be in (0, 1]");
        }
        if !(self.explained_variance > 0.0 && self.explained_variance < 1.0) {
            return bad("explained_variance", "must be between 0 and 1");
        }
        if !(0.0..=1.0).contains(&self.max_held_out_alarm_rate) {
            return bad("max_held_out_alarm_rate", "must be between 0 and 1");
        }
        Ok(())
    }
}
