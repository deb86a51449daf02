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

/// Milliseconds since the Unix epoch, now. Read from the system clock directly: chrono's
/// `Utc::now` also works out the calendar date, which nothing here needs, for every message.
pub fn now_ms() -> i64 {
    let since = |d: std::time::Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        Ok(after) => since(after),
        Err(before) => -since(before.duration()),
    }
}

/// Formats an epoch-ms time as RFC 3339 (UTC, second precision unless sub-second matters).
pub fn format_ts(ts: i64) -> String {
    match chrono::DateTime::from_timestamp_millis(ts) {
        Some(t) => t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
        None => ts.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_is_the_same_instant_as_chronos() {
        let before = chrono::Utc::now().timestamp_millis();
        let now = now_ms();
        let after = chrono::Utc::now().timestamp_millis();
        assert!((before..=after).contains(&now), "{before} <= {now} <= {after}");
    }
}
