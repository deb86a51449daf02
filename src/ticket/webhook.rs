//! Generic webhook: POST each ticket command as JSON, with an `Idempotency-Key` header.

use std::time::Duration;

use reqwest::StatusCode;
use serde::{Deserialize, Serialize};

use super::config::Fields;
use super::http::{self, ClientError};
use super::{SendFuture, SinkError, TicketCommand, TicketSink};
use crate::settings::{Invalid, SecretRef};

/// `type = "webhook"`: POST each ticket command as JSON to one URL.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub name: String,
    pub url: String,
    /// Sent as a bearer token.
    pub token: Option<SecretRef>,
    #[serde(with = "humantime_serde", default = "super::config::default_http_timeout")]
    pub timeout: Duration,
}

impl WebhookConfig {
    /// Checks what types alone cannot; errors name the field under the sink's key.
    pub(super) fn validate(&self, f: &Fields) -> Result<(), Invalid> {
        f.http_url("url", &self.url)?;
        self.token.as_ref().map_or(Ok(()), |t| f.secret("token", t))
    }
}

/// Posts ticket commands to one URL.
pub struct WebhookSink {
    name: String,
    client: reqwest::Client,
    url: reqwest::Url,
    /// Bearer token; never logged.
    token: Option<String>,
}

impl WebhookSink {
    pub fn new(cfg: &WebhookConfig, token: Option<String>) -> Result<WebhookSink, ClientError> {
        Ok(WebhookSink {
            name: cfg.name.clone(),
            client: http::client(cfg.timeout)?,
            url: http::base_url(&cfg.url)?,
            token,
        })
    }

    async fn post(&self, cmd: &TicketCommand) -> Result<(), SinkError> {
        let mut req = self.client.post(self.url.clone()).header("Idempotency-Key", &cmd.idempotency_key).json(cmd);
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        // 409: the receiver already has this idempotency key, i.e. an earlier attempt landed.
        http::send_accepting(req, |status| status.is_success() || status == StatusCode::CONFLICT).await.map(|_| ())
    }
}

impl TicketSink for WebhookSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn send<'a>(&'a mut self, cmd: &'a TicketCommand) -> SendFuture<'a> {
        Box::pin(self.post(cmd))
    }
}
