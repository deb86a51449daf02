//! The unit of telemetry: one number of one metric of one device at one time.

use serde::{Deserialize, Serialize};

/// One reading after decoding. Times are milliseconds since the Unix epoch (UTC).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    pub device: String,
    /// The site the device belongs to, when the topic or payload names one.
    pub site: Option<String>,
    pub metric: String,
    /// Event time: from the payload when it carries one, else receive time.
    pub ts: i64,
    pub value: f64,
}

/// A raw message as it came off the wire (or out of a file), before decoding.
#[derive(Debug, Clone)]
pub struct Message {
    pub topic: String,
    pub payload: bytes::Bytes,
    /// Receive time, ms since the epoch; the event time when the payload has none.
    pub received_ms: i64,
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Formats an epoch-ms time as RFC 3339 (UTC, second precision unless sub-second matters).
pub fn format_ts(ts: i64) -> String {
    match chrono::DateTime::from_timestamp_millis(ts) {
        Some(t) => t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
        None => ts.to_string(),
    }
}
