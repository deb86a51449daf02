//! Ingest: where messages come from. Today MQTT; files and the simulator feed the core directly.

pub mod config;
pub mod link;
pub mod mqtt;

pub use config::{MqttConfig, MqttProtocol, SessionExpiry, TlsConfig};

use std::sync::atomic::{AtomicI64, Ordering};

/// Whether the broker link is up, and since when: written by the source, read by the daemon's
/// tick, whose staleness check waits a grace period after a (re)connect before it blames a
/// device for the silence.
#[derive(Debug, Default)]
pub struct LinkState {
    /// Wall-clock ms of the current connection's start; 0 while down.
    up_since_ms: AtomicI64,
}

impl LinkState {
    /// The link came up at `now_ms`.
    pub fn up(&self, now_ms: i64) {
        self.up_since_ms.store(now_ms.max(1), Ordering::Relaxed);
    }

    /// The link is down.
    pub fn down(&self) {
        self.up_since_ms.store(0, Ordering::Relaxed);
    }

    /// When the current connection started; `None` while the link is down.
    pub fn up_since(&self) -> Option<i64> {
        let since = self.up_since_ms.load(Ordering::Relaxed);
        (since > 0).then_some(since)
    }
}
