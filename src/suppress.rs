//! Suppression: whether an incident's ticket goes out, and if not, why.
//!
//! Planned work — a `[maintenance]` window or an operator's silence — sends it nowhere; so does
//! a site in `observe` mode. A site in `shadow` mode, and an incident the detectors are not
//! confident about (`incident.min_confidence`), keep the ticket in the `held` tree instead. The
//! incident is tracked either way, so dedup holds. When planned work ends while its fault goes
//! on, the ticket opens after all: the fault outlasted the work.
//!
//! `[modes]` ([`ModesConfig`]) and `[maintenance]` ([`MaintenanceConfig`]) are defined here; the
//! [`Suppression`] an incident records is defined with the incident.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::Deserialize;

use crate::incident::{Incident, IncidentConfig};
pub use crate::incident::{Suppression, MAINTENANCE, NEEDS_REVIEW, OBSERVE, SHADOW, SILENCE, SITE_WIDE};
use crate::settings::Invalid;
use crate::silence::Silences;

/// What the daemon does with a ticket it would open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Log and count only.
    Observe,
    /// Record the ticket it would open (in the store), send nothing.
    Shadow,
    /// Send tickets.
    #[default]
    Ticket,
}

/// `[modes]`: roll fieldwatch out safely, site by site.
#[derive(Debug, Clone, Deserialize, serde::Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ModesConfig {
    pub default: Mode,
    /// Per-site overrides: `site = "shadow"`.
    pub sites: BTreeMap<String, Mode>,
}

impl ModesConfig {
    /// The mode for a site.
    pub fn for_site(&self, site: Option<&str>) -> Mode {
        site.and_then(|s| self.sites.get(s)).copied().unwrap_or(self.default)
    }
}

/// `[maintenance]`: scheduled windows during which no ticket opens.
#[derive(Debug, Clone, Deserialize, serde::Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct MaintenanceConfig {
    pub windows: Vec<MaintenanceWindow>,
}

/// One planned-work window for a site or a device: absolute (`start`/`end`, RFC 3339) or daily
/// (`daily_from`/`daily_to`, `HH:MM` UTC, optionally on some `days` only).
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceWindow {
    pub site: Option<String>,
    pub device: Option<String>,
    /// RFC 3339 with an offset: `2026-05-01T06:00:00Z` or `2026-05-01T08:00:00+02:00`.
    #[serde(default, deserialize_with = "instant")]
    pub start: Option<chrono::DateTime<chrono::Utc>>,
    #[serde(default, deserialize_with = "instant")]
    pub end: Option<chrono::DateTime<chrono::Utc>>,
    /// Time of day, UTC: `HH:MM` or `HH:MM:SS`.
    #[serde(default, deserialize_with = "time_of_day")]
    pub daily_from: Option<chrono::NaiveTime>,
    #[serde(default, deserialize_with = "time_of_day")]
    pub daily_to: Option<chrono::NaiveTime>,
    /// Weekdays for a daily window (`mon`..`sun`); empty = every day.
    #[serde(default)]
    pub days: Vec<chrono::Weekday>,
    /// Shown in logs and the suppression record.
    #[serde(default)]
    pub reason: String,
}

/// An RFC 3339 time with its offset; the error says what is expected.
fn instant<'de, D: serde::Deserializer<'de>>(de: D) -> Result<Option<chrono::DateTime<chrono::Utc>>, D::Error> {
    let text = String::deserialize(de)?;
    chrono::DateTime::parse_from_rfc3339(text.trim()).map(|t| Some(t.to_utc())).map_err(|e| {
        serde::de::Error::custom(format!(
            "`{text}` is not an RFC 3339 time ({e}): write it with its offset, e.g. \
             2026-05-01T06:00:00Z or 2026-05-01T08:00:00+02:00"
        ))
    })
}

/// A time of day, `HH:MM` or `HH:MM:SS` (UTC); the error says what is expected.
fn time_of_day<'de, D: serde::Deserializer<'de>>(de: D) -> Result<Option<chrono::NaiveTime>, D::Error> {
    let text = String::deserialize(de)?;
    let t = text.trim();
    chrono::NaiveTime::parse_from_str(t, "%H:%M:%S")
        .or_else(|_| chrono::NaiveTime::parse_from_str(t, "%H:%M"))
        .map(Some)
        .map_err(|_| serde::de::Error::custom(format!("`{text}` is not a time of day: write HH:MM or HH:MM:SS (UTC)")))
}

impl MaintenanceWindow {
    /// Whether the window covers `device` at `site` at time `ts` (ms).
    pub fn covers(&self, device: &str, site: Option<&str>, ts: i64) -> bool {
        let target = match (&self.device, &self.site) {
            (Some(d), _) => d == device,
            (None, Some(s)) => site == Some(s.as_str()),
            (None, None) => true,
        };
        if !target {
            return false;
        }
        let Some(t) = chrono::DateTime::from_timestamp_millis(ts) else { return false };
        if let (Some(a), Some(b)) = (self.start, self.end) {
            return a <= t && t < b;
        }
        if let (Some(from), Some(to)) = (self.daily_from, self.daily_to) {
            use chrono::Datelike;
            if !self.days.is_empty() && !self.days.contains(&t.weekday()) {
                return false;
            }
            let now = t.time();
            return if from <= to { from <= now && now < to } else { now >= from || now < to };
        }
        false
    }
}

impl MaintenanceConfig {
    /// Checks what types alone cannot; names the offending key.
    pub fn validate(&self) -> Result<(), Invalid> {
        for (i, w) in self.windows.iter().enumerate() {
            let key = format!("maintenance.windows[{i}]");
            let absolute = w.start.is_some() || w.end.is_some();
            let daily = w.daily_from.is_some() || w.daily_to.is_some();
            match (absolute, daily) {
                (true, true) => return Err(Invalid::new(key, "use start/end or daily_from/daily_to, not both")),
                (false, false) => return Err(Invalid::new(key, "set start and end, or daily_from and daily_to")),
                (true, false) if w.start.is_none() || w.end.is_none() || w.start >= w.end => {
                    return Err(Invalid::new(format!("{key}.end"), "start and end are both needed, start before end"))
                }
                (false, true) if w.daily_from.is_none() || w.daily_to.is_none() => {
                    return Err(Invalid::new(format!("{key}.daily_to"), "daily_from and daily_to go together"))
                }
                _ => {}
            }
            if w.site.is_some() && w.device.is_some() {
                return Err(Invalid::new(key, "name a site or a device, not both"));
            }
        }
        Ok(())
    }
}

/// Decides the suppression of incidents, and notices when planned work that held one back is
/// over while its fault goes on.
pub struct Suppressor {
    /// `[maintenance]` windows, matched against the incident's event time.
    maintenance: Vec<MaintenanceWindow>,
    /// Operators' silences, matched against the wall clock; shared with the admin API.
    silences: Arc<Silences>,
    /// `[modes]`: observe, shadow or ticket, per site.
    modes: ModesConfig,
    /// `incident.min_confidence`: a peak score below it needs a person's review.
    min_confidence: f64,
    /// Incidents held back by planned work that is over: their last anomaly (event time) then.
    work_ended: HashMap<String, i64>,
    /// How long anomalies must go on after the work for the fault to have outlasted it: the
    /// (slow) debounce, so the smoothed detectors' decay after the work is not taken for a fault.
    outlast_ms: i64,
}

impl Suppressor {
    /// The suppression rules of `[maintenance]`, `[modes]` and the confidence and debounce of
    /// `[incident]`, with the silences in force.
    pub fn new(
        maintenance: &MaintenanceConfig,
        modes: &ModesConfig,
        incident: &IncidentConfig,
        silences: Arc<Silences>,
    ) -> Suppressor {
        Suppressor {
            maintenance: maintenance.windows.clone(),
            silences,
            modes: modes.clone(),
            min_confidence: incident.min_confidence,
            work_ended: HashMap::new(),
            outlast_ms: incident.debounce_for.max(incident.slow_debounce_for).as_millis() as i64,
        }
    }

    /// The silences, for the admin API that sets them.
    pub fn silences(&self) -> Arc<Silences> {
        self.silences.clone()
    }

    /// Why an incident that is opening at wall-clock time `now` sends no ticket, if it does not:
    /// planned work first, then the site's mode, then the confidence.
    pub fn on_open(&self, inc: &Incident, site: Option<&str>, now: i64) -> Option<Suppression> {
        if let Some(work) = self.planned_work(&inc.device, site, inc.opened_at, now) {
            tracing::info!(device = %inc.device, reason = %work, "planned work: no ticket");
            return Some(work);
        }
        match self.modes.for_site(site) {
            Mode::Observe => Some(Suppression::Observe),
            Mode::Shadow => Some(Suppression::Shadow),
            Mode::Ticket => (inc.peak.score < self.min_confidence).then_some(Suppression::NeedsReview),
        }
    }

    /// The maintenance window (at event time `ts`) or silence (at wall-clock time `now`) that
    /// covers a device, if any.
    fn planned_work(&self, device: &str, site: Option<&str>, ts: i64, now: i64) -> Option<Suppression> {
        if let Some(w) = self.maintenance.iter().find(|w| w.covers(device, site, ts)) {
            return Some(Suppression::Maintenance { reason: w.reason.clone() });
        }
        let reason = self.silences.covering(device, site, now)?;
        Some(Suppression::Silence { reason })
    }

    /// The keys of the incidents held back by planned work whose work is over at `now` while
    /// their fault goes on: their ticket opens now (the technician needs it after all). "Goes
    /// on" means anomalies for the debounce after the work ended; a fault that stops with the
    /// work resolves after its quiet period instead. `open` are the open incidents with their
    /// sites.
    pub fn outlasted_work<'a>(
        &mut self,
        open: impl IntoIterator<Item = (&'a Incident, Option<&'a str>)>,
        now: i64,
    ) -> Vec<String> {
        let held: Vec<(&Incident, Option<&str>)> =
            open.into_iter().filter(|(i, _)| i.suppressed.as_ref().is_some_and(Suppression::is_planned_work)).collect();
        self.work_ended.retain(|key, _| held.iter().any(|(i, _)| &i.key == key));
        let mut outlasted = Vec::new();
        for (inc, site) in held {
            if self.planned_work(&inc.device, site, now, now).is_some() {
                self.work_ended.remove(&inc.key);
                continue;
            }
            // Event time of the fault's last anomaly when the work ended.
            let ended = *self.work_ended.entry(inc.key.clone()).or_insert(inc.last_anomaly_at);
            if inc.last_anomaly_at < ended + self.outlast_ms {
                continue;
            }
            self.work_ended.remove(&inc.key);
            tracing::info!(incident = %inc.id, device = %inc.device, "planned work ended and the fault persists: opening its ticket");
            outlasted.push(inc.key.clone());
        }
        outlasted
    }
}
