//! The trainer: fits device models on stored history in the background and hands them to the
//! core. Fitting runs on a thread of the trainer's own, one device at a time, so ingest never
//! waits for it; it reads the store concurrently (sled is thread-safe) and writes each fitted
//! model to the store before the core gets it, so a restart reloads it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Deserialize;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use super::{DeviceModel, FeatureSpec, FeatureState, ModelError};
use crate::metrics::{Metrics, ResultLabel};
use crate::model::ModelsConfig;
use crate::store::{Store, StoreError};
use crate::worker::Worker;

/// Every `result` of `fieldwatch_model_fits_total`: the device's models were fitted, its history
/// holds too few healthy vectors yet, or the fit failed.
pub const FIT_RESULTS: [&str; 3] = [FITTED, TOO_LITTLE_HISTORY, FAILED];
const FITTED: &str = "fitted";
const TOO_LITTLE_HISTORY: &str = "too_little_history";
const FAILED: &str = "failed";

/// A device is fitted again at most this often (wall time). Live, refits are hours apart in
/// event time anyway; while a backlog drains, event time races ahead and would ask for a refit
/// of every device every few seconds, each on nearly the same history: those wait and are
/// coalesced into one.
pub const REFIT_COALESCE: std::time::Duration = std::time::Duration::from_secs(10);

/// Why a device could not be trained.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Model(#[from] ModelError),
    #[error("no stored readings for device {0}")]
    UnknownDevice(String),
    #[error("the fit task failed: {0}")]
    Task(String),
}

/// Devices waiting for a fit, requested by drift, the admin API or the schedule.
#[derive(Debug, Default)]
pub struct TrainRequests {
    pending: Mutex<(bool, BTreeSet<String>)>,
    notify: Notify,
}

impl TrainRequests {
    /// Asks for a fit of one device, or of every device with `None`.
    pub fn request(&self, device: Option<&str>) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        match device {
            Some(d) => {
                p.1.insert(d.to_string());
            }
            None => p.0 = true,
        }
        drop(p);
        self.notify.notify_one();
    }

    /// Takes what is pending: `(all, devices)`.
    pub fn take(&self) -> (bool, BTreeSet<String>) {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// What the trainer is doing, for tests and the admin API.
#[derive(Debug, Default)]
pub struct TrainerStatus {
    /// A fit is running on the trainer's thread.
    pub fitting: AtomicBool,
    /// Models fitted since start.
    pub fitted: AtomicU64,
}

/// Every device in the store with its series: device → [(series id, metric)], metrics sorted.
pub fn devices(store: &Store) -> Result<BTreeMap<String, Vec<(u32, String)>>, StoreError> {
    let mut out: BTreeMap<String, Vec<(u32, String)>> = BTreeMap::new();
    for (id, device, metric) in store.all_series()? {
        out.entry(device).or_default().push((id, metric));
    }
    for series in out.values_mut() {
        series.sort_by(|a, b| a.1.cmp(&b.1));
    }
    Ok(out)
}

/// What a device's history gives to fit on.
pub struct TrainingSet {
    pub spec: FeatureSpec,
    /// Raw feature vectors in time order.
    pub features: Vec<Vec<f64>>,
    /// Event times of the first and last vector.
    pub window: (i64, i64),
}

/// Before an incident's first anomalous reading, this much history is left out of training too:
/// a slow fault is under way for a while before it is flagged.
pub const UNHEALTHY_LEAD_MS: i64 = 3600 * 1000;

/// What the trainer reads of a stored incident (the `incidents` tree holds each incident as
/// JSON, with these fields among others): whose it is and when it was unhealthy.
#[derive(Debug, Deserialize)]
struct IncidentSpan {
    device: String,
    /// The first anomalous reading (event time, ms).
    first_seen: i64,
    /// `None` while it is open.
    resolved_at: Option<i64>,
}

/// The event-time spans of a device's history that are not healthy: every stored incident of
/// the device from [`UNHEALTHY_LEAD_MS`] before its first anomaly until it resolved (open ones
/// until the end of time).
pub fn unhealthy_spans(store: &Store, device: &str) -> Result<Vec<(i64, i64)>, StoreError> {
    let incidents: Vec<IncidentSpan> = store.incidents_with_prefix(&format!("{device}/"))?;
    Ok(incidents
        .iter()
        .filter(|i| i.device == device)
        .map(|i| (i.first_seen.saturating_sub(UNHEALTHY_LEAD_MS), i.resolved_at.unwrap_or(i64::MAX)))
        .collect())
}

/// Training features of a device: complete vectors (every metric at the same event time, as one
/// message carries them) over `window` up to its latest reading, outside the `unhealthy` spans,
/// thinned to `max` vectors.
pub fn training_features(
    store: &Store,
    device: &str,
    series: &[(u32, String)],
    kinds: &[super::FeatureKind],
    window_ms: i64,
    max: usize,
    unhealthy: &[(i64, i64)],
) -> Result<TrainingSet, StoreError> {
    let mut latest = i64::MIN;
    for (id, _) in series {
        if let Some((ts, _)) = store.recent(*id, i64::MAX, 1)?.last() {
            latest = latest.max(*ts);
        }
    }
    let spec = FeatureSpec::with_kinds(series.iter().map(|(_, m)| m.clone()).collect(), kinds.to_vec());
    if latest == i64::MIN {
        return Ok(TrainingSet { spec, features: Vec::new(), window: (0, 0) });
    }
    let from = latest.saturating_sub(window_ms);
    let n = series.len();
    let mut by_ts: BTreeMap<i64, (usize, Vec<f64>)> = BTreeMap::new();
    for (m, (id, _)) in series.iter().enumerate() {
        for (ts, v) in store.range(*id, from, latest)? {
            let e = by_ts.entry(ts).or_insert_with(|| (0, vec![f64::NAN; n]));
            e.0 += 1;
            e.1[m] = v;
        }
    }
    let mut state = FeatureState::default();
    let mut first = None;
    let mut last = 0;
    let mut features = Vec::new();
    for (ts, (count, values)) in by_ts {
        if count != n {
            continue;
        }
        if unhealthy.iter().any(|&(from, to)| ts >= from && ts < to) {
            // The rolling features restart after a gap, so no vector straddles a fault.
            state = FeatureState::default();
            continue;
        }
        if let Some(f) = state.push(&spec, &values) {
            first.get_or_insert(ts);
            last = ts;
            features.push(f);
        }
    }
    let stride = features.len().div_ceil(max.max(1)).max(1);
    let features: Vec<Vec<f64>> = features.into_iter().step_by(stride).collect();
    tracing::debug!(device, vectors = features.len(), "training vectors assembled");
    Ok(TrainingSet { spec, features, window: (first.unwrap_or(0), last) })
}

/// Fits every configured kind for one device and stores the models.
pub fn fit_device(
    store: &Store,
    device: &str,
    config: &ModelsConfig,
    now: i64,
) -> Result<Vec<DeviceModel>, TrainError> {
    // This device's series only: listing every series of the fleet for each fit made the
    // first fits of a fleet quadratic in its size (a fifth of the CPU draining 1,000 devices).
    let series = store.device_series(device)?;
    if series.is_empty() {
        return Err(TrainError::UnknownDevice(device.to_string()));
    }
    let window_ms = config.window.as_millis() as i64;
    let unhealthy = unhealthy_spans(store, device)?;
    let TrainingSet { spec, features, window } = training_features(
        store,
        device,
        &series,
        &config.features,
        window_ms,
        config.max_training_vectors,
        &unhealthy,
    )?;
    let mut out = Vec::new();
    let params = super::FitParams::of(config);
    for kind in &config.kinds {
        let model = DeviceModel::fit(*kind, device, spec.clone(), &features, window, now, &params)?;
        store.put_model(device, kind.as_str(), &model)?;
        tracing::info!(
            device,
            kind = kind.as_str(),
            samples = model.n_samples,
            held_out_alarm_rate = model.validation.held_out_alarm_rate,
            "model fitted"
        );
        out.push(model);
    }
    Ok(out)
}

/// Fits one device on the trainer's thread (`worker`), never on the async workers. A panic in
/// a fit (a bug, in this crate or in linfa) fails that fit only.
pub async fn fit_in_background(
    worker: &Worker,
    store: Arc<Store>,
    device: String,
    config: ModelsConfig,
    status: Arc<TrainerStatus>,
) -> Result<Vec<DeviceModel>, TrainError> {
    status.fitting.store(true, Ordering::SeqCst);
    let now = crate::reading::now_ms();
    let fit = move || fit_device(&store, &device, &config, now);
    let result = worker.spawn(move || std::panic::catch_unwind(std::panic::AssertUnwindSafe(fit))).await;
    status.fitting.store(false, Ordering::SeqCst);
    let models = result.map_err(|panic| {
        let why = crate::worker::panic_message(&*panic).unwrap_or_default();
        TrainError::Task(format!("the fit panicked: {why}"))
    })??;
    status.fitted.fetch_add(models.len() as u64, Ordering::Relaxed);
    Ok(models)
}

/// The trainer task: refits every device every `refit_every` (the first time at start) and the
/// devices requested in between, one fit at a time; hands each model to the core.
pub async fn run(
    store: Arc<Store>,
    config: ModelsConfig,
    requests: Arc<TrainRequests>,
    status: Arc<TrainerStatus>,
    fitted: mpsc::Sender<Box<DeviceModel>>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    let count = |result: &str| metrics.model_fits.get_or_create(&ResultLabel { result: result.into() }).inc();
    let mut schedule = tokio::time::interval(config.refit_every);
    schedule.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // When each device was last fitted, and the requests waiting for REFIT_COALESCE to pass.
    let mut last_fit: HashMap<String, tokio::time::Instant> = HashMap::new();
    let mut waiting: BTreeSet<String> = BTreeSet::new();
    // Every fit on one thread of the trainer's own: a blocking-pool thread per fit each kept an
    // allocator heap, and a backlog's fits added three or four of them.
    let worker = match Worker::start("fieldwatch-fit") {
        Ok(w) => w,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the model-fitting thread; no model will be fitted");
            return;
        }
    };
    loop {
        let next_due = waiting.iter().filter_map(|d| last_fit.get(d)).min().map(|t| *t + REFIT_COALESCE);
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = schedule.tick() => requests.request(None),
            _ = requests.notify.notified() => {}
            _ = tokio::time::sleep_until(next_due.unwrap_or_else(tokio::time::Instant::now)), if next_due.is_some() => {}
        }
        let (all, mut wanted) = requests.take();
        if all {
            match devices(&store) {
                Ok(d) => wanted.extend(d.into_keys()),
                Err(e) => tracing::error!(error = %e, "cannot list devices to train"),
            }
        }
        wanted.append(&mut waiting);
        let now = tokio::time::Instant::now();
        // Only fits within the interval matter: the map stays as small as the recent fits.
        last_fit.retain(|_, t| now < *t + REFIT_COALESCE);
        for device in wanted {
            if cancel.is_cancelled() {
                return;
            }
            if last_fit.get(&device).is_some_and(|t| now < *t + REFIT_COALESCE) {
                waiting.insert(device);
                continue;
            }
            last_fit.insert(device.clone(), tokio::time::Instant::now());
            match fit_in_background(&worker, store.clone(), device.clone(), config.clone(), status.clone()).await {
                Ok(models) => {
                    count(FITTED);
                    for m in models {
                        if fitted.send(Box::new(m)).await.is_err() {
                            return;
                        }
                    }
                }
                Err(TrainError::Model(ModelError::TooFewVectors { have, need })) => {
                    count(TOO_LITTLE_HISTORY);
                    tracing::debug!(device, have, need, "not enough history for a model yet");
                }
                Err(e) => {
                    count(FAILED);
                    tracing::warn!(device, error = %e, "model fit failed");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::{Anomaly, FaultKind};
    use crate::incident::{Incident, Subject};

    #[test]
    fn a_stored_incident_reads_as_its_span() {
        let subject = Subject { device: "comp-1".into(), site: None, metric: "temp".into() };
        let mut inc =
            Incident::new(subject, 1_000, 5_000, Anomaly::new(FaultKind::Deviation, "baseline", 1_000, 9.0, 0.9), 3);
        for resolved in [None, Some(9_000)] {
            inc.resolved_at = resolved;
            let span: IncidentSpan = serde_json::from_slice(&serde_json::to_vec(&inc).unwrap()).unwrap();
            assert_eq!((span.device.as_str(), span.first_seen, span.resolved_at), ("comp-1", 1_000, resolved));
        }
    }
}
