//! What the HTTP sinks of ticket-system APIs share: one client setup (with basic auth for the
//! APIs that take it), endpoint URLs built from a configured base, and one reading of HTTP status
//! codes as retryable or not.

use std::time::Duration;

use reqwest::{Response, StatusCode, Url};
use serde::de::DeserializeOwned;

use super::SinkError;

/// Why an HTTP sink could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("url `{url}`: {reason}")]
    Url { url: String, reason: String },
    #[error("cannot build HTTP client: {0}")]
    Build(#[from] reqwest::Error),
}

/// An HTTP client with a whole-request timeout and our user agent.
pub fn client(timeout: Duration) -> Result<reqwest::Client, ClientError> {
    Ok(reqwest::Client::builder()
        .timeout(timeout)
        .user_agent(concat!("fieldwatch/", env!("CARGO_PKG_VERSION")))
        .build()?)
}

/// A client for an API that takes basic auth and answers JSON, as ServiceNow and Jira do: every
/// request carries the credentials and asks for JSON.
pub struct BasicAuthClient {
    client: reqwest::Client,
    user: String,
    /// Never logged.
    password: String,
}

impl BasicAuthClient {
    pub fn new(timeout: Duration, user: &str, password: String) -> Result<BasicAuthClient, ClientError> {
        Ok(BasicAuthClient { client: client(timeout)?, user: user.to_string(), password })
    }

    /// A request to `url`, authenticated and asking for JSON.
    pub fn request(&self, method: reqwest::Method, url: Url) -> reqwest::RequestBuilder {
        self.client
            .request(method, url)
            .basic_auth(&self.user, Some(&self.password))
            .header(reqwest::header::ACCEPT, "application/json")
    }
}

/// Parses an http(s) base URL to which path segments can be appended.
pub fn base_url(url: &str) -> Result<Url, ClientError> {
    let bad = |reason: &str| ClientError::Url { url: url.to_string(), reason: reason.to_string() };
    let parsed = Url::parse(url).map_err(|e| bad(&e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.cannot_be_a_base() {
        return Err(bad("not an http(s) URL"));
    }
    Ok(parsed)
}

/// `base` with `segments` appended to its path, each percent-encoded (so an id returned by the
/// remote cannot change the path).
pub fn endpoint(base: &Url, segments: &[&str]) -> Url {
    let mut url = base.clone();
    if let Ok(mut path) = url.path_segments_mut() {
        path.pop_if_empty().extend(segments);
    }
    url
}

/// Sends a request; a transport failure is retryable, a response outside 2xx is classified by
/// [`status_error`].
pub async fn send(req: reqwest::RequestBuilder) -> Result<Response, SinkError> {
    send_accepting(req, |status| status.is_success()).await
}

/// [`send`], with `accepted` saying which statuses confirm the request (e.g. 2xx and 409 for a
/// receiver that answers a repeated idempotency key with 409).
pub async fn send_accepting(
    req: reqwest::RequestBuilder,
    accepted: impl Fn(StatusCode) -> bool,
) -> Result<Response, SinkError> {
    let resp = req.send().await.map_err(transport_error)?;
    let status = resp.status();
    if accepted(status) {
        return Ok(resp);
    }
    let body: String = resp.text().await.unwrap_or_default().chars().take(300).collect();
    Err(status_error(status, &body))
}

/// Reads a 2xx response body as JSON. A body that does not parse is retryable: proxies and
/// sleeping instances answer 200 with an HTML page, and the real API will answer later.
pub async fn json<T: DeserializeOwned>(resp: Response, what: &str) -> Result<T, SinkError> {
    let bytes = resp.bytes().await.map_err(transport_error)?;
    serde_json::from_slice(&bytes).map_err(|e| SinkError::Retry(format!("{what}: unexpected response body: {e}")))
}

/// 5xx, 429 and 408 are worth retrying, and so are 401 and 403: credentials get rotated and
/// permissions fixed, and the ticket must go out once they are (the failures are counted and
/// logged meanwhile). Any other refusal will not change by itself.
pub fn status_error(status: StatusCode, body: &str) -> SinkError {
    let msg = format!("HTTP {status}: {body}");
    let transient = status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::UNAUTHORIZED
        || status == StatusCode::FORBIDDEN;
    if transient {
        SinkError::Retry(msg)
    } else {
        SinkError::Permanent(msg)
    }
}

/// A request that never got a response. Errors may carry the URL, which can carry credentials
/// in its query: strip it.
pub fn transport_error(e: reqwest::Error) -> SinkError {
    let mut msg = e.to_string();
    if let Some(url) = e.url() {
        msg = msg.replace(url.as_str(), "<url>");
    }
    if e.is_builder() {
        SinkError::Permanent(msg)
    } else {
        SinkError::Retry(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_appends_encoded_segments_to_the_base_path() {
        let base = base_url("https://acme.example.com/jira/").unwrap();
        assert_eq!(
            endpoint(&base, &["rest", "api", "3", "issue"]).as_str(),
            "https://acme.example.com/jira/rest/api/3/issue"
        );
        let base = base_url("https://acme.example.com").unwrap();
        assert_eq!(endpoint(&base, &["incident", "a/b?c"]).as_str(), "https://acme.example.com/incident/a%2Fb%3Fc");
    }

    #[test]
    fn basic_auth_requests_carry_credentials_and_ask_for_json() {
        let api = BasicAuthClient::new(Duration::from_secs(1), "fw", "s3cret".into()).unwrap();
        let url = base_url("https://acme.example.com").unwrap();
        let req = api.request(reqwest::Method::GET, url).build().unwrap();
        let header = |name| req.headers().get(name).and_then(|v| v.to_str().ok());
        // "fw:s3cret" in base64.
        assert_eq!(header(reqwest::header::AUTHORIZATION), Some("Basic Znc6czNjcmV0"));
        assert_eq!(header(reqwest::header::ACCEPT), Some("application/json"));
    }

    #[test]
    fn base_url_must_be_http() {
        assert!(base_url("ftp://x").is_err());
        assert!(base_url("mailto:ops@example.com").is_err());
        assert!(base_url("not a url").is_err());
    }

    #[test]
    fn statuses_are_classified() {
        for code in [500, 502, 503, 429, 408, 401, 403] {
            let s = StatusCode::from_u16(code).unwrap();
            assert!(matches!(status_error(s, ""), SinkError::Retry(_)), "{code}");
        }
        for code in [400, 404, 409, 422] {
            let s = StatusCode::from_u16(code).unwrap();
            assert!(matches!(status_error(s, ""), SinkError::Permanent(_)), "{code}");
        }
    }
}
