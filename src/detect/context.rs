//! The context reference: what a metric should read, given what the rest of its device is
//! doing and the time of day, learnt over a span that shows the device's normal days.
//!
//! A healthy compressor's discharge temperature follows its load and the weather; its current
//! follows the load; a pump's pressure follows its flow. A reference that is one level (what
//! the series read in its first hour) calls every shift change and every warm afternoon a
//! drift. This one predicts each metric from the device's other metrics (their values and
//! squares, so a pump's affinity laws fit too) and from daily harmonics of the time of day, a
//! ridge regression per metric, and judges the *residual*: a metric that only follows its load
//! or the day never alarms, and a relation that breaks alarms even while every metric stays
//! inside its own range.
//!
//! - **Commissioning.** A device first spends `commissioning` of event time (24 h by default:
//!   a whole day and night) learning, extended while it keeps reaching operating regions it had
//!   not shown (up to `max_commissioning`). Only the sufficient statistics are kept (the Gram
//!   matrix of the feature vectors, a few hundred numbers a device), so memory does not grow
//!   with the span. Until commissioning ends the device is `commissioning` and this detector
//!   says nothing.
//! - **Limits from held-out residuals.** During the second half of commissioning the model is
//!   refitted every `refit_every` on what came before, and each smoothed residual is measured
//!   against a model that had not seen it: the alarm sits `margin` times beyond the largest of
//!   those out-of-sample residuals (never below four of the in-sample residual's standard
//!   deviations). The limit is thus set by how well the device's own normal days can be
//!   predicted, not by a textbook distribution.
//! - **Smoothing.** Values are smoothed (an EWMA with time constant `smoothing`) before they
//!   are compared, so noise averages out while a lasting shift adds up; the squares are smoothed
//!   after squaring, so the regression is linear in what is smoothed and the residual of the
//!   smoothed values is the smoothed residual, through a start or a stop too.
//! - **Lags.** Each metric's slower smoothing (four times `smoothing`) is a feature of the
//!   others', taken only where it leaves less than 0.7 of the residual the present values
//!   leave: the discharge temperature of an on/off compressor lags every start and stop by
//!   minutes, and is predicted from a blend of the two; a metric that follows the present
//!   values is predicted from them alone.
//! - **Following seasons, never a fault.** After commissioning the statistics keep learning,
//!   forgetting with `adapt_half_life`, only from messages where every residual is below half
//!   its limit; the model is refitted from them every `refit_every`.
//! - **Following the site.** What the site's other devices show in a metric (the median of their
//!   residuals) is a feature of that metric, so the regression learns how strongly a device
//!   follows its site; commissioning seldom sees a weather front, so that gain starts small. A
//!   message is therefore also learnt from when every residual is below half its limit *beside
//!   the site*, i.e. once the device is taken to follow its site fully: a front is learnt while
//!   it comes (refitted eight times as often meanwhile), and a device's own fault, which its
//!   site does not show, never is. A jump of the whole site (a residual past twice its limit at
//!   once) is not learnt this way: it is a site-wide change, grouped as such (see
//!   `incident::site_wide`).
//!
//! The fit solves the ridge normal equations of standardised features with linfa's Cholesky
//! solver (`linfa-linalg`).

use std::time::Duration;

use linfa_linalg::cholesky::SolveC;
use ndarray::Array2;
use serde::{Deserialize, Serialize};

use super::{calibrate, Anomaly, FaultKind};
use crate::settings::Invalid;

/// `[detect.context]`: the context reference (see the module docs).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ContextConfig {
    pub enabled: bool,
    /// Event time a device spends learning its normal operation before the detector judges it.
    #[serde(with = "humantime_serde")]
    pub commissioning: Duration,
    /// Commissioning goes on while the device keeps reaching new operating regions, up to this.
    #[serde(with = "humantime_serde")]
    pub max_commissioning: Duration,
    /// Time constant of the smoothing of each metric before it is compared.
    #[serde(with = "humantime_serde")]
    pub smoothing: Duration,
    /// Ridge penalty on the standardised features (0: ordinary least squares).
    pub ridge: f64,
    /// The alarm sits this many times beyond the largest out-of-sample residual of commissioning.
    pub margin: f64,
    /// Daily harmonics among the features (0 to 3): 2 fits a day shift's two ramps.
    pub daily_harmonics: usize,
    /// How often the model is refitted (while commissioning, and after it while healthy).
    #[serde(with = "humantime_serde")]
    pub refit_every: Duration,
    /// Half-life of what the model keeps learning after commissioning, from healthy messages.
    #[serde(with = "humantime_serde")]
    pub adapt_half_life: Duration,
}

impl Default for ContextConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            commissioning: Duration::from_secs(24 * 3600),
            max_commissioning: Duration::from_secs(72 * 3600),
            smoothing: Duration::from_secs(180),
            ridge: 0.01,
            margin: 2.0,
            daily_harmonics: 2,
            refit_every: Duration::from_secs(2 * 3600),
            adapt_half_life: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

impl ContextConfig {
    /// Checks the values, naming the offending key.
    pub fn validate(&self) -> Result<(), Invalid> {
        let key = |k: &str| format!("detect.context.{k}");
        if self.commissioning < Duration::from_secs(600) {
            return Err(Invalid::new(key("commissioning"), "must be at least 10m"));
        }
        if self.max_commissioning < self.commissioning {
            return Err(Invalid::new(key("max_commissioning"), "must be at least detect.context.commissioning"));
        }
        if self.smoothing.is_zero() || self.smoothing.checked_mul(8).is_none_or(|s| s > self.commissioning) {
            return Err(Invalid::new(key("smoothing"), "must be above 0 and at most an eighth of commissioning"));
        }
        if !(self.ridge >= 0.0 && self.ridge.is_finite()) {
            return Err(Invalid::new(key("ridge"), "must be 0 or more"));
        }
        if !(self.margin >= 1.0 && self.margin.is_finite()) {
            return Err(Invalid::new(key("margin"), "must be at least 1"));
        }
        if self.daily_harmonics > 3 {
            return Err(Invalid::new(key("daily_harmonics"), "must be 0 to 3"));
        }
        if self.refit_every.is_zero() || self.refit_every.checked_mul(2).is_none_or(|r| r > self.commissioning) {
            return Err(Invalid::new(key("refit_every"), "must be above 0 and at most half of commissioning"));
        }
        if self.adapt_half_life < self.commissioning {
            return Err(Invalid::new(key("adapt_half_life"), "must be at least detect.context.commissioning"));
        }
        Ok(())
    }
}

/// The metrics of a device the model takes, at most (a wider device uses the first ones, by
/// name): the Gram matrix grows with the square of the features.
pub const MAX_CONTEXT_METRICS: usize = 8;
/// A device is judged by its context only with this many metrics (see [`DeviceContext::judges`]).
const MIN_JUDGED_METRICS: usize = 2;
/// The alarm is never below this many standard deviations of the in-sample residual.
const MIN_SIGMAS: f64 = 4.0;
/// A metric is compared only after this many smoothing time constants of unbroken readings
/// (after a gap the smoothing starts over).
const WARM_TAUS: f64 = 3.0;
/// A metric not heard from for this many smoothing time constants (and at least
/// [`GAP_MIN_MS`]) was in a gap: its smoothing starts over.
const GAP_TAUS: f64 = 20.0;
const GAP_MIN_MS: f64 = 3_600_000.0;
/// A reading further than this share of its metric's range from its smoothed value is a
/// transient (a start, a stop, a step): the device is judged again once the smoothing settled.
const TRANSIENT: f64 = 0.1;
/// A reading this many times its metric's noise from the smoothed value is not noise.
const NOISE_CAP: f64 = 6.0;
/// Time constant of the noise estimate.
const NOISE_TAU_MS: f64 = 3_600_000.0;
/// How long a judgement of the context stands for the level detectors (a message the context
/// cannot judge, in a transient or after a gap, keeps the last one this long).
const EXPLAINED_FOR: i64 = 15 * 60_000;
/// Readings a metric's noise estimate takes whole before jumps are capped in it.
const NOISE_WARMUP: u32 = 30;
/// A residual this many times its limit is a jump, not a movement learnt beside the site.
const JUMP: f64 = 2.0;
/// While a device is learnt beside its site (its site is moving), it is refitted this many
/// times as often as `refit_every`: the gain it follows its site with is what is being learnt.
const EAGER_REFITS: i64 = 8;
/// A value further than this share of the range seen so far beyond it is a new operating region.
const NEW_REGION: f64 = 0.1;
/// The slow smoothing of each metric, a feature of the others', is this many times `smoothing`:
/// with the plain one, a lag of minutes (a discharge temperature behind a start) is a blend of
/// the two.
const SLOW_TAUS: f64 = 4.0;
/// The feature layout of [`DeviceContext`] (stored with it, its first field): 2 added the
/// smoothed squares and the slow smoothings. The layouts before had no number; their first
/// field, the phase, reads as 0 or 1.
const LAYOUT: u32 = 2;
/// The others' slow smoothings predict a metric only where they leave less than this share of
/// the residual standard deviation the present values leave.
const LAGGED_GAIN: f64 = 0.7;

/// The residuals of one site's devices, per metric: what they show together is the site's
/// (the weather, a plant-wide change), not one device's fault.
#[derive(Debug, Default)]
pub struct SiteCommon {
    by_metric: crate::FastMap<String, SiteMetric>,
}

/// One metric's latest residual of each device at a site.
#[derive(Debug, Default)]
struct SiteMetric {
    /// Device → its place in `entries`.
    index: crate::FastMap<String, usize>,
    /// (when, residual) per device.
    entries: Vec<(i64, f64)>,
    /// A large site's median of every fresh residual, and when (event time) it was taken.
    cached: Option<(i64, f64)>,
}

/// Fewer other devices than this reporting a metric at a site: no common part is taken out.
const SITE_MIN_OTHERS: usize = 2;
/// Up to this many devices a site's median is taken anew for every message, without the
/// device's own residual; beyond it, it is the median of them all, taken again every
/// [`SITE_REFRESH_MS`] of event time (the weather is slow, and a site of thousands of devices
/// must not cost a sort per message).
const SITE_EXACT_UP_TO: usize = 16;
const SITE_REFRESH_MS: i64 = 60_000;

impl SiteCommon {
    /// Records `device`'s residual `r` of `metric` at `ts` and returns the median of the site's
    /// residuals of the same metric taken within `fresh_ms` (of the other devices' at a small
    /// site; 0 with fewer than [`SITE_MIN_OTHERS`] other devices).
    pub fn record(&mut self, metric: &str, device: &str, ts: i64, r: f64, fresh_ms: i64) -> f64 {
        let site = self.by_metric.entry_ref(metric).or_default();
        let i = match site.index.get(device) {
            Some(&i) => i,
            None => {
                site.index.insert(device.to_string(), site.entries.len());
                site.entries.push((ts, r));
                site.entries.len() - 1
            }
        };
        site.entries[i] = (ts, r);
        if site.entries.len() <= SITE_EXACT_UP_TO {
            return site.others(i, ts, fresh_ms);
        }
        let fresh = |e: &(i64, f64)| (ts - e.0).abs() <= fresh_ms;
        match site.cached {
            Some((at, m)) if (ts - at).abs() < SITE_REFRESH_MS => m,
            _ => {
                let mut all: Vec<f64> = site.entries.iter().filter(|e| fresh(e)).map(|e| e.1).collect();
                let m = if all.len() <= SITE_MIN_OTHERS { 0.0 } else { median(&mut all) };
                site.cached = Some((ts, m));
                m
            }
        }
    }

    /// Forgets a device (it was forgotten).
    pub fn forget(&mut self, device: &str) {
        for site in self.by_metric.values_mut() {
            if let Some(i) = site.index.remove(device) {
                site.entries.swap_remove(i);
                if let Some(moved) = site.index.values_mut().find(|j| **j == site.entries.len()) {
                    *moved = i;
                }
            }
        }
    }
}

impl SiteMetric {
    /// The median of the residuals taken within `fresh_ms` of `ts` of every device but the one
    /// at `own`; 0 with fewer than [`SITE_MIN_OTHERS`] of them.
    fn others(&self, own: usize, ts: i64, fresh_ms: i64) -> f64 {
        let mut others: Vec<f64> = self
            .entries
            .iter()
            .enumerate()
            .filter(|(j, e)| *j != own && (ts - e.0).abs() <= fresh_ms)
            .map(|(_, e)| e.1)
            .collect();
        if others.len() < SITE_MIN_OTHERS {
            0.0
        } else {
            median(&mut others)
        }
    }
}

/// The median of `values` (not empty); reorders them.
fn median(values: &mut [f64]) -> f64 {
    let (n, mid) = (values.len(), values.len() / 2);
    let (below, &mut m, _) = values.select_nth_unstable_by(mid, f64::total_cmp);
    if n % 2 == 1 {
        m
    } else {
        0.5 * (below.iter().copied().fold(f64::NEG_INFINITY, f64::max) + m)
    }
}

/// Where a device is in its life: learning, or watched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContextPhase {
    Commissioning,
    Watching,
}

/// One metric of a device: its smoothed value and what it is judged against.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct MetricState {
    name: String,
    smoothed: f64,
    /// The smoothed square of the readings (smoothed after squaring: the regression is then
    /// the same for smoothed values as for raw ones, a start or stop included), and a slower
    /// smoothing of the readings ([`SLOW_TAUS`]): what a thermal mass follows.
    #[serde(default)]
    smoothed_sq: f64,
    #[serde(default)]
    slow: f64,
    last_ts: Option<i64>,
    /// Since when readings came without a gap.
    warm_since: i64,
    last_value: f64,
    /// Mean absolute difference of a reading from the smoothed value (slowly averaged): the
    /// metric's noise, against which a jump is told from it.
    #[serde(default)]
    noise: f64,
    /// Readings the noise estimate has seen (it is a plain mean over its first ones).
    #[serde(default)]
    noise_n: u32,
    /// Range of the smoothed value seen while commissioning.
    lo: f64,
    hi: f64,
    /// Largest out-of-sample smoothed residual of the second half of commissioning, of the
    /// messages inside what the model that predicted them had seen (see [`DeviceContext::seen`]).
    held_out_max: f64,
    /// The range of the smoothed value when the model was last fitted while commissioning.
    #[serde(default)]
    fit_lo: f64,
    #[serde(default)]
    fit_hi: f64,
    /// Fitted: intercept and coefficients over the feature vector (0 for this metric itself).
    coef: Vec<f64>,
    /// In-sample standard deviation of the smoothed residual, and the alarm limit.
    sigma: f64,
    limit: f64,
    /// The residual of the last message judged, in limits, and when (event time).
    #[serde(default)]
    excess: f64,
    #[serde(default)]
    judged_at: Option<i64>,
}

/// One device's context model (see the module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceContext {
    /// Which feature layout the Gram matrix and the coefficients are in ([`LAYOUT`]); one
    /// stored by an older version commissions again.
    #[serde(default)]
    layout: u32,
    phase: ContextPhase,
    metrics: Vec<MetricState>,
    harmonics: usize,
    first_ts: i64,
    /// When the device last reached a new operating region (commissioning goes on after it).
    new_region_at: i64,
    last_fit_ts: Option<i64>,
    last_learn_ts: Option<i64>,
    /// The Gram matrix of the feature vectors: its upper triangle, row by row (see [`tri`]).
    gram: Vec<f64>,
    /// Each metric's origin and unit in the features (its first smoothed value and the size of
    /// it): the features are kept near 1 so that the Gram matrix of squares of large values
    /// (a process variable of 2,700) loses no precision.
    origin: Vec<f64>,
    unit: Vec<f64>,
    /// Whether a fitted model is in `coef` (an interim one while commissioning).
    fitted: bool,
    /// The largest residual of the last message judged, in limits (0 before any).
    #[serde(default)]
    last_excess: f64,
    /// When commissioning ended (event time).
    #[serde(default)]
    commissioned_at: Option<i64>,
    /// When a metric last jumped (a start, a stop, a step of load): the smoothed values lag
    /// the raw ones until they settle, and a nonlinear relation of lagging values is not the
    /// relation.
    #[serde(default)]
    unsettled_at: i64,
    /// The hours of the day (bit per hour) that commissioning has seen messages in, and those
    /// the model last fitted while commissioning had seen.
    #[serde(default)]
    hours: u32,
    #[serde(default)]
    fit_hours: u32,
}

/// What the context model says about one message of a device.
#[derive(Debug, Clone, PartialEq)]
pub struct ContextVerdict {
    /// The metric whose residual is furthest beyond its limit, when one is beyond it.
    pub anomaly: Option<(String, Anomaly)>,
    /// Commissioning ended with this message.
    pub commissioned: bool,
}

impl DeviceContext {
    /// A device seen for the first time at `ts` with these metrics (sorted by name, at most
    /// [`MAX_CONTEXT_METRICS`]).
    pub fn new(config: &ContextConfig, ts: i64, names: &[&str]) -> DeviceContext {
        let mut names: Vec<&str> = names.to_vec();
        names.sort_unstable();
        names.dedup();
        names.truncate(MAX_CONTEXT_METRICS);
        let metrics: Vec<MetricState> = names
            .iter()
            .map(|n| MetricState {
                name: n.to_string(),
                smoothed: 0.0,
                smoothed_sq: 0.0,
                slow: 0.0,
                last_ts: None,
                warm_since: ts,
                last_value: 0.0,
                noise: 0.0,
                noise_n: 0,
                lo: f64::INFINITY,
                hi: f64::NEG_INFINITY,
                held_out_max: 0.0,
                fit_lo: 0.0,
                fit_hi: 0.0,
                coef: Vec::new(),
                sigma: 0.0,
                limit: 0.0,
                excess: 0.0,
                judged_at: None,
            })
            .collect();
        let dim = 1 + 4 * metrics.len() + 2 * config.daily_harmonics;
        DeviceContext {
            layout: LAYOUT,
            phase: ContextPhase::Commissioning,
            metrics,
            harmonics: config.daily_harmonics,
            first_ts: ts,
            new_region_at: ts,
            last_fit_ts: None,
            last_learn_ts: None,
            gram: vec![0.0; dim * (dim + 1) / 2],
            origin: Vec::new(),
            unit: Vec::new(),
            fitted: false,
            last_excess: 0.0,
            commissioned_at: None,
            unsettled_at: ts,
            hours: 0,
            fit_hours: 0,
        }
    }

    pub fn phase(&self) -> ContextPhase {
        self.phase
    }

    /// Whether it judges the device and, at the last message, saw every residual of these
    /// `metrics` (all of the device's) below half its limit: nothing in the device's relations,
    /// its time of day or its site's common behaviour is off.
    pub fn all_within(&self, metrics: usize) -> bool {
        self.phase == ContextPhase::Watching && self.judges() && self.metrics.len() == metrics && self.last_excess < 0.5
    }

    /// Whether a metric jumped lately and the smoothed values have not caught up by `ts`: the
    /// context's word on the device (judging, explaining) is then from before the jump.
    pub fn settling(&self, config: &ContextConfig, ts: i64) -> bool {
        self.phase == ContextPhase::Watching && ts - self.unsettled_at < warm_after(config)
    }

    /// Whether it judges the device at all: fitted, and with an operating context to predict
    /// from. A device with a single metric has none but the clock, and one day of history
    /// cannot tell its daily pattern from a one-off: the context only commissions it, and the
    /// level detectors judge it (on the NAB corpus of single series, judging by the clock
    /// alone raised 825 false alerts against 207 true ones).
    fn judges(&self) -> bool {
        self.fitted && self.metrics.len() >= MIN_JUDGED_METRICS
    }

    /// Whether it judges `metric` and found it, at a message no older than `EXPLAINED_FOR`
    /// before `ts`, well inside what the device's operating context predicts (below half its
    /// limit): a level change of that metric is then the load, the time of day or the site
    /// moving it, not a fault, and the level detectors' word on it is overruled.
    pub fn explains(&self, metric: &str, ts: i64) -> bool {
        self.phase == ContextPhase::Watching
            && self.judges()
            && self
                .metrics
                .iter()
                .any(|m| m.name == metric && m.excess < 0.5 && m.judged_at.is_some_and(|t| ts - t <= EXPLAINED_FOR))
    }

    /// When commissioning began (event time of the device's first message).
    pub fn started_at(&self) -> i64 {
        self.first_ts
    }

    /// When commissioning ended (event time), once it has.
    pub fn commissioned_at(&self) -> Option<i64> {
        self.commissioned_at
    }

    /// How many metrics it covers.
    pub fn len(&self) -> usize {
        self.metrics.len()
    }

    pub fn is_empty(&self) -> bool {
        self.metrics.is_empty()
    }

    /// Every metric it covers and those of `names` it does not, when there are such and
    /// room for them (at most [`MAX_CONTEXT_METRICS`]); `None` when it covers them all.
    pub fn with_new(&self, names: &[&str]) -> Option<Vec<String>> {
        let room = MAX_CONTEXT_METRICS.saturating_sub(self.metrics.len());
        let new: Vec<&str> = names.iter().copied().filter(|n| !self.metrics.iter().any(|m| m.name == *n)).collect();
        if new.is_empty() || room == 0 {
            return None;
        }
        Some(self.metrics.iter().map(|m| m.name.clone()).chain(new.into_iter().map(str::to_string)).collect())
    }

    fn dim(&self) -> usize {
        self.own_dim() + self.metrics.len()
    }

    /// The features of the device's own: 1, its metrics and their squares, their slow
    /// smoothings, the harmonics. The site's common residuals of each metric follow them.
    fn own_dim(&self) -> usize {
        1 + 3 * self.metrics.len() + 2 * self.harmonics
    }

    /// Whether it was stored in this version's feature layout.
    pub fn current_layout(&self) -> bool {
        self.layout == LAYOUT
    }

    /// The device's own features at `ts`: 1, each smoothed metric and its smoothed square, each
    /// metric's slow smoothing, and the daily harmonics (the site's common residuals are
    /// appended later).
    fn features(&mut self, ts: i64) -> Vec<f64> {
        if self.origin.len() != self.metrics.len() {
            self.origin = self.metrics.iter().map(|m| m.smoothed).collect();
            self.unit = self.metrics.iter().map(|m| m.smoothed.abs().max(1e-3)).collect();
        }
        let mut z = Vec::with_capacity(self.dim());
        z.push(1.0);
        for (i, m) in self.metrics.iter().enumerate() {
            let (o, u) = (self.origin[i], self.unit[i]);
            // The smoothing of ((v - o) / u)², from the smoothings of v and v².
            let sq = ((m.smoothed_sq - 2.0 * o * m.smoothed + o * o) / (u * u)).max(0.0);
            z.push((m.smoothed - o) / u);
            z.push(sq);
        }
        for (i, m) in self.metrics.iter().enumerate() {
            z.push((m.slow - self.origin[i]) / self.unit[i]);
        }
        let day = (ts.rem_euclid(86_400_000) as f64) / 86_400_000.0 * std::f64::consts::TAU;
        for k in 1..=self.harmonics {
            z.push((day * k as f64).sin());
            z.push((day * k as f64).cos());
        }
        z
    }

    /// Adds `z` to the Gram matrix with weight 1 after scaling what is there by `keep`.
    fn accumulate(&mut self, z: &[f64], keep: f64) {
        let d = z.len();
        for i in 0..d {
            for j in i..d {
                let g = &mut self.gram[tri(d, i, j)];
                *g = *g * keep + z[i] * z[j];
            }
        }
    }

    /// The smoothed residual of metric `j` (seen minus predicted) and the prediction, in the
    /// metric's own unit, from the features `z` (all of them, or the device's own first ones).
    fn residual_from(&self, j: usize, z: &[f64]) -> (f64, f64) {
        let m = &self.metrics[j];
        let predicted = self.origin[j] + self.unit[j] * m.coef.iter().zip(z).map(|(c, x)| c * x).sum::<f64>();
        (m.smoothed - predicted, predicted)
    }

    /// Fits every metric's ridge regression on the Gram matrix; false when there is too
    /// little to fit on (the model is left as it was).
    fn fit(&mut self, ridge: f64) -> bool {
        let Some(fits) = fit_gram(&self.gram, self.dim(), self.metrics.len(), ridge) else { return false };
        for ((m, (coef, sigma)), unit) in self.metrics.iter_mut().zip(fits).zip(&self.unit) {
            m.coef = coef;
            m.sigma = sigma * unit;
        }
        self.fitted = true;
        true
    }

    /// Sees one message of the device: `(metric, value)` pairs at `ts`.
    pub fn observe(
        &mut self,
        config: &ContextConfig,
        ts: i64,
        values: &[(&str, f64)],
        site: &mut SiteCommon,
        device: &str,
    ) -> ContextVerdict {
        let mut verdict = ContextVerdict { anomaly: None, commissioned: false };
        let tau = config.smoothing.as_millis().max(1) as f64;
        // Longer than this without a reading is a gap: the smoothing starts over. A device that
        // reports every 5 minutes is smoothed little, but it is judged all the same.
        let gap = (GAP_TAUS * tau).max(GAP_MIN_MS);
        for &(name, value) in values {
            let Some(m) = self.metrics.iter_mut().find(|m| m.name == name) else { continue };
            if !value.is_finite() {
                continue;
            }
            match m.last_ts {
                Some(last) if ts <= last => continue,
                Some(last) if ((ts - last) as f64) <= gap => {
                    let dt = (ts - last) as f64;
                    let off = (value - m.smoothed).abs();
                    // Jumps count only up to the cap in the noise; they are what it is for. The
                    // first readings count whole: a sensor that reports in coarse steps often
                    // repeats its first value, and a noise of 0 would cap every later one at 0.
                    let capped =
                        if m.noise_n >= NOISE_WARMUP && m.noise > 0.0 { off.min(NOISE_CAP * m.noise) } else { off };
                    m.noise_n = m.noise_n.saturating_add(1);
                    let weight = (1.0 - (-dt / NOISE_TAU_MS).exp()).max(1.0 / f64::from(m.noise_n));
                    m.noise += (capped - m.noise) * weight;
                    let a = 1.0 - (-dt / tau).exp();
                    m.smoothed += (value - m.smoothed) * a;
                    m.smoothed_sq += (value * value - m.smoothed_sq) * a;
                    m.slow += (value - m.slow) * (1.0 - (-dt / (SLOW_TAUS * tau)).exp());
                }
                _ => {
                    m.smoothed = value;
                    m.smoothed_sq = value * value;
                    m.slow = value;
                    m.warm_since = ts;
                }
            }
            m.last_ts = Some(ts);
            m.last_value = value;
        }
        let warm_after = warm_after(config);
        if self.phase == ContextPhase::Commissioning {
            // The range each metric has shown: new regions extend commissioning, and jumps are
            // measured against it.
            for m in self.metrics.iter_mut().filter(|m| m.last_ts == Some(ts)) {
                let range = (m.hi - m.lo).max(0.0);
                if m.lo.is_finite()
                    && (m.smoothed < m.lo - NEW_REGION * range || m.smoothed > m.hi + NEW_REGION * range)
                {
                    self.new_region_at = ts;
                }
                m.lo = m.lo.min(m.smoothed);
                m.hi = m.hi.max(m.smoothed);
            }
        }
        let jumped = self.metrics.iter().any(|m| {
            let range = m.hi - m.lo;
            m.last_ts == Some(ts)
                && range > 0.0
                && (m.last_value - m.smoothed).abs() > (TRANSIENT * range).max(NOISE_CAP * m.noise)
        });
        if jumped {
            self.unsettled_at = ts;
        }
        if ts - self.unsettled_at < warm_after {
            // Neither learnt from nor judged until the smoothed values have caught up.
            return verdict;
        }
        let fresh =
            |m: &MetricState| m.last_ts.is_some_and(|t| (ts - t) as f64 <= gap) && ts - m.warm_since >= warm_after;
        if !self.metrics.iter().all(fresh) {
            // Judged only when every metric was heard from lately and has been smoothed long
            // enough.
            return verdict;
        }
        let mut z = self.features(ts);
        // What the site's other devices show in the same metric at the moment (the median of
        // their residuals from their own features) is a feature too: a weather front moves
        // them all, and the regression learns how strongly this device follows them.
        let own = self.own_dim();
        for j in 0..self.metrics.len() {
            let common = if self.fitted {
                let (r, _) = self.residual_from(j, &z[..own]);
                site.record(&self.metrics[j].name, device, ts, r, gap as i64)
            } else {
                0.0
            };
            z.push(common / self.unit[j]);
        }
        let residuals: Vec<(f64, f64)> = (0..self.metrics.len()).map(|j| self.residual_from(j, &z)).collect();
        match self.phase {
            ContextPhase::Commissioning => {
                self.commission(config, ts, &z, &residuals);
                if self.phase == ContextPhase::Watching {
                    verdict.commissioned = true;
                }
            }
            ContextPhase::Watching => verdict.anomaly = self.judge(config, ts, &z, &residuals),
        }
        verdict
    }

    fn commission(&mut self, config: &ContextConfig, ts: i64, z: &[f64], residuals: &[(f64, f64)]) {
        let span = ts - self.first_ts;
        let half = config.commissioning.as_millis() as i64 / 2;
        // Out-of-sample residuals of the second half, against the model fitted before them, at
        // the messages inside what that model had seen: its error where it interpolates, which
        // is where it judges once commissioned (a region it never saw is learnt, not judged).
        self.hours |= hour_bit(ts);
        if self.fitted && span >= half && self.seen(ts) {
            for (m, (r, _)) in self.metrics.iter_mut().zip(residuals) {
                m.held_out_max = m.held_out_max.max(r.abs());
            }
        }
        self.accumulate(z, 1.0);
        let refit = config.refit_every.as_millis() as i64;
        if span >= half - refit && self.last_fit_ts.is_none_or(|t| ts - t >= refit) && self.fit(config.ridge) {
            self.last_fit_ts = Some(ts);
            self.fit_hours = self.hours;
            for m in &mut self.metrics {
                (m.fit_lo, m.fit_hi) = (m.lo, m.hi);
            }
        }
        let settled = ts - self.new_region_at >= half / 2;
        let long_enough = span >= config.commissioning.as_millis() as i64;
        if long_enough && settled || span >= config.max_commissioning.as_millis() as i64 {
            // A device whose metrics cannot be fitted (too few varied messages) is watched by
            // the other detectors all the same; this one then says nothing.
            self.fit(config.ridge);
            self.start_watching(config, ts);
            self.last_fit_ts = Some(ts);
            self.last_learn_ts = Some(ts);
        }
    }

    /// Whether the model last fitted while commissioning had seen messages like this one: at
    /// this hour of the day, and every metric inside the range it had shown (with the margin
    /// that tells a new operating region).
    fn seen(&self, ts: i64) -> bool {
        self.fit_hours & hour_bit(ts) != 0
            && self.metrics.iter().all(|m| {
                let margin = NEW_REGION * (m.fit_hi - m.fit_lo).max(0.0);
                m.smoothed >= m.fit_lo - margin && m.smoothed <= m.fit_hi + margin
            })
    }

    /// Sets each metric's limit from commissioning and ends it: `margin` times the largest
    /// residual a model that had not seen it showed in the second half of commissioning,
    /// never below [`MIN_SIGMAS`] in-sample standard deviations.
    fn start_watching(&mut self, config: &ContextConfig, ts: i64) {
        for m in &mut self.metrics {
            let floor = MIN_SIGMAS * m.sigma.max(1e-3 * (1.0 + m.hi.abs().max(m.lo.abs())));
            m.limit = config.margin * m.held_out_max.max(floor);
        }
        self.phase = ContextPhase::Watching;
        self.commissioned_at = Some(ts);
    }

    fn judge(
        &mut self,
        config: &ContextConfig,
        ts: i64,
        z: &[f64],
        residuals: &[(f64, f64)],
    ) -> Option<(String, Anomaly)> {
        if !self.judges() {
            return None;
        }
        // Most of the device's metrics beyond what it showed while commissioning is a new
        // operating region (a new set point, a new product), which a regression fitted
        // elsewhere cannot judge: it is learnt, as while commissioning, and not judged. A fault
        // moves one or two metrics, not most of them.
        let outside = self
            .metrics
            .iter()
            .filter(|m| {
                let margin = NEW_REGION * (m.hi - m.lo).max(0.0);
                m.smoothed < m.lo - margin || m.smoothed > m.hi + margin
            })
            .count();
        if outside * 2 > self.metrics.len() {
            for m in &mut self.metrics {
                m.lo = m.lo.min(m.smoothed);
                m.hi = m.hi.max(m.smoothed);
            }
            self.last_excess = 0.0;
            self.learn(config, ts, z, false);
            return None;
        }
        let mut worst: Option<(usize, f64, f64, f64)> = None;
        let mut healthy = true;
        let mut with_site = true;
        let own = self.own_dim();
        self.last_excess = 0.0;
        for (j, (m, &(r, predicted))) in self.metrics.iter_mut().zip(residuals).enumerate() {
            let excess = r.abs() / m.limit;
            (m.excess, m.judged_at) = (excess, Some(ts));
            healthy &= excess < 0.5;
            // What is left when the device follows its site's common part fully; a jump (a
            // residual already past twice its limit) is left to the site-wide grouping.
            let common = z[own + j] * self.unit[j];
            let follows = m.coef.get(own + j).copied().unwrap_or(0.0);
            with_site &= (r - (1.0 - follows) * common).abs() / m.limit < 0.5 && excess < JUMP;
            self.last_excess = self.last_excess.max(excess);
            if excess > 1.0 && worst.is_none_or(|w| excess > w.1) {
                worst = Some((j, excess, r, predicted));
            }
        }
        if healthy || with_site {
            // Beside the site, what is learnt is how strongly the device follows it: refitted
            // sooner.
            self.learn(config, ts, z, !healthy);
        }
        let (j, excess, r, predicted) = worst?;
        let m = &self.metrics[j];
        // Expected and seen in the metric's own terms: the smoothed value against its
        // prediction, the spread the in-sample residual's.
        let mut anomaly = Anomaly::new(FaultKind::Drift, "context", ts, m.smoothed, calibrate(excess))
            .with_level(predicted, m.sigma.max(1e-9), r / m.sigma.max(1e-9))
            .with_bound(m.limit);
        // What the expectation was predicted from, for the ticket.
        anomaly.contributors = self.metrics.iter().filter(|o| o.name != m.name).map(|o| o.name.clone()).collect();
        if self.harmonics > 0 {
            anomaly.contributors.push("time of day".into());
        }
        Some((m.name.clone(), anomaly))
    }

    /// Learns from a message after commissioning (forgetting with `adapt_half_life`), refitting
    /// every `refit_every` (`eager`: [`EAGER_REFITS`] times as often).
    fn learn(&mut self, config: &ContextConfig, ts: i64, z: &[f64], eager: bool) {
        let dt = self.last_learn_ts.map_or(0, |t| (ts - t).max(0));
        let keep = 0.5f64.powf(dt as f64 / config.adapt_half_life.as_millis() as f64);
        self.accumulate(z, keep);
        self.last_learn_ts = Some(ts);
        let every = config.refit_every.as_millis() as i64 / if eager { EAGER_REFITS } else { 1 };
        if self.last_fit_ts.is_none_or(|t| ts - t >= every) {
            self.fit(config.ridge);
            self.last_fit_ts = Some(ts);
        }
    }

    /// Ends commissioning now (a recorded healthy run was learnt: `replay --train`), when there
    /// was enough to fit on.
    pub fn end_learning(&mut self, config: &ContextConfig) {
        if self.phase == ContextPhase::Commissioning {
            self.fit(config.ridge);
            let last = self.metrics.iter().filter_map(|m| m.last_ts).max().unwrap_or(self.first_ts);
            self.start_watching(config, last);
        }
    }
}

/// How long the smoothed values take to catch up with the raw ones (after a jump, a gap, the
/// first reading).
fn warm_after(config: &ContextConfig) -> i64 {
    (WARM_TAUS * config.smoothing.as_millis().max(1) as f64) as i64
}

/// The bit of the hour of the day (UTC) of `ts`.
fn hour_bit(ts: i64) -> u32 {
    1 << (ts.rem_euclid(86_400_000) / 3_600_000)
}

/// Where entry (`i`, `j`) of a symmetric `d × d` matrix stands in its upper triangle kept row
/// by row (row 0 first: the sums of the features, the intercept's being the count).
fn tri(d: usize, i: usize, j: usize) -> usize {
    let (i, j) = if i <= j { (i, j) } else { (j, i) };
    i * (2 * d - i + 1) / 2 + (j - i)
}

/// The ridge regression of each of `k` metrics on the other features, from a Gram matrix `g`
/// (its upper triangle, see [`tri`]) of feature vectors (1, each metric and its square, each
/// metric's slow smoothing, the rest): per
/// metric its coefficients over the features and the in-sample residual standard deviation
/// (in feature units). `None` when there is too little to fit on or the solve fails.
fn fit_gram(g: &[f64], d: usize, k: usize, ridge: f64) -> Option<Vec<(Vec<f64>, f64)>> {
    let n = g[0];
    if n < 10.0 {
        return None;
    }
    let mean: Vec<f64> = (0..d).map(|i| g[i] / n).collect();
    let cov = |i: usize, j: usize| g[tri(d, i, j)] / n - mean[i] * mean[j];
    let slow = 1 + 2 * k..1 + 3 * k;
    let mut fits = Vec::with_capacity(k);
    for t in 0..k {
        let target = 1 + 2 * t;
        // Predictors: every feature but the intercept and the target's own three, when it varies;
        // the others' slow smoothings only where they explain most of what the present values
        // leave (a temperature lagging every start of an on/off machine), not a little of it.
        let own = |p: usize| p == target || p == target + 1 || p == slow.start + t;
        let varies = |p: usize| cov(p, p) > 1e-12 * (1.0 + mean[p].abs());
        let present: Vec<usize> = (1..d).filter(|&p| !own(p) && !slow.contains(&p) && varies(p)).collect();
        let all: Vec<usize> = (1..d).filter(|&p| !own(p) && varies(p)).collect();
        let fast = solve_ridge(&cov, &mean, d, target, &present, ridge)?;
        let fit = match solve_ridge(&cov, &mean, d, target, &all, ridge) {
            Some(lagged) if lagged.1 < LAGGED_GAIN * fast.1 => lagged,
            _ => fast,
        };
        fits.push(fit);
    }
    Some(fits)
}

/// The ridge regression of feature `target` on the features `preds` (see [`fit_gram`]): its
/// coefficients over all `d` features and the in-sample residual standard deviation.
fn solve_ridge(
    cov: &dyn Fn(usize, usize) -> f64,
    mean: &[f64],
    d: usize,
    target: usize,
    preds: &[usize],
    ridge: f64,
) -> Option<(Vec<f64>, f64)> {
    let scale: Vec<f64> = preds.iter().map(|&p| cov(p, p).sqrt()).collect();
    let np = preds.len();
    let mut beta = vec![0.0; np];
    if np > 0 {
        let mut a = Array2::<f64>::zeros((np, np));
        let mut b = Array2::<f64>::zeros((np, 1));
        for (x, &p) in preds.iter().enumerate() {
            for (y, &q) in preds.iter().enumerate() {
                a[[x, y]] = cov(p, q) / (scale[x] * scale[y]) + if x == y { ridge.max(1e-9) } else { 0.0 };
            }
            b[[x, 0]] = cov(p, target) / scale[x];
        }
        let solved = a.solvec(&b).ok()?;
        for x in 0..np {
            beta[x] = solved[[x, 0]] / scale[x];
        }
    }
    let mut coef = vec![0.0; d];
    coef[0] = mean[target] - preds.iter().zip(&beta).map(|(&p, b)| b * mean[p]).sum::<f64>();
    for (&p, b) in preds.iter().zip(&beta) {
        coef[p] = *b;
    }
    // In-sample residual variance: var(y) - 2 b'c + b'Cb.
    let mut var = cov(target, target);
    for (x, &p) in preds.iter().enumerate() {
        var -= 2.0 * beta[x] * cov(p, target);
        for (y, &q) in preds.iter().enumerate() {
            var += beta[x] * beta[y] * cov(p, q);
        }
    }
    let sigma = var.max(0.0).sqrt();
    if !sigma.is_finite() || coef.iter().any(|x| !x.is_finite()) {
        return None;
    }
    Some((coef, sigma))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;
    const HOUR: i64 = 60 * MIN;

    /// A compressor-like device: current and temperature follow a day-shift load, the
    /// temperature also the time of day (the weather); deterministic noise.
    fn device(ts: i64, fault: f64) -> [(&'static str, f64); 3] {
        let h = (ts % (24 * HOUR)) as f64 / HOUR as f64;
        let load = if (7.0..19.0).contains(&h) { 0.8 } else { 0.2 } + 0.05 * (ts as f64 / 7e5).sin();
        let noise = |k: f64| 0.3 * ((ts as f64 / 1e4 * k).sin() * 43758.5).fract();
        let temp = 30.0 + 25.0 * load + 6.0 * ((h - 9.0) / 24.0 * std::f64::consts::TAU).sin() + noise(1.3);
        let current = 4.0 + 12.0 * load + fault + noise(2.7);
        [("current", current), ("discharge_temp", temp), ("vibration", 1.0 + 2.0 * load + noise(3.1))]
    }

    fn run(ctx: &mut DeviceContext, config: &ContextConfig, from: i64, to: i64, fault: f64) -> Vec<(String, Anomaly)> {
        let mut out = Vec::new();
        let mut ts = from;
        while ts < to {
            if let Some(a) = ctx.observe(config, ts, &device(ts, fault), &mut SiteCommon::default(), "d").anomaly {
                out.push(a);
            }
            ts += 10_000;
        }
        out
    }

    #[test]
    fn a_device_that_follows_its_load_and_the_day_is_learnt_and_never_alarms() {
        let config = ContextConfig::default();
        let mut ctx = DeviceContext::new(&config, 0, &["vibration", "current", "discharge_temp"]);
        assert!(run(&mut ctx, &config, 0, 24 * HOUR, 0.0).is_empty());
        let later = run(&mut ctx, &config, 24 * HOUR, 5 * 24 * HOUR, 0.0);
        assert_eq!(ctx.phase(), ContextPhase::Watching, "commissioned after a day");
        assert!(later.is_empty(), "{:?}", later.first());
    }

    /// An on/off compressor: on at full load for 12 minutes, off for 9, round the clock; its
    /// current and pressure follow at once, its discharge temperature with a 5-minute lag
    /// (plus `drift` °C).
    struct OnOff {
        temp: f64,
    }

    impl OnOff {
        fn values(&mut self, ts: i64, drift: f64) -> [(&'static str, f64); 3] {
            let on = ts % (21 * MIN) < 12 * MIN;
            let load = if on { 0.9 } else { 0.0 };
            let noise = |k: f64| 0.05 * ((ts as f64 / 1e4 * k).sin() * 43758.5).fract();
            self.temp += (30.0 + 60.0 * load - self.temp) * (1.0 - (-10_000.0f64 / (5.0 * MIN as f64)).exp());
            let current = if on { 6.0 + 12.0 * load } else { 0.3 };
            [
                ("current", current + noise(1.7)),
                ("discharge_temp", self.temp + drift + noise(2.3)),
                ("suction_pressure", 4.6 - 0.6 * load + 0.1 * noise(3.9)),
            ]
        }
    }

    #[test]
    fn a_temperature_that_lags_every_start_of_an_on_off_machine_is_learnt_and_its_drift_alarms() {
        let config = ContextConfig::default();
        let mut ctx = DeviceContext::new(&config, 0, &["current", "discharge_temp", "suction_pressure"]);
        let mut machine = OnOff { temp: 30.0 };
        let mut site = SiteCommon::default();
        let (mut healthy, mut first_alarm) = (0, None);
        let mut ts = 0;
        while ts < 4 * 24 * HOUR {
            // From the third day on, the cooling fails: +15 °C over two hours.
            let drift = (ts - 3 * 24 * HOUR).max(0) as f64 / (2 * HOUR) as f64 * 15.0;
            let alarm = ctx.observe(&config, ts, &machine.values(ts, drift.min(15.0)), &mut site, "c").anomaly;
            match alarm {
                Some(_) if drift == 0.0 => healthy += 1,
                Some((metric, _)) if first_alarm.is_none() => first_alarm = Some((ts - 3 * 24 * HOUR, metric)),
                _ => {}
            }
            ts += 10_000;
        }
        assert_eq!(ctx.phase(), ContextPhase::Watching);
        assert_eq!(healthy, 0, "no alarm in two healthy days of starts and stops");
        let (after, metric) = first_alarm.expect("the cooling drift alarms");
        // (Before the others' slow smoothings were features, it never alarmed.)
        assert!(after < 2 * HOUR, "alarmed {} min into the drift, on {metric}", after / MIN);
    }

    #[test]
    fn a_reference_of_an_older_layout_is_told_apart() {
        let config = ContextConfig::default();
        let ctx = DeviceContext::new(&config, 0, &["current", "discharge_temp"]);
        let stored: DeviceContext = postcard::from_bytes(&postcard::to_allocvec(&ctx).unwrap()).unwrap();
        assert!(stored.current_layout());
        // An older record starts with its phase: 0 (commissioning) or 1 (watching).
        for phase in [0u32, 1] {
            assert!(!DeviceContext { layout: phase, ..ctx.clone() }.current_layout());
        }
    }

    #[test]
    fn a_broken_relation_inside_the_metrics_own_range_alarms_on_that_metric() {
        let config = ContextConfig::default();
        let mut ctx = DeviceContext::new(&config, 0, &["vibration", "current", "discharge_temp"]);
        run(&mut ctx, &config, 0, 2 * 24 * HOUR, 0.0);
        assert_eq!(ctx.phase(), ContextPhase::Watching);
        // Current 2.5 A high: well inside its own 6..14 A range over a day.
        let seen = run(&mut ctx, &config, 2 * 24 * HOUR, 2 * 24 * HOUR + 2 * HOUR, 2.5);
        let (metric, a) = seen.first().expect("the broken relation alarms");
        assert_eq!(metric, "current");
        assert!(a.value - a.expected.unwrap_or(0.0) > 1.5, "{a:?}");
    }

    #[test]
    fn a_sensor_that_reports_in_coarse_steps_is_learnt_all_the_same() {
        // Vibration in steps of 0.5 mm/s: its first readings repeat, which must not leave its
        // noise at 0 (every later step would then be a jump, and the device never settles).
        let coarse = |ts: i64, fault: f64| {
            let mut d = device(ts, fault);
            d[2].1 = (d[2].1 * 2.0).round() / 2.0;
            d
        };
        let config = ContextConfig::default();
        let mut ctx = DeviceContext::new(&config, 0, &["vibration", "current", "discharge_temp"]);
        let mut alarms = Vec::new();
        let mut ts = 0;
        while ts < 2 * 24 * HOUR + 2 * HOUR {
            let fault = if ts >= 2 * 24 * HOUR { 2.5 } else { 0.0 };
            if let Some(a) = ctx.observe(&config, ts, &coarse(ts, fault), &mut SiteCommon::default(), "d").anomaly {
                alarms.push((ts, a.0));
            }
            ts += 10_000;
        }
        assert_eq!(ctx.phase(), ContextPhase::Watching);
        assert!(alarms.iter().all(|a| a.0 >= 2 * 24 * HOUR), "nothing before the fault: {:?}", alarms.first());
        assert!(alarms.iter().any(|a| a.1 == "current"), "the broken relation alarms");
    }

    #[test]
    fn a_site_gives_the_median_of_its_other_devices_and_forgets_a_device() {
        let mut site = SiteCommon::default();
        assert_eq!(site.record("t", "a", 0, 1.0, 60_000), 0.0, "nobody else yet");
        site.record("t", "b", 0, 2.0, 60_000);
        site.record("t", "c", 0, 4.0, 60_000);
        assert_eq!(site.record("t", "d", 0, 100.0, 60_000), 2.0, "the median of a, b and c, not d's own");
        site.forget("b");
        assert_eq!(site.record("t", "d", 10, 100.0, 60_000), 2.5, "a and c");
        assert_eq!(site.record("t", "a", 120_000, 1.0, 60_000), 0.0, "the others are stale");
    }

    /// A weather front warms a whole site's discharge temperatures by 6 °C over a day, holds,
    /// and passes: each device learns how it follows its site and none alarms for long; a
    /// fault of one device's current during the front still alarms.
    #[test]
    fn a_weather_front_at_the_whole_site_is_followed_and_a_fault_during_it_still_alarms() {
        let config = ContextConfig::default();
        let names = ["vibration", "current", "discharge_temp"];
        let mut devices: Vec<DeviceContext> = (0..4).map(|_| DeviceContext::new(&config, 0, &names)).collect();
        let mut site = SiteCommon::default();
        let front = |ts: i64| {
            let d = (ts - 2 * 24 * HOUR) as f64 / (24 * HOUR) as f64;
            6.0 * d.clamp(0.0, 1.0).min((3.0 - d).clamp(0.0, 1.0))
        };
        let fault_from = 3 * 24 * HOUR + 12 * HOUR;
        let mut runs = [0usize; 4];
        let mut longest = vec![(0usize, 0i64, None); 4];
        let mut fault_alarms = 0;
        let mut ts = 0;
        while ts < 5 * 24 * HOUR {
            for (k, ctx) in devices.iter_mut().enumerate() {
                // Each device on its own phase of the day; the front reaches them all at once.
                let at = ts + k as i64 * 37 * MIN;
                let faulty = k == 0 && ts >= fault_from;
                let mut values = device(at, if faulty { 2.5 } else { 0.0 });
                values[1].1 += front(ts);
                let name = format!("d{k}");
                let alarm = ctx.observe(&config, ts, &values, &mut site, &name).anomaly;
                if faulty {
                    fault_alarms += usize::from(alarm.as_ref().is_some_and(|a| a.0 == "current"));
                    continue;
                }
                runs[k] = if alarm.is_some() { runs[k] + 1 } else { 0 };
                if runs[k] > longest[k].0 {
                    longest[k] = (runs[k], ts / HOUR, alarm.map(|a| a.0));
                }
            }
            ts += 10_000;
        }
        assert!(devices.iter().all(|d| d.phase() == ContextPhase::Watching));
        // Five minutes of messages (the slow debounce) in a row would be a ticket.
        assert!(longest.iter().all(|n| n.0 < 30), "longest runs of alarms (messages, hour, metric): {longest:?}");
        assert!(fault_alarms > 30, "the fault during the front alarms ({fault_alarms} messages)");
    }

    #[test]
    fn the_upper_triangle_holds_each_pair_once() {
        let d = 5;
        let mut seen: Vec<usize> = (0..d).flat_map(|i| (i..d).map(move |j| tri(d, i, j))).collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..d * (d + 1) / 2).collect::<Vec<_>>());
        assert_eq!(tri(d, 3, 1), tri(d, 1, 3));
        assert_eq!(tri(d, 0, 4), 4, "row 0 first");
    }

    #[test]
    fn a_single_metric_is_commissioned_but_left_to_the_level_detectors() {
        let config = ContextConfig::default();
        let mut ctx = DeviceContext::new(&config, 0, &["current"]);
        let mut alarms = 0;
        let mut ts = 0;
        while ts < 3 * 24 * HOUR {
            // After two days the current sits 5 A above its daily pattern.
            let value = device(ts, if ts >= 2 * 24 * HOUR { 5.0 } else { 0.0 })[0].1;
            alarms += usize::from(
                ctx.observe(&config, ts, &[("current", value)], &mut SiteCommon::default(), "d").anomaly.is_some(),
            );
            ts += 10_000;
        }
        assert_eq!(ctx.phase(), ContextPhase::Watching, "commissioned all the same");
        assert_eq!(alarms, 0, "the clock alone is no operating context");
        assert!(!ctx.explains("current", ts - 10_000), "nor does it overrule the level detectors");
    }

    #[test]
    fn nothing_is_judged_while_commissioning() {
        let config = ContextConfig::default();
        let mut ctx = DeviceContext::new(&config, 0, &["vibration", "current", "discharge_temp"]);
        assert!(run(&mut ctx, &config, 0, 20 * HOUR, 5.0).is_empty());
        assert_eq!(ctx.phase(), ContextPhase::Commissioning);
    }
}
