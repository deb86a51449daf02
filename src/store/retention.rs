//! Retention: readings older than `store.retention` are deleted in the background, a whole chunk
//! at a time, after being folded into `store.downsample_interval` aggregates that are kept for
//! `store.aggregate_retention`, so the disk stays bounded on a gateway that runs for years.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::config::StoreConfig;
use super::Store;
use crate::metrics::Metrics;
use crate::reading::now_ms;

/// Runs until `cancel`: every `store.retention_interval`, applies the retention of `cfg`.
pub async fn run_retention(store: Arc<Store>, cfg: StoreConfig, metrics: Arc<Metrics>, cancel: CancellationToken) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(cfg.retention_interval) => {}
        }
        let cutoff = now_ms() - cfg.retention.as_millis() as i64;
        let aggregate_cutoff = now_ms() - cfg.aggregate_retention.as_millis() as i64;
        let store = store.clone();
        let interval = cfg.downsample_interval;
        match tokio::task::spawn_blocking(move || store.prune_before(cutoff, aggregate_cutoff, interval)).await {
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
