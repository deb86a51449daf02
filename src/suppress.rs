//! Suppression: whether an incident's ticket goes out, and if not, why.
//!
//! Planned work — a `[maintenance]` window or an operator's silence — sends it nowhere; so does
//! a site in `observe` mode. A site in `shadow` mode, and an incident the detectors are not
//! confident about (`incident.min_confidence`), keep the ticket in the `held` tree instead. The
//! incident is tracked either way, so dedup holds. When planned work ends while its fault goes
//! on, the ticket opens after all: the fault outlasted the work.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::config::{Config, MaintenanceWindow, Mode, ModesConfig};
use crate::incident::Incident;
use crate::silence::Silences;

/// Why no ticket is sent for an incident. Stored with the incident as the text it shows
/// (`maintenance: <reason>`, `silence: <reason>`, `observe`, `shadow`, `needs_review`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Suppression {
    /// A `[maintenance]` window covers the device at the incident's opening.
    Maintenance { reason: String },
    /// An operator silenced the device or its site.
    Silence { reason: String },
    /// The site is in `observe` mode: logged and counted only.
    Observe,
    /// The site is in `shadow` mode: the ticket is recorded, not sent.
    Shadow,
    /// The peak score is below `incident.min_confidence`: the ticket waits for a person.
    NeedsReview,
}

/// The labels of [`Suppression`], as counted in `fieldwatch_tickets_suppressed_total`.
pub const MAINTENANCE: &str = "maintenance";
pub const SILENCE: &str = "silence";
pub const OBSERVE: &str = "observe";
pub const SHADOW: &str = "shadow";
pub const NEEDS_REVIEW: &str = "needs_review";

impl Suppression {
    /// What it is counted as: the kind without its reason.
    pub fn label(&self) -> &'static str {
        match self {
            Suppression::Maintenance { .. } => MAINTENANCE,
            Suppression::Silence { .. } => SILENCE,
            Suppression::Observe => OBSERVE,
            Suppression::Shadow => SHADOW,
            Suppression::NeedsReview => NEEDS_REVIEW,
        }
    }

    /// Planned work: its ticket opens if the fault outlasts the work.
    pub fn is_planned_work(&self) -> bool {
        matches!(self, Suppression::Maintenance { .. } | Suppression::Silence { .. })
    }

    /// The reason its ticket is kept under in the `held` tree; `None`: it is kept nowhere.
    pub fn held_as(&self) -> Option<&'static str> {
        matches!(self, Suppression::Shadow | Suppression::NeedsReview).then(|| self.label())
    }
}

impl std::fmt::Display for Suppression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Suppression::Maintenance { reason } | Suppression::Silence { reason } => {
                write!(f, "{}: {reason}", self.label())
            }
            _ => f.write_str(self.label()),
        }
    }
}

impl std::str::FromStr for Suppression {
    type Err = String;

    /// Reads the stored text back; every form ever stored is accepted.
    fn from_str(s: &str) -> Result<Suppression, String> {
        Ok(match s.split_once(": ") {
            Some((MAINTENANCE, reason)) => Suppression::Maintenance { reason: reason.to_string() },
            Some((SILENCE, reason)) => Suppression::Silence { reason: reason.to_string() },
            _ if s == OBSERVE => Suppression::Observe,
            _ if s == SHADOW => Suppression::Shadow,
            _ if s == NEEDS_REVIEW => Suppression::NeedsReview,
            _ => return Err(format!("unknown suppression {s:?}")),
        })
    }
}

impl Serialize for Suppression {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Suppression {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Suppression, D::Error> {
        String::deserialize(deserializer)?.parse().map_err(serde::de::Error::custom)
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
    /// The suppression rules of `config`, with the silences in force.
    pub fn new(config: &Config, silences: Arc<Silences>) -> Suppressor {
        Suppressor {
            maintenance: config.maintenance.windows.clone(),
            silences,
            modes: config.modes.clone(),
            min_confidence: config.incident.min_confidence,
            work_ended: HashMap::new(),
            outlast_ms: config.incident.debounce_for.max(config.incident.slow_debounce_for).as_millis() as i64,
        }
    }

    /// The silences, for the admin API that sets them.
    pub fn silences(&self) -> Arc<Silences> {
        self.silences.clone()
    }

    /// Why an incident that is opening sends no ticket, if it does not: planned work first, then
    /// the site's mode, then the confidence.
    pub fn on_open(&self, inc: &Incident, site: Option<&str>) -> Option<Suppression> {
        if let Some(work) = self.planned_work(&inc.device, site, inc.opened_at) {
            tracing::info!(device = %inc.device, reason = %work, "planned work: no ticket");
            return Some(work);
        }
        match self.modes.for_site(site) {
            Mode::Observe => Some(Suppression::Observe),
            Mode::Shadow => Some(Suppression::Shadow),
            Mode::Ticket => (inc.peak.score < self.min_confidence).then_some(Suppression::NeedsReview),
        }
    }

    /// The maintenance window (at event time `ts`) or silence (now, wall clock) that covers a
    /// device, if any.
    fn planned_work(&self, device: &str, site: Option<&str>, ts: i64) -> Option<Suppression> {
        if let Some(w) = self.maintenance.iter().find(|w| w.covers(device, site, ts)) {
            return Some(Suppression::Maintenance { reason: w.reason.clone() });
        }
        let reason = self.silences.covering(device, site, crate::reading::now_ms())?;
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
            if self.planned_work(&inc.device, site, now).is_some() {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_suppression_is_stored_as_the_text_it_always_had() {
        let cases = [
            (Suppression::Maintenance { reason: "compressor overhaul".into() }, "maintenance: compressor overhaul"),
            (Suppression::Silence { reason: "crane lift: north yard".into() }, "silence: crane lift: north yard"),
            (Suppression::Silence { reason: String::new() }, "silence: "),
            (Suppression::Observe, "observe"),
            (Suppression::Shadow, "shadow"),
            (Suppression::NeedsReview, "needs_review"),
        ];
        for (s, text) in cases {
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, serde_json::to_string(text).unwrap());
            assert_eq!(serde_json::from_str::<Suppression>(&json).unwrap(), s, "{text}");
        }
        assert!(serde_json::from_str::<Suppression>("\"paused\"").is_err());
    }

    #[test]
    fn only_shadow_and_review_keep_their_ticket_and_only_planned_work_ends() {
        let maintenance = Suppression::Maintenance { reason: "r".into() };
        assert_eq!(maintenance.held_as(), None);
        assert!(maintenance.is_planned_work());
        assert_eq!(Suppression::Shadow.held_as(), Some("shadow"));
        assert_eq!(Suppression::NeedsReview.held_as(), Some("needs_review"));
        assert_eq!(Suppression::Observe.held_as(), None);
        assert!(!Suppression::Observe.is_planned_work());
    }
}
