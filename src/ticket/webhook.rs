//! Generic webhook: POST each ticket command as JSON, with an `Idempotency-Key` header.

use std::time::Duration;

use reqwest::StatusCode;

use super::{SinkError, TicketCommand};

/// Posts ticket commands to one URL.
pub struct WebhookSink {
    client: reqwest::Client,
    url: reqwest::Url,
    /// Bearer token; never logged.
    token: Option<String>,
}

impl WebhookSink {
    pub fn new(url: &str, token: Option<String>, timeout: Duration) -> Result<WebhookSink, String> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .user_agent(concat!("fieldwatch/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| e.to_string())?;
        let url = reqwest::Url::parse(url).map_err(|e| format!("url `{url}`: {e}"))?;
        Ok(WebhookSink { client, url, token })
    }

    pub async fn send(&self, cmd: &TicketCommand) -> Result<(), SinkError> {
        let mut req = self.client.post(self.url.clone()).header("Idempotency-Key", &cmd.idempotency_key).json(cmd);
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        let resp = req.send().await.map_err(super::http::transport_error)?;
        let status = resp.status();
        if status.is_success() || status == StatusCode::CONFLICT {
            // 409: the receiver already has this idempotency key, i.e. an earlier attempt landed.
            return Ok(());
        }
        let body: String = resp.text().await.unwrap_or_default().chars().take(300).collect();
        Err(super::http::status_error(status, &body))
    }
}
