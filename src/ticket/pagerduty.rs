//! PagerDuty sink: alerts through the Events API v2, so the on-call technician is paged.
//!
//! The incident's stable key is the alert's `dedup_key`: PagerDuty folds a repeated trigger into
//! the open alert, so a retry never pages twice, and a resolve finds its alert without any state
//! on our side. Open and Update send `trigger` (an Update refreshes the alert's details),
//! Resolve sends `resolve`; [`PagerDutySink::acknowledge`] is for a technician's acknowledgement.
//!
//! `POST {url}` (default `https://events.pagerduty.com/v2/enqueue`), JSON, no auth header: the
//! routing key in the body selects the service. 202 means accepted.

use std::time::Duration;

use reqwest::Url;
use serde::Deserialize;
use serde_json::{json, Value};

use super::config::Fields;
use super::http::{self, ClientError};
use super::{Action, Priority, SendFuture, SinkError, Ticket, TicketCommand, TicketSink};
use crate::reading::{format_ts, now_ms};
use crate::settings::{Invalid, SecretRef};

/// PagerDuty's limit on `payload.summary`, in characters.
const SUMMARY_MAX: usize = 1024;

/// `type = "pagerduty"`: trigger and resolve PagerDuty alerts.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct PagerDutyConfig {
    pub name: String,
    /// The Integration Key of an "Events API v2" integration on the service.
    pub routing_key: SecretRef,
    #[serde(default = "default_url")]
    pub url: String,
    #[serde(with = "humantime_serde", default = "super::config::default_http_timeout")]
    pub timeout: Duration,
}

impl PagerDutyConfig {
    /// Checks what types alone cannot; errors name the field under the sink's key.
    pub(super) fn validate(&self, f: &Fields) -> Result<(), Invalid> {
        f.secret("routing_key", &self.routing_key)?;
        f.http_url("url", &self.url)
    }
}

fn default_url() -> String {
    "https://events.pagerduty.com/v2/enqueue".into()
}

/// PagerDuty severity for a priority.
pub fn severity(p: Priority) -> &'static str {
    match p {
        Priority::P1 => "critical",
        Priority::P2 => "error",
        Priority::P3 => "warning",
        Priority::P4 => "info",
    }
}

/// Sends ticket commands as events to one PagerDuty service.
pub struct PagerDutySink {
    name: String,
    client: reqwest::Client,
    url: Url,
    /// Never logged.
    routing_key: String,
}

impl PagerDutySink {
    pub fn new(cfg: &PagerDutyConfig, routing_key: String) -> Result<PagerDutySink, ClientError> {
        Ok(PagerDutySink {
            name: cfg.name.clone(),
            client: http::client(cfg.timeout)?,
            url: http::base_url(&cfg.url)?,
            routing_key,
        })
    }

    async fn apply(&self, cmd: &TicketCommand) -> Result<(), SinkError> {
        let t = &cmd.ticket;
        match cmd.action {
            Action::Open => self.post(&self.trigger(t, &t.opened_at)).await,
            // A technician took it: acknowledge, so PagerDuty stops escalating.
            Action::Update if t.acknowledged => self.acknowledge(&t.idempotency_key).await,
            Action::Update => self.post(&self.trigger(t, &format_ts(now_ms()))).await,
            Action::Resolve => self.post(&self.follow_up("resolve", &t.idempotency_key)).await,
        }
    }

    /// Acknowledges the alert of an incident: someone is working on it, stop escalating.
    pub async fn acknowledge(&self, incident_key: &str) -> Result<(), SinkError> {
        self.post(&self.follow_up("acknowledge", incident_key)).await
    }

    async fn post(&self, event: &Value) -> Result<(), SinkError> {
        http::send(self.client.post(self.url.clone()).json(event)).await.map(|_| ())
    }

    /// A trigger event: the alert with everything a responder needs without opening fieldwatch.
    fn trigger(&self, t: &Ticket, timestamp: &str) -> Value {
        let summary = format!("{}: {} ({})", t.priority.as_str(), t.title, t.summary);
        let mut payload = json!({
            "summary": summary.chars().take(SUMMARY_MAX).collect::<String>(),
            "source": t.device,
            "severity": severity(t.priority),
            "timestamp": timestamp,
            "component": t.metric,
            "class": t.fault,
            "custom_details": {
                "ticket": t.id,
                "priority": t.priority.as_str(),
                "respond_by": t.respond_by,
                "what_happened": if t.what_happened.is_empty() { &t.summary } else { &t.what_happened },
                "note": t.note,
                "evidence": t.evidence,
                "checks_done": t.checks_done,
                "next_steps": t.next_steps,
                "customer": t.customer,
                "asset": t.asset,
                "confidence": t.confidence,
                "predicted_failure_at": t.predicted_failure_at,
                "needs_review": t.needs_review,
                "flapping": t.flapping,
            },
        });
        if let Some(site) = &t.site {
            payload["group"] = json!(site);
        }
        let mut event = json!({
            "routing_key": self.routing_key,
            "event_action": "trigger",
            "dedup_key": t.idempotency_key,
            "payload": payload,
            "client": "fieldwatch",
        });
        if let Some(link) = &t.runbook_link {
            event["links"] = json!([{ "href": link, "text": "Runbook" }]);
        }
        event
    }

    fn follow_up(&self, action: &str, incident_key: &str) -> Value {
        json!({ "routing_key": self.routing_key, "event_action": action, "dedup_key": incident_key })
    }
}

impl TicketSink for PagerDutySink {
    fn name(&self) -> &str {
        &self.name
    }

    fn send<'a>(&'a mut self, cmd: &'a TicketCommand) -> SendFuture<'a> {
        Box::pin(self.apply(cmd))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ticket::tests::sample_ticket;

    fn sink() -> PagerDutySink {
        let cfg: PagerDutyConfig = toml::from_str("name = \"pd\"\nrouting_key = { env = \"X\" }\n").unwrap();
        assert_eq!(cfg.url, "https://events.pagerduty.com/v2/enqueue");
        PagerDutySink::new(&cfg, "R0UT1NG".into()).unwrap()
    }

    #[test]
    fn trigger_maps_ticket_to_event_fields() {
        let mut t = sample_ticket();
        t.priority = Priority::P2;
        let e = sink().trigger(&t, &t.opened_at);
        assert_eq!(e["routing_key"], "R0UT1NG");
        assert_eq!(e["event_action"], "trigger");
        assert_eq!(e["dedup_key"], t.idempotency_key);
        let p = &e["payload"];
        assert_eq!(p["severity"], "error");
        assert_eq!(p["source"], "comp-7");
        assert_eq!(p["component"], "discharge_temp");
        assert_eq!(p["group"], "site-1");
        assert_eq!(p["class"], "discharge_temp.deviation");
        assert_eq!(p["timestamp"], t.opened_at);
        assert_eq!(p["custom_details"]["next_steps"][0], "Check the condenser fan");
        assert_eq!(p["custom_details"]["evidence"]["value"], 97.1);
        assert_eq!(e["links"][0]["href"], "https://runbooks.example.com/discharge-temp");
    }

    #[test]
    fn summary_is_cut_to_the_limit() {
        let mut t = sample_ticket();
        t.summary = "é".repeat(5000);
        let e = sink().trigger(&t, &t.opened_at);
        assert_eq!(e["payload"]["summary"].as_str().unwrap().chars().count(), SUMMARY_MAX);
    }

    #[test]
    fn severities_follow_priority() {
        let s: Vec<_> = [Priority::P1, Priority::P2, Priority::P3, Priority::P4].map(severity).to_vec();
        assert_eq!(s, ["critical", "error", "warning", "info"]);
    }
}
