//! Technician feedback: a verdict on an incident closes the loop. A confirmation acknowledges
//! it (no escalation); a false alarm resolves it and makes that series' detector less
//! sensitive; `fixed` and `wont_fix` resolve it, and `wont_fix` keeps it from reopening.

use serde::{Deserialize, Serialize};

use super::Core;
use crate::detect::FALSE_ALARM_WIDENING;
use crate::incident::{IncidentState, Transition, UpdateReason, Verdict};
use crate::metrics::{Escaped, FalseAlarmLabel, VerdictLabel, UNKNOWN_ASSET_MODEL};
use crate::store::StoreError;

/// A technician's feedback on one incident.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Feedback {
    pub verdict: Verdict,
    /// A root-cause code from the service organisation's catalogue.
    #[serde(default)]
    pub root_cause: Option<String>,
    #[serde(default)]
    pub note: Option<String>,
}

/// Longest root-cause code accepted.
pub const ROOT_CAUSE_MAX: usize = 128;
/// Longest note accepted; it goes into the ticket as it is.
pub const NOTE_MAX: usize = 4096;

impl Feedback {
    /// Checks the free-text fields, which end up in tickets.
    pub fn validate(&self) -> Result<(), FeedbackError> {
        if self.root_cause.as_ref().is_some_and(|r| r.chars().count() > ROOT_CAUSE_MAX) {
            return Err(FeedbackError::Invalid(format!("root_cause is longer than {ROOT_CAUSE_MAX} characters")));
        }
        if self.note.as_ref().is_some_and(|n| n.chars().count() > NOTE_MAX) {
            return Err(FeedbackError::Invalid(format!("note is longer than {NOTE_MAX} characters")));
        }
        Ok(())
    }
}

/// Why feedback could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum FeedbackError {
    #[error("no incident with id {0}")]
    NotFound(String),
    #[error("incident {id} is resolved and already has the verdict {verdict}")]
    AlreadyDecided { id: String, verdict: Verdict },
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Store(#[from] StoreError),
}

impl Core {
    /// Applies a verdict to incident `id` at wall-clock time `now` (ms); returns the incident as
    /// stored afterwards.
    pub fn feedback(&mut self, id: &str, fb: &Feedback, now: i64) -> Result<crate::incident::Incident, FeedbackError> {
        fb.validate()?;
        let mut inc = self.incidents.find(id).cloned().ok_or_else(|| FeedbackError::NotFound(id.to_string()))?;
        if inc.state != IncidentState::Open {
            // A resolved incident takes one closing verdict: the same one again changes nothing (a
            // retried request must not widen a band twice), another one is refused.
            // A confirmation may still be followed by how it ended.
            match inc.verdict {
                Some(v) if v == fb.verdict => return Ok(inc),
                Some(v) if v != Verdict::Confirmed => {
                    return Err(FeedbackError::AlreadyDecided { id: id.to_string(), verdict: v })
                }
                _ => {}
            }
        }
        self.metrics.verdicts.get_or_create(&VerdictLabel { verdict: fb.verdict.as_str().into() }).inc();
        if inc.verdict.is_none() {
            self.metrics.time_to_acknowledge_seconds.observe(((now - inc.opened_at).max(0) as f64) / 1000.0);
        }
        let mut words = format!("Technician verdict: {}", fb.verdict.as_str().replace('_', " "));
        if let Some(rc) = &fb.root_cause {
            words.push_str(&format!(" (root cause {rc})"));
        }
        if let Some(n) = &fb.note {
            words.push_str(&format!(": {n}"));
        }
        if fb.verdict == Verdict::FalseAlarm {
            let factor = self.detectors.desensitize(&inc.device, &inc.metric);
            self.store.set_tuning(&inc.device, &inc.metric, factor)?;
            let model = self.registry.lookup(&inc.device).asset.model.unwrap_or_else(|| UNKNOWN_ASSET_MODEL.into());
            self.metrics
                .false_alarms
                .get_or_create(&FalseAlarmLabel { detector: inc.peak.detector.clone(), asset_model: Escaped(model) })
                .inc();
            words.push_str(&format!(
                ". The {} detector of {}/{} is now {:.0}% less sensitive (alarm band widened x{:.2})",
                inc.peak.detector,
                inc.device,
                inc.metric,
                (1.0 - 1.0 / factor) * 100.0,
                FALSE_ALARM_WIDENING
            ));
        }
        inc.verdict = Some(fb.verdict);
        inc.acknowledged = true;
        self.incidents.store_open(&inc);
        let open = inc.state == IncidentState::Open;
        let transition = match fb.verdict {
            Verdict::Confirmed if open => {
                Some(Transition::Updated(inc.clone(), UpdateReason::Verdict { verdict: fb.verdict, words }))
            }
            Verdict::FalseAlarm | Verdict::Fixed | Verdict::WontFix if open => self
                .incidents
                .close(&inc.key, now)
                .map(|closed| Transition::Closed(closed, UpdateReason::Verdict { verdict: fb.verdict, words })),
            _ => {
                // Already resolved: record the verdict, send nothing.
                inc.timeline.push((now, words));
                self.incidents.store_open(&inc);
                self.store.save_incident::<_, ()>(&inc.key, &inc, None)?;
                None
            }
        };
        if let Some(t) = transition {
            inc = self.persist(t)?.incident().clone();
        }
        Ok(inc)
    }
}
