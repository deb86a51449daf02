//! Tickets: what the technician reads, and how it reaches the ticket system.
//!
//! An incident transition becomes a [`TicketCommand`], written to the durable outbox in the same
//! transaction as the incident itself. One delivery task per sink drains its queue in order
//! ([`outbox::deliver`]); a command leaves the outbox only after the sink confirmed it.

pub mod file;
pub mod outbox;
pub mod webhook;

use serde::{Deserialize, Serialize};

use crate::config::SinkConfig;
use crate::detect::FaultKind;
use crate::incident::{describe, Incident, IncidentState};
use crate::reading::format_ts;

/// What the ticket system is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Open,
    Resolve,
}

/// One request to a ticket system, as stored in the outbox and sent to sinks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TicketCommand {
    pub action: Action,
    /// Unique per command (`<incident key>:<action>`): the `Idempotency-Key` a sink sends, so a
    /// retried request is recognised by the receiver.
    pub idempotency_key: String,
    pub ticket: Ticket,
}

/// One reading shown as evidence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvidenceReading {
    pub ts: String,
    pub value: f64,
}

/// The numbers behind the ticket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    /// The most anomalous value seen.
    pub value: f64,
    pub unit: Option<String>,
    /// What the detector expected (baseline level), when it has one.
    pub baseline: Option<f64>,
    /// Spread around the baseline (robust standard deviation).
    pub spread: Option<f64>,
    /// Deviation in spreads.
    pub z: Option<f64>,
    /// Calibrated anomaly score, 0..1.
    pub score: f64,
    pub detector: String,
    /// The configured limit crossed, for limit faults.
    pub limit: Option<f64>,
    pub anomalous_readings: u64,
    /// The last readings up to the opening, oldest first.
    pub recent: Vec<EvidenceReading>,
}

/// The ticket a technician reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ticket {
    pub id: String,
    /// Stable for the incident (not per command): the ticket system's dedup key.
    pub idempotency_key: String,
    pub device: String,
    pub site: Option<String>,
    pub metric: String,
    /// `metric.kind`, e.g. `discharge_temp.deviation`.
    pub fault: String,
    pub fault_kind: FaultKind,
    pub title: String,
    /// What happened, in plain words.
    pub summary: String,
    pub evidence: Evidence,
    pub first_seen: String,
    pub opened_at: String,
    pub state: IncidentState,
    pub resolved_at: Option<String>,
}

impl TicketCommand {
    /// The command for an incident transition.
    pub fn for_incident(inc: &Incident, unit: Option<&str>) -> TicketCommand {
        let action = match inc.state {
            IncidentState::Open => Action::Open,
            IncidentState::Resolved => Action::Resolve,
        };
        let (title, summary) = describe(inc, unit);
        let p = &inc.peak;
        TicketCommand {
            action,
            idempotency_key: format!(
                "{}:{}",
                inc.idempotency_key,
                if action == Action::Open { "open" } else { "resolve" }
            ),
            ticket: Ticket {
                id: inc.id.clone(),
                idempotency_key: inc.idempotency_key.clone(),
                device: inc.device.clone(),
                site: inc.site.clone(),
                metric: inc.metric.clone(),
                fault: format!("{}.{}", inc.metric, inc.fault.as_str()),
                fault_kind: inc.fault,
                title,
                summary,
                evidence: Evidence {
                    value: p.value,
                    unit: unit.map(str::to_string),
                    baseline: p.expected,
                    spread: p.spread,
                    z: p.z,
                    score: p.score,
                    detector: p.detector.clone(),
                    limit: matches!(inc.fault, FaultKind::AboveLimit | FaultKind::BelowLimit)
                        .then_some(p.bound)
                        .flatten(),
                    anomalous_readings: inc.anomalous_readings,
                    recent: inc
                        .recent
                        .iter()
                        .map(|&(ts, value)| EvidenceReading { ts: format_ts(ts), value })
                        .collect(),
                },
                first_seen: format_ts(inc.first_seen),
                opened_at: format_ts(inc.opened_at),
                state: inc.state,
                resolved_at: inc.resolved_at.map(format_ts),
            },
        }
    }
}

/// Why a delivery attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Worth retrying: network error, timeout, 5xx, 429.
    #[error("temporary: {0}")]
    Retry(String),
    /// Retrying cannot help (e.g. 400: the receiver rejects the request itself).
    #[error("permanent: {0}")]
    Permanent(String),
}

/// A ticket destination.
pub enum Sink {
    Webhook(webhook::WebhookSink),
    File(file::FileSink),
}

/// Why a sink could not be built from its config.
#[derive(Debug, thiserror::Error)]
pub enum SinkBuildError {
    #[error("sink `{sink}`: token: {source}")]
    Secret { sink: String, source: crate::config::SecretError },
    #[error("sink `{sink}`: {reason}")]
    Other { sink: String, reason: String },
}

impl Sink {
    /// Builds a sink, resolving its secrets now so a missing token fails at start, not at 3 am.
    pub fn build(cfg: &SinkConfig) -> Result<Sink, SinkBuildError> {
        match cfg {
            SinkConfig::Webhook { name, url, token, timeout } => {
                let token = token
                    .as_ref()
                    .map(|t| t.resolve())
                    .transpose()
                    .map_err(|source| SinkBuildError::Secret { sink: name.clone(), source })?;
                webhook::WebhookSink::new(url, token, *timeout)
                    .map(Sink::Webhook)
                    .map_err(|e| SinkBuildError::Other { sink: name.clone(), reason: e.to_string() })
            }
            SinkConfig::File { name, path } => file::FileSink::open(path)
                .map(Sink::File)
                .map_err(|e| SinkBuildError::Other { sink: name.clone(), reason: e.to_string() }),
        }
    }

    /// Delivers one command.
    pub async fn send(&mut self, cmd: &TicketCommand) -> Result<(), SinkError> {
        match self {
            Sink::Webhook(s) => s.send(cmd).await,
            Sink::File(s) => s.send(cmd).await,
        }
    }
}
