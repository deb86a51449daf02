//! The core: decode → store → detect → incidents → outbox, for one batch at a time.
//!
//! The core does not know where messages come from. `run` feeds it from MQTT, `replay` from a
//! file, `demo` and the benchmarks from the simulator: one implementation, measured and tested
//! once. It is synchronous; the caller flushes the store after each batch (group commit) and only
//! then acknowledges the batch to its source.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::decode::Decoder;
use crate::detect::DetectorBank;
use crate::incident::{Incident, IncidentPolicy, Transition};
use crate::metrics::{Metrics, ReasonLabel};
use crate::reading::{Message, Reading};
use crate::store::{Rejected, Store, StoreError, REJECTED_PAYLOAD_MAX};
use crate::ticket::TicketCommand;

/// What one batch did.
#[derive(Debug, Default)]
pub struct BatchOutcome {
    /// New readings stored.
    pub stored: usize,
    /// Readings that were already stored (redelivered).
    pub duplicates: usize,
    /// Messages rejected by decode.
    pub rejected: usize,
    /// Incidents opened or resolved by this batch.
    pub transitions: Vec<Transition>,
}

/// Rate limit for "message rejected" log lines: the count is exact, the log is a sample.
const REJECT_LOG_EVERY: Duration = Duration::from_secs(10);

/// The daemon's processing core.
pub struct Core {
    decoder: Decoder,
    store: Arc<Store>,
    detectors: DetectorBank,
    incidents: IncidentPolicy,
    sinks: Vec<String>,
    units: HashMap<String, String>,
    evidence_readings: usize,
    metrics: Arc<Metrics>,
    reject_log: HashMap<&'static str, (Instant, u64)>,
}

impl Core {
    /// Builds the core and reloads open incidents from the store.
    pub fn new(config: &Config, store: Arc<Store>, metrics: Arc<Metrics>) -> Result<Core, StoreError> {
        let stored: Vec<Incident> = store.incidents()?;
        let mut units: HashMap<String, String> = config.decode.units.clone().into_iter().collect();
        for m in &config.decode.metrics {
            if let Some(u) = &m.unit {
                units.insert(m.name.clone(), u.clone());
            }
        }
        Ok(Core {
            decoder: Decoder::new(&config.decode),
            detectors: DetectorBank::new(&config.detect),
            incidents: IncidentPolicy::new(&config.incident, stored),
            sinks: config.ticket.sinks.iter().map(|s| s.name().to_string()).collect(),
            units,
            evidence_readings: config.incident.evidence_readings,
            store,
            metrics,
            reject_log: HashMap::new(),
        })
    }

    /// Open incidents known to the core.
    pub fn open_incidents(&self) -> Vec<Incident> {
        self.incidents.open_incidents().cloned().collect()
    }

    /// Decodes, stores and scores a batch of messages. Nothing is durable until the caller
    /// flushes the store.
    pub fn process_messages(&mut self, msgs: &[Message]) -> Result<BatchOutcome, StoreError> {
        let mut out = BatchOutcome::default();
        for msg in msgs {
            self.metrics.messages.inc();
            match self.decoder.decode(msg) {
                Ok(readings) => {
                    for r in &readings {
                        self.process_reading(r, &mut out)?;
                    }
                }
                Err(reason) => {
                    out.rejected += 1;
                    let label = reason.label();
                    self.metrics.count_rejected(label);
                    self.log_rejected(label, &msg.topic, &reason.to_string());
                    let payload_end = msg.payload.len().min(REJECTED_PAYLOAD_MAX);
                    self.store.reject(&Rejected {
                        received_ms: msg.received_ms,
                        topic: msg.topic.clone(),
                        reason: reason.to_string(),
                        payload: String::from_utf8_lossy(&msg.payload[..payload_end]).into_owned(),
                    })?;
                }
            }
        }
        Ok(out)
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

    /// Stores and scores one reading; readings already stored are counted and skipped.
    ///
    /// Returns the reading's highest calibrated detector score (0..1), or `None` for a reading
    /// that was already stored and so was not scored again.
    pub fn process_reading(&mut self, r: &Reading, out: &mut BatchOutcome) -> Result<Option<f64>, StoreError> {
        let series = self.store.series_id(&r.device, &r.metric)?;
        if !self.store.insert_reading(series, r.ts, r.value)? {
            out.duplicates += 1;
            self.metrics.readings_duplicate.inc();
            return Ok(None);
        }
        out.stored += 1;
        self.metrics.readings.inc();
        let observation = self.detectors.observe(&r.device, &r.metric, r.ts, r.value);
        let anomalies = observation.anomalies;
        for a in &anomalies {
            self.metrics.anomalies.get_or_create(&ReasonLabel { reason: a.kind.as_str().into() }).inc();
        }
        for t in self.incidents.observe(r, &anomalies) {
            let t = self.persist(series, t)?;
            out.transitions.push(t);
        }
        Ok(Some(observation.score))
    }

    /// Writes an incident transition and its ticket command in one transaction.
    fn persist(&mut self, series: u32, t: Transition) -> Result<Transition, StoreError> {
        let t = match t {
            Transition::Opened(mut inc) => {
                inc.recent = self.store.recent(series, inc.opened_at, self.evidence_readings)?;
                self.incidents.attach_recent(&inc.key, inc.recent.clone());
                self.metrics.incidents_opened.inc();
                Transition::Opened(inc)
            }
            Transition::Resolved(inc) => {
                self.metrics.incidents_resolved.inc();
                Transition::Resolved(inc)
            }
        };
        let inc = match &t {
            Transition::Opened(i) | Transition::Resolved(i) => i,
        };
        let cmd = TicketCommand::for_incident(inc, self.units.get(&inc.metric).map(String::as_str));
        tracing::info!(
            incident = %inc.id, device = %inc.device, fault = %cmd.ticket.fault, action = ?cmd.action,
            summary = %cmd.ticket.summary, "incident {}", if matches!(t, Transition::Opened(_)) { "opened" } else { "resolved" }
        );
        self.store.save_incident(&inc.key, inc, Some(&cmd), &self.sinks)?;
        Ok(t)
    }

    /// Number of series with detector state.
    pub fn series_tracked(&self) -> usize {
        self.detectors.len()
    }
}
