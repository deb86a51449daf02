//! Detect: streaming detectors score each reading of a series as it arrives.
//!
//! Every detector implements [`SeriesDetector`]: it sees one series' readings in event-time order
//! and may report an [`Anomaly`] with a score calibrated to 0..1, so one incident policy serves
//! all detectors. The [`DetectorBank`] keeps one set of detectors per series.
//!
//! - [`Baseline`]: robust z-score against an exponentially weighted level (spikes, steps).
//! - [`Drift`]: smoothed deviation from a frozen healthy reference (slow degradation).
//! - [`Flatline`]: a sensor that froze.
//! - [`Limit`]: configured minimum and maximum.
//! - [`Novelty`]: shapes, levels and extremes the series has not shown before (kNN over lag
//!   vectors in `knn`, tail probabilities in `likelihood`).
//!
//! Learned per-device models (linfa, [`crate::model`]) see a device's metrics together; the core
//! scores them once per message and reports [`FaultKind::Multivariate`].

mod baseline;
pub mod config;
mod context;
mod drift;
mod flatline;
mod knn;
mod likelihood;
mod limits;
mod novelty;
mod packed;
mod trend;

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::{FastMap, FastSet};

pub use baseline::Baseline;
pub use context::{ContextConfig, ContextPhase, ContextVerdict, DeviceContext, SiteCommon};
pub use drift::{Drift, DriftConfig, Reference};
pub use flatline::Flatline;
pub use knn::LagKnn;
pub use likelihood::{upper_tail, Likelihood, WindowStats};
pub use limits::{Limit, LimitTable};
pub use novelty::{Novelty, NoveltyScore};
pub use trend::{time_to_limit, Forecast};

/// The common score scale (see [`crate::score`]): the detectors calibrate to it.
pub use crate::score::calibrate;
pub use config::{DetectConfig, LimitConfig, NoveltyConfig};

/// What kind of fault a detector saw. Together with the metric it names an incident.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// The value left its learned baseline (spike, step or fast drift).
    Deviation,
    /// The series moved away from its healthy reference and stays away (slow degradation).
    Drift,
    /// The sensor repeats the same value: stuck or frozen.
    Stuck,
    /// Above a configured maximum.
    AboveLimit,
    /// Below a configured minimum.
    BelowLimit,
    /// A shape, level or extreme the series has not shown in its recent history.
    Pattern,
    /// The device sent nothing for too long while the broker link was up (sensor health).
    Silent,
    /// The device's metrics together behave unlike its normal operation (a learned model).
    Multivariate,
}

impl FaultKind {
    /// The kinds a series detector reports (`Silent` and `Multivariate` are about a whole device).
    pub const ALL: [FaultKind; 6] = [
        FaultKind::Deviation,
        FaultKind::Drift,
        FaultKind::Stuck,
        FaultKind::AboveLimit,
        FaultKind::BelowLimit,
        FaultKind::Pattern,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::Deviation => "deviation",
            FaultKind::Drift => "drift",
            FaultKind::Stuck => "stuck",
            FaultKind::AboveLimit => "above_limit",
            FaultKind::BelowLimit => "below_limit",
            FaultKind::Silent => "silent",
            FaultKind::Pattern => "pattern",
            FaultKind::Multivariate => "multivariate",
        }
    }

    /// What the fault is called in plain words.
    pub fn label(self) -> &'static str {
        match self {
            FaultKind::Deviation => "deviation from baseline",
            FaultKind::Drift => "drift from healthy level",
            FaultKind::Stuck => "stuck sensor",
            FaultKind::AboveLimit => "above limit",
            FaultKind::BelowLimit => "below limit",
            FaultKind::Pattern => "unusual pattern",
            FaultKind::Silent => "no telemetry",
            FaultKind::Multivariate => "device behaviour unusual",
        }
    }

    /// Whether a single anomaly of this kind is too weak to open an incident, so the incident
    /// policy waits until it persists. A detector that already accumulates evidence before it
    /// speaks (and then holds back for a while) says no: waiting again would only delay it.
    pub fn needs_debounce(self) -> bool {
        !matches!(self, FaultKind::Pattern)
    }

    /// Whether the fault develops slowly (hours), so its incident waits for the longer slow
    /// debounce: nothing is lost by waiting minutes, and a change of operating point gets
    /// the time to be recognised as such.
    pub fn is_slow(self) -> bool {
        matches!(self, FaultKind::Drift | FaultKind::Multivariate)
    }
}

/// Every name [`Anomaly::detector`] takes: the series detectors, the incident policy's
/// staleness check, and the device models' kinds.
pub const DETECTORS: [&str; 9] =
    ["baseline", "drift", "context", "flatline", "limit", "novelty", "staleness", "pca", "gmm"];

/// What a detector says about one reading.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Anomaly {
    pub kind: FaultKind,
    /// Which detector said so (`baseline`, `flatline`, `limit`).
    pub detector: String,
    pub ts: i64,
    pub value: f64,
    /// Calibrated: 0 is normal, 0.5 is the alarm threshold, 1 is certain.
    pub score: f64,
    /// The level the detector expected, when it has one.
    pub expected: Option<f64>,
    /// The spread around `expected` (robust standard deviation).
    pub spread: Option<f64>,
    /// Deviation in spreads (signed), for baseline detectors.
    pub z: Option<f64>,
    /// The limit crossed, for limit detectors; the stuck duration (s) for flatline; the tail
    /// probability p of what was seen, for novelty.
    pub bound: Option<f64>,
    /// How many past readings the detector compared the reading with, when that is meaningful.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<u64>,
    /// The metrics that contributed most, for device-level (multivariate) detectors.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub contributors: Vec<String>,
    /// Part of an abrupt break: several of the device's metrics jumped off their baselines at
    /// once and its relations broke. A slow kind (drift, behaviour) marked so opens after the
    /// ordinary debounce instead of the slow one (`incident.slow_debounce_for`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub abrupt: bool,
}

impl Anomaly {
    /// What `detector` saw at `ts`: a reading of `value` that scored `score`; what else the
    /// detector knows is added with the `with_*` methods.
    pub fn new(kind: FaultKind, detector: &str, ts: i64, value: f64, score: f64) -> Anomaly {
        Anomaly {
            kind,
            detector: detector.to_string(),
            ts,
            value,
            score,
            expected: None,
            spread: None,
            z: None,
            bound: None,
            history: None,
            contributors: Vec::new(),
            abrupt: false,
        }
    }

    /// The level the detector expected, the spread around it, and the deviation in spreads.
    pub fn with_level(self, expected: f64, spread: f64, z: f64) -> Anomaly {
        Anomaly { expected: Some(expected), spread: Some(spread), z: Some(z), ..self }
    }

    /// The limit crossed, the stuck duration or the tail probability (see [`Anomaly::bound`]).
    pub fn with_bound(self, bound: f64) -> Anomaly {
        Anomaly { bound: Some(bound), ..self }
    }

    /// How many past readings the detector compared the reading with.
    pub fn with_history(self, history: u64) -> Anomaly {
        Anomaly { history: Some(history), ..self }
    }
}

/// A streaming detector over one series.
pub trait SeriesDetector: Send {
    /// Sees the next reading (event-time order) and reports an anomaly if there is one.
    fn observe(&mut self, ts: i64, value: f64) -> Option<Anomaly>;

    /// Makes the detector less sensitive by `factor` (> 1) after a confirmed false alarm.
    /// Detectors with hard thresholds (limits, flatline) ignore it.
    fn desensitize(&mut self, _factor: f64) {}
    /// Sees a reading known to be healthy (a recorded healthy run): learns from it, never
    /// reports. Detectors without a learning phase just observe it.
    fn learn(&mut self, ts: i64, value: f64) {
        let _ = self.observe(ts, value);
    }
    /// The healthy recording is over: what was learned becomes the reference.
    fn end_learning(&mut self) {}
    /// The calibrated score (0..1) of the last reading observed, anomalous or not. Detectors
    /// that only know "anomalous or not" leave it at 0; their anomalies carry their score.
    fn last_score(&self) -> f64 {
        0.0
    }
}

/// What the detectors of a series said about one reading.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observation {
    pub anomalies: Vec<Anomaly>,
    /// The highest calibrated score of any detector for this reading (0..1), also when no
    /// detector reported an anomaly: what `replay` writes as `anomaly_score`.
    pub score: f64,
}

/// The detectors of one series.
pub struct SeriesDetectors {
    /// Novelty and limits: nothing to keep across a restart.
    detectors: Vec<Box<dyn SeriesDetector>>,
    /// Held apart from the others: their state is stored across restarts (see
    /// [`SeriesState`]), and the drift detector's healthy reference gives forecasts their
    /// healthy envelope.
    baseline: Option<Baseline>,
    flatline: Option<Flatline>,
    drift: Option<Drift>,
}

/// The state of a series' detectors that survives a restart: what they learnt (the drift
/// detector's healthy reference, the baseline's level) and where they are (a flatline run).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeriesState {
    #[serde(default)]
    pub baseline: Option<Baseline>,
    #[serde(default)]
    pub flatline: Option<Flatline>,
    #[serde(default)]
    pub drift: Option<Drift>,
}

/// [`SeriesState`] as stored before the flatline learnt its rest level and repeat rate (the
/// binary encoding is positional: an old state is read in its own layout and converted).
#[derive(Debug, Clone, Deserialize)]
pub struct SeriesStateV1 {
    baseline: Option<Baseline>,
    flatline: Option<flatline::FlatlineV1>,
    drift: Option<Drift>,
}

impl From<SeriesStateV1> for SeriesState {
    fn from(old: SeriesStateV1) -> SeriesState {
        SeriesState { baseline: old.baseline, flatline: old.flatline.map(Flatline::from), drift: old.drift }
    }
}

impl SeriesDetectors {
    fn all(&mut self) -> impl Iterator<Item = &mut dyn SeriesDetector> {
        self.detectors
            .iter_mut()
            .map(|d| d.as_mut() as &mut dyn SeriesDetector)
            .chain(self.baseline.as_mut().map(|d| d as &mut dyn SeriesDetector))
            .chain(self.flatline.as_mut().map(|d| d as &mut dyn SeriesDetector))
            .chain(self.drift.as_mut().map(|d| d as &mut dyn SeriesDetector))
    }

    /// What survives a restart.
    fn state(&self) -> SeriesState {
        SeriesState { baseline: self.baseline.clone(), flatline: self.flatline.clone(), drift: self.drift.clone() }
    }

    /// Feeds one reading to every detector of the series.
    pub fn observe(&mut self, ts: i64, value: f64) -> Observation {
        let mut out = Observation::default();
        for d in self.all() {
            if let Some(a) = d.observe(ts, value) {
                out.score = out.score.max(a.score);
                out.anomalies.push(a);
            }
            out.score = out.score.max(d.last_score());
        }
        out.score = out.score.clamp(0.0, 1.0);
        out
    }
}

/// One set of detectors per (device, metric), created on first sight.
pub struct DetectorBank {
    config: DetectConfig,
    limits: LimitTable,
    /// Per device, per metric: two levels so a lookup by `&str` allocates nothing.
    /// Boxed: a map of four metrics has eight slots, and half of them would hold a whole
    /// `SeriesDetectors` unused.
    series: FastMap<String, FastMap<String, Box<SeriesDetectors>>>,
    /// Sensitivity factors learned from false alarms, applied to new and existing detectors.
    tuning: HashMap<(String, String), f64>,
    /// Series whose healthy reference was fixed or dropped since their state was last taken
    /// for storing.
    references_changed: Vec<(String, String)>,
    /// Per device: its context reference (see `context.rs`).
    contexts: FastMap<String, DeviceContext>,
    /// Per site: what its devices' residuals share.
    sites: FastMap<String, SiteCommon>,
    /// Devices whose series or context reference changed since their state was last stored:
    /// a checkpoint writes these only (see [`DetectorBank::changed_states`]), so a device that
    /// sent nothing in between costs no write.
    changed: FastSet<String>,
}

/// A false alarm widens a series' alarm band by this factor ...
pub const FALSE_ALARM_WIDENING: f64 = 1.25;
/// ... up to this much in total.
pub const MAX_WIDENING: f64 = 3.0;

impl DetectorBank {
    pub fn new(config: &DetectConfig) -> DetectorBank {
        DetectorBank {
            limits: LimitTable::new(&config.limits),
            config: config.clone(),
            series: FastMap::default(),
            tuning: HashMap::new(),
            references_changed: Vec::new(),
            contexts: FastMap::default(),
            sites: FastMap::default(),
            changed: FastSet::default(),
        }
    }

    /// Notes that `device`'s state is no longer the stored one; its name is copied only the
    /// first time after a checkpoint.
    fn touch(&mut self, device: &str) {
        if !self.changed.contains(device) {
            self.changed.insert(device.to_string());
        }
    }

    /// Sees one message of a device (its `(metric, value)` pairs at `ts`) with its context
    /// reference; nothing when the reference is switched off.
    pub fn observe_device(
        &mut self,
        device: &str,
        site: Option<&str>,
        ts: i64,
        values: &[(&str, f64)],
    ) -> ContextVerdict {
        if !self.config.context.enabled || values.is_empty() {
            return ContextVerdict { anomaly: None, commissioned: false };
        }
        self.touch(device);
        let config = &self.config.context;
        let names: Vec<&str> = values.iter().map(|v| v.0).collect();
        let ctx = self.contexts.entry_ref(device).or_insert_with(|| DeviceContext::new(config, ts, &names));
        if let Some(all) = ctx.with_new(&names) {
            // The device reports a metric it had not: it commissions again, with it.
            let all: Vec<&str> = all.iter().map(String::as_str).collect();
            *ctx = DeviceContext::new(config, ts, &all);
        }
        // A device without a site shares with no other.
        let mut alone = SiteCommon::default();
        let common = match site {
            Some(site) => self.sites.entry_ref(site).or_default(),
            None => &mut alone,
        };
        ctx.observe(config, ts, values, common, device)
    }

    /// Whether a device is still learning its normal operation (commissioning): only hard
    /// limits, stuck sensors and silence may raise incidents then. False when the context
    /// reference is switched off.
    pub fn commissioning(&self, device: &str) -> bool {
        self.config.context.enabled
            && self.contexts.get(device).is_none_or(|c| c.phase() == ContextPhase::Commissioning)
    }

    /// Whether the device's context reference has no word on its present state: a metric
    /// jumped and the smoothed values have not caught up (see [`DeviceContext::settling`]).
    pub fn settling(&self, device: &str, ts: i64) -> bool {
        self.contexts.get(device).is_some_and(|c| c.settling(&self.config.context, ts))
    }

    /// A device's context reference, once it has one.
    pub fn context(&self, device: &str) -> Option<&DeviceContext> {
        self.contexts.get(device)
    }

    /// Whether devices commission (the context reference is on).
    pub fn commissions(&self) -> bool {
        self.config.context.enabled
    }

    /// How many devices have ended commissioning.
    pub fn watching(&self) -> usize {
        self.contexts.values().filter(|c| c.phase() == ContextPhase::Watching).count()
    }

    /// The context reference of every device that changed since the last
    /// [`DetectorBank::mark_stored`], to store.
    pub fn changed_contexts(&self) -> impl Iterator<Item = (&str, &DeviceContext)> {
        self.contexts.iter().filter(|(d, _)| self.changed.contains(d.as_str())).map(|(d, c)| (d.as_str(), c))
    }

    /// Restores a device's context reference (from the store, at start); false when it was
    /// stored in an older feature layout, and the device commissions again.
    pub fn restore_context(&mut self, device: &str, context: DeviceContext) -> bool {
        if !context.current_layout() {
            return false;
        }
        if self.config.context.enabled {
            self.contexts.insert(device.to_string(), context);
        }
        true
    }

    /// Drops a series' detectors and tuning (its device was forgotten).
    pub fn forget(&mut self, device: &str, metric: &str) {
        if let Some(m) = self.series.get_mut(device) {
            m.remove(metric);
            if m.is_empty() {
                self.series.remove(device);
            }
        }
        self.tuning.remove(&(device.to_string(), metric.to_string()));
        if !self.series.contains_key(device) {
            self.contexts.remove(device);
            self.changed.remove(device);
            for site in self.sites.values_mut() {
                site.forget(device);
            }
        }
    }

    /// Restores a learned sensitivity factor (from the store, at start).
    pub fn set_tuning(&mut self, device: &str, metric: &str, factor: f64) {
        self.tuning.insert((device.to_string(), metric.to_string()), factor);
    }

    /// Widens a series' alarm band after a false alarm; returns the new total factor.
    pub fn desensitize(&mut self, device: &str, metric: &str) -> f64 {
        let key = (device.to_string(), metric.to_string());
        let old = self.tuning.get(&key).copied().unwrap_or(1.0);
        let new = (old * FALSE_ALARM_WIDENING).min(MAX_WIDENING);
        self.tuning.insert(key.clone(), new);
        if let Some(s) = self.series.get_mut(device).and_then(|m| m.get_mut(metric)) {
            for d in s.all() {
                d.desensitize(new / old);
            }
            self.touch(device);
        }
        new
    }

    /// A series' detectors, built on first sight: one hash per level, and the names are copied
    /// only when the series is new.
    fn entry(&mut self, device: &str, metric: &str) -> &mut SeriesDetectors {
        self.touch(device);
        let (config, limits, tuning) = (&self.config, &self.limits, &self.tuning);
        let by_metric = self.series.entry_ref(device).or_default();
        by_metric.entry_ref(metric).or_insert_with(|| Box::new(build(config, limits, tuning, device, metric)))
    }

    /// Starts a series over: fresh detectors that learn a new reference (the device runs at a
    /// new operating point). Learned false-alarm tuning is kept.
    /// How many of `device`'s metrics other than `metric` have repeated one value for at least
    /// `detect.flatline_readings` readings: two sensors of one machine that freeze together are
    /// the machine standing still (or its gateway repeating itself), not two sensors stuck at once.
    pub fn frozen_besides(&self, device: &str, metric: &str) -> usize {
        let readings = self.config.flatline_readings;
        self.series.get(device).map_or(0, |m| {
            m.iter()
                .filter(|(name, s)| name.as_str() != metric && s.flatline.as_ref().is_some_and(|f| f.run() >= readings))
                .count()
        })
    }

    pub fn recommission(&mut self, device: &str, metric: &str) {
        let s = build(&self.config, &self.limits, &self.tuning, device, metric);
        self.series.entry_ref(device).or_default().insert(metric.to_string(), Box::new(s));
        self.touch(device);
        self.references_changed.push((device.to_string(), metric.to_string()));
    }

    /// Learns from a reading known to be healthy (see [`SeriesDetector::learn`]).
    pub fn learn(&mut self, device: &str, metric: &str, ts: i64, value: f64) {
        for d in self.entry(device, metric).all() {
            d.learn(ts, value);
        }
    }

    /// Ends learning from a healthy recording: every series' reference is fixed.
    pub fn end_learning(&mut self) {
        for (device, c) in &mut self.contexts {
            c.end_learning(&self.config.context);
            self.changed.insert(device.clone());
        }
        self.changed.extend(self.series.keys().cloned());
        for (device, by_metric) in &mut self.series {
            for (metric, s) in by_metric {
                for d in s.all() {
                    d.end_learning();
                }
                self.references_changed.push((device.clone(), metric.clone()));
            }
        }
    }

    /// The healthy reference of a series, once it has one.
    pub fn reference(&self, device: &str, metric: &str) -> Option<Reference> {
        let s = self.series.get(device)?.get(metric)?;
        s.drift.as_ref()?.reference().copied()
    }

    /// The state that survives a restart of every series whose device changed since the last
    /// [`DetectorBank::mark_stored`], to store.
    pub fn changed_states(&self) -> impl Iterator<Item = (&str, &str, SeriesState)> {
        self.series
            .iter()
            .filter(|(d, _)| self.changed.contains(d.as_str()))
            .flat_map(|(d, by)| by.iter().map(move |(m, s)| (d, m, s)))
            .map(|(d, m, s)| (d.as_str(), m.as_str(), s.state()))
    }

    /// What [`DetectorBank::changed_states`] and [`DetectorBank::changed_contexts`] gave is
    /// stored (or was restored from the store): nothing has changed since.
    pub fn mark_stored(&mut self) {
        self.changed.clear();
    }

    /// How many devices changed since the last [`DetectorBank::mark_stored`].
    pub fn changed_devices(&self) -> usize {
        self.changed.len()
    }

    /// The state of one series, if it is tracked.
    pub fn state(&self, device: &str, metric: &str) -> Option<SeriesState> {
        Some(self.series.get(device)?.get(metric)?.state())
    }

    /// Restores a series' state (from the store, at start); detectors switched off since are
    /// left off.
    pub fn restore(&mut self, device: &str, metric: &str, state: SeriesState) {
        let (baseline, flatline, drift) = (self.config.baseline, self.config.flatline, self.config.drift.enabled);
        let s = self.entry(device, metric);
        if let (true, Some(b)) = (baseline, state.baseline) {
            s.baseline = Some(b);
        }
        if let (true, Some(f)) = (flatline, state.flatline) {
            s.flatline = Some(f);
        }
        if let (true, Some(d)) = (drift, state.drift) {
            s.drift = Some(d);
        }
    }

    /// Scores one reading of a series.
    pub fn observe(&mut self, device: &str, metric: &str, ts: i64, value: f64) -> Observation {
        let s = self.entry(device, metric);
        let had = s.drift.as_ref().is_some_and(|d| d.reference().is_some());
        let o = s.observe(ts, value);
        let has = s.drift.as_ref().is_some_and(|d| d.reference().is_some());
        if had != has {
            self.references_changed.push((device.to_string(), metric.to_string()));
        }
        o
    }

    /// Whether a healthy reference was fixed or dropped since the last call: time to store the
    /// state, so a restart does not lose it.
    pub fn take_references_changed(&mut self) -> Vec<(String, String)> {
        std::mem::take(&mut self.references_changed)
    }

    /// The configured limit of a series, if any.
    pub fn limit(&self, device: &str, metric: &str) -> Option<Limit> {
        self.limits.lookup(device, metric)
    }

    /// Number of series with detector state (memory is bounded by the number of series).
    pub fn len(&self) -> usize {
        self.series.values().map(FastMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.series.values().all(FastMap::is_empty)
    }
}

/// A new series' detectors, as configured, with its restored false-alarm widening.
fn build(
    c: &DetectConfig,
    limits: &LimitTable,
    tuning: &HashMap<(String, String), f64>,
    device: &str,
    metric: &str,
) -> SeriesDetectors {
    let mut detectors: Vec<Box<dyn SeriesDetector>> = Vec::new();
    let baseline = c
        .baseline
        .then(|| Baseline::new(c.warmup_readings, c.baseline_half_life, c.z_threshold, c.min_relative_spread));
    let flatline = c.flatline.then(|| Flatline::new(c.flatline_readings, c.flatline_after.as_millis() as i64));
    if c.novelty.enabled {
        detectors.push(Box::new(Novelty::new(&c.novelty)));
    }
    if let Some(limit) = limits.lookup(device, metric) {
        detectors.push(Box::new(limit));
    }
    let drift = c.drift.enabled.then(|| Drift::new(&c.drift, c.min_relative_spread));
    let mut s = SeriesDetectors { detectors, baseline, flatline, drift };
    // A restored false-alarm widening is applied once, here.
    if let Some(&factor) = tuning.get(&(device.to_string(), metric.to_string())) {
        for d in s.all() {
            d.desensitize(factor);
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bank whose one series was restored with `factor`, after 500 readings of noise with a
    /// spread of ~0.58 around 10; returns whether a reading `z` spreads off alarms.
    fn alarms_at(factor: f64, z: f64) -> bool {
        let config = DetectConfig {
            drift: DriftConfig { enabled: false, ..DriftConfig::default() },
            flatline: false,
            warmup_readings: 50,
            ..DetectConfig::default()
        };
        let mut bank = DetectorBank::new(&config);
        bank.set_tuning("d", "m", factor);
        for i in 0..500 {
            bank.observe("d", "m", i, 10.0 + if i % 2 == 0 { 0.577 } else { -0.577 });
        }
        !bank.observe("d", "m", 500, 10.0 + z * 0.577).anomalies.is_empty()
    }

    #[test]
    fn a_restored_false_alarm_widening_is_applied_once() {
        // z_threshold 5 widened ×2 once is 10 spreads: 12 alarms, 8 does not. Applied twice it
        // would be 20 spreads, as a ×4 widening is, which hides 12.
        assert!(alarms_at(2.0, 12.0), "12 spreads is beyond a threshold widened once (10)");
        assert!(!alarms_at(2.0, 8.0), "8 spreads is inside a threshold widened once (10)");
        assert!(!alarms_at(4.0, 12.0), "a widening applied twice (×4) would hide 12 spreads");
    }
}
