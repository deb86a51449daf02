//! Tickets: what the technician reads, and how it reaches the ticket system.
//!
//! An incident transition becomes a [`TicketCommand`], written to the durable outbox in the same
//! transaction as the incident itself. One delivery task per sink drains its queue in order
//! ([`outbox::deliver`]); a command leaves the outbox only after the sink confirmed it.
//!
//! Sinks: a generic [`webhook`], a JSON-lines [`file`], and the ticketing APIs [`servicenow`]
//! (Table API incidents), [`jira`] (Cloud REST v3 issues) and [`pagerduty`] (Events API v2).
//! `[ticket]` is [`TicketConfig`]; each sink's settings are defined beside the sink.

mod config;
pub mod content;
pub mod file;
pub mod http;
pub mod jira;
pub mod outbox;
pub mod pagerduty;
pub mod records;
mod render;
pub mod servicenow;
pub mod webhook;

use serde::{Deserialize, Serialize};

use crate::detect::FaultKind;
use crate::incident::IncidentState;
use std::future::Future;
use std::pin::Pin;

pub use crate::assets::{AssetRef, CustomerRef, Priority};
pub use config::{SinkBuildError, SinkConfig, TicketConfig};

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
    /// A technician acknowledged the incident (a `confirmed` verdict).
    #[serde(default)]
    pub acknowledged: bool,
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

/// What [`TicketSink::send`] returns: a boxed future, so that the trait is dyn-compatible.
pub type SendFuture<'a> = Pin<Box<dyn Future<Output = Result<(), SinkError>> + Send + 'a>>;

/// A ticket destination. [`SinkConfig::build`] makes one from each configured sink, and one
/// [`outbox::deliver`] task per sink drives it (a test drives `deliver` with a fake one).
///
/// `send` returns a boxed future rather than being an `async fn`: a trait with an `async fn` is
/// not dyn-compatible, so the daemon could not hold its sinks as one type, and its future could
/// not be required to be `Send`, which a spawned delivery task needs. One allocation per attempt
/// is nothing next to an HTTP request. An implementation keeps its logic in an ordinary
/// `async fn` and wraps it: `Box::pin(self.apply(cmd))`.
pub trait TicketSink: Send {
    /// The configured name: it keys the sink's outbox queue, its metrics and its log lines.
    fn name(&self) -> &str;

    /// Delivers one command, and is `Ok` only once the receiver confirmed it: the command then
    /// leaves the outbox. [`SinkError::Retry`] keeps it for another attempt after a backoff,
    /// [`SinkError::Permanent`] moves it to the dead letters.
    fn send<'a>(&'a mut self, cmd: &'a TicketCommand) -> SendFuture<'a>;
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A ticket as the daemon writes it for a compressor running hot.
    pub(crate) fn sample_ticket() -> Ticket {
        let what = "discharge_temp rose to 97.1 °C, 67.8σ above its baseline of 70.02 °C, for 2 min".to_string();
        Ticket {
            id: "FW-3f2a9c41d0".into(),
            idempotency_key: "3f2a9c41d07be5a2c9e0f1d2b3a49586".into(),
            device: "comp-7".into(),
            site: Some("site-1".into()),
            metric: "discharge_temp".into(),
            fault: "discharge_temp.deviation".into(),
            fault_kind: FaultKind::Deviation,
            title: "comp-7: discharge_temp above normal".into(),
            summary: what.clone(),
            evidence: Evidence {
                value: 97.1,
                unit: Some("°C".into()),
                baseline: Some(70.0218),
                spread: Some(0.4),
                z: Some(67.8),
                score: 0.99,
                detector: "baseline".into(),
                limit: None,
                anomalous_readings: 3,
                recent: vec![
                    EvidenceReading { ts: "2025-03-04T10:15:00Z".into(), value: 70.3 },
                    EvidenceReading { ts: "2025-03-04T10:16:00Z".into(), value: 97.1 },
                ],
            },
            first_seen: "2025-03-04T10:16:00Z".into(),
            opened_at: "2025-03-04T10:18:00Z".into(),
            state: IncidentState::Open,
            resolved_at: None,
            priority: Priority::P2,
            respond_by: "2025-03-04T14:18:00Z".into(),
            origin: "proactive".into(),
            confidence: 0.99,
            customer: Some(CustomerRef { id: "C-1042".into(), name: "Nordkyl AB".into(), tier: "tier1".into() }),
            asset: Some(AssetRef {
                id: "comp-7".into(),
                model: Some("Bitzer 4FES-5Y".into()),
                criticality: "high".into(),
                location: Some("Cold store 2, roof".into()),
                safety_critical: false,
                contacts: vec!["Site lead +46 70 123 45 67".into()],
            }),
            what_happened: what,
            checks_done: vec![Check {
                check: "sensor alive".into(),
                result: "ok".into(),
                detail: "reported 12 readings in the last minute".into(),
            }],
            next_steps: vec!["Check the condenser fan".into(), "Clean the condenser coil".into()],
            runbook_link: Some("https://runbooks.example.com/discharge-temp".into()),
            predicted_failure_at: None,
            flapping: false,
            needs_review: false,
            note: None,
            acknowledged: false,
        }
    }
}
