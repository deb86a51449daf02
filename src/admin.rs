//! Admin HTTP (loopback by default): `/metrics` for Prometheus, `/healthz` and `/readyz`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// Serves until `cancel`.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Arc<Metrics>, cancel: CancellationToken) {
    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(metrics);
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(async move { cancel.cancelled().await }).await {
        tracing::error!(error = %e, "admin server failed");
    }
}

async fn metrics_text(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], m.render())
}

/// Ready when connected to the broker: until then no telemetry can arrive.
async fn ready(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    if m.mqtt_connected.get() == 1 {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not connected to the broker\n")
    }
}
