//! The operator commands that talk to a running daemon through its admin API:
//! `fieldwatch incidents`, `fieldwatch feedback`, `fieldwatch silence`. The daemon owns its
//! database (sled allows one process), so these never open it themselves.

use std::time::Duration;

use crate::core::Feedback;
use crate::incident::{Incident, IncidentState};
use crate::reading::format_ts;
use crate::silence::Silence;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the daemon at {addr} (is it running, and is admin.listen set?): {source}")]
    Unreachable { addr: String, source: reqwest::Error },
    #[error("the daemon answered {status}: {body}")]
    Refused { status: reqwest::StatusCode, body: String },
    #[error("unexpected answer: {0}")]
    Decode(reqwest::Error),
}

/// A client for one daemon's admin API.
pub struct AdminClient {
    http: reqwest::Client,
    addr: String,
}

/// Environment variable with the daemon's `admin.token`, sent with every request when set.
pub const TOKEN_ENV: &str = "FIELDWATCH_ADMIN_TOKEN";

impl AdminClient {
    /// A client for the daemon at `addr` that sends the token in [`TOKEN_ENV`], if set.
    pub fn new(addr: &str) -> Result<AdminClient, ClientError> {
        AdminClient::with_token(addr, std::env::var(TOKEN_ENV).ok())
    }

    /// A client for the daemon at `addr` that sends `token` with every request. An address
    /// the daemon listens on for every interface (`0.0.0.0:9797`) is reached on loopback.
    pub fn with_token(addr: &str, token: Option<String>) -> Result<AdminClient, ClientError> {
        let addr = match addr.parse::<std::net::SocketAddr>() {
            Ok(a) if a.ip().is_unspecified() => {
                let ip: std::net::IpAddr = if a.is_ipv4() {
                    std::net::Ipv4Addr::LOCALHOST.into()
                } else {
                    std::net::Ipv6Addr::LOCALHOST.into()
                };
                std::net::SocketAddr::new(ip, a.port()).to_string()
            }
            _ => addr.to_string(),
        };
        let addr = addr.as_str();
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = token.filter(|t| !t.is_empty()) {
            if let Ok(mut v) = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}")) {
                v.set_sensitive(true);
                headers.insert(reqwest::header::AUTHORIZATION, v);
            }
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .default_headers(headers)
            .build()
            .map_err(|source| ClientError::Unreachable { addr: addr.into(), source })?;
        Ok(AdminClient { http, addr: addr.to_string() })
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn check(&self, resp: Result<reqwest::Response, reqwest::Error>) -> Result<reqwest::Response, ClientError> {
        let resp = resp.map_err(|source| ClientError::Unreachable { addr: self.addr.clone(), source })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        Err(ClientError::Refused { status, body: resp.text().await.unwrap_or_default() })
    }

    pub async fn incidents(&self, open_only: bool) -> Result<Vec<Incident>, ClientError> {
        let resp =
            self.check(self.http.get(self.url(&format!("/api/incidents?open={open_only}"))).send().await).await?;
        resp.json().await.map_err(ClientError::Decode)
    }

    /// The fitted device models (`GET /api/models`).
    pub async fn devices(&self) -> Result<Vec<crate::admin::DeviceSummary>, ClientError> {
        let resp = self.check(self.http.get(self.url("/api/devices")).send().await).await?;
        resp.json().await.map_err(ClientError::Decode)
    }

    pub async fn models(&self) -> Result<Vec<crate::admin::ModelSummary>, ClientError> {
        let resp = self.check(self.http.get(self.url("/api/models")).send().await).await?;
        resp.json().await.map_err(ClientError::Decode)
    }

    pub async fn feedback(&self, id: &str, fb: &Feedback) -> Result<Incident, ClientError> {
        let url = self.url(&format!("/api/incidents/{id}/feedback"));
        let resp = self.check(self.http.post(url).json(fb).send().await).await?;
        resp.json().await.map_err(ClientError::Decode)
    }

    pub async fn silence(
        &self,
        device: Option<&str>,
        site: Option<&str>,
        duration: Duration,
        reason: &str,
    ) -> Result<Silence, ClientError> {
        let body = serde_json::json!({
            "device": device, "site": site, "for": humantime::format_duration(duration).to_string(), "reason": reason,
        });
        let resp = self.check(self.http.post(self.url("/api/silences")).json(&body).send().await).await?;
        resp.json().await.map_err(ClientError::Decode)
    }

    pub async fn silences(&self) -> Result<Vec<Silence>, ClientError> {
        let resp = self.check(self.http.get(self.url("/api/silences")).send().await).await?;
        resp.json().await.map_err(ClientError::Decode)
    }
}

/// Incidents as an operator reads them: one line each, then its timeline.
pub fn render_incidents(list: &[Incident]) -> String {
    if list.is_empty() {
        return "no incidents\n".into();
    }
    let mut out = String::new();
    for i in list {
        let state = match i.state {
            IncidentState::Open => "open",
            IncidentState::Resolved => "resolved",
        };
        let mut flags = Vec::new();
        if i.flapping {
            flags.push("flapping".to_string());
        }
        if i.escalated {
            flags.push("escalated".to_string());
        }
        if let Some(s) = &i.suppressed {
            flags.push(format!("no ticket: {s}"));
        }
        if let Some(v) = &i.verdict {
            flags.push(format!("verdict: {v}"));
        }
        out.push_str(&format!(
            "{}  {:<8} {}/{}.{}  opened {}{}{}\n",
            i.id,
            state,
            i.device,
            i.metric,
            i.fault.as_str(),
            format_ts(i.opened_at),
            i.respond_by.map(|r| format!("  respond by {}", format_ts(r))).unwrap_or_default(),
            if flags.is_empty() { String::new() } else { format!("  [{}]", flags.join(", ")) }
        ));
        for (at, event) in &i.timeline {
            out.push_str(&format!("    {}  {event}\n", format_ts(*at)));
        }
    }
    out
}
