//! The core: decode → store → detect → incidents → outbox, for one batch at a time.
//!
//! The core does not know where messages come from. `run` feeds it from MQTT, `replay` from a
//! file, `demo` and the benchmarks from the simulator: one implementation, measured and tested
//! once. It is synchronous; the caller flushes the store after each batch (group commit) and only
//! then acknowledges the batch to its source.

mod checkpoint;
mod checks;
mod devices;
mod feedback;
mod models;
mod transition;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::assets::{AssetsConfig, Priority, PriorityConfig, Registry, Tier};
use crate::decode::{DecodeConfig, Decoded, Decoder, Presence, RejectReason};
use crate::detect::{Anomaly, DetectConfig, DetectorBank, FaultKind, Observation, DETECTORS};
use crate::incident::{groupable, Incident, IncidentConfig, IncidentPolicy, SiteWide, Transition};
use crate::metrics::{FaultLabel, Labels, Metrics, ReasonLabel, StateLabel};
use crate::model::trainer::FIT_RESULTS;
use crate::model::ModelKind;
use crate::reading::{Message, Reading};
use crate::silence::Silences;
use crate::store::{Rejected, Store, StoreConfig, StoreError, REJECTED_PAYLOAD_MAX};
use crate::suppress::{
    MaintenanceConfig, ModesConfig, Suppressor, MAINTENANCE, NEEDS_REVIEW, OBSERVE, SHADOW, SILENCE, SITE_WIDE,
};
use crate::ticket::TicketConfig;

/// What one batch did.
#[derive(Debug, Default)]
pub struct BatchOutcome {
    /// New readings stored.
    pub stored: usize,
    /// Readings that were already stored (redelivered).
    pub duplicates: usize,
    /// Messages rejected by decode.
    pub rejected: usize,
    /// The newest event time (ms) among the new readings, if any.
    pub newest_ts: Option<i64>,
    /// Incidents opened or resolved by this batch.
    pub transitions: Vec<Transition>,
}

/// Rate limit for "message rejected" log lines: the count is exact, the log is a sample.
const REJECT_LOG_EVERY: Duration = Duration::from_secs(10);

pub use crate::incident::Verdict;
pub use feedback::{Feedback, FeedbackError};

/// What the core is built from: the parts of the configuration it uses (the whole
/// configuration's `Config::core` gathers them).
#[derive(Clone, Copy)]
pub struct CoreConfig<'a> {
    pub decode: &'a DecodeConfig,
    /// `store.retention`: readings older than that are refused.
    pub store: &'a StoreConfig,
    pub detect: &'a DetectConfig,
    pub incident: &'a IncidentConfig,
    /// The sinks every ticket goes to.
    pub ticket: &'a TicketConfig,
    pub assets: &'a AssetsConfig,
    pub priority: &'a PriorityConfig,
    pub modes: &'a ModesConfig,
    pub maintenance: &'a MaintenanceConfig,
}

/// The daemon's processing core.
pub struct Core {
    decoder: Decoder,
    store: Arc<Store>,
    /// Every series' detectors and their false-alarm tuning.
    detectors: DetectorBank,
    /// Debounce, dedup and auto-resolve; it holds the open incidents.
    incidents: IncidentPolicy,
    /// The sinks every ticket goes to (their outbox queues).
    sinks: Vec<String>,
    /// Per metric: its unit, as tickets show it.
    units: HashMap<String, String>,
    /// `incident.evidence_readings`: the readings an opening ticket shows.
    evidence_readings: usize,
    metrics: Arc<Metrics>,
    /// Per rejection reason: when it was last logged and how many went unlogged since.
    reject_log: HashMap<&'static str, (Instant, u64)>,
    /// Assets, customers and runbooks: priority, respond-by time, next steps.
    registry: Registry,
    /// Maintenance windows, silences and modes: whether a ticket goes out.
    suppressor: Suppressor,
    /// Devices at a site that begin to deviate together: one change of the site, not many faults.
    site_wide: SiteWide,
    /// Per device: its site and series, when it was heard from, how often it reports.
    devices: devices::Devices,
    /// Fitted per-device models and their streaming state (see `models.rs`).
    models: models::DeviceModels,
    /// When the detector state was last written (see [`Core::save_detector_state`]); `None`
    /// until the first tick, which starts the clock: the state restored at start is in the
    /// store already, and writing every series again at the first tick would only leave the
    /// stored copies behind as garbage in the database file.
    state_saved_at: Option<i64>,
    /// The newest event time when the state was last written: a fast backfill (hours of event
    /// time a minute) writes it every [`checkpoint::STATE_SAVE_EVERY_MS`] of event time too,
    /// so a crash in it loses minutes of learning, not hours. `None` after a save by the tick:
    /// the next message starts this clock again.
    state_saved_at_event: Option<i64>,
    /// No checkpoint by event time before this wall time (ms): the last one wrote so much that
    /// writing it again every 5 minutes of a fast backfill's event time would fill sled's file
    /// with copies of it (see [`checkpoint::CHECKPOINT_BYTES_PER_SEC`]).
    checkpoint_not_before: i64,
    /// When an eviction from the full device table was last logged (wall ms).
    evictions_logged_at: Option<i64>,
    limits: Limits,
    /// The priorities of the incidents opened since the last commit: counted once they are
    /// durable (see [`Core::committed`]), so the metric never counts one a crash could still
    /// take back.
    opened_uncommitted: Vec<Priority>,
    /// The wall clock (ms): when a ticket is raised, whether a silence is in force. The tests
    /// put a clock of their own here.
    clock: fn() -> i64,
    /// The series ids of the message being scored, kept to reuse its allocation.
    series_scratch: Vec<u32>,
}

/// How much the core tracks, and for how long (see `decode.max_devices` and friends), and when
/// a silent device is worth a sensor-health incident (`incident.stale_after`, `establish_after`).
#[derive(Debug, Clone, Copy)]
struct Limits {
    max_devices: usize,
    max_series: usize,
    forget_after_ms: i64,
    stale_after_ms: i64,
    establish_after_ms: i64,
}

/// Updates of an open ticket that stood in for a new one (a recurrence, a flapping incident).
const DEDUP: &str = "dedup";
const FLAPPING: &str = "flapping";
/// Every `reason` of `fieldwatch_tickets_suppressed_total`.
pub const SUPPRESSION_REASONS: [&str; 8] =
    [MAINTENANCE, SILENCE, OBSERVE, SHADOW, NEEDS_REVIEW, SITE_WIDE, DEDUP, FLAPPING];
/// Every `reason` of `fieldwatch_fields_ignored_total`.
pub const IGNORED_FIELD_REASONS: [&str; 3] = [NUMERIC_TEXT, NOT_A_NUMBER, SPARKPLUG_NOT_NUMERIC];
const NUMERIC_TEXT: &str = "numeric_text";
const NOT_A_NUMBER: &str = "not_a_number";
/// A Sparkplug metric of a type that is no reading (String, Bytes, DataSet, Template, ...).
const SPARKPLUG_NOT_NUMERIC: &str = "sparkplug_not_numeric";
/// Every `kind` of `fieldwatch_lead_time_seconds`: to a forecast limit crossing, or to the
/// crossing itself.
pub const LEAD_TIME_KINDS: [&str; 2] = [PREDICTED, ACTUAL];
const PREDICTED: &str = "predicted";
const ACTUAL: &str = "actual";
/// Anomalies of two metrics this close in time count as "at the same time".
const CORRELATION_MS: i64 = 5 * 60 * 1000;
/// A metric whose detectors score at least this (0..1; 0.5 is the alarm) is moving away from
/// its reference; when most of a device's metrics do so together, it is a candidate change of
/// operating point.
const CO_MOVING_SCORE: f64 = 0.2;
/// Metrics of one message off their baselines at once that an abrupt break needs.
const ABRUPT_METRICS: usize = 2;
/// A device is silent after this many of its own reporting intervals (when that is longer
/// than `stale_after`).
const SILENT_CADENCES: f64 = 5.0;

/// The values of every label of the metrics whose set is fixed, from the components that own
/// them: what [`Metrics::new`] creates at zero.
pub fn metric_labels() -> Labels {
    Labels {
        reject_reasons: crate::decode::ALL_REJECT_LABELS.to_vec(),
        ignored_field_reasons: IGNORED_FIELD_REASONS.to_vec(),
        // Silent devices are incidents without an anomalous reading: never counted as anomalies.
        faults: FaultKind::ALL.iter().chain(&[FaultKind::Multivariate]).map(|f| f.as_str()).collect(),
        priorities: Priority::ALL.map(Priority::as_str).to_vec(),
        tiers: Tier::ALL.map(Tier::as_str).to_vec(),
        suppression_reasons: SUPPRESSION_REASONS.to_vec(),
        verdicts: Verdict::ALL.map(Verdict::as_str).to_vec(),
        lead_time_kinds: LEAD_TIME_KINDS.to_vec(),
        model_kinds: ModelKind::ALL.map(ModelKind::as_str).to_vec(),
        fit_results: FIT_RESULTS.to_vec(),
        detectors: DETECTORS.to_vec(),
    }
}

/// Whether `device` has an open incident (it is then neither refused nor evicted).
fn has_open_incident(incidents: &IncidentPolicy, device: &str) -> bool {
    incidents.open_incidents().any(|i| i.device == device)
}

fn join(items: &[&String]) -> String {
    items.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
}

/// Counts that wait for a flush: incidents opened by a batch (see [`Core::take_uncommitted`]).
pub struct Uncommitted {
    opened: Vec<Priority>,
    metrics: Arc<Metrics>,
}

impl Uncommitted {
    /// The flush succeeded: they survive a crash and are counted.
    pub fn count(self) {
        for priority in self.opened {
            self.metrics.count_opened(priority.as_str(), 1);
        }
    }
}

impl Core {
    /// Builds the core and reloads open incidents from the store.
    pub fn new(config: CoreConfig<'_>, store: Arc<Store>, metrics: Arc<Metrics>) -> Result<Core, StoreError> {
        let stored: Vec<Incident> = store.incidents()?;
        let mut detectors = DetectorBank::new(config.detect);
        for (device, metric, factor) in store.tuning()? {
            detectors.set_tuning(&device, &metric, factor);
        }
        // What the core tracks survives a restart: the series with stored detector state and the
        // devices with their first-heard time (for `establish_after`).
        let mut series = Vec::new();
        for (device, metric, state) in
            store.detector_states::<crate::detect::SeriesState, crate::detect::SeriesStateV1>()?
        {
            detectors.restore(&device, &metric, state);
            series.push((device, metric));
        }
        // A reference of an older version either does not decode or decodes with an older
        // layout number: both are counted.
        let mut restored = 0;
        for (device, context) in store.contexts::<crate::detect::DeviceContext>()? {
            restored += usize::from(detectors.restore_context(&device, context));
        }
        let older = store.context_records().saturating_sub(restored);
        if older > 0 {
            tracing::warn!(
                devices = older,
                "context references stored by an older version do not fit this one: these devices commission again"
            );
        }
        // What was restored is what the store holds: the first save writes what changes after.
        detectors.mark_stored();
        let devices =
            devices::Devices::restore(series, store.devices()?.into_iter().collect(), crate::reading::now_ms());
        let mut units: HashMap<String, String> = config.decode.units.clone().into_iter().collect();
        for m in &config.decode.metrics {
            if let Some(u) = &m.unit {
                units.insert(m.name.clone(), u.clone());
            }
        }
        let settle_ms = config.detect.drift.reference_for.as_millis() as i64;
        let models = models::DeviceModels::load(&config.detect.models, settle_ms, &store)?;
        let silences = Arc::new(Silences::load(store.clone())?);
        let core = Core {
            decoder: Decoder::new(config.decode).with_max_age(config.store.retention),
            detectors,
            incidents: IncidentPolicy::new(config.incident, stored),
            sinks: config.ticket.sinks.iter().map(|s| s.name().to_string()).collect(),
            units,
            evidence_readings: config.incident.evidence_readings,
            store,
            metrics,
            reject_log: HashMap::new(),
            registry: Registry::new(config.assets, None, config.priority),
            suppressor: Suppressor::new(config.maintenance, config.modes, config.incident, silences),
            site_wide: SiteWide::new(&config.incident.site_wide),
            devices,
            models,
            state_saved_at: None,
            state_saved_at_event: None,
            checkpoint_not_before: i64::MIN,
            evictions_logged_at: None,
            limits: Limits {
                max_devices: config.decode.max_devices,
                max_series: config.decode.max_series,
                forget_after_ms: config.decode.forget_after.as_millis() as i64,
                stale_after_ms: config.incident.stale_after.as_millis() as i64,
                establish_after_ms: config.incident.establish_after.as_millis() as i64,
            },
            opened_uncommitted: Vec::new(),
            clock: crate::reading::now_ms,
            series_scratch: Vec::new(),
        };
        core.metrics.start_false_alarms_at_zero(core.registry.asset_models());
        core.count_models();
        Ok(core)
    }

    /// Tells the core that what it wrote is durable (the caller flushed the store): counts
    /// what may only be counted once it survives a crash.
    pub fn committed(&mut self) {
        self.take_uncommitted().count();
    }

    /// What [`Core::committed`] counts, taken now to be counted once a flush that is still
    /// running completes (the daemon flushes a batch while the core takes on the next).
    pub fn take_uncommitted(&mut self) -> Uncommitted {
        Uncommitted { opened: std::mem::take(&mut self.opened_uncommitted), metrics: self.metrics.clone() }
    }

    /// The silences the core obeys, for the admin API that sets them.
    pub fn silences(&self) -> Arc<Silences> {
        self.suppressor.silences()
    }

    /// Open incidents known to the core.
    pub fn open_incidents(&self) -> Vec<Incident> {
        self.incidents.open_incidents().cloned().collect()
    }

    /// Decodes, stores and scores a batch of messages. Nothing is durable until the caller
    /// flushes the store.
    pub fn process_messages(&mut self, msgs: &[Message]) -> Result<BatchOutcome, StoreError> {
        let decoded = msgs.iter().map(|m| self.decoder.decode_message(m.clone())).collect();
        self.process_decoded(decoded)
    }

    /// The decoder the core applies, for a caller that decodes before the core: the daemon
    /// decodes in its ingest task, beside the core.
    pub fn decoder(&self) -> Decoder {
        self.decoder.clone()
    }

    /// [`Core::process_messages`] for messages decoded already, with [`Core::decoder`].
    pub fn process_decoded(&mut self, batch: Vec<Decoded>) -> Result<BatchOutcome, StoreError> {
        let mut out = BatchOutcome::default();
        for Decoded { message, readings, ignored, partial, skipped, presence, .. } in batch {
            self.metrics.messages.inc();
            if skipped > 0 {
                self.count_skipped(&message.topic, skipped);
            }
            if let Ok(r) = &readings {
                self.make_room(r)?;
            }
            match readings.and_then(|r| self.within_limits(r)) {
                Ok((readings, over)) => {
                    self.count_ignored(&readings, &ignored);
                    self.process_by_event_time(readings, message.received_ms, &mut out)?;
                    // The new series, or a Sparkplug metric of an unknown type, are refused;
                    // the message's other readings were taken.
                    if let Some(reason) = over.or(partial) {
                        self.reject(&message, &reason, &mut out)?;
                    }
                }
                Err(reason) => self.reject(&message, &reason, &mut out)?,
            }
            for p in presence {
                self.presence(p, &mut out)?;
            }
        }
        Ok(out)
    }

    /// [`Core::process_readings`] for one message, a group of readings per event time: a
    /// Sparkplug message may carry its metrics' own timestamps (a JSON message has one time).
    fn process_by_event_time(
        &mut self,
        mut readings: Vec<Reading>,
        received_ms: i64,
        out: &mut BatchOutcome,
    ) -> Result<(), StoreError> {
        if readings.windows(2).all(|w| w[0].ts == w[1].ts) {
            self.process_readings(&readings, received_ms, out)?;
            return Ok(());
        }
        readings.sort_by_key(|r| r.ts);
        for group in readings.chunk_by(|a, b| a.ts == b.ts) {
            self.process_readings(group, received_ms, out)?;
        }
        Ok(())
    }

    /// A Sparkplug BIRTH or DEATH: a death opens the device's connectivity incident (the one a
    /// silence opens, so the silence check adds none), a birth resolves it.
    fn presence(&mut self, p: Presence, out: &mut BatchOutcome) -> Result<(), StoreError> {
        match p {
            Presence::Offline { device, site, since_ms } => {
                tracing::info!(%device, since = %crate::reading::format_ts(since_ms), "death certificate: device offline");
                if let Some(t) = self.incidents.offline(&device, site, since_ms, since_ms) {
                    out.transitions.push(self.persist(t)?);
                }
            }
            Presence::Online { device, at_ms } => {
                if let Some(t) = self.incidents.heard(&device, at_ms) {
                    out.transitions.push(self.persist(t)?);
                }
            }
        }
        Ok(())
    }

    /// Counts and logs (rate-limited) Sparkplug metrics of a type that is no reading.
    fn count_skipped(&mut self, topic: &str, n: u32) {
        self.metrics
            .fields_ignored
            .get_or_create(&ReasonLabel { reason: SPARKPLUG_NOT_NUMERIC.into() })
            .inc_by(u64::from(n));
        let now = Instant::now();
        let entry = self.reject_log.entry("field:sparkplug_not_numeric").or_insert((now - REJECT_LOG_EVERY, 0));
        if now.duration_since(entry.0) >= REJECT_LOG_EVERY {
            tracing::info!(
                topic,
                metrics = n,
                suppressed_since_last = entry.1,
                "Sparkplug metrics that are not numbers (String, Bytes, DataSet, Template, File, ...) were skipped"
            );
            *entry = (now, 0);
        } else {
            entry.1 += 1;
        }
    }

    /// Counts, logs and keeps aside a rejected message (its payload cut).
    fn reject(&mut self, msg: &Message, reason: &RejectReason, out: &mut BatchOutcome) -> Result<(), StoreError> {
        out.rejected += 1;
        let label = reason.label();
        self.metrics.count_rejected(label);
        self.log_rejected(label, &msg.topic, &reason.to_string());
        self.store.reject(&Rejected {
            received_ms: msg.received_ms,
            topic: msg.topic.clone(),
            reason: reason.to_string(),
            payload: crate::decode::kept_payload(&msg.topic, &msg.payload, REJECTED_PAYLOAD_MAX),
        })
    }

    /// Applies `decode.max_devices` and `decode.max_series`: a new device beyond the limit is
    /// refused whole; new series beyond it are dropped from the readings (and the message is
    /// reported) while the device's known series keep flowing.
    fn within_limits(&self, mut readings: Vec<Reading>) -> Result<(Vec<Reading>, Option<RejectReason>), RejectReason> {
        let Some(first) = readings.first() else { return Ok((readings, None)) };
        let known = self.devices.metrics(&first.device);
        let l = self.limits;
        // A forgotten device with an open incident (it went silent) is let back in to resolve it.
        let has_incident = || has_open_incident(&self.incidents, &first.device);
        let registered = || self.registry.is_registered(&first.device);
        if known.is_none()
            && l.max_devices > 0
            && self.devices.len() >= l.max_devices
            && !has_incident()
            && !registered()
        {
            return Err(RejectReason::TooManyDevices(first.device.clone()));
        }
        if l.max_series == 0 {
            return Ok((readings, None));
        }
        let is_new = |r: &Reading| !known.is_some_and(|m| m.contains(&r.metric));
        let room = l.max_series.saturating_sub(self.devices.series());
        let new = readings.iter().filter(|r| is_new(r)).count();
        if new <= room {
            return Ok((readings, None));
        }
        let mut admitted = 0;
        let mut refused = None;
        readings.retain(|r| {
            if !is_new(r) {
                return true;
            }
            admitted += 1;
            if admitted <= room {
                return true;
            }
            refused.get_or_insert_with(|| format!("{}/{}", r.device, r.metric));
            false
        });
        let reason = RejectReason::TooManySeries(refused.unwrap_or_default());
        if readings.is_empty() {
            return Err(reason);
        }
        Ok((readings, Some(reason)))
    }

    /// A new device that finds the table full (`decode.max_devices`) takes the place of the
    /// device tracked longest that sent one message and never came back; a device of the
    /// asset registry is always admitted, over the limit if there is no such device. So a flood
    /// of junk ids cannot lock a real device out: its first message gets it in.
    fn make_room(&mut self, readings: &[Reading]) -> Result<(), StoreError> {
        let Some(first) = readings.first() else { return Ok(()) };
        let max = self.limits.max_devices;
        if max == 0 || self.devices.len() < max || self.devices.metrics(&first.device).is_some() {
            return Ok(());
        }
        let (registry, incidents) = (&self.registry, &self.incidents);
        let kept = |d: &str| registry.is_registered(d) || has_open_incident(incidents, d);
        match self.devices.evictable(kept) {
            Some(victim) => {
                self.forget_device_quietly(&victim)?;
                self.metrics.devices_evicted.inc();
                let now = crate::reading::now_ms();
                if self.evictions_logged_at.is_none_or(|t| now - t >= 60_000) {
                    tracing::info!(
                        evicted = %victim,
                        admitted = %first.device,
                        max_devices = max,
                        total = self.metrics.devices_evicted.get(),
                        "device table full: evicting devices that sent one message and never came back (logged once a minute)"
                    );
                    self.evictions_logged_at = Some(now);
                }
            }
            None if self.registry.is_registered(&first.device) => {
                tracing::debug!(device = %first.device, "a registered device is admitted over decode.max_devices");
            }
            None => {}
        }
        Ok(())
    }

    /// Counts the fields of an accepted message that were meant as readings but are not
    /// numbers: numbers sent as text, and fields the device has sent as numbers before.
    fn count_ignored(&mut self, readings: &[Reading], ignored: &[crate::decode::IgnoredField]) {
        let Some(first) = readings.first() else { return };
        for f in ignored {
            let known = self.devices.reports(&first.device, &f.field);
            if !(f.numeric_text || known) {
                continue;
            }
            let reason = if f.numeric_text { NUMERIC_TEXT } else { NOT_A_NUMBER };
            self.metrics.fields_ignored.get_or_create(&ReasonLabel { reason: reason.into() }).inc();
            let label = if f.numeric_text { "field:numeric_text" } else { "field:not_a_number" };
            let now = Instant::now();
            let entry = self.reject_log.entry(label).or_insert((now - REJECT_LOG_EVERY, 0));
            if now.duration_since(entry.0) >= REJECT_LOG_EVERY {
                tracing::warn!(device = %first.device, field = %f.field, reason, suppressed_since_last = entry.1, "field is not a number; the message's other readings were taken");
                *entry = (now, 0);
            } else {
                entry.1 += 1;
            }
        }
    }

    /// Stores and scores the readings of one message (one device, one time): each series, then
    /// the device's vector with its models, then the incident policy. `received_ms` is when it
    /// was heard (sensor health).
    ///
    /// A change of operating point is told apart from a fault here: when most of the device's
    /// metrics move away from their references together, and its model does not find the
    /// relations between them clearly broken, the device runs at a new operating point. Their level and drift anomalies
    /// then open nothing, and once they have all moved the device re-learns its references
    /// (see [`Core::operating_point_changed`]).
    ///
    /// Returns the highest calibrated score of any detector or model (0..1), or `None` when
    /// every reading was already stored.
    pub fn process_readings(
        &mut self,
        readings: &[Reading],
        received_ms: i64,
        out: &mut BatchOutcome,
    ) -> Result<Option<f64>, StoreError> {
        let Some(first) = readings.first() else { return Ok(None) };
        self.checkpoint_by_event_time(first.ts, received_ms)?;
        self.heard_from(&first.device, received_ms, out)?;
        self.devices.note_cadence(&first.device, first.ts);
        let mut series = std::mem::take(&mut self.series_scratch);
        series.clear();
        self.store.series_ids(readings.iter().map(|r| (r.device.as_str(), r.metric.as_str())), &mut series)?;
        let mut observed = Vec::with_capacity(readings.len());
        for (r, &id) in readings.iter().zip(&series) {
            if let Some(o) = self.score_reading(r, id, out)? {
                observed.push((r, o));
            }
        }
        self.series_scratch = series;
        if observed.is_empty() {
            return Ok(None);
        }
        let registry = &self.registry;
        let site = || first.site.clone().or_else(|| registry.site(&first.device).map(str::to_string));
        let stored = observed.iter().map(|(r, o)| (r.metric.as_str(), r.ts, !o.anomalies.is_empty()));
        self.devices.note_readings(&first.device, stored, site);
        let mut score = observed.iter().map(|(_, o)| o.score).fold(0.0, f64::max);
        let device = self.score_device_vector(readings)?;
        if let Some(d) = &device {
            score = score.max(d.score);
        }
        let relations_broken = device.as_ref().is_some_and(|d| d.relations_broken);
        let n = readings.len();
        let moving = observed.iter().filter(|(_, o)| o.score >= CO_MOVING_SCORE).count();
        let co_moving = n >= 2 && moving >= 2 && moving * 3 >= n * 2 && !relations_broken;
        if co_moving {
            let level_faults = |o: &Observation| {
                o.anomalies.iter().filter(|a| matches!(a.kind, FaultKind::Deviation | FaultKind::Drift)).count()
            };
            let anomalous = observed.iter().filter(|(_, o)| level_faults(o) > 0).count();
            for (_, o) in &mut observed {
                o.anomalies.retain(|a| !matches!(a.kind, FaultKind::Deviation | FaultKind::Drift));
            }
            if anomalous >= 2 && anomalous * 3 >= n * 2 {
                self.operating_point_changed(&first.device, first.ts);
            }
        }
        // The context reference judges each metric against what the rest of the device and
        // the time of day predict; while the device commissions, only hard limits and stuck
        // sensors speak (silence is the clock's).
        let context = if self.detectors.commissions() {
            let values: Vec<(&str, f64)> = readings.iter().map(|r| (r.metric.as_str(), r.value)).collect();
            let site = first.site.as_deref().or_else(|| self.registry.site(&first.device));
            self.detectors.observe_device(&first.device, site, first.ts, &values)
        } else {
            crate::detect::ContextVerdict { anomaly: None, commissioned: false }
        };
        if context.commissioned {
            tracing::info!(
                device = %first.device,
                at = %crate::reading::format_ts(first.ts),
                "commissioned: its normal operation is learnt, every detector now judges it"
            );
            if let Some(c) = self.detectors.context(&first.device) {
                self.store.put_context(&first.device, c)?;
            }
        }
        // A stuck sensor freezes alone: another metric of the device frozen with it is the
        // machine standing still, or its gateway repeating itself.
        for (r, o) in observed.iter_mut() {
            if o.anomalies.iter().any(|a| a.kind == FaultKind::Stuck)
                && self.detectors.frozen_besides(&r.device, &r.metric) > 0
            {
                o.anomalies.retain(|a| a.kind != FaultKind::Stuck);
            }
        }
        let commissioning = self.detectors.commissioning(&first.device);
        if commissioning {
            for (_, o) in &mut observed {
                o.anomalies
                    .retain(|a| matches!(a.kind, FaultKind::Stuck | FaultKind::AboveLimit | FaultKind::BelowLimit));
            }
        }
        // An abrupt break (a bearing that seizes, a valve that slams shut): several metrics
        // jump off their baselines at once and the device's model finds its relations clearly
        // broken, while the device settles after the jump. It is no slow fault and no new
        // operating point (relations hold at one): it opens after the ordinary debounce, and
        // the context, whose word is from before the jump, does not overrule it.
        let level = |a: &Anomaly| matches!(a.kind, FaultKind::Deviation | FaultKind::Drift);
        let abrupt = relations_broken
            && !commissioning
            && observed.iter().filter(|(_, o)| o.anomalies.iter().any(level)).count() >= ABRUPT_METRICS
            && self.detectors.settling(&first.device, first.ts);
        if abrupt {
            for (_, o) in &mut observed {
                for a in o.anomalies.iter_mut().filter(|a| level(a)) {
                    a.abrupt = true;
                }
            }
        }
        // A level the device's operating context explains (its load, the time of day, its site)
        // is not a fault: the level detectors' deviation and drift on it open nothing. The
        // context is looked up only when there is such an anomaly (the hot path has none).
        if !commissioning && observed.iter().any(|(_, o)| o.anomalies.iter().any(level)) {
            if let Some(c) = self.detectors.context(&first.device) {
                for (_, o) in observed.iter_mut().filter(|(r, _)| c.explains(&r.metric, r.ts)) {
                    o.anomalies.retain(|a| !level(a) || a.abrupt);
                }
            }
        }
        if let Some((metric, a)) = context.anomaly {
            score = score.max(a.score);
            if let Some((_, o)) = observed.iter_mut().find(|(r, _)| r.metric == metric) {
                o.anomalies.push(a);
            }
        }
        // The site is looked up only for an anomaly a site-wide change shows (the hot path has none).
        for (r, o) in &observed {
            if o.anomalies.iter().any(|a| groupable(a.kind)) {
                if let Some(site) = first.site.as_deref().or_else(|| self.registry.site(&first.device)) {
                    self.site_wide.note(&r.device, site, r.ts);
                }
            }
            self.feed_incidents(r, &o.anomalies, out)?;
        }
        // A device model's verdict stands where the context reference does not cover the whole
        // device (more metrics than it takes); where it does, the model must be confirmed by
        // it: a pattern the PCA never saw (a warm weekend afternoon at low load) that every
        // metric's context explains is a new operating context, not a broken relation.
        let explained = || {
            let metrics = self.devices.metrics(&first.device).map_or(0, |m| m.len());
            self.detectors.context(&first.device).is_some_and(|c| c.all_within(metrics))
        };
        if let Some(d) = device {
            // The model's verdict on an abrupt break is part of it.
            let mut hit = d.anomaly.filter(|_| !commissioning);
            if let Some(a) = hit.as_mut() {
                a.abrupt = abrupt;
            }
            let hit = hit.filter(|a| a.abrupt || !explained());
            let hit = hit.as_ref();
            if hit.is_some() {
                if let Some(site) = first.site.as_deref().or_else(|| self.registry.site(&first.device)) {
                    self.site_wide.note(&first.device, site, first.ts);
                }
            }
            if let Some(t) = self.incidents.observe_device(first, hit) {
                let t = self.persist(t)?;
                out.transitions.push(t);
            }
        }
        Ok(Some(score))
    }

    /// The device runs at a new operating point: every metric's detectors re-learn their
    /// references from now on, and its model's T² (distance along its known relations) raises
    /// nothing until a refit has seen the new operating point.
    fn operating_point_changed(&mut self, device: &str, ts: i64) {
        tracing::info!(device, "operating point changed: re-learning the healthy references");
        self.metrics.operating_point_changes.inc();
        if let Some(metrics) = self.devices.metrics(device) {
            for m in metrics {
                self.detectors.recommission(device, m);
            }
        }
        self.models.new_operating_point(device, ts);
        self.incidents.forget_pending(device);
    }

    /// Learns from readings known to be healthy (a recorded healthy run, `replay --train`):
    /// the detectors learn their references from them; nothing is stored or reported.
    pub fn learn_readings(&mut self, readings: &[Reading]) {
        for r in readings {
            self.detectors.learn(&r.device, &r.metric, r.ts, r.value);
        }
        if let Some(first) = readings.first() {
            let values: Vec<(&str, f64)> = readings.iter().map(|r| (r.metric.as_str(), r.value)).collect();
            let site = first.site.as_deref().or_else(|| self.registry.site(&first.device));
            let _ = self.detectors.observe_device(&first.device, site, first.ts, &values);
        }
    }

    /// Ends learning from a healthy recording: what was learned becomes the reference.
    pub fn end_learning(&mut self) {
        self.detectors.end_learning();
    }

    fn log_rejected(&mut self, label: &'static str, topic: &str, reason: &str) {
        let now = Instant::now();
        let entry = self.reject_log.entry(label).or_insert((now - REJECT_LOG_EVERY, 0));
        if now.duration_since(entry.0) >= REJECT_LOG_EVERY {
            tracing::warn!(topic, reason, suppressed_since_last = entry.1, "message rejected and kept aside");
            *entry = (now, 0);
        } else {
            entry.1 += 1;
        }
    }

    /// Stores and scores one reading (`None`: already stored, counted and skipped).
    fn score_reading(
        &mut self,
        r: &Reading,
        series: u32,
        out: &mut BatchOutcome,
    ) -> Result<Option<Observation>, StoreError> {
        if !self.store.insert_reading(series, r.ts, r.value)? {
            out.duplicates += 1;
            self.metrics.readings_duplicate.inc();
            return Ok(None);
        }
        out.stored += 1;
        out.newest_ts = out.newest_ts.max(Some(r.ts));
        self.metrics.readings.inc();
        let observation = self.detectors.observe(&r.device, &r.metric, r.ts, r.value);
        for a in &observation.anomalies {
            self.metrics.anomalies.get_or_create(&FaultLabel { fault: a.kind.as_str().into() }).inc();
        }
        Ok(Some(observation))
    }

    /// Feeds what the detectors said about a reading to the incident policy.
    fn feed_incidents(&mut self, r: &Reading, anomalies: &[Anomaly], out: &mut BatchOutcome) -> Result<(), StoreError> {
        for t in self.incidents.observe(r, anomalies) {
            let t = self.persist(t)?;
            out.transitions.push(t);
        }
        Ok(())
    }

    /// Time-driven changes; `now` is wall-clock ms. Escalates unacknowledged incidents, and
    /// opens sensor-health incidents for devices that went silent. `link_up_since` is when the
    /// broker connection started (`None` while it is down): a silent broker link is not an
    /// equipment fault, and after a reconnect devices get `stale_after` to be heard again.
    pub fn tick(&mut self, now: i64, link_up_since: Option<i64>) -> Result<Vec<Transition>, StoreError> {
        self.checkpoint_by_wall_time(now)?;
        let mut out = Vec::new();
        for t in self.incidents.tick(now) {
            out.push(self.persist(t)?);
        }
        out.extend(self.planned_work_ended(now)?);
        let link_settled = link_up_since.is_some_and(|since| now - since >= self.limits.stale_after_ms);
        self.metrics.devices_tracked.set(self.devices.len() as i64);
        let watching = self.detectors.watching() as i64;
        let (commissioning, watching) = if self.detectors.commissions() {
            ((self.devices.len() as i64 - watching).max(0), watching)
        } else {
            (0, self.devices.len() as i64)
        };
        for (state, n) in [("commissioning", commissioning), ("watching", watching)] {
            self.metrics.devices.get_or_create(&StateLabel { state: state.into() }).set(n);
        }
        self.metrics.series_tracked.set(self.devices.series() as i64);
        // A gauge only: a file whose size cannot be read does not fail the tick.
        match self.store.size_on_disk() {
            Ok(bytes) => {
                self.metrics.store_disk_bytes.set(i64::try_from(bytes).unwrap_or(i64::MAX));
            }
            Err(e) => tracing::debug!(error = %e, "cannot read the store's size on disk"),
        }
        if self.limits.stale_after_ms > 0 && link_settled {
            let silent: Vec<(String, i64)> = self
                .devices
                .last_heard()
                .filter(|&(d, heard)| now - heard >= self.silent_after(d) && self.established(d, heard))
                .map(|(d, h)| (d.clone(), h))
                .collect();
            for (device, heard) in silent {
                let site = self.devices.site(&device).map(str::to_string);
                if let Some(t) = self.incidents.silent(&device, site, heard, now) {
                    out.push(self.persist(t)?);
                }
            }
        }
        // After the silent pass: a device is reported silent before it is forgotten.
        if link_settled {
            let forgotten: Vec<String> = self
                .devices
                .last_heard()
                .filter(|&(d, heard)| now - heard >= self.limits.forget_after_ms.max(self.silent_after(d)))
                .map(|(d, _)| d.clone())
                .collect();
            for device in forgotten {
                self.forget_device(&device)?;
            }
        }
        Ok(out)
    }

    /// How long a device may stay silent before it is a sensor-health incident: `stale_after`,
    /// or [`SILENT_CADENCES`] of its own reporting interval if that is longer (a device that
    /// reports every 10 min is not silent after 15).
    fn silent_after(&self, device: &str) -> i64 {
        let own = (self.devices.interval(device) * SILENT_CADENCES) as i64;
        self.limits.stale_after_ms.max(own)
    }

    /// A device whose silence is worth a ticket: registered as an asset, or reporting for at
    /// least `incident.establish_after` before it went quiet.
    fn established(&self, device: &str, last_heard: i64) -> bool {
        self.registry.is_registered(device)
            || self
                .devices
                .first_heard(device)
                .is_some_and(|first| last_heard - first >= self.limits.establish_after_ms)
    }

    /// Frees everything the core keeps about a device not heard from for `decode.forget_after`
    /// (its stored readings age out by retention). An open incident of it stays open.
    fn forget_device(&mut self, device: &str) -> Result<(), StoreError> {
        tracing::info!(device, "device not heard from for decode.forget_after; forgetting its state");
        self.forget_device_quietly(device)
    }

    /// Drops a device's state from memory and the store (see [`Core::forget_device`]).
    fn forget_device_quietly(&mut self, device: &str) -> Result<(), StoreError> {
        for m in &self.devices.forget(device) {
            self.detectors.forget(device, m);
            self.store.remove_detector_state(device, m)?;
        }
        self.store.remove_context(device)?;
        self.models.forget(device);
        self.count_models();
        self.site_wide.forget(device);
        self.incidents.forget_pending(device);
        self.store.forget_device(device)?;
        Ok(())
    }

    /// Notes that a device was heard from; resolves its sensor-health incident if one is open.
    fn heard_from(&mut self, device: &str, received: i64, out: &mut BatchOutcome) -> Result<(), StoreError> {
        if self.devices.heard(device, received) {
            self.store.note_device(device, received)?;
        }
        if let Some(t) = self.incidents.heard(device, received) {
            out.transitions.push(self.persist(t)?);
        }
        Ok(())
    }

    /// Opens the tickets of incidents held back by planned work that ended while the fault
    /// goes on (see [`Suppressor::outlasted_work`]).
    fn planned_work_ended(&mut self, now: i64) -> Result<Vec<Transition>, StoreError> {
        let registry = &self.registry;
        let open = self.incidents.open_incidents().map(|i| (i, i.site.as_deref().or_else(|| registry.site(&i.device))));
        let outlasted = self.suppressor.outlasted_work(open, now);
        let mut out = Vec::new();
        for key in outlasted {
            let Some(mut inc) = self.incidents.open_incidents().find(|i| i.key == key).cloned() else { continue };
            inc.suppressed = None;
            inc.opened_at = inc.opened_at.max(now);
            out.push(self.persist(Transition::Opened(inc))?);
        }
        Ok(out)
    }

    /// Number of series with detector state.
    pub fn series_tracked(&self) -> usize {
        self.detectors.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_kinds_are_detector_names() {
        let labels = metric_labels();
        for kind in &labels.model_kinds {
            assert!(labels.detectors.contains(kind), "{kind}");
        }
    }
}

/// What the core does as time passes, on a clock of the test's own: escalation at the
/// respond-by time, sensor health around a broker outage, the end of a silence. No test here
/// waits; `tests/service.rs` runs the same stories through the daemon, for the wiring.
#[cfg(test)]
mod timing {
    use std::cell::Cell;
    use std::path::Path;
    use std::sync::Arc;
    use std::time::Duration;

    use super::{BatchOutcome, Core};
    use crate::config::Config;
    use crate::detect::FaultKind;
    use crate::incident::{Incident, Transition, UpdateReason};
    use crate::metrics::{Format, Metrics};
    use crate::reading::Reading;
    use crate::silence::Silence;
    use crate::store::Store;
    use crate::suppress::Suppression;

    pub(super) const T0: i64 = 1_767_225_600_000;
    pub(super) const MINUTE: i64 = 60_000;
    const HOUR: i64 = 60 * MINUTE;
    const DAY: i64 = 24 * HOUR;

    thread_local! {
        /// The wall clock of the core under test (each test runs on a thread of its own).
        static NOW: Cell<i64> = const { Cell::new(0) };
    }

    pub(super) fn now() -> i64 {
        NOW.with(Cell::get)
    }

    pub(super) fn set_now(ms: i64) {
        NOW.with(|n| n.set(ms));
    }

    /// The settings of the daemon tests (`tests/common`), a webhook sink `api` that is never
    /// called (its outbox is what the tests read), and no sensor-health incidents.
    pub(super) fn config() -> Config {
        let settings = include_str!("../../tests/common/settings.toml");
        let mut config = Config::parse(settings, Path::new("settings.toml")).unwrap();
        config.incident.stale_after = Duration::ZERO;
        let sink = "type = \"webhook\"\nname = \"api\"\nurl = \"http://127.0.0.1:9/tickets\"\n";
        config.ticket.sinks = vec![toml::from_str(sink).unwrap()];
        config
    }

    /// A core on a temporary store, on the test's clock.
    pub(super) fn core(config: &Config) -> (Core, Arc<Store>, Arc<Metrics>) {
        let store = Arc::new(Store::temporary().unwrap());
        let metrics = Arc::new(Metrics::new(&super::metric_labels()));
        let mut core = Core::new(config.core(), store.clone(), metrics.clone()).unwrap();
        core.clock = now;
        (core, store, metrics)
    }

    /// One reading of `device` at event time `ts`, heard now; what it changed, committed.
    pub(super) fn send(core: &mut Core, device: &str, ts: i64, value: f64) -> Vec<Transition> {
        let r =
            Reading { device: device.into(), site: Some("site-1".into()), metric: "discharge_temp".into(), ts, value };
        let mut out = BatchOutcome::default();
        core.process_readings(&[r], now(), &mut out).unwrap();
        core.committed();
        out.transitions
    }

    /// A time-driven pass now, committed.
    fn tick(core: &mut Core, link_up_since: Option<i64>) -> Vec<Transition> {
        let t = core.tick(now(), link_up_since).unwrap();
        core.committed();
        t
    }

    /// 40 healthy readings a second apart from `t0`, then `faulty` readings at 99 °C (as the daemon
    /// tests' `fault`); returns the incident it opened.
    fn fault(core: &mut Core, device: &str, t0: i64, faulty: i64) -> Incident {
        let mut opened = Vec::new();
        for i in 0..40 + faulty {
            let value = if i < 40 { 70.0 + 0.5 * (i as f64 * 0.7).sin() } else { 99.0 };
            opened.extend(send(core, device, t0 + i * 1000, value).into_iter().filter_map(|t| match t {
                Transition::Opened(inc) => Some(inc),
                _ => None,
            }));
        }
        assert_eq!(opened.len(), 1, "one incident for the fault: {opened:?}");
        opened.pop().unwrap()
    }

    #[test]
    fn an_unacknowledged_incident_escalates_at_its_respond_by_time_and_counts_a_breach() {
        set_now(T0 + HOUR);
        let (mut core, store, metrics) = core(&config());
        let inc = fault(&mut core, "comp-9", T0, 5);
        // Raised now, not at the readings' event time an hour ago; an unregistered device is P4,
        // to be answered within 3 days.
        let respond_by = inc.respond_by.expect("a respond-by time");
        assert_eq!(respond_by, now() + 3 * DAY);
        set_now(respond_by - 1);
        assert!(tick(&mut core, Some(T0)).is_empty(), "not due yet");
        set_now(respond_by);
        let t = tick(&mut core, Some(T0));
        let [Transition::Updated(escalated, why @ UpdateReason::Escalated { .. })] = &t[..] else {
            panic!("one escalation: {t:?}")
        };
        assert!(escalated.escalated && escalated.id == inc.id);
        assert!(why.to_string().starts_with("Escalated: not acknowledged"), "{why}");
        assert_eq!(store.outbox_len("api"), 2, "the open and the escalation go to the sink");
        let text = metrics.render(Format::Text);
        assert!(text.contains("fieldwatch_sla_breaches_total{tier=\"tier3\"} 1"), "{text}");
        set_now(respond_by + DAY);
        assert!(tick(&mut core, Some(T0)).is_empty(), "escalated once");
    }

    #[test]
    fn a_broker_outage_is_not_blamed_on_the_devices_who_get_stale_after_from_the_reconnect() {
        let mut config = config();
        config.incident.stale_after = Duration::from_secs(15 * 60);
        config.incident.establish_after = Duration::ZERO;
        set_now(T0);
        let (mut core, _store, _) = core(&config);
        send(&mut core, "comp-a", T0, 70.0);
        send(&mut core, "comp-b", T0, 70.0);
        // The link is down for an hour: four times stale_after without a word from anyone.
        for minute in 1..=60 {
            set_now(T0 + minute * MINUTE);
            assert!(tick(&mut core, None).is_empty(), "no sensor-health incident while the link is down");
        }
        // Back up: comp-a reports again every minute, comp-b stays quiet.
        let up = now();
        let mut opened = Vec::new();
        for minute in 0..=30 {
            set_now(up + minute * MINUTE);
            assert!(send(&mut core, "comp-a", T0 + (60 + minute) * MINUTE, 70.0).is_empty());
            for t in tick(&mut core, Some(up)) {
                let Transition::Opened(inc) = t else { panic!("{t:?}") };
                opened.push((minute, inc));
            }
        }
        // Silent stale_after after the reconnect, not at once for its hour of silence.
        let [(15, inc)] = &opened[..] else { panic!("comp-b alone, 15 min after the reconnect: {opened:?}") };
        assert_eq!((inc.device.as_str(), inc.fault), ("comp-b", FaultKind::Silent));
        set_now(up + 31 * MINUTE);
        let t = send(&mut core, "comp-b", T0 + 91 * MINUTE, 70.0);
        assert!(matches!(&t[..], [Transition::Resolved(i)] if i.id == inc.id), "heard again: {t:?}");
    }

    #[test]
    fn a_fault_that_outlasts_its_silence_gets_its_ticket_when_the_silence_ends() {
        set_now(T0 + HOUR);
        let (mut core, store, metrics) = core(&config());
        let until = now() + 2 * HOUR;
        let silence = Silence {
            id: "s1".into(),
            device: Some("comp-1".into()),
            site: None,
            created_at: now(),
            until,
            reason: "valve swap".into(),
        };
        core.silences().add(silence).unwrap();
        let inc = fault(&mut core, "comp-1", T0, 5);
        assert_eq!(inc.suppressed, Some(Suppression::Silence { reason: "valve swap".into() }));
        assert_eq!(store.outbox_len("api"), 0, "silenced: no ticket");
        set_now(until - 1);
        assert!(tick(&mut core, Some(T0)).is_empty(), "still silenced");
        // The silence ends (wall clock) while the fault goes on (event time), for longer than the
        // debounce after the planned work ended.
        set_now(until);
        let mut opened = Vec::new();
        for i in 0..40 {
            assert!(send(&mut core, "comp-1", T0 + 60_000 + i * 10_000, 99.0 + (i % 3) as f64 * 0.1).is_empty());
            set_now(now() + 1000);
            opened.extend(tick(&mut core, Some(T0)));
        }
        let [Transition::Opened(ticket)] = &opened[..] else { panic!("its ticket opens once: {opened:?}") };
        assert_eq!((ticket.id.as_str(), &ticket.suppressed), (inc.id.as_str(), &None));
        assert_eq!(store.outbox_len("api"), 1, "the ticket goes to the sink");
        assert_eq!(metrics.incidents_opened_total(), 1, "the same incident, counted once");
    }
}
