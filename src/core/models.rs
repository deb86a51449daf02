//! The core's side of the learned device models: score each complete vector of a device with
//! its fitted models and feed the verdict to the incident policy as a `Multivariate` anomaly.

use std::sync::Arc;

use super::Core;
use crate::detect::{Anomaly, FaultKind};
use crate::metrics::{FaultLabel, ModelLabel, MODEL_TRUST};
use crate::model::trainer::TrainRequests;
use crate::model::ModelsConfig;
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
}

/// A model score (0..1) at which the relations between a device's metrics are clearly broken:
/// about 1.5 times the alarm level. Below it, metrics moving together may be a change of
/// operating point.
const CLEARLY_BROKEN: f64 = 0.9;

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
    by_device: crate::FastMap<String, Vec<LiveModel>>,
    clocks: crate::FastMap<String, FitClock>,
    /// Devices that changed operating point (event time of the change) and have not been
    /// refitted since.
    new_point: crate::FastMap<String, i64>,
    /// How long a new operating point is watched before the refit that learns it.
    settle_ms: i64,
    /// Where a device's first healthy history, a settled new operating point and the
    /// event-time schedule ask the trainer for a fit. Scores that creep up never do: that is
    /// how a slow fault would be learned as normal.
    requests: Arc<TrainRequests>,
}

impl DeviceModels {
    /// Drops a device's models from memory (it was forgotten; the stored fit stays until a
    /// refit replaces it).
    pub(super) fn forget(&mut self, device: &str) {
        self.by_device.remove(device);
        self.clocks.remove(device);
        self.new_point.remove(device);
    }

    /// Reloads the fitted models from the store (when models are enabled).
    pub(super) fn load(config: &ModelsConfig, settle_ms: i64, store: &Store) -> Result<DeviceModels, StoreError> {
        let mut models = DeviceModels {
            config: config.clone(),
            by_device: Default::default(),
            clocks: Default::default(),
            new_point: Default::default(),
            settle_ms,
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
        if self.new_point.get(&model.device).is_some_and(|&at| model.window_to >= at + self.settle_ms) {
            self.new_point.remove(&model.device);
        }
        let clock = self.clocks.entry(model.device.clone()).or_default();
        clock.vectors = 0;
        clock.requested_at.get_or_insert(model.window_to);
        let list = self.by_device.entry(model.device.clone()).or_default();
        let trusted_now = list.iter().any(|l| l.model.kind == model.kind && l.distrust.is_none());
        if distrust.is_some() && trusted_now {
            // A refit that does worse than the model in use may have learned a fault that is
            // still developing: keep the one that was trusted.
            tracing::warn!(device = %model.device, kind = model.kind.as_str(), "refit not trusted; the previous model stays in use");
            return;
        }
        list.retain(|l| l.model.kind != model.kind);
        // Exactly: a device has one model of each kind it fits, and a doubling `Vec` would
        // hold room for four.
        list.reserve_exact(1);
        list.push(LiveModel { model, features: FeatureState::default(), smoothed: Smoothed::default(), distrust });
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
        let settled = self.new_point.get(device).is_some_and(|&at| ts - at >= self.settle_ms)
            && clock.requested_at.is_none_or(|r| r < ts - self.settle_ms / 2);
        let due = settled
            || match clock.requested_at {
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

impl DeviceModels {
    /// A device changed operating point at `ts`: its model's T² is muted until a refit that has
    /// seen `settle_ms` of the new point.
    pub(super) fn new_operating_point(&mut self, device: &str, ts: i64) {
        self.new_point.insert(device.to_string(), ts);
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
        self.count_models();
    }

    /// Sets `fieldwatch_models`: the models in use by kind and trust.
    pub(super) fn count_models(&self) {
        for kind in crate::model::ModelKind::ALL {
            for (trust, untrusted) in MODEL_TRUST.iter().zip([false, true]) {
                let n = self
                    .models
                    .by_device
                    .values()
                    .flatten()
                    .filter(|l| l.model.kind == kind && l.distrust.is_some() == untrusted);
                let label = ModelLabel { kind: kind.as_str().into(), trust: trust.to_string() };
                self.metrics.models.get_or_create(&label).set(n.count() as i64);
            }
        }
    }

    /// Fits, here and now, the devices the core asked a fit for (on its own store, as it stands
    /// at event time `now`) and installs the models. `replay` and the fleet evaluation use it
    /// so that a recording is fitted exactly when a live trainer would have fitted it; the
    /// daemon fits in the background instead. Returns the models fitted.
    pub fn fit_pending(&mut self, now: i64) -> usize {
        let (all, mut devices) = self.models.requests.take();
        if all {
            if let Ok(d) = crate::model::trainer::devices(&self.store) {
                devices.extend(d.into_keys());
            }
        }
        let mut fitted = 0;
        for device in devices {
            match crate::model::trainer::fit_device(&self.store, &device, &self.models.config, now) {
                Ok(models) => {
                    for m in models {
                        fitted += 1;
                        self.install_model(m);
                    }
                }
                Err(e) => tracing::debug!(device, error = %e, "no model fitted yet"),
            }
        }
        fitted
    }

    /// Number of fitted models the core scores with.
    pub fn models_installed(&self) -> usize {
        self.models.by_device.values().map(Vec::len).sum()
    }

    /// Scores the vector one message carried (its readings, all of one device and time) with
    /// the device's models, if it has any and the message carried every model metric; counts
    /// it towards the device's next fit. The anomaly, if any, is for the caller to feed to the
    /// incident policy.
    pub(super) fn score_device_vector(&mut self, readings: &[Reading]) -> Result<Option<DeviceScore>, StoreError> {
        let Some(first) = readings.first() else { return Ok(None) };
        let complete = self.devices.metrics(&first.device).is_some_and(|m| m.len() == readings.len());
        if complete {
            self.models.count_vector(&first.device, first.ts);
        }
        let new_point = self.models.new_point.get(&first.device).copied();
        let Some(live) = self.models.by_device.get_mut(&first.device) else { return Ok(None) };
        let mut best: Option<(ModelVerdict, &LiveModel)> = None;
        let mut relations_broken = false;
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
            let mut smoothed = lm.smoothed.push(lm.model.smoothing, &raw).to_vec();
            // The primary statistic (PCA: the residual off the device's relations) alone says
            // whether those relations hold.
            let primary = lm.model.judge(&smoothed[..1.min(smoothed.len())], &[]).score;
            relations_broken |= lm.distrust.is_none() && primary >= CLEARLY_BROKEN;
            if new_point.is_some() {
                // A new operating point: distance along the known relations is expected until a
                // refit has seen it.
                smoothed.truncate(1);
            }
            let mut verdict = lm.model.judge(&smoothed, &parts);
            if new_point.is_some() && verdict.score < CLEARLY_BROKEN {
                // ... and relations fitted on the old point extrapolate imperfectly: until the
                // refit, only a clearly broken relation alarms.
                verdict.score = verdict.score.min(0.49);
            }
            if best.as_ref().is_none_or(|(b, _)| verdict.score > b.score) {
                best = Some((verdict, lm));
            }
        }
        let Some((verdict, lm)) = best else { return Ok(None) };
        let score = verdict.score;
        let model = &lm.model;
        let calibration = model.calibration.get(verdict.statistic).or(model.calibration.first());
        let anomaly = (verdict.score >= 0.5 && lm.distrust.is_none()).then(|| Anomaly {
            expected: model.calibration.first().map(|c| c.median),
            bound: calibration.map(|c| c.threshold),
            contributors: verdict.contributors.clone(),
            ..Anomaly::new(FaultKind::Multivariate, model.kind.as_str(), first.ts, verdict.raw, verdict.score)
                .with_history(model.n_samples as u64)
        });
        if let Some(a) = &anomaly {
            self.metrics.anomalies.get_or_create(&FaultLabel { fault: a.kind.as_str().into() }).inc();
        }
        Ok(Some(DeviceScore { score, relations_broken, anomaly }))
    }
}

/// What a device's models said about one vector.
pub(super) struct DeviceScore {
    /// Highest calibrated score (0..1).
    pub score: f64,
    /// A trusted model finds the relations between the device's metrics clearly broken.
    pub relations_broken: bool,
    pub anomaly: Option<Anomaly>,
}
