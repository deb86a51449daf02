//! Tickets: what the technician reads, and how it reaches the ticket system.
//!
//! An incident transition becomes a [`TicketCommand`], written to the durable outbox in the same
//! transaction as the incident itself. One delivery task per sink drains its queue in order
//! ([`outbox::deliver`]); a command leaves the outbox only after the sink confirmed it.

pub mod content;
pub mod file;
pub mod outbox;
pub mod webhook;

use serde::{Deserialize, Serialize};

use crate::config::SinkConfig;
use crate::detect::FaultKind;
use crate::incident::IncidentState;

/// What the ticket system is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Open,
    /// The incident changed (recurrence, escalation, flapping): add a note to the same ticket.
    Update,
    Resolve,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Open => "open",
            Action::Update => "update",
            Action::Resolve => "resolve",
        }
    }
}

/// Ticket priority, P1 (most urgent) to P4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
pub enum Priority {
    P1,
    P2,
    P3,
    #[default]
    P4,
}

impl Priority {
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::P1 => "P1",
            Priority::P2 => "P2",
            Priority::P3 => "P3",
            Priority::P4 => "P4",
        }
    }
}

/// The customer behind the asset, as the technician needs to know it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CustomerRef {
    pub id: String,
    pub name: String,
    /// `tier1` (strategic), `tier2` (growth), `tier3` (all others).
    pub tier: String,
}

/// The asset (device) as registered by the operator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AssetRef {
    pub id: String,
    pub model: Option<String>,
    /// `high`, `medium` or `low`.
    pub criticality: String,
    pub location: Option<String>,
    pub safety_critical: bool,
    pub contacts: Vec<String>,
}

/// Something the daemon checked before opening the ticket, so the technician need not.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    /// What was checked, e.g. `sensor alive`.
    pub check: String,
    /// `ok`, `anomalous` or `unknown`.
    pub result: String,
    pub detail: String,
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
    /// P1..P4 from asset criticality x customer tier (safety-critical assets are always P1).
    #[serde(default)]
    pub priority: Priority,
    /// Respond by this time (RFC 3339), from the priority's SLA.
    #[serde(default)]
    pub respond_by: String,
    /// Always `proactive`: the daemon, not a customer, raised it.
    #[serde(default)]
    pub origin: String,
    /// How sure the daemon is, 0..1.
    #[serde(default)]
    pub confidence: f64,
    #[serde(default)]
    pub customer: Option<CustomerRef>,
    #[serde(default)]
    pub asset: Option<AssetRef>,
    /// What happened, in plain words (same as `summary`, named for the technician's form).
    #[serde(default)]
    pub what_happened: String,
    #[serde(default)]
    pub checks_done: Vec<Check>,
    /// The fault's runbook steps.
    #[serde(default)]
    pub next_steps: Vec<String>,
    #[serde(default)]
    pub runbook_link: Option<String>,
    /// When a trend says the metric will cross its limit (RFC 3339).
    #[serde(default)]
    pub predicted_failure_at: Option<String>,
    /// The incident opened and resolved repeatedly and is held open.
    #[serde(default)]
    pub flapping: bool,
    /// Below the configured confidence: for a person to review before dispatch.
    #[serde(default)]
    pub needs_review: bool,
    /// What this command changes: the update note, escalation or closing note.
    #[serde(default)]
    pub note: Option<String>,
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
