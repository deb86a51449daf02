//! Feature vectors of a device: per metric its value, its change since the previous vector and
//! a short rolling mean. The rolling mean lets slow relations between metrics (load) stand out
//! of sensor noise; the delta catches sudden jumps. Training and scoring build features with
//! the same [`FeatureState`], so a fitted model sees live vectors exactly as it saw history.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// Vectors averaged into the rolling-mean feature.
pub const ROLLING: usize = 10;

/// One feature derived from a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeatureKind {
    Value,
    Delta,
    RollingMean,
}

/// Which features a model was fitted on, in order: for each metric, each kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureSpec {
    pub metrics: Vec<String>,
    pub kinds: Vec<FeatureKind>,
}

impl FeatureSpec {
    /// All three features over `metrics` (sorted by the caller).
    pub fn new(metrics: Vec<String>) -> FeatureSpec {
        FeatureSpec::with_kinds(metrics, vec![FeatureKind::Value, FeatureKind::Delta, FeatureKind::RollingMean])
    }

    /// The given features over `metrics` (sorted by the caller).
    pub fn with_kinds(metrics: Vec<String>, kinds: Vec<FeatureKind>) -> FeatureSpec {
        FeatureSpec { metrics, kinds }
    }

    /// Number of features.
    pub fn dim(&self) -> usize {
        self.metrics.len() * self.kinds.len()
    }

    /// The metric a feature index belongs to.
    pub fn metric_of(&self, feature: usize) -> &str {
        self.metrics.get(feature / self.kinds.len().max(1)).map(String::as_str).unwrap_or("?")
    }
}

/// Streaming feature builder for one device.
#[derive(Debug, Clone, Default)]
pub struct FeatureState {
    previous: Option<Vec<f64>>,
    window: VecDeque<Vec<f64>>,
}

impl FeatureState {
    /// Takes the next complete vector of metric values (in spec order) and returns its raw
    /// (unstandardised) features, once enough vectors were seen to fill the rolling mean.
    pub fn push(&mut self, spec: &FeatureSpec, values: &[f64]) -> Option<Vec<f64>> {
        if values.len() != spec.metrics.len() {
            return None;
        }
        if self.window.len() == ROLLING {
            self.window.pop_front();
        }
        self.window.push_back(values.to_vec());
        let previous = self.previous.replace(values.to_vec());
        let previous = previous?;
        if self.window.len() < ROLLING {
            return None;
        }
        let mut out = Vec::with_capacity(spec.dim());
        for (m, &v) in values.iter().enumerate() {
            for kind in &spec.kinds {
                out.push(match kind {
                    FeatureKind::Value => v,
                    FeatureKind::Delta => v - previous[m],
                    FeatureKind::RollingMean => {
                        self.window.iter().map(|w| w[m]).sum::<f64>() / self.window.len() as f64
                    }
                });
            }
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_start_once_the_window_is_full() {
        let spec = FeatureSpec::new(vec!["a".into(), "b".into()]);
        let mut s = FeatureState::default();
        for i in 0..ROLLING - 1 {
            assert!(s.push(&spec, &[i as f64, 1.0]).is_none());
        }
        let f = s.push(&spec, &[10.0, 1.0]).unwrap_or_default();
        assert_eq!(f.len(), 6);
        assert_eq!(f[0], 10.0);
        assert_eq!(f[1], 2.0);
        assert!((f[2] - (36.0 + 10.0) / 10.0).abs() < 1e-9);
        assert_eq!(spec.metric_of(4), "b");
    }
}
