//! `[store]`: the embedded database, its retention and group commit.

use std::time::Duration;

use serde::Deserialize;

use crate::settings::{bad, Invalid};

/// The embedded database.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Readings older than this (by event time) are deleted in the background.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    #[serde(with = "humantime_serde")]
    pub retention_interval: Duration,
    /// Readings dropped by retention are kept as per-interval aggregates (min, max, mean,
    /// count) of this width ...
    #[serde(with = "humantime_serde")]
    pub downsample_interval: Duration,
    /// ... for this long (event time).
    #[serde(with = "humantime_serde")]
    pub aggregate_retention: Duration,
    /// Largest group-commit batch (messages).
    pub batch_max: usize,
    /// Longest a message waits for its batch to fill before the batch is committed.
    #[serde(with = "humantime_serde")]
    pub batch_linger: Duration,
    /// sled page cache; its own default is 1 GiB, far too much for a gateway.
    pub cache_mb: u64,
    /// Rejected payloads kept for inspection; the oldest are dropped beyond this.
    pub rejected_max: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            retention: Duration::from_secs(14 * 24 * 3600),
            retention_interval: Duration::from_secs(600),
            downsample_interval: Duration::from_secs(300),
            aggregate_retention: Duration::from_secs(365 * 24 * 3600),
            batch_max: 512,
            batch_linger: Duration::from_millis(20),
            cache_mb: 64,
            rejected_max: 10_000,
        }
    }
}

impl StoreConfig {
    /// Checks what types alone cannot; names the offending key.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.batch_max == 0 {
            return bad("store.batch_max", "must be at least 1");
        }
        if self.retention < Duration::from_secs(3600) {
            return bad("store.retention", "must be at least 1h");
        }
        if self.downsample_interval < Duration::from_secs(1) {
            return bad("store.downsample_interval", "must be at least 1s");
        }
        if self.aggregate_retention < self.retention {
            return bad("store.aggregate_retention", "must be at least store.retention (aggregates outlive readings)");
        }
        if self.cache_mb == 0 {
            return bad("store.cache_mb", "must be at least 1");
        }
        Ok(())
    }
}
