//! Incidents: anomalies that persist become incidents; incidents that go quiet resolve.
//!
//! The policy is pure (no I/O): it takes a reading and what the detectors said about it and
//! returns the [`Transition`]s that follow. The caller persists them, together with their ticket
//! commands, in one store transaction. Open incidents are reloaded from the store at start, so a
//! restart neither forgets nor re-opens an incident.

mod config;
mod site_wide;
mod summary;
mod suppression;
mod update;
mod verdict;

use crate::{FastMap, FastSet};

use serde::{Deserialize, Serialize};

use crate::detect::{Anomaly, FaultKind};
use crate::reading::Reading;
pub use config::IncidentConfig;
pub use site_wide::{groupable, SiteNotice, SiteWide, SiteWideConfig, Together};

pub(crate) use summary::num;
pub use summary::{describe, format_duration};
pub use suppression::{Suppression, MAINTENANCE, NEEDS_REVIEW, OBSERVE, SHADOW, SILENCE, SITE_WIDE};
pub use update::UpdateReason;
pub use verdict::Verdict;

/// Where an incident is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IncidentState {
    Open,
    Resolved,
}

/// One fault of one device, from opening to resolution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    /// Short human id, stable for the incident's life (`FW-` + 10 hex digits).
    pub id: String,
    /// `device/metric/fault`: at most one open incident per key.
    pub key: String,
    /// Derived from the key and the first anomalous reading: a retry or a restart reproduces it,
    /// so a ticket system can refuse a second ticket for the same incident.
    pub idempotency_key: String,
    pub device: String,
    pub site: Option<String>,
    pub metric: String,
    pub fault: FaultKind,
    pub state: IncidentState,
    /// Event time of the first anomalous reading of the run that opened the incident.
    pub first_seen: i64,
    /// Event time at which the debounce was satisfied.
    pub opened_at: i64,
    pub last_anomaly_at: i64,
    pub resolved_at: Option<i64>,
    /// Anomalous readings seen while pending and open.
    pub anomalous_readings: u64,
    /// The most anomalous reading so far.
    pub peak: Anomaly,
    /// The readings before and at opening, oldest first: `(ts, value)`.
    pub recent: Vec<(i64, f64)>,
    /// Times it recurred within the cool-down after resolving (each an update, not a new ticket).
    #[serde(default)]
    pub reopen_count: u32,
    /// Opened and resolved repeatedly: held open longer, marked in the ticket.
    #[serde(default)]
    pub flapping: bool,
    /// Respond-by time (ms) from the priority's SLA, set when the incident opens.
    #[serde(default)]
    pub respond_by: Option<i64>,
    /// A technician acknowledged it (no escalation).
    #[serde(default)]
    pub acknowledged: bool,
    /// Escalated because nobody acknowledged it by `respond_by`.
    #[serde(default)]
    pub escalated: bool,
    /// Why no ticket is sent for it.
    #[serde(default)]
    pub suppressed: Option<Suppression>,
    /// Update commands sent so far; numbers each update's idempotency key.
    #[serde(default)]
    pub updates: u32,
    /// A technician's verdict.
    #[serde(default)]
    pub verdict: Option<Verdict>,
    /// What happened to the incident, in order: `(time ms, event)`.
    #[serde(default)]
    pub timeline: Vec<(i64, String)>,
    /// This incident opened a site-wide change and its ticket is the site's notice
    /// (`incident.site_wide.notice = "ticket"`): what moved together, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site_notice: Option<String>,
}

/// Who an incident is about: device, site and metric.
#[derive(Debug, Clone, PartialEq)]
pub struct Subject {
    pub device: String,
    pub site: Option<String>,
    pub metric: String,
}

impl Incident {
    /// A newly opened incident: `first_seen` is the first anomalous reading, `opened_at` when it
    /// met the debounce; `peak` the most anomalous reading so far (its kind is the fault).
    pub fn new(subject: Subject, first_seen: i64, opened_at: i64, peak: Anomaly, anomalous_readings: u64) -> Incident {
        let key = Incident::key_for(&subject.device, &subject.metric, peak.kind);
        let idempotency_key = idempotency_key(&key, first_seen);
        Incident {
            id: format!("FW-{}", &idempotency_key[..10]),
            key,
            idempotency_key,
            device: subject.device,
            site: subject.site,
            metric: subject.metric,
            fault: peak.kind,
            state: IncidentState::Open,
            first_seen,
            opened_at,
            last_anomaly_at: opened_at,
            resolved_at: None,
            anomalous_readings,
            peak,
            recent: Vec::new(),
            reopen_count: 0,
            flapping: false,
            respond_by: None,
            acknowledged: false,
            escalated: false,
            suppressed: None,
            updates: 0,
            verdict: None,
            timeline: Vec::new(),
            site_notice: None,
        }
    }

    /// The incident key for a series and fault.
    pub fn key_for(device: &str, metric: &str, fault: FaultKind) -> String {
        format!("{device}/{metric}/{}", fault.as_str())
    }
}

/// A change the caller must persist (and turn into a ticket command).
#[derive(Debug, Clone, PartialEq)]
pub enum Transition {
    Opened(Incident),
    /// The same incident changed: recurrence, flapping, escalation, a confirmation.
    Updated(Incident, UpdateReason),
    Resolved(Incident),
    /// Resolved by a person (technician feedback): an [`UpdateReason::Verdict`].
    Closed(Incident, UpdateReason),
}

impl Transition {
    pub fn incident(&self) -> &Incident {
        match self {
            Transition::Opened(i) | Transition::Updated(i, _) | Transition::Resolved(i) | Transition::Closed(i, _) => i,
        }
    }

    /// The incident, to enrich before it is stored, and why it changed, if the change says.
    pub fn parts_mut(&mut self) -> (&mut Incident, Option<&UpdateReason>) {
        match self {
            Transition::Opened(i) | Transition::Resolved(i) => (i, None),
            Transition::Updated(i, why) | Transition::Closed(i, why) => (i, Some(why)),
        }
    }
}

/// An anomaly run that has not yet met the debounce.
#[derive(Debug, Clone)]
struct Pending {
    first_seen: i64,
    /// Event time of the latest anomalous reading of the run.
    last_seen: i64,
    count: u32,
    /// Readings seen since the run began, anomalous or not (slow faults tolerate gaps).
    seen: u32,
    /// Consecutive anomalies of the run marked [`Anomaly::abrupt`], up to the latest.
    abrupt: u32,
    peak: Anomaly,
}

/// Debounce, dedup and auto-resolve.
pub struct IncidentPolicy {
    config: IncidentConfig,
    pending: FastMap<String, Pending>,
    open: FastMap<String, Incident>,
    /// The last resolved incident of each key: a recurrence within the cool-down reopens it, and
    /// a `wont_fix` verdict keeps the key from opening again by itself.
    resolved: FastMap<String, Incident>,
    /// The `device/metric/` part of every key in `pending` and `open`, and perhaps of a few
    /// keys no longer there (it is rebuilt when it has grown well past them). A reading of any
    /// other series with nothing to report can change nothing, and is passed over with one
    /// lookup instead of two per fault kind.
    watched: FastSet<String>,
    /// Where the keys looked up for every reading are built, so they allocate nothing.
    scratch: String,
}

/// The `device/metric/` part of an incident key.
fn series_part(key: &str) -> &str {
    key.rfind('/').map_or(key, |i| &key[..=i])
}

fn more_severe(a: &Anomaly, b: &Anomaly) -> bool {
    a.score > b.score || (a.score == b.score && a.z.unwrap_or(0.0).abs() > b.z.unwrap_or(0.0).abs())
}

impl IncidentPolicy {
    /// A policy that starts with the open incidents found in the store.
    pub fn new(config: &IncidentConfig, stored: Vec<Incident>) -> IncidentPolicy {
        let (open, resolved): (Vec<_>, Vec<_>) = stored.into_iter().partition(|i| i.state == IncidentState::Open);
        let open: FastMap<String, Incident> = open.into_iter().map(|i| (i.key.clone(), i)).collect();
        IncidentPolicy {
            config: config.clone(),
            pending: FastMap::default(),
            watched: open.keys().map(|k| series_part(k).to_string()).collect(),
            open,
            resolved: resolved.into_iter().map(|i| (i.key.clone(), i)).collect(),
            scratch: String::new(),
        }
    }

    /// Notes that `key` is about to enter `pending` or `open` (see `watched`).
    fn watch(&mut self, key: &str) {
        let part = series_part(key);
        if self.watched.contains(part) {
            return;
        }
        if self.watched.len() >= 2 * (self.pending.len() + self.open.len()) + 64 {
            let rebuilt = self.pending.keys().chain(self.open.keys()).map(|k| series_part(k).to_string()).collect();
            self.watched = rebuilt;
        }
        self.watched.insert(part.to_string());
    }

    /// Open incidents, for status pages and tests.
    pub fn open_incidents(&self) -> impl Iterator<Item = &Incident> {
        self.open.values()
    }

    /// Forgets the not-yet-open anomaly runs of a device's level and behaviour faults: the
    /// device changed operating point, which explains them.
    pub fn forget_pending(&mut self, device: &str) {
        let prefix = format!("{device}/");
        self.pending.retain(|key, _| {
            !(key.starts_with(&prefix)
                && [FaultKind::Deviation, FaultKind::Drift, FaultKind::Multivariate]
                    .iter()
                    .any(|k| key.ends_with(&format!("/{}", k.as_str()))))
        });
    }

    /// Updates the state of every fault of the reading's series.
    pub fn observe(&mut self, reading: &Reading, anomalies: &[Anomaly]) -> Vec<Transition> {
        if anomalies.is_empty() {
            self.scratch.clear();
            for part in [&reading.device, "/", &reading.metric, "/"] {
                self.scratch.push_str(part);
            }
            if !self.watched.contains(self.scratch.as_str()) {
                return Vec::new(); // the common case: a normal reading of a quiet series
            }
        }
        let mut out = Vec::new();
        // One key buffer per reading (this runs for every reading): `device/metric/` + kind.
        let mut key = Incident::key_for(&reading.device, &reading.metric, FaultKind::ALL[0]);
        let prefix = key.len() - FaultKind::ALL[0].as_str().len();
        for kind in FaultKind::ALL {
            key.truncate(prefix);
            key.push_str(kind.as_str());
            // Several detectors may report the same kind; the most severe speaks for them.
            let hit = anomalies.iter().filter(|a| a.kind == kind).fold(None::<&Anomaly>, |best, a| match best {
                Some(b) if !more_severe(a, b) => Some(b),
                _ => Some(a),
            });
            // Nothing to report and nothing under way: nothing can change (the common case).
            if hit.is_none() && !self.open.contains_key(&key) && !self.pending.contains_key(&key) {
                continue;
            }
            if let Some(t) = self.step(&key, reading, hit) {
                out.push(t);
            }
        }
        out
    }

    /// Updates a device's multivariate incident with the verdict on one of its vectors;
    /// `at` carries the device, site and event time (its metric and value are ignored).
    pub fn observe_device(&mut self, at: &Reading, hit: Option<&Anomaly>) -> Option<Transition> {
        let reading = Reading { metric: DEVICE_METRIC.into(), ..at.clone() };
        let key = Incident::key_for(&reading.device, DEVICE_METRIC, FaultKind::Multivariate);
        self.step(&key, &reading, hit)
    }

    fn step(&mut self, key: &str, reading: &Reading, hit: Option<&Anomaly>) -> Option<Transition> {
        let ts = reading.ts;
        let quiet_normal = self.quiet_ms(false);
        let quiet_flapping = self.quiet_ms(true);
        if let Some(inc) = self.open.get_mut(key) {
            match hit {
                Some(a) => {
                    inc.last_anomaly_at = inc.last_anomaly_at.max(ts);
                    inc.anomalous_readings += 1;
                    if more_severe(a, &inc.peak) {
                        inc.peak = a.clone();
                    }
                    None
                }
                None if ts - inc.last_anomaly_at >= if inc.flapping { quiet_flapping } else { quiet_normal } => {
                    let mut inc = self.open.remove(key)?;
                    inc.state = IncidentState::Resolved;
                    inc.resolved_at = Some(ts);
                    self.resolved.insert(key.to_string(), inc.clone());
                    Some(Transition::Resolved(inc))
                }
                None => None,
            }
        } else {
            // A slow fault's run survives short gaps (a load cycle can hide it for a while);
            // any other run ends at the first normal reading.
            let gap_ms = self.config.slow_debounce_for.as_millis() as i64 / 2;
            let Some(a) = hit else {
                match self.pending.get_mut(key) {
                    Some(p) if p.peak.kind.is_slow() && ts - p.last_seen < gap_ms => p.seen += 1,
                    _ => {
                        self.pending.remove(key);
                    }
                }
                return None;
            };
            self.watch(key);
            let p = self.pending.entry(key.to_string()).or_insert_with(|| Pending {
                first_seen: ts,
                last_seen: ts,
                count: 0,
                seen: 0,
                abrupt: 0,
                peak: a.clone(),
            });
            p.count += 1;
            p.seen += 1;
            p.abrupt = if a.abrupt { p.abrupt + 1 } else { 0 };
            p.last_seen = ts;
            if more_severe(a, &p.peak) {
                p.peak = a.clone();
            }
            let lasted = ts - p.first_seen;
            let persisted = if a.kind.is_slow() {
                // ... as long as at least half of its readings were anomalous; a strong abrupt
                // break of several metrics at once is no slow fault, and waits only for the
                // ordinary debounce's readings.
                p.abrupt >= self.config.debounce_readings
                    || p.count >= self.config.debounce_readings
                        && lasted >= self.config.slow_debounce_for.as_millis() as i64
                        && p.count * 2 >= p.seen
            } else {
                !a.kind.needs_debounce()
                    || p.count >= self.config.debounce_readings
                    || lasted >= self.config.debounce_for.as_millis() as i64
            };
            if !persisted {
                return None;
            }
            let p = self.pending.remove(key)?;
            if let Some(prev) = self.resolved.get(key) {
                if prev.verdict == Some(Verdict::WontFix) {
                    return None; // a technician decided: never reopened automatically
                }
                let within = prev.resolved_at.is_some_and(|r| ts - r < self.config.cool_down.as_millis() as i64);
                if within {
                    let mut inc = self.resolved.remove(key)?;
                    let note = self.reopen(&mut inc, p, ts);
                    self.open.insert(key.to_string(), inc.clone());
                    return Some(Transition::Updated(inc, note));
                }
            }
            let subject =
                Subject { device: reading.device.clone(), site: reading.site.clone(), metric: reading.metric.clone() };
            let inc = Incident::new(subject, p.first_seen, ts, p.peak, u64::from(p.count));
            self.open.insert(key.to_string(), inc.clone());
            Some(Transition::Opened(inc))
        }
    }

    /// How long an incident must stay quiet to resolve.
    fn quiet_ms(&self, flapping: bool) -> i64 {
        let factor = if flapping { self.config.flap_hold_factor.max(1) } else { 1 };
        self.config.quiet_period.as_millis() as i64 * i64::from(factor)
    }

    /// Reopens a recently resolved incident; returns why its ticket is updated.
    fn reopen(&self, inc: &mut Incident, p: Pending, ts: i64) -> UpdateReason {
        let quiet_for = ts - inc.resolved_at.unwrap_or(ts);
        inc.state = IncidentState::Open;
        inc.resolved_at = None;
        inc.reopen_count += 1;
        // A verdict was about the occurrence that resolved; this one needs its own.
        inc.verdict = None;
        inc.last_anomaly_at = ts;
        inc.anomalous_readings += u64::from(p.count);
        if more_severe(&p.peak, &inc.peak) {
            inc.peak = p.peak;
        }
        let opened_times = inc.reopen_count + 1;
        if !inc.flapping && opened_times >= self.config.flap_reopens {
            inc.flapping = true;
            UpdateReason::Flapping { opened_times, since: inc.opened_at, quiet_for_ms: self.quiet_ms(true) }
        } else {
            UpdateReason::Recurred { quiet_for_ms: quiet_for, reopen_count: inc.reopen_count }
        }
    }

    /// Time-driven changes: escalates open incidents nobody acknowledged by their respond-by
    /// time. `now` is wall-clock ms.
    pub fn tick(&mut self, now: i64) -> Vec<Transition> {
        let mut out = Vec::new();
        for inc in self.open.values_mut() {
            let due = inc.respond_by.is_some_and(|r| now >= r);
            if due && !inc.acknowledged && !inc.escalated && inc.suppressed.is_none() {
                inc.escalated = true;
                out.push(Transition::Updated(inc.clone(), UpdateReason::Escalated { respond_by: inc.respond_by }));
            }
        }
        out
    }

    /// Opens a sensor-health incident for a device silent since `last_heard` (wall-clock ms),
    /// unless one is open already. No debounce: staleness is already a duration.
    pub fn silent(&mut self, device: &str, site: Option<String>, last_heard: i64, now: i64) -> Option<Transition> {
        self.unheard(device, site, last_heard, now, "staleness")
    }

    /// Opens the connectivity incident of a device whose death certificate (a Sparkplug NDEATH
    /// or DDEATH) arrived, offline since `since`. It is the silence's incident (same key), so the
    /// silence check finds it open and opens no second one, and the device's next message (its
    /// BIRTH) resolves it through [`IncidentPolicy::heard`].
    pub fn offline(&mut self, device: &str, site: Option<String>, since: i64, now: i64) -> Option<Transition> {
        self.unheard(device, site, since, now, OFFLINE_DETECTOR)
    }

    fn unheard(
        &mut self,
        device: &str,
        site: Option<String>,
        last_heard: i64,
        now: i64,
        detector: &'static str,
    ) -> Option<Transition> {
        let key = Incident::key_for(device, SILENT_METRIC, FaultKind::Silent);
        if self.open.contains_key(&key) {
            return None;
        }
        if self.resolved.get(&key).is_some_and(|i| i.verdict == Some(Verdict::WontFix)) {
            return None;
        }
        let peak = Anomaly::new(FaultKind::Silent, detector, now, (now - last_heard) as f64 / 1000.0, 1.0);
        let subject = Subject { device: device.to_string(), site, metric: SILENT_METRIC.into() };
        let inc = Incident::new(subject, last_heard, now, peak, 0);
        self.watch(&key);
        self.open.insert(key, inc.clone());
        Some(Transition::Opened(inc))
    }

    /// A device was heard from at `ts`: resolves its sensor-health incident, if open.
    pub fn heard(&mut self, device: &str, ts: i64) -> Option<Transition> {
        // Runs for every message: the key is built without allocating.
        self.scratch.clear();
        for part in [device, "/", SILENT_METRIC, "/", FaultKind::Silent.as_str()] {
            self.scratch.push_str(part);
        }
        if !self.open.contains_key(self.scratch.as_str()) {
            return None;
        }
        let key = std::mem::take(&mut self.scratch);
        self.close(&key, ts).map(Transition::Resolved)
    }

    /// The incident with this id, open or last resolved.
    pub fn find(&self, id: &str) -> Option<&Incident> {
        self.open.values().chain(self.resolved.values()).find(|i| i.id == id)
    }

    /// Resolves an open incident now (a technician closed it); `None` if it is not open.
    pub fn close(&mut self, key: &str, ts: i64) -> Option<Incident> {
        let mut inc = self.open.remove(key)?;
        inc.state = IncidentState::Resolved;
        inc.resolved_at = Some(ts);
        self.resolved.insert(key.to_string(), inc.clone());
        Some(inc)
    }

    /// Replaces the policy's copy of an open incident after the caller enriched it (evidence,
    /// SLA, suppression, update counter).
    pub fn store_open(&mut self, inc: &Incident) {
        if inc.state == IncidentState::Open {
            if let Some(slot) = self.open.get_mut(&inc.key) {
                *slot = inc.clone();
            }
        } else {
            self.resolved.insert(inc.key.clone(), inc.clone());
        }
    }
}

/// The metric name of device-level sensor-health incidents.
pub const SILENT_METRIC: &str = "telemetry";
/// The "detector" of a connectivity incident a death certificate opened (see
/// [`IncidentPolicy::offline`]).
pub const OFFLINE_DETECTOR: &str = "death_certificate";
/// The metric name of device-level model incidents (`device/<device>/multivariate`).
pub const DEVICE_METRIC: &str = "device";

/// A stable key for an incident: SHA-256 of its key and first anomalous reading, hex.
pub fn idempotency_key(key: &str, first_seen: i64) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("{key}@{first_seen}").as_bytes());
    digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn reading(ts: i64, value: f64) -> Reading {
        Reading { device: "d".into(), site: None, metric: "m".into(), ts, value }
    }

    fn anomaly(ts: i64, score: f64) -> Anomaly {
        Anomaly::new(FaultKind::Deviation, "baseline", ts, 1.0, score).with_level(0.0, 0.1, 10.0)
    }

    fn policy() -> IncidentPolicy {
        IncidentPolicy::new(
            &IncidentConfig {
                debounce_readings: 3,
                debounce_for: Duration::from_secs(3600),
                quiet_period: Duration::from_secs(10),
                evidence_readings: 5,
                cool_down: Duration::from_secs(60),
                flap_reopens: 3,
                ..IncidentConfig::default()
            },
            Vec::new(),
        )
    }

    #[test]
    fn opens_after_debounce_once_and_resolves_after_quiet_period() {
        let mut p = policy();
        let mut transitions = Vec::new();
        for t in 0..10 {
            transitions.extend(p.observe(&reading(t * 1000, 1.0), &[anomaly(t * 1000, 0.9)]));
        }
        assert_eq!(transitions.len(), 1, "one incident for one run");
        let Transition::Opened(inc) = &transitions[0] else { panic!("expected open") };
        assert_eq!((inc.first_seen, inc.opened_at), (0, 2000));
        assert!(p.observe(&reading(15_000, 0.0), &[]).is_empty(), "quiet period not over");
        let t = p.observe(&reading(19_000, 0.0), &[]);
        assert!(matches!(&t[..], [Transition::Resolved(i)] if i.resolved_at == Some(19_000)));
    }

    #[test]
    fn a_slow_fault_waits_for_the_slow_debounce_unless_it_is_part_of_an_abrupt_break() {
        let drift = |ts: i64, abrupt: bool| Anomaly {
            abrupt,
            ..Anomaly::new(FaultKind::Drift, "drift", ts, 1.0, 0.9).with_level(0.0, 0.1, 10.0)
        };
        let opened_at = |abrupt: bool| {
            let mut p = policy();
            (0..400).flat_map(|t| p.observe(&reading(t * 1000, 1.0), &[drift(t * 1000, abrupt)])).find_map(|t| {
                if let Transition::Opened(i) = t {
                    Some(i.opened_at)
                } else {
                    None
                }
            })
        };
        assert_eq!(opened_at(false), Some(300_000), "a drift waits for slow_debounce_for (5 min)");
        assert_eq!(opened_at(true), Some(2_000), "a break opens after debounce_readings (3)");
    }

    #[test]
    fn quiet_series_are_passed_over_and_the_watch_list_stays_small() {
        let mut p = policy();
        let of = |device: String, ts: i64| Reading { device, ..reading(ts, 1.0) };
        // Many series each start a run that a normal reading ends; one series opens.
        for d in 0..1_000 {
            assert!(p.observe(&of(format!("d{d}"), 0), &[anomaly(0, 0.9)]).is_empty());
            assert!(p.observe(&of(format!("d{d}"), 1_000), &[]).is_empty());
            assert!(p.watched.len() <= 2 * (p.pending.len() + p.open.len()) + 65);
        }
        assert!(p.pending.is_empty());
        let opened: Vec<_> = (0..3).flat_map(|t| p.observe(&of("x".into(), t), &[anomaly(t, 0.9)])).collect();
        assert!(matches!(&opened[..], [Transition::Opened(_)]));
        // The open series is still watched after other series came and went: it resolves.
        for d in 0..200 {
            p.observe(&of(format!("e{d}"), 0), &[anomaly(0, 0.9)]);
            p.observe(&of(format!("e{d}"), 1_000), &[]);
        }
        let resolved = p.observe(&of("x".into(), 20_000), &[]);
        assert!(matches!(&resolved[..], [Transition::Resolved(_)]), "{resolved:?}");
    }

    #[test]
    fn a_pattern_opens_on_its_first_anomaly() {
        let mut p = policy();
        let pattern = Anomaly { kind: FaultKind::Pattern, detector: "novelty".into(), ..anomaly(5_000, 0.6) };
        let t = p.observe(&reading(5_000, 1.0), &[pattern]);
        let [Transition::Opened(inc)] = &t[..] else { panic!("expected one opened incident, got {t:?}") };
        assert_eq!((inc.fault, inc.first_seen, inc.opened_at), (FaultKind::Pattern, 5_000, 5_000));
        assert!(FaultKind::Deviation.needs_debounce(), "other faults still wait for the debounce");
    }

    #[test]
    fn an_interrupted_run_does_not_open() {
        let mut p = policy();
        assert!(p.observe(&reading(0, 1.0), &[anomaly(0, 0.9)]).is_empty());
        assert!(p.observe(&reading(1, 1.0), &[anomaly(1, 0.9)]).is_empty());
        assert!(p.observe(&reading(2, 0.0), &[]).is_empty());
        assert!(p.observe(&reading(3, 1.0), &[anomaly(3, 0.9)]).is_empty());
    }

    #[test]
    fn reloaded_open_incident_is_not_opened_again() {
        let mut p = policy();
        let opened: Vec<_> = (0..3).flat_map(|t| p.observe(&reading(t, 1.0), &[anomaly(t, 0.9)])).collect();
        let Transition::Opened(inc) = opened[0].clone() else { panic!() };
        let mut restarted = IncidentPolicy::new(&policy().config, vec![inc]);
        for t in 3..20 {
            assert!(restarted.observe(&reading(t, 1.0), &[anomaly(t, 0.9)]).is_empty());
        }
    }

    /// Runs `n` anomalous readings from `t0` (one per second), then returns the transitions.
    fn burst(p: &mut IncidentPolicy, t0: i64, n: i64) -> Vec<Transition> {
        (0..n).flat_map(|i| p.observe(&reading(t0 + i * 1000, 1.0), &[anomaly(t0 + i * 1000, 0.9)])).collect()
    }

    #[test]
    fn recurrence_within_cool_down_updates_the_same_incident_and_flapping_holds_it_open() {
        let mut p = policy();
        let opened = burst(&mut p, 0, 3);
        let Transition::Opened(first) = &opened[0] else { panic!("{opened:?}") };
        assert!(matches!(&p.observe(&reading(20_000, 0.0), &[])[..], [Transition::Resolved(_)]));
        // Back 10 s after resolving: inside the 60 s cool-down.
        let again = burst(&mut p, 30_000, 3);
        let [Transition::Updated(inc, note)] = &again[..] else { panic!("{again:?}") };
        assert_eq!(inc.id, first.id, "same incident, same ticket");
        assert_eq!(inc.reopen_count, 1);
        assert!(matches!(note, UpdateReason::Recurred { reopen_count: 1, .. }), "{note}");
        assert!(note.to_string().starts_with("Recurred"), "{note}");
        assert!(matches!(&p.observe(&reading(50_000, 0.0), &[])[..], [Transition::Resolved(_)]));
        let third = burst(&mut p, 60_000, 3);
        let [Transition::Updated(inc, note)] = &third[..] else { panic!("{third:?}") };
        assert!(inc.flapping && matches!(note, UpdateReason::Flapping { opened_times: 3, .. }), "{note}");
        assert!(note.to_string().starts_with("Flapping"), "{note}");
        // Held open: the normal 10 s quiet period no longer resolves it, three times that does.
        assert!(p.observe(&reading(75_000, 0.0), &[]).is_empty());
        assert!(matches!(&p.observe(&reading(93_000, 0.0), &[])[..], [Transition::Resolved(_)]));
        // Long after the cool-down a new incident opens.
        assert!(matches!(&burst(&mut p, 500_000, 3)[..], [Transition::Opened(i)] if i.id != first.id));
    }

    #[test]
    fn wont_fix_is_never_reopened_automatically() {
        let mut p = policy();
        burst(&mut p, 0, 3);
        let resolved = p.observe(&reading(20_000, 0.0), &[]);
        let Transition::Resolved(mut inc) = resolved[0].clone() else { panic!() };
        inc.verdict = Some(Verdict::WontFix);
        p.store_open(&inc);
        assert!(burst(&mut p, 30_000, 10).is_empty());
        assert!(burst(&mut p, 900_000, 10).is_empty());
    }

    #[test]
    fn an_incident_stored_with_text_for_its_suppression_and_verdict_still_loads() {
        let Transition::Opened(inc) = burst(&mut policy(), 0, 3)[0].clone() else { panic!() };
        let mut stored = serde_json::to_value(&inc).unwrap();
        stored["suppressed"] = "maintenance: compressor overhaul".into();
        stored["verdict"] = "wont_fix".into();
        let loaded: Incident = serde_json::from_value(stored.clone()).unwrap();
        assert_eq!(loaded.suppressed, Some(Suppression::Maintenance { reason: "compressor overhaul".into() }));
        assert_eq!(loaded.verdict, Some(Verdict::WontFix));
        assert_eq!(serde_json::to_value(&loaded).unwrap(), stored, "stored again as it was");
    }

    #[test]
    fn unacknowledged_incident_escalates_once_at_respond_by() {
        let mut p = policy();
        let Transition::Opened(mut inc) = burst(&mut p, 0, 3)[0].clone() else { panic!() };
        inc.respond_by = Some(100_000);
        p.store_open(&inc);
        assert!(p.tick(99_999).is_empty());
        let t = p.tick(100_000);
        assert!(matches!(&t[..], [Transition::Updated(i, UpdateReason::Escalated { .. })] if i.escalated));
        assert!(p.tick(200_000).is_empty(), "escalates once");
    }
}
