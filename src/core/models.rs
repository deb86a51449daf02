//! The core's side of the learned device models: score each complete vector of a device with
//! its fitted models and feed the verdict to the incident policy as a `Multivariate` anomaly.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use super::{BatchOutcome, Core};
use crate::config::ModelsConfig;
use crate::detect::{Anomaly, FaultKind};
use crate::incident::{Incident, DEVICE_METRIC};
use crate::metrics::ReasonLabel;
use crate::model::trainer::TrainRequests;
use crate::model::{DeviceModel, FeatureState, ModelVerdict, MODEL_VERSION};
use crate::reading::Reading;
use crate::store::{Store, StoreError};

/// One fitted model and what it needs to score a stream.
struct LiveModel {
    model: DeviceModel,
    features: FeatureState,
    /// Calibrated scores of the last vectors, and their sum: the drift check.
    recent: VecDeque<f64>,
    recent_sum: f64,
}

/// Every device's fitted models.
pub(super) struct DeviceModels {
    config: ModelsConfig,
    by_device: HashMap<String, Vec<LiveModel>>,
    /// Where drift asks the trainer for a refit.
    requests: Arc<TrainRequests>,
}

impl DeviceModels {
    /// Reloads the fitted models from the store (when models are enabled).
    pub(super) fn load(config: &ModelsConfig, store: &Store) -> Result<DeviceModels, StoreError> {
        let mut models = DeviceModels { config: config.clone(), by_device: HashMap::new(), requests: Arc::default() };
        if config.enabled {
            for m in store.models::<DeviceModel>()? {
                if m.version == MODEL_VERSION && config.kinds.contains(&m.kind) {
                    models.install(m);
                }
            }
        }
        Ok(models)
    }

    /// Starts scoring with a model, replacing the device's previous model of its kind.
    fn install(&mut self, model: DeviceModel) {
        let list = self.by_device.entry(model.device.clone()).or_default();
        list.retain(|l| l.model.kind != model.kind);
        list.push(LiveModel { model, features: FeatureState::default(), recent: VecDeque::new(), recent_sum: 0.0 });
    }
}

impl Core {
    /// Where the trainer finds refit requests raised by drift.
    pub fn train_requests(&self) -> Arc<TrainRequests> {
        self.models.requests.clone()
    }

    /// Scores with a freshly fitted model from now on.
    pub fn install_model(&mut self, model: DeviceModel) {
        tracing::info!(device = %model.device, kind = model.kind.as_str(), "model installed");
        self.models.install(model);
    }

    /// Number of fitted models the core scores with.
    pub fn models_installed(&self) -> usize {
        self.models.by_device.values().map(Vec::len).sum()
    }

    /// Scores the vector one message carried (its readings, all of one device and time) with
    /// the device's models, if it has any and the message carried every model metric.
    pub(super) fn process_device_vector(
        &mut self,
        readings: &[Reading],
        out: &mut BatchOutcome,
    ) -> Result<(), StoreError> {
        let Some(first) = readings.first() else { return Ok(()) };
        let Some(live) = self.models.by_device.get_mut(&first.device) else { return Ok(()) };
        let open_key = Incident::key_for(&first.device, DEVICE_METRIC, FaultKind::Multivariate);
        let open = self.incidents.open_incidents().any(|i| i.key == open_key);
        let drift_n = self.models.config.drift_vectors;
        let mut drifted = false;
        let mut best: Option<(ModelVerdict, &DeviceModel)> = None;
        for lm in live.iter_mut() {
            let values: Option<Vec<f64>> = lm
                .model
                .spec
                .metrics
                .iter()
                .map(|m| readings.iter().find(|r| &r.metric == m).map(|r| r.value))
                .collect();
            let Some(values) = values else { continue };
            let Some(features) = lm.features.push(&lm.model.spec, &values) else { continue };
            let verdict = lm.model.score(&features);
            lm.recent.push_back(verdict.score);
            lm.recent_sum += verdict.score;
            if lm.recent.len() > drift_n {
                lm.recent_sum -= lm.recent.pop_front().unwrap_or(0.0);
            }
            // Scores that stay raised without an alarm: the device's normal has moved. A fault
            // (an open incident) is not learned as the new normal.
            if lm.recent.len() == drift_n && lm.recent_sum / drift_n as f64 > self.models.config.drift_bound && !open {
                drifted = true;
                lm.recent.clear();
                lm.recent_sum = 0.0;
            }
            if best.as_ref().is_none_or(|(b, _)| verdict.score > b.score) {
                best = Some((verdict, &lm.model));
            }
        }
        if drifted {
            tracing::info!(device = %first.device, "model scores drifted; refit requested");
            self.models.requests.request(Some(&first.device));
        }
        let Some((verdict, model)) = best else { return Ok(()) };
        let anomaly = (verdict.score >= 0.5).then(|| Anomaly {
            kind: FaultKind::Multivariate,
            detector: model.kind.as_str().to_string(),
            ts: first.ts,
            value: verdict.raw,
            score: verdict.score,
            expected: Some(model.calibration.median),
            spread: None,
            z: None,
            bound: Some(model.calibration.threshold),
            history: Some(model.n_samples as u64),
            contributors: verdict.contributors.clone(),
        });
        if let Some(a) = &anomaly {
            self.metrics.anomalies.get_or_create(&ReasonLabel { reason: a.kind.as_str().into() }).inc();
        }
        if let Some(t) = self.incidents.observe_device(first, anomaly.as_ref()) {
            let t = self.persist(t)?;
            out.transitions.push(t);
        }
        Ok(())
    }
}
