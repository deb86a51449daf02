//! Incidents: anomalies that persist become incidents; incidents that go quiet resolve.
//!
//! The policy is pure (no I/O): it takes a reading and what the detectors said about it and
//! returns the [`Transition`]s that follow. The caller persists them, together with their ticket
//! commands, in one store transaction. Open incidents are reloaded from the store at start, so a
//! restart neither forgets nor re-opens an incident.

mod summary;

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::config::IncidentConfig;
use crate::detect::{Anomaly, FaultKind};
use crate::reading::Reading;

pub(crate) use summary::num;
pub use summary::{describe, format_duration};

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
}

impl Incident {
    /// The incident key for a series and fault.
    pub fn key_for(device: &str, metric: &str, fault: FaultKind) -> String {
        format!("{device}/{metric}/{}", fault.as_str())
    }
}

/// A change the caller must persist (and turn into a ticket command).
#[derive(Debug, Clone, PartialEq)]
pub enum Transition {
    Opened(Incident),
    Resolved(Incident),
}

/// An anomaly run that has not yet met the debounce.
#[derive(Debug, Clone)]
struct Pending {
    first_seen: i64,
    count: u32,
    peak: Anomaly,
}

/// Debounce, dedup and auto-resolve.
pub struct IncidentPolicy {
    config: IncidentConfig,
    pending: HashMap<String, Pending>,
    open: HashMap<String, Incident>,
}

fn more_severe(a: &Anomaly, b: &Anomaly) -> bool {
    a.score > b.score || (a.score == b.score && a.z.unwrap_or(0.0).abs() > b.z.unwrap_or(0.0).abs())
}

impl IncidentPolicy {
    /// A policy that starts with the open incidents found in the store.
    pub fn new(config: &IncidentConfig, stored: Vec<Incident>) -> IncidentPolicy {
        let open = stored.into_iter().filter(|i| i.state == IncidentState::Open).map(|i| (i.key.clone(), i)).collect();
        IncidentPolicy { config: config.clone(), pending: HashMap::new(), open }
    }

    /// Open incidents, for status pages and tests.
    pub fn open_incidents(&self) -> impl Iterator<Item = &Incident> {
        self.open.values()
    }

    /// Updates the state of every fault of the reading's series.
    pub fn observe(&mut self, reading: &Reading, anomalies: &[Anomaly]) -> Vec<Transition> {
        let mut out = Vec::new();
        for kind in FaultKind::ALL {
            let key = Incident::key_for(&reading.device, &reading.metric, kind);
            // Several detectors may report the same kind; the most severe speaks for them.
            let hit = anomalies.iter().filter(|a| a.kind == kind).fold(None::<&Anomaly>, |best, a| match best {
                Some(b) if !more_severe(a, b) => Some(b),
                _ => Some(a),
            });
            if let Some(t) = self.step(&key, reading, hit) {
                out.push(t);
            }
        }
        out
    }

    fn step(&mut self, key: &str, reading: &Reading, hit: Option<&Anomaly>) -> Option<Transition> {
        let ts = reading.ts;
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
                None if ts - inc.last_anomaly_at >= self.config.quiet_period.as_millis() as i64 => {
                    let mut inc = self.open.remove(key)?;
                    inc.state = IncidentState::Resolved;
                    inc.resolved_at = Some(ts);
                    Some(Transition::Resolved(inc))
                }
                None => None,
            }
        } else {
            let Some(a) = hit else {
                self.pending.remove(key);
                return None;
            };
            let p = self.pending.entry(key.to_string()).or_insert_with(|| Pending {
                first_seen: ts,
                count: 0,
                peak: a.clone(),
            });
            p.count += 1;
            if more_severe(a, &p.peak) {
                p.peak = a.clone();
            }
            let persisted = p.count >= self.config.debounce_readings
                || ts - p.first_seen >= self.config.debounce_for.as_millis() as i64;
            if !persisted {
                return None;
            }
            let p = self.pending.remove(key)?;
            let idempotency_key = idempotency_key(key, p.first_seen);
            let inc = Incident {
                id: format!("FW-{}", &idempotency_key[..10]),
                key: key.to_string(),
                idempotency_key,
                device: reading.device.clone(),
                site: reading.site.clone(),
                metric: reading.metric.clone(),
                fault: a.kind,
                state: IncidentState::Open,
                first_seen: p.first_seen,
                opened_at: ts,
                last_anomaly_at: ts,
                resolved_at: None,
                anomalous_readings: u64::from(p.count),
                peak: p.peak,
                recent: Vec::new(),
            };
            self.open.insert(key.to_string(), inc.clone());
            Some(Transition::Opened(inc))
        }
    }

    /// Replaces the stored copy of an open incident (after the caller attached evidence).
    pub fn attach_recent(&mut self, key: &str, recent: Vec<(i64, f64)>) {
        if let Some(inc) = self.open.get_mut(key) {
            inc.recent = recent;
        }
    }
}

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
        Anomaly {
            kind: FaultKind::Deviation,
            detector: "baseline".into(),
            ts,
            value: 1.0,
            score,
            expected: Some(0.0),
            spread: Some(0.1),
            z: Some(10.0),
            bound: None,
        }
    }

    fn policy() -> IncidentPolicy {
        IncidentPolicy::new(
            &IncidentConfig {
                debounce_readings: 3,
                debounce_for: Duration::from_secs(3600),
                quiet_period: Duration::from_secs(10),
                evidence_readings: 5,
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
}
