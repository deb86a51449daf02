//! Retention: readings older than `store.retention` are deleted in the background, so the disk
//! stays bounded on a gateway that runs for years.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Store;
use crate::metrics::Metrics;
use crate::reading::now_ms;

/// Runs until `cancel`: every `interval`, deletes readings older than `retention`.
pub async fn run_retention(
    store: Arc<Store>,
    retention: Duration,
    interval: Duration,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let cutoff = now_ms() - retention.as_millis() as i64;
        let store = store.clone();
        match tokio::task::spawn_blocking(move || store.prune_before(cutoff)).await {
            Ok(Ok(n)) => {
                metrics.retention_removed.inc_by(n as u64);
                if n > 0 {
                    tracing::info!(removed = n, "retention removed old readings");
                }
            }
            Ok(Err(e)) => tracing::error!(error = %e, "retention failed"),
            Err(e) => tracing::error!(error = %e, "retention task panicked"),
        }
    }
}
