//! `[decode]`: how a message becomes readings.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::sparkplug::SparkplugConfig;
use crate::settings::{bad, Invalid};

/// How a payload's event time is written.
#[derive(Debug, Clone, Copy, Deserialize, serde::Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum TimestampFormat {
    /// RFC 3339 strings, or numbers: seconds below 10^11, milliseconds above.
    #[default]
    Auto,
    Rfc3339,
    EpochS,
    EpochMs,
}

/// One metric taken from a JSON pointer instead of a top-level field.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetricMapping {
    /// Metric name as it appears in tickets and the store.
    pub name: String,
    /// JSON pointer (RFC 6901), e.g. `/sensors/discharge/temp`.
    pub pointer: String,
    /// Unit shown to technicians, e.g. `°C`.
    pub unit: Option<String>,
}

/// How a message becomes readings.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DecodeConfig {
    /// Topic pattern with `{device}` and optional `{site}` placeholders.
    pub topic_pattern: Option<String>,
    /// JSON pointer to the device id, used when the topic does not name it.
    pub device_field: Option<String>,
    /// JSON pointer to the site, used when the topic does not name it.
    pub site_field: Option<String>,
    /// JSON pointer to the event time; absent means receive time.
    pub timestamp_field: Option<String>,
    pub timestamp_format: TimestampFormat,
    /// Explicit metrics. When empty, every numeric top-level field (except the device, site and
    /// timestamp fields) is a metric.
    pub metrics: Vec<MetricMapping>,
    /// Units for metrics found automatically (`metric name -> unit`).
    pub units: BTreeMap<String, String>,
    pub max_payload_bytes: usize,
    /// Reject readings from devices not listed in `known_devices`.
    pub require_known_devices: bool,
    pub known_devices: Vec<String>,
    /// Most devices tracked. A new device beyond it evicts the device tracked longest that sent
    /// one message and never came back; a registered one is always admitted; otherwise its
    /// messages are rejected (`too_many_devices`) while known ones keep flowing. 0: no limit.
    pub max_devices: usize,
    /// Most series (device × metric) tracked; new series beyond it are rejected
    /// (`too_many_series`). 0: no limit.
    pub max_series: usize,
    /// A device not heard from this long is forgotten: its detectors, models and bookkeeping
    /// are freed (a silent-device incident stays open). It starts afresh if it returns.
    #[serde(with = "humantime_serde")]
    pub forget_after: Duration,
    /// `[decode.sparkplug]`: present, the `spBv1.0/` topics are Sparkplug B (the rest above
    /// applies to the JSON topics only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sparkplug: Option<SparkplugConfig>,
}

impl Default for DecodeConfig {
    fn default() -> Self {
        Self {
            topic_pattern: Some("plant/{site}/{device}/telemetry".into()),
            device_field: None,
            site_field: None,
            timestamp_field: Some("/ts".into()),
            timestamp_format: TimestampFormat::Auto,
            metrics: Vec::new(),
            units: BTreeMap::new(),
            max_payload_bytes: 64 * 1024,
            require_known_devices: false,
            known_devices: Vec::new(),
            max_devices: 10_000,
            max_series: 100_000,
            forget_after: Duration::from_secs(7 * 86_400),
            sparkplug: None,
        }
    }
}

impl DecodeConfig {
    /// Checks what types alone cannot; names the offending key.
    pub fn validate(&self) -> Result<(), Invalid> {
        let d = self;
        match &d.topic_pattern {
            Some(p) if !p.contains("{device}") && d.device_field.is_none() => {
                return bad("decode.topic_pattern", "must contain `{device}` unless decode.device_field is set");
            }
            Some(_) => {}
            None if d.device_field.is_none() => {
                return bad(
                    "decode.device_field",
                    "set decode.topic_pattern or decode.device_field to find the device",
                );
            }
            None => {}
        }
        for (key, ptr) in [
            ("decode.device_field", &d.device_field),
            ("decode.site_field", &d.site_field),
            ("decode.timestamp_field", &d.timestamp_field),
        ] {
            if let Some(p) = ptr {
                if !p.starts_with('/') {
                    return bad(key, format!("`{p}` is not a JSON pointer (it must start with `/`)"));
                }
            }
        }
        for (i, m) in d.metrics.iter().enumerate() {
            if m.name.is_empty() {
                return Err(Invalid::new(format!("decode.metrics[{i}].name"), "must not be empty"));
            }
            if !m.pointer.starts_with('/') {
                return Err(Invalid::new(
                    format!("decode.metrics[{i}].pointer"),
                    format!("`{}` is not a JSON pointer", m.pointer),
                ));
            }
        }
        if d.max_payload_bytes == 0 {
            return bad("decode.max_payload_bytes", "must be at least 1");
        }
        if d.require_known_devices && d.known_devices.is_empty() {
            return bad("decode.known_devices", "require_known_devices is set but the list is empty");
        }
        if let Some(sp) = &d.sparkplug {
            sp.validate()?;
        }
        Ok(())
    }
}
