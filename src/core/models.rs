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
use crate::model::{DeviceModel, FeatureState, ModelVerdict, Smoothed, MODEL_VERSION};
use crate::reading::Reading;
use crate::store::{Store, StoreError};

/// One fitted model and what it needs to score a stream.
struct LiveModel {
    model: DeviceModel,
    features: FeatureState,
    /// The smoothed statistics of the device's vector stream.
    smoothed: Smoothed,
    /// Why the model raises no incident, when it may not (see [`DeviceModel::distrust`]).
    distrust: Option<String>,
    /// Calibrated scores of the last vectors, and their sum: the drift check.
    recent: VecDeque<f64>,
    recent_sum: f64,
}

/// When a device is due for a fit, counted in its own complete vectors and event time.
#[derive(Debug, Default)]
struct FitClock {
    /// Complete vectors seen since the last request.
    vectors: usize,
    /// Event time of the last request.
    requested_at: Option<i64>,
}

/// Every device's fitted models.
pub(super) struct DeviceModels {
    config: ModelsConfig,
    by_device: HashMap<String, Vec<LiveModel>>,
    clocks: HashMap<String, FitClock>,
    /// Where drift, a device's first healthy history and the event-time schedule ask the
    /// trainer for a fit.
    requests: Arc<TrainRequests>,
}

impl DeviceModels {
    /// Reloads the fitted models from the store (when models are enabled).
    pub(super) fn load(config: &ModelsConfig, store: &Store) -> Result<DeviceModels, StoreError> {
        let mut models = DeviceModels {
            config: config.clone(),
            by_device: HashMap::new(),
            clocks: HashMap::new(),
            requests: Arc::default(),
        };
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
        let distrust = model.distrust(self.config.max_held_out_alarm_rate);
        if let Some(why) = &distrust {
            tracing::warn!(device = %model.device, kind = model.kind.as_str(), why = %why, "model not trusted");
        }
        let clock = self.clocks.entry(model.device.clone()).or_default();
        clock.vectors = 0;
        clock.requested_at.get_or_insert(model.window_to);
        let list = self.by_device.entry(model.device.clone()).or_default();
        list.retain(|l| l.model.kind != model.kind);
        list.push(LiveModel {
            model,
            features: FeatureState::default(),
            smoothed: Smoothed::default(),
            distrust,
            recent: VecDeque::new(),
            recent_sum: 0.0,
        });
    }

    /// Counts a complete vector of a device and asks for a fit when one is due: the first as
    /// soon as the device has `min_training_vectors` of history, later every `refit_every` of
    /// event time (so replayed history is fitted as it would have been live).
    fn count_vector(&mut self, device: &str, ts: i64) {
        if !self.config.enabled {
            return;
        }
        let has_model = self.by_device.contains_key(device);
        let clock = self.clocks.entry(device.to_string()).or_default();
        clock.vectors += 1;
        let due = match clock.requested_at {
            // The first fit, or one that found too little healthy history: ask again once as
            // much new history has come.
            None => clock.vectors >= self.config.min_training_vectors,
            Some(_) if !has_model => clock.vectors >= self.config.min_training_vectors,
            Some(at) => ts - at >= self.config.refit_every.as_millis() as i64,
        };
        if due {
            clock.vectors = 0;
            clock.requested_at = Some(ts);
            self.requests.request(Some(device));
        }
    }
}

impl Core {
    /// Where the trainer finds fit requests.
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
    /// the device's models, if it has any and the message carried every model metric; counts
    /// it towards the device's next fit.
    pub(super) fn process_device_vector(
        &mut self,
        readings: &[Reading],
        out: &mut BatchOutcome,
    ) -> Result<Option<f64>, StoreError> {
        let Some(first) = readings.first() else { return Ok(None) };
        let complete = self.device_metrics.get(&first.device).is_some_and(|m| m.len() == readings.len());
        if complete {
            self.models.count_vector(&first.device, first.ts);
        }
        let Some(live) = self.models.by_device.get_mut(&first.device) else { return Ok(None) };
        let open_key = Incident::key_for(&first.device, DEVICE_METRIC, FaultKind::Multivariate);
        let open = self.incidents.open_incidents().any(|i| i.key == open_key);
        let drift_n = self.models.config.drift_vectors;
        let mut drifted = false;
        let mut best: Option<(ModelVerdict, &LiveModel)> = None;
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
            let (raw, parts) = lm.model.raw(&features);
            let smoothed = lm.smoothed.push(lm.model.smoothing, &raw).to_vec();
            let verdict = lm.model.judge(&smoothed, &parts);
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
                best = Some((verdict, lm));
            }
        }
        if drifted {
            tracing::info!(device = %first.device, "model scores drifted; refit requested");
            self.models.requests.request(Some(&first.device));
        }
        let Some((verdict, lm)) = best else { return Ok(None) };
        let score = verdict.score;
        let model = &lm.model;
        let calibration = model.calibration.get(verdict.statistic).or(model.calibration.first());
        let anomaly = (verdict.score >= 0.5 && lm.distrust.is_none()).then(|| Anomaly {
            kind: FaultKind::Multivariate,
            detector: model.kind.as_str().to_string(),
            ts: first.ts,
            value: verdict.raw,
            score: verdict.score,
            expected: model.calibration.first().map(|c| c.median),
            spread: None,
            z: None,
            bound: calibration.map(|c| c.threshold),
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
        Ok(Some(score))
    }
}
