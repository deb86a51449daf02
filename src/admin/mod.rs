//! Admin HTTP (loopback by default): `/metrics` for Prometheus (text 0.0.4, or OpenMetrics when
//! asked for), `/healthz`, `/readyz`, and the operator API: incidents with their timeline,
//! technician feedback, silences, rejected messages.
//!
//! Reads are open (they are what monitoring scrapes); every request that changes state needs
//! `Authorization: Bearer <admin.token>` when a token is configured, compared in constant time.
//! Bodies are capped at [`MAX_BODY_BYTES`] and free-text fields are bounded, since they end up
//! in tickets.

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

mod server;

pub use server::{HEADER_TIMEOUT, MAX_CONNECTIONS, REQUEST_TIMEOUT};

use crate::settings::{bad, Invalid, SecretRef};

/// The loopback HTTP endpoint for `/metrics` and health checks.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// `host:port`; empty disables it. Anything but a loopback address needs `token`.
    pub listen: String,
    /// Bearer token every request that changes state must carry (`{ file = ... }` or
    /// `{ env = ... }`). Reads (`/metrics`, health, lists) stay open.
    pub token: Option<SecretRef>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self { listen: "127.0.0.1:9797".into(), token: None }
    }
}

impl AdminConfig {
    /// Checks what types alone cannot; names the offending key.
    pub fn validate(&self) -> Result<(), Invalid> {
        if !self.listen.is_empty() {
            let Ok(addr) = self.listen.parse::<std::net::SocketAddr>() else {
                return bad("admin.listen", "must be host:port, e.g. 127.0.0.1:9797, or empty");
            };
            if !addr.ip().is_loopback() && self.token.is_none() {
                return bad(
                    "admin.listen",
                    "is not a loopback address: set admin.token (file or env) so only operators can change state",
                );
            }
        }
        if let Some(t) = &self.token {
            if t.file.is_none() && t.env.is_none() {
                return bad("admin.token", "set `file` or `env`");
            }
        }
        Ok(())
    }
}

use crate::core::{Feedback, FeedbackError};
use crate::incident::{Incident, IncidentState};
use crate::metrics::{Format, Metrics};
use crate::model::trainer::TrainRequests;
use crate::model::{DeviceModel, ModelKind};
use crate::reading::now_ms;
use crate::silence::{Silence, Silences};
use crate::store::Store;

/// Largest request body accepted (feedback and silences are a few hundred bytes).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Longest silence reason accepted.
pub const REASON_MAX: usize = 1024;

/// What the handlers share.
#[derive(Clone)]
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub health: Arc<crate::health::Health>,
    /// Needed by every request that changes state; `None`: no token configured (loopback only).
    pub token: Option<Arc<str>>,
    pub store: Arc<Store>,
    /// The silences the core obeys: set and lifted here, in memory and in the store at once.
    pub silences: Arc<Silences>,
    /// Where technicians' feedback goes: to the core, which owns the incidents.
    pub feedback: mpsc::Sender<FeedbackRequest>,
    /// Where `POST /api/models/train` asks for fits (`None`: models are disabled).
    pub train: Option<Arc<TrainRequests>>,
    /// Whether devices commission (`[detect.context] enabled`): a device without a stored
    /// context reference is then still commissioning.
    pub commissions: bool,
}

/// A technician's feedback on an incident, for the core to apply between batches (the daemon
/// hands it to the batcher); the reply is the incident as it is now, or why it was refused.
pub struct FeedbackRequest {
    pub id: String,
    pub feedback: Feedback,
    pub reply: oneshot::Sender<Result<Incident, FeedbackError>>,
}

/// The router, separate from `serve` so tests can drive it directly.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/api/incidents", get(list_incidents))
        .route("/api/incidents/{id}/feedback", post(feedback))
        .route("/api/silences", get(list_silences).post(add_silence))
        .route("/api/silences/{id}", delete(remove_silence))
        .route("/api/rejected", get(list_rejected))
        .route("/api/devices", get(list_devices))
        .route("/api/models", get(list_models))
        .route("/api/models/train", post(train_models))
        .layer(middleware::from_fn_with_state(state.clone(), require_token))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// The router of a daemon whose store cannot commit, served while it waits to start again:
/// liveness, the reason it is not ready, and its counters.
pub fn degraded_router(metrics: Arc<Metrics>, health: Arc<crate::health::Health>) -> Router {
    Router::new()
        .route("/metrics", get(move |headers: HeaderMap| async move { metrics_response(&metrics, &headers) }))
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || async move {
                let reason = health.store_error().unwrap_or_else(|| "starting".into());
                (StatusCode::SERVICE_UNAVAILABLE, format!("store cannot commit: {reason}\n"))
            }),
        )
}

/// Requests that change state carry the admin token, when one is configured.
async fn require_token(State(s): State<AdminState>, req: Request, next: Next) -> Response {
    let Some(token) = &s.token else { return next.run(req).await };
    if matches!(*req.method(), Method::GET | Method::HEAD) {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if bool::from(subtle::ConstantTimeEq::ct_eq(given.as_bytes(), token.as_bytes())) {
        next.run(req).await
    } else {
        let mut r = error(StatusCode::UNAUTHORIZED, "this request needs `Authorization: Bearer <admin.token>`");
        r.headers_mut().insert(header::WWW_AUTHENTICATE, axum::http::HeaderValue::from_static("Bearer"));
        r
    }
}

/// Serves until `cancel`.
pub async fn serve(listener: tokio::net::TcpListener, state: AdminState, cancel: CancellationToken) {
    server::serve(listener, router(state), cancel).await;
}

/// Serves any router (the degraded one while the store cannot commit) under the same limits.
pub async fn serve_router(listener: tokio::net::TcpListener, router: Router, cancel: CancellationToken) {
    server::serve(listener, router, cancel).await;
}

async fn metrics_text(State(s): State<AdminState>, headers: HeaderMap) -> Response {
    metrics_response(&s.metrics, &headers)
}

/// The exposition in the format the scraper asks for: OpenMetrics when its `Accept` header
/// prefers it, Prometheus text 0.0.4 otherwise.
fn metrics_response(metrics: &Metrics, headers: &HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = Format::negotiate(accept);
    ([(header::CONTENT_TYPE, format.content_type())], metrics.render(format)).into_response()
}

/// Ready when the store commits and the broker is connected: until then no telemetry is taken.
async fn ready(State(s): State<AdminState>) -> Response {
    if let Some(reason) = s.health.store_error() {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("store cannot commit: {reason}\n")).into_response();
    }
    if s.metrics.mqtt_connected.get() == 1 {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not connected to the broker\n").into_response()
    }
}

fn error(status: StatusCode, msg: impl std::fmt::Display) -> Response {
    (status, Json(serde_json::json!({ "error": msg.to_string() }))).into_response()
}

#[derive(Deserialize)]
struct IncidentQuery {
    #[serde(default)]
    open: bool,
}

async fn list_incidents(State(s): State<AdminState>, Query(q): Query<IncidentQuery>) -> Response {
    match s.store.incidents::<Incident>() {
        Ok(mut list) => {
            list.retain(|i| !q.open || i.state == IncidentState::Open);
            list.sort_by_key(|i| std::cmp::Reverse(i.opened_at));
            Json(list).into_response()
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

async fn feedback(State(s): State<AdminState>, Path(id): Path<String>, Json(fb): Json<Feedback>) -> Response {
    let (reply, answer) = oneshot::channel();
    if s.feedback.send(FeedbackRequest { id, feedback: fb, reply }).await.is_err() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the daemon is shutting down");
    }
    match answer.await {
        Ok(Ok(inc)) => Json(inc).into_response(),
        Ok(Err(FeedbackError::NotFound(id))) => error(StatusCode::NOT_FOUND, format!("no incident with id {id}")),
        Ok(Err(e @ FeedbackError::AlreadyDecided { .. })) => error(StatusCode::CONFLICT, e),
        Ok(Err(e @ FeedbackError::Invalid(_))) => error(StatusCode::BAD_REQUEST, e),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "the daemon is shutting down"),
    }
}

/// `POST /api/silences` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SilenceRequest {
    pub device: Option<String>,
    pub site: Option<String>,
    /// How long, e.g. `2h`.
    #[serde(rename = "for", with = "humantime_serde")]
    pub duration: std::time::Duration,
    #[serde(default)]
    pub reason: String,
}

async fn add_silence(State(s): State<AdminState>, Json(req): Json<SilenceRequest>) -> Response {
    if req.device.is_some() == req.site.is_some() {
        return error(StatusCode::BAD_REQUEST, "name exactly one of `device` or `site`");
    }
    if req.duration.is_zero() || req.duration > std::time::Duration::from_secs(30 * 86_400) {
        return error(StatusCode::BAD_REQUEST, "`for` must be between 1s and 30d");
    }
    if req.device.iter().chain(req.site.iter()).any(|n| n.is_empty() || n.chars().count() > 128) {
        return error(StatusCode::BAD_REQUEST, "`device` and `site` are 1 to 128 characters");
    }
    if req.reason.chars().count() > REASON_MAX {
        return error(StatusCode::BAD_REQUEST, format!("`reason` is longer than {REASON_MAX} characters"));
    }
    let now = now_ms();
    let seq = match s.store.next_id() {
        Ok(n) => n,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e),
    };
    let silence = Silence {
        // Unique even for requests in the same millisecond: the store's id counter.
        id: format!("S-{now:x}-{seq}"),
        device: req.device,
        site: req.site,
        created_at: now,
        until: now + req.duration.as_millis() as i64,
        reason: req.reason,
    };
    match s.silences.add(silence.clone()) {
        Ok(()) => {
            tracing::info!(silence = %silence.id, device = ?silence.device, site = ?silence.site, until = %crate::reading::format_ts(silence.until), "silence added");
            (StatusCode::CREATED, Json(silence)).into_response()
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

async fn list_silences(State(s): State<AdminState>) -> Response {
    Json(s.silences.active(now_ms())).into_response()
}

async fn remove_silence(State(s): State<AdminState>, Path(id): Path<String>) -> Response {
    match s.silences.remove(&id) {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => error(StatusCode::NOT_FOUND, format!("no silence with id {id}")),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

#[derive(Deserialize)]
struct RejectedQuery {
    #[serde(default = "default_limit")]
    limit: usize,
}

fn default_limit() -> usize {
    50
}

async fn list_rejected(State(s): State<AdminState>, Query(q): Query<RejectedQuery>) -> Response {
    match s.store.rejected(q.limit.min(1000)) {
        Ok(list) => Json(list).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

/// One device as `GET /api/devices` and `fieldwatch devices` show it: where it is in its life.
/// Read from the store, where the core writes the devices' state every 5 minutes and when a
/// device ends commissioning.
#[derive(Debug, serde::Serialize, Deserialize)]
pub struct DeviceSummary {
    pub device: String,
    /// `commissioning` (learning its normal operation: only hard limits, stuck sensors and
    /// silence raise incidents) or `watching`.
    pub state: crate::detect::ContextPhase,
    /// When it was first heard (wall ms).
    pub first_heard: i64,
    /// When its commissioning began and ended (event ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commissioning_since: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commissioned_at: Option<i64>,
    /// The metrics it has reported (stored series), by name.
    #[serde(default)]
    pub metrics: Vec<String>,
}

/// Every device the store knows, with its state; `commissions`: whether devices commission at
/// all (`[detect.context] enabled`).
pub fn device_summaries(store: &Store, commissions: bool) -> Result<Vec<DeviceSummary>, crate::store::StoreError> {
    use crate::detect::{ContextPhase, DeviceContext};
    // One of an older layout is not the device's: it commissions again.
    let contexts: std::collections::HashMap<String, DeviceContext> =
        store.contexts::<DeviceContext>()?.into_iter().filter(|(_, c)| c.current_layout()).collect();
    let mut reported: std::collections::HashMap<String, Vec<String>> = std::collections::HashMap::new();
    for (_, device, metric) in store.all_series()? {
        reported.entry(device).or_default().push(metric);
    }
    let mut out: Vec<DeviceSummary> = store
        .devices()?
        .into_iter()
        .map(|(device, first_heard)| {
            let ctx = contexts.get(&device).filter(|_| commissions);
            let state = match ctx {
                Some(c) => c.phase(),
                None if commissions => ContextPhase::Commissioning,
                None => ContextPhase::Watching,
            };
            DeviceSummary {
                state,
                first_heard,
                commissioning_since: ctx.map(DeviceContext::started_at),
                commissioned_at: ctx.and_then(DeviceContext::commissioned_at),
                metrics: {
                    let mut m = reported.remove(&device).unwrap_or_default();
                    m.sort();
                    m
                },
                device,
            }
        })
        .collect();
    out.sort_by(|a, b| a.device.cmp(&b.device));
    Ok(out)
}

async fn list_devices(State(s): State<AdminState>) -> Response {
    match device_summaries(&s.store, s.commissions) {
        Ok(list) => Json(list).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

/// One fitted model as `GET /api/models` and `fieldwatch models` show it: what, on what, how well.
#[derive(Debug, serde::Serialize, Deserialize)]
pub struct ModelSummary {
    pub device: String,
    pub kind: ModelKind,
    pub fitted_at: i64,
    pub samples: usize,
    pub window_from: i64,
    pub window_to: i64,
    pub metrics: Vec<String>,
    pub validation: crate::model::Validation,
    /// Why the model is scored but raises no incident, when it does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub untrusted: Option<String>,
}

impl ModelSummary {
    pub fn of(m: &DeviceModel) -> ModelSummary {
        ModelSummary {
            device: m.device.clone(),
            kind: m.kind,
            fitted_at: m.fitted_at,
            samples: m.n_samples,
            window_from: m.window_from,
            window_to: m.window_to,
            metrics: m.spec.metrics.clone(),
            validation: m.validation.clone(),
            untrusted: m.untrusted.clone(),
        }
    }
}

async fn list_models(State(s): State<AdminState>) -> Response {
    match s.store.models::<DeviceModel>() {
        Ok(list) => Json(list.iter().map(ModelSummary::of).collect::<Vec<_>>()).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

#[derive(Deserialize)]
struct TrainQuery {
    device: Option<String>,
}

/// Asks the trainer for a fit now (of one device, or of all); the fit runs in the background.
async fn train_models(State(s): State<AdminState>, Query(q): Query<TrainQuery>) -> Response {
    match &s.train {
        Some(t) => {
            t.request(q.device.as_deref());
            (StatusCode::ACCEPTED, Json(serde_json::json!({ "requested": q.device.as_deref().unwrap_or("all") })))
                .into_response()
        }
        None => error(StatusCode::CONFLICT, "models are disabled: set [detect.models] enabled = true"),
    }
}
