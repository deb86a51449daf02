//! ServiceNow sink: one `incident` record per fieldwatch incident, through the Table API.
//!
//! The incident's stable key is written to the record's `correlation_id`, and every command
//! first looks the record up by it. That lookup makes an Open idempotent (a retry after a lost
//! response finds the record the first attempt created instead of opening a second one) and lets
//! Update and Resolve find their record after a restart ([`super::records`]).
//!
//! Requests (Table API, basic auth, JSON):
//! - find: `GET /api/now/table/incident?sysparm_query=correlation_id=KEY&sysparm_fields=sys_id&sysparm_limit=1`
//! - Open: `POST /api/now/table/incident` with short_description, description, urgency, impact,
//!   correlation_id, category, cmdb_ci and the optional assignment_group and caller_id
//! - Update: `PATCH /api/now/table/incident/{sys_id}` with `work_notes`
//! - Resolve: `PATCH /api/now/table/incident/{sys_id}` with state 6 (Resolved), close_code,
//!   close_notes

use std::time::Duration;

use reqwest::Url;
use serde::Deserialize;
use serde_json::{json, Value};

use super::config::Fields;
use super::http::{self, BasicAuthClient, ClientError};
use super::records::RemoteRecords;
use super::{render, Action, Priority, SendFuture, SinkError, Ticket, TicketCommand, TicketSink};
use crate::settings::{Invalid, SecretRef};

/// Incident state "Resolved" in the default incident state model.
const STATE_RESOLVED: &str = "6";

/// `type = "servicenow"`: open, update and resolve ServiceNow incidents.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceNowConfig {
    pub name: String,
    /// The instance, e.g. `https://acme.service-now.com`.
    pub instance_url: String,
    /// An integration user with rights to read, create and update incidents (role `itil`).
    pub username: String,
    pub password: SecretRef,
    /// Group the incident is assigned to (name or sys_id).
    pub assignment_group: Option<String>,
    /// The incident's caller (user name or sys_id); instances that require one reject the
    /// incident without it.
    pub caller_id: Option<String>,
    /// Incident category; must be one of the instance's choices.
    #[serde(default = "default_category")]
    pub category: String,
    /// Resolution code on Resolve; must be one of the instance's choices (older releases use
    /// `Solved (Permanently)`).
    #[serde(default = "default_close_code")]
    pub close_code: String,
    #[serde(with = "humantime_serde", default = "super::config::default_http_timeout")]
    pub timeout: Duration,
}

impl ServiceNowConfig {
    /// Checks what types alone cannot; errors name the field under the sink's key.
    pub(super) fn validate(&self, f: &Fields) -> Result<(), Invalid> {
        f.http_url("instance_url", &self.instance_url)?;
        f.filled("username", &self.username)?;
        f.secret("password", &self.password)?;
        f.filled("category", &self.category)?;
        f.filled("close_code", &self.close_code)
    }
}

fn default_category() -> String {
    "hardware".into()
}

fn default_close_code() -> String {
    "Solution provided".into()
}

/// ServiceNow urgency and impact (1 high .. 3 low) for a priority. With ServiceNow's default
/// priority lookup these give P1 → 1 Critical, P2 → 2 High, P3 → 3 Moderate, P4 → 5 Planning.
/// P2 is urgent with a contained impact: one asset, a response needed within hours.
pub fn urgency_impact(p: Priority) -> (&'static str, &'static str) {
    match p {
        Priority::P1 => ("1", "1"),
        Priority::P2 => ("1", "2"),
        Priority::P3 => ("2", "2"),
        Priority::P4 => ("3", "3"),
    }
}

/// Delivers ticket commands to one ServiceNow instance.
pub struct ServiceNowSink {
    name: String,
    table: IncidentTable,
    /// correlation_id → sys_id of records created or found since start.
    records: RemoteRecords,
}

/// The instance's incident table, and what the records we create carry.
struct IncidentTable {
    client: BasicAuthClient,
    /// `{instance}/api/now/table/incident`.
    url: Url,
    assignment_group: Option<String>,
    caller_id: Option<String>,
    category: String,
    close_code: String,
}

#[derive(Deserialize)]
struct Found {
    result: Vec<Record>,
}

#[derive(Deserialize)]
struct Created {
    result: Record,
}

#[derive(Deserialize)]
struct Record {
    #[serde(default)]
    sys_id: String,
}

impl ServiceNowSink {
    pub fn new(cfg: &ServiceNowConfig, password: String) -> Result<ServiceNowSink, ClientError> {
        let base = http::base_url(&cfg.instance_url)?;
        let table = IncidentTable {
            client: BasicAuthClient::new(cfg.timeout, &cfg.username, password)?,
            url: http::endpoint(&base, &["api", "now", "table", "incident"]),
            assignment_group: cfg.assignment_group.clone(),
            caller_id: cfg.caller_id.clone(),
            category: cfg.category.clone(),
            close_code: cfg.close_code.clone(),
        };
        Ok(ServiceNowSink { name: cfg.name.clone(), table, records: RemoteRecords::default() })
    }

    async fn apply(&mut self, cmd: &TicketCommand) -> Result<(), SinkError> {
        let t = &cmd.ticket;
        let key = &t.idempotency_key;
        match cmd.action {
            Action::Open => self.records.open(key, self.table.find(key), self.table.create(t)).await,
            Action::Update => {
                let sys_id = self.existing(t).await?;
                self.table.patch(&sys_id, json!({ "work_notes": render::note_or_summary(t) })).await
            }
            Action::Resolve => {
                let sys_id = self.existing(t).await?;
                let body = json!({
                    "state": STATE_RESOLVED,
                    "close_code": self.table.close_code,
                    "close_notes": render::note_or_summary(t),
                });
                self.table.patch(&sys_id, body).await?;
                self.records.forget(key);
                Ok(())
            }
        }
    }

    /// The record an Update or Resolve applies to. Commands of one sink are delivered in order,
    /// so a missing record means the Open was refused for good (or the record was deleted).
    async fn existing(&mut self, t: &Ticket) -> Result<String, SinkError> {
        let key = &t.idempotency_key;
        self.records
            .find(key, self.table.find(key))
            .await?
            .ok_or_else(|| SinkError::Permanent(format!("no incident with correlation_id {key} for {}", t.id)))
    }
}

impl TicketSink for ServiceNowSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn send<'a>(&'a mut self, cmd: &'a TicketCommand) -> SendFuture<'a> {
        Box::pin(self.apply(cmd))
    }
}

impl IncidentTable {
    /// The sys_id of the record for `correlation_id`, if there is one.
    async fn find(&self, correlation_id: &str) -> Result<Option<String>, SinkError> {
        // The key is hex, so it needs no escaping inside an encoded query.
        let mut url = self.url.clone();
        url.query_pairs_mut()
            .append_pair("sysparm_query", &format!("correlation_id={correlation_id}"))
            .append_pair("sysparm_fields", "sys_id")
            .append_pair("sysparm_limit", "1");
        let resp = http::send(self.client.request(reqwest::Method::GET, url)).await?;
        let found: Found = http::json(resp, "incident lookup").await?;
        Ok(found.result.into_iter().map(|r| r.sys_id).find(|id| !id.is_empty()))
    }

    async fn create(&self, t: &Ticket) -> Result<Option<String>, SinkError> {
        let mut url = self.url.clone();
        url.query_pairs_mut().append_pair("sysparm_fields", "sys_id,number");
        let resp = http::send(self.client.request(reqwest::Method::POST, url).json(&self.incident(t))).await?;
        // The record exists now; a body we cannot read only costs a lookup later.
        Ok(http::json::<Created>(resp, "incident create").await.ok().map(|c| c.result.sys_id).filter(|s| !s.is_empty()))
    }

    async fn patch(&self, sys_id: &str, body: Value) -> Result<(), SinkError> {
        let url = http::endpoint(&self.url, &[sys_id]);
        http::send(self.client.request(reqwest::Method::PATCH, url).json(&body)).await.map(|_| ())
    }

    /// The new incident record.
    fn incident(&self, t: &Ticket) -> Value {
        let (urgency, impact) = urgency_impact(t.priority);
        let mut body = json!({
            "short_description": t.title,
            "description": render::plain_text(&render::sections(t)),
            "urgency": urgency,
            "impact": impact,
            "correlation_id": t.idempotency_key,
            "category": self.category,
            "cmdb_ci": t.device,
        });
        if let Some(group) = &self.assignment_group {
            body["assignment_group"] = json!(group);
        }
        if let Some(caller) = &self.caller_id {
            body["caller_id"] = json!(caller);
        }
        body
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ticket::tests::sample_ticket;

    fn sink() -> ServiceNowSink {
        let cfg: ServiceNowConfig = toml::from_str(
            "name = \"snow\"\ninstance_url = \"https://acme.service-now.com/\"\nusername = \"fw\"\n\
             password = { env = \"X\" }\nassignment_group = \"Field Service\"\n",
        )
        .unwrap();
        ServiceNowSink::new(&cfg, "pw".into()).unwrap()
    }

    #[test]
    fn incident_carries_key_priority_and_text() {
        let s = sink();
        assert_eq!(s.table.url.as_str(), "https://acme.service-now.com/api/now/table/incident");
        let mut t = sample_ticket();
        t.priority = Priority::P2;
        let body = s.table.incident(&t);
        assert_eq!(body["correlation_id"], t.idempotency_key);
        assert_eq!((body["urgency"].as_str(), body["impact"].as_str()), (Some("1"), Some("2")));
        assert_eq!(body["category"], "hardware");
        assert_eq!(body["cmdb_ci"], "comp-7");
        assert_eq!(body["assignment_group"], "Field Service");
        assert!(body.get("caller_id").is_none());
        assert!(body["description"].as_str().unwrap().contains("Next steps:\n1. Check the condenser fan"));
    }

    #[test]
    fn priorities_map_to_urgency_and_impact() {
        assert_eq!(urgency_impact(Priority::P1), ("1", "1"));
        assert_eq!(urgency_impact(Priority::P3), ("2", "2"));
        assert_eq!(urgency_impact(Priority::P4), ("3", "3"));
    }
}
