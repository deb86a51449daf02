//! `[ticket]`: where tickets go and how their delivery retries.
//!
//! Each sink's own settings live beside the sink ([`WebhookConfig`], [`FileConfig`],
//! [`ServiceNowConfig`], [`JiraConfig`], [`PagerDutyConfig`]) with their checks; this file holds
//! the `type`-tagged list of them and the checks they share. An error names the key path (e.g.
//! `ticket.sinks[0].url`) and the reason; the configuration loader (`config`) adds the file and line.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::file::{FileConfig, FileSink};
use super::http::ClientError;
use super::jira::{JiraConfig, JiraSink};
use super::pagerduty::{PagerDutyConfig, PagerDutySink};
use super::servicenow::{ServiceNowConfig, ServiceNowSink};
use super::webhook::{WebhookConfig, WebhookSink};
use super::TicketSink;
use crate::settings::{bad, Invalid, SecretError, SecretRef};

/// Ticket delivery.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TicketConfig {
    pub sinks: Vec<SinkConfig>,
    #[serde(with = "humantime_serde")]
    pub retry_min: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_max: Duration,
}

impl Default for TicketConfig {
    fn default() -> Self {
        Self { sinks: Vec::new(), retry_min: Duration::from_secs(1), retry_max: Duration::from_secs(300) }
    }
}

impl TicketConfig {
    /// Checks the retry timing and every sink; names the offending key.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.retry_min.is_zero() || self.retry_min > self.retry_max {
            return bad("ticket.retry_min", "must be above zero and at most ticket.retry_max");
        }
        let mut names = std::collections::HashSet::new();
        for (i, sink) in self.sinks.iter().enumerate() {
            let key = format!("ticket.sinks[{i}]");
            if sink.name().is_empty() || !names.insert(sink.name().to_string()) {
                return bad(format!("{key}.name"), "must be non-empty and unique");
            }
            sink.validate(&key)?;
        }
        Ok(())
    }
}

/// One ticket destination.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, tag = "type", rename_all = "snake_case")]
pub enum SinkConfig {
    /// POST each ticket command as JSON.
    Webhook(WebhookConfig),
    /// Append each ticket command as a JSON line.
    File(FileConfig),
    /// ServiceNow incidents through the Table API.
    #[serde(rename = "servicenow")]
    ServiceNow(ServiceNowConfig),
    /// Jira Cloud issues through the REST API v3.
    Jira(JiraConfig),
    /// PagerDuty alerts through the Events API v2.
    #[serde(rename = "pagerduty")]
    PagerDuty(PagerDutyConfig),
}

/// Timeout of one HTTP request to a ticket system.
pub(crate) fn default_http_timeout() -> Duration {
    Duration::from_secs(10)
}

impl SinkConfig {
    /// The sink's name, unique within the config; it keys the sink's outbox queue.
    pub fn name(&self) -> &str {
        match self {
            SinkConfig::Webhook(c) => &c.name,
            SinkConfig::File(c) => &c.name,
            SinkConfig::ServiceNow(c) => &c.name,
            SinkConfig::Jira(c) => &c.name,
            SinkConfig::PagerDuty(c) => &c.name,
        }
    }

    /// The sink's `type` as written in the config.
    pub fn kind(&self) -> &'static str {
        match self {
            SinkConfig::Webhook(_) => "webhook",
            SinkConfig::File(_) => "file",
            SinkConfig::ServiceNow(_) => "servicenow",
            SinkConfig::Jira(_) => "jira",
            SinkConfig::PagerDuty(_) => "pagerduty",
        }
    }

    /// Checks one sink; `key` is its path, e.g. `ticket.sinks[0]`.
    fn validate(&self, key: &str) -> Result<(), Invalid> {
        let fields = Fields { sink: key };
        match self {
            SinkConfig::Webhook(c) => c.validate(&fields),
            SinkConfig::File(_) => Ok(()),
            SinkConfig::ServiceNow(c) => c.validate(&fields),
            SinkConfig::Jira(c) => c.validate(&fields),
            SinkConfig::PagerDuty(c) => c.validate(&fields),
        }
    }
}

/// Why a sink could not be built from its config.
#[derive(Debug, thiserror::Error)]
pub enum SinkBuildError {
    #[error("sink `{sink}`: {key}: {source}")]
    Secret { sink: String, key: &'static str, source: SecretError },
    #[error("sink `{sink}`: {source}")]
    Client { sink: String, source: ClientError },
    #[error("sink `{sink}`: {reason}")]
    Other { sink: String, reason: String },
}

impl SinkConfig {
    /// Builds the sink, resolving its secrets now so a missing token fails at start, not at 3 am.
    pub fn build(&self) -> Result<Box<dyn TicketSink>, SinkBuildError> {
        let sink = self.name().to_string();
        let secret = |key: &'static str, s: &SecretRef| {
            s.resolve().map_err(|source| SinkBuildError::Secret { sink: sink.clone(), key, source })
        };
        let client = |source: ClientError| SinkBuildError::Client { sink: sink.clone(), source };
        Ok(match self {
            SinkConfig::Webhook(c) => {
                let token = c.token.as_ref().map(|t| secret("token", t)).transpose()?;
                Box::new(WebhookSink::new(c, token).map_err(client)?)
            }
            SinkConfig::File(c) => Box::new(
                FileSink::open(c).map_err(|e| SinkBuildError::Other { sink: sink.clone(), reason: e.to_string() })?,
            ),
            SinkConfig::ServiceNow(c) => {
                Box::new(ServiceNowSink::new(c, secret("password", &c.password)?).map_err(client)?)
            }
            SinkConfig::Jira(c) => Box::new(JiraSink::new(c, secret("api_token", &c.api_token)?).map_err(client)?),
            SinkConfig::PagerDuty(c) => {
                Box::new(PagerDutySink::new(c, secret("routing_key", &c.routing_key)?).map_err(client)?)
            }
        })
    }
}

/// The checks sink configs share, for the fields of the sink at `sink` (e.g. `ticket.sinks[0]`):
/// each error names `sink.field` and the reason.
pub(super) struct Fields<'a> {
    pub sink: &'a str,
}

impl Fields<'_> {
    fn bad(&self, field: &str, reason: impl Into<String>) -> Result<(), Invalid> {
        bad(format!("{}.{field}", self.sink), reason)
    }

    /// `url` is an http(s) URL.
    pub fn http_url(&self, field: &str, url: &str) -> Result<(), Invalid> {
        match reqwest::Url::parse(url) {
            Ok(u) if u.scheme() == "http" || u.scheme() == "https" => Ok(()),
            _ => self.bad(field, format!("`{url}` is not an http(s) URL")),
        }
    }

    /// The secret says where it comes from.
    pub fn secret(&self, field: &str, s: &SecretRef) -> Result<(), Invalid> {
        match (&s.file, &s.env) {
            (None, None) => self.bad(field, "set `file` or `env`"),
            _ => Ok(()),
        }
    }

    /// `value` is not blank.
    pub fn filled(&self, field: &str, value: &str) -> Result<(), Invalid> {
        match value.trim().is_empty() {
            true => self.bad(field, "must not be empty"),
            false => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sinks(text: &str) -> TicketConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn errors_name_the_sink_and_its_field() {
        for (text, key, reason) in [
            ("type = \"webhook\"\nname = \"w\"\nurl = \"ftp://x\"", "ticket.sinks[0].url", "not an http(s) URL"),
            ("type = \"webhook\"\nname = \"w\"\nurl = \"http://x\"\ntoken = {}", "ticket.sinks[0].token", "`env`"),
            (
                "type = \"servicenow\"\nname = \"s\"\ninstance_url = \"https://x\"\nusername = \" \"\npassword = { env = \"P\" }",
                "ticket.sinks[0].username",
                "must not be empty",
            ),
            (
                "type = \"jira\"\nname = \"j\"\nbase_url = \"https://x\"\nemail = \"a@b\"\napi_token = { env = \"T\" }\n\
                 project_key = \"FS\"\npriorities = { p3 = \"\" }",
                "ticket.sinks[0].priorities.p3",
                "must not be empty",
            ),
            ("type = \"pagerduty\"\nname = \"p\"\nrouting_key = {}", "ticket.sinks[0].routing_key", "`env`"),
            ("type = \"file\"\nname = \"\"\npath = \"t.jsonl\"", "ticket.sinks[0].name", "unique"),
        ] {
            let e = sinks(&format!("[[sinks]]\n{text}\n")).validate().unwrap_err();
            assert_eq!(e.key, key, "{text}");
            assert!(e.reason.contains(reason), "{text}: {}", e.reason);
        }
    }

    #[test]
    fn names_are_unique_and_retry_timing_ordered() {
        let two = "[[sinks]]\ntype = \"file\"\nname = \"f\"\npath = \"a\"\n";
        assert_eq!(sinks(&format!("{two}{two}")).validate().unwrap_err().key, "ticket.sinks[1].name");
        let e = sinks("retry_min = \"10s\"\nretry_max = \"1s\"\n").validate().unwrap_err();
        assert_eq!(e.key, "ticket.retry_min");
        sinks(two).validate().unwrap();
    }
}
