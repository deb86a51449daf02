//! Decode: a message (topic + JSON payload) becomes readings, mapped by `[decode]` config;
//! with `[decode.sparkplug]`, a Sparkplug B message on a `spBv1.0/` topic is decoded by
//! [`sparkplug`] instead, into the same readings.
//!
//! Synchronous and free of I/O, so it is tested without a broker. A message that cannot be
//! decoded is rejected whole, with a [`RejectReason`] that is counted, logged and kept aside by
//! the caller.

pub mod config;
pub mod sparkplug;

use std::collections::HashSet;

use serde_json::Value;

use crate::reading::{Message, Reading};

pub use config::{DecodeConfig, MetricMapping, TimestampFormat};
use sparkplug::SparkplugDecoder;

/// Why a message was rejected. The label is a Prometheus label value, so keep it short and fixed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RejectReason {
    #[error("payload is {size} bytes, over the {limit} byte limit")]
    TooLarge { size: usize, limit: usize },
    #[error("payload is not JSON: {0}")]
    NotJson(String),
    #[error("payload is not a JSON object")]
    NotObject,
    #[error("no device id in topic or payload")]
    NoDevice,
    #[error("device id `{0}` is not acceptable (1-128 printable characters)")]
    BadDevice(String),
    #[error("device `{0}` is not in decode.known_devices")]
    UnknownDevice(String),
    #[error("metric `{metric}` is {found}, expected a number")]
    WrongType { metric: String, found: &'static str },
    #[error("metric `{0}` is not a finite number")]
    NonFinite(String),
    #[error("timestamp is not usable: {0}")]
    BadTimestamp(String),
    #[error("payload has no numeric metrics")]
    NoMetrics,
    #[error("timestamp is older than store.retention ({0}); it would be deleted at once")]
    TooOld(String),
    #[error("device `{0}` is new and decode.max_devices devices are already tracked")]
    TooManyDevices(String),
    #[error("series `{0}` is new and decode.max_series series are already tracked")]
    TooManySeries(String),
    #[error("Sparkplug payload is {size} bytes, over the {limit} byte limit")]
    SparkplugTooLarge { size: usize, limit: usize },
    #[error("not a Sparkplug B topic (spBv1.0/group/type/edge_node[/device]): `{0}`")]
    SparkplugTopic(String),
    #[error("Sparkplug payload is not a valid protobuf Payload: {0}")]
    SparkplugMalformed(String),
    #[error("Sparkplug metric `{metric}` has an unknown datatype ({datatype:?}); it was skipped")]
    SparkplugUnknownDatatype { metric: String, datatype: Option<u32> },
    #[error("Sparkplug metric (alias {alias:?}, name {name:?}) was never born")]
    SparkplugUnknownAlias { alias: Option<u64>, name: Option<String> },
    #[error("Sparkplug metric `{metric}` was born {born} and is now {now}")]
    SparkplugTypeChanged { metric: String, born: String, now: String },
    #[error("Sparkplug DATA or DEATH from `{0}` before its BIRTH")]
    SparkplugNotBorn(String),
    #[error("Sparkplug NDEATH of an earlier session (bdSeq {death}, the session's is {session}); ignored")]
    SparkplugOldDeath { death: u64, session: u64 },
}

/// Every label [`RejectReason::label`] can return.
pub const ALL_REJECT_LABELS: [&str; 21] = [
    "too_large",
    "not_json",
    "not_object",
    "no_device",
    "bad_device",
    "unknown_device",
    "wrong_type",
    "non_finite",
    "bad_timestamp",
    "no_metrics",
    "too_old",
    "too_many_devices",
    "too_many_series",
    "sparkplug_too_large",
    "sparkplug_bad_topic",
    "sparkplug_malformed",
    "sparkplug_unknown_datatype",
    "sparkplug_unknown_alias",
    "sparkplug_type_changed",
    "sparkplug_not_born",
    "sparkplug_old_death",
];

impl RejectReason {
    /// A stable, low-cardinality label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            RejectReason::TooLarge { .. } => "too_large",
            RejectReason::NotJson(_) => "not_json",
            RejectReason::NotObject => "not_object",
            RejectReason::NoDevice => "no_device",
            RejectReason::TooOld(_) => "too_old",
            RejectReason::TooManyDevices(_) => "too_many_devices",
            RejectReason::TooManySeries(_) => "too_many_series",
            RejectReason::BadDevice(_) => "bad_device",
            RejectReason::UnknownDevice(_) => "unknown_device",
            RejectReason::WrongType { .. } => "wrong_type",
            RejectReason::NonFinite(_) => "non_finite",
            RejectReason::BadTimestamp(_) => "bad_timestamp",
            RejectReason::NoMetrics => "no_metrics",
            RejectReason::SparkplugTooLarge { .. } => "sparkplug_too_large",
            RejectReason::SparkplugTopic(_) => "sparkplug_bad_topic",
            RejectReason::SparkplugMalformed(_) => "sparkplug_malformed",
            RejectReason::SparkplugUnknownDatatype { .. } => "sparkplug_unknown_datatype",
            RejectReason::SparkplugUnknownAlias { .. } => "sparkplug_unknown_alias",
            RejectReason::SparkplugTypeChanged { .. } => "sparkplug_type_changed",
            RejectReason::SparkplugNotBorn(_) => "sparkplug_not_born",
            RejectReason::SparkplugOldDeath { .. } => "sparkplug_old_death",
        }
    }
}

/// One segment of a topic pattern.
#[derive(Debug, Clone, PartialEq)]
enum Segment {
    Literal(String),
    Device,
    Site,
    /// Any other `{name}` or `+`: matches one level, value ignored.
    Any,
}

/// Turns messages into readings according to the `[decode]` config.
#[derive(Debug, Clone)]
pub struct Decoder {
    pattern: Option<Vec<Segment>>,
    device_field: Option<Pointer>,
    site_field: Option<Pointer>,
    timestamp_field: Option<Pointer>,
    /// The top-level fields the three above name: not metrics.
    not_metrics: Vec<String>,
    timestamp_format: TimestampFormat,
    metrics: Vec<(MetricMapping, Pointer)>,
    max_payload_bytes: usize,
    known_devices: Option<HashSet<String>>,
    /// Readings older than this before their receive time are rejected (`too_old`).
    max_age_ms: Option<i64>,
    /// With `[decode.sparkplug]`: decodes the `spBv1.0/` topics.
    sparkplug: Option<SparkplugDecoder>,
}

/// A scalar field of an accepted message that was not taken as a metric because it is not a
/// JSON number. The core counts it when it was meant as a reading: a number written as text
/// (`"12.5"`, `"NaN"`), or a field the device has sent as a number before.
#[derive(Debug, Clone, PartialEq)]
pub struct IgnoredField {
    pub field: String,
    pub numeric_text: bool,
}

/// A message with what decoding made of it. The daemon decodes in its ingest task, as messages
/// arrive, so that decoding runs beside the core instead of on its thread.
#[derive(Debug)]
pub struct Decoded {
    pub message: Message,
    pub readings: Result<Vec<Reading>, RejectReason>,
    /// The fields of an accepted message that look like metrics but are not numbers.
    pub ignored: Vec<IgnoredField>,
    /// Part of an accepted message was refused (a Sparkplug metric of an unknown datatype): the
    /// message is counted and kept aside under this reason, its readings are taken.
    pub partial: Option<RejectReason>,
    /// Sparkplug metrics of a type that is no reading (String, Bytes, DataSet, Template, ...).
    pub skipped: u32,
    /// Devices a Sparkplug BIRTH or DEATH says came online or went offline.
    pub presence: Vec<Presence>,
    /// A Sparkplug rebirth request for the ingest task to publish.
    pub publish: Option<Publish>,
    /// Why the message's Sparkplug edge node is out of step, if it is (counted by the ingest task).
    pub out_of_step: Option<&'static str>,
    /// The Sparkplug edge node whose session this message changed, for the ingest task to keep
    /// ([`Decoder::sparkplug_saved`]).
    pub session_changed: Option<String>,
}

impl Decoded {
    /// A JSON message's outcome: readings (or a rejection) and the ignored fields, nothing more.
    fn json(message: Message, readings: Result<Vec<Reading>, RejectReason>, ignored: Vec<IgnoredField>) -> Decoded {
        Decoded {
            message,
            readings,
            ignored,
            partial: None,
            skipped: 0,
            presence: Vec::new(),
            publish: None,
            out_of_step: None,
            session_changed: None,
        }
    }
}

/// A device that a Sparkplug BIRTH or DEATH reported online or offline.
#[derive(Debug, Clone, PartialEq)]
pub enum Presence {
    /// A death certificate: the device is offline from `since_ms` (receive time).
    Offline { device: String, site: Option<String>, since_ms: i64 },
    /// A birth: the device is back.
    Online { device: String, at_ms: i64 },
}

/// A message the decoder asks the ingest task to publish: a Sparkplug rebirth request.
#[derive(Debug, Clone, PartialEq)]
pub struct Publish {
    pub topic: String,
    pub payload: Vec<u8>,
    /// Why it is asked for (a short phrase for the log).
    pub why: &'static str,
}

/// Event times further than this ahead of the receive time are rejected: a device with a wrong
/// clock would otherwise write readings that retention never removes and baselines never reach.
const MAX_FUTURE_MS: i64 = 24 * 3600 * 1000;

impl Decoder {
    pub fn new(cfg: &DecodeConfig) -> Decoder {
        let pattern = cfg.topic_pattern.as_ref().map(|p| {
            p.split('/')
                .map(|s| match s {
                    "{device}" => Segment::Device,
                    "{site}" => Segment::Site,
                    "+" => Segment::Any,
                    s if s.starts_with('{') && s.ends_with('}') => Segment::Any,
                    s => Segment::Literal(s.to_string()),
                })
                .collect()
        });
        let pointer = |p: &Option<String>| p.as_deref().map(Pointer::parse);
        let (device_field, site_field, timestamp_field) =
            (pointer(&cfg.device_field), pointer(&cfg.site_field), pointer(&cfg.timestamp_field));
        let not_metrics = [&device_field, &site_field, &timestamp_field]
            .iter()
            .filter_map(|p| p.as_ref().and_then(Pointer::top_level_key))
            .map(str::to_string)
            .collect();
        Decoder {
            pattern,
            device_field,
            site_field,
            timestamp_field,
            not_metrics,
            timestamp_format: cfg.timestamp_format,
            metrics: cfg.metrics.iter().map(|m| (m.clone(), Pointer::parse(&m.pointer))).collect(),
            max_payload_bytes: cfg.max_payload_bytes,
            known_devices: cfg.require_known_devices.then(|| cfg.known_devices.iter().cloned().collect()),
            max_age_ms: None,
            sparkplug: cfg.sparkplug.as_ref().map(|sp| SparkplugDecoder::new(sp, cfg.max_payload_bytes)),
        }
    }

    /// Rejects readings whose event time is more than `age` before they were received: the
    /// store would delete them at its next retention pass.
    pub fn with_max_age(mut self, age: std::time::Duration) -> Decoder {
        self.max_age_ms = Some(age.as_millis().min(i64::MAX as u128) as i64);
        self
    }

    /// Decodes a message, keeping it with the result (see [`Decoded`]).
    pub fn decode_message(&self, message: Message) -> Decoded {
        if let Some(sp) = self.sparkplug_for(&message.topic) {
            let o = self.admit(sp.decode(&message, self.max_age_ms));
            return Decoded {
                message,
                readings: o.readings,
                ignored: Vec::new(),
                partial: o.partial,
                skipped: o.skipped,
                presence: o.presence,
                publish: o.publish,
                out_of_step: o.out_of_step,
                session_changed: o.session_changed,
            };
        }
        let mut ignored = Vec::new();
        let readings = self.decode_noting(&message, &mut ignored);
        Decoded::json(message, readings, ignored)
    }

    /// Decodes one message into its readings, or says why it cannot.
    pub fn decode(&self, msg: &Message) -> Result<Vec<Reading>, RejectReason> {
        if let Some(sp) = self.sparkplug_for(&msg.topic) {
            return self.admit(sp.decode(msg, self.max_age_ms)).readings;
        }
        self.decode_noting(msg, &mut Vec::new())
    }

    /// The store entries (key, value) that keep a Sparkplug edge node's session (what its
    /// BIRTHs declared) across a restart; none without `[decode.sparkplug]`.
    pub fn sparkplug_saved(&self, node: &str) -> Vec<(String, Vec<u8>)> {
        self.sparkplug.as_ref().map(|sp| sp.saved(node)).unwrap_or_default()
    }

    /// Restores the Sparkplug sessions kept by [`Decoder::sparkplug_saved`]; `load` reads a
    /// store key. Returns how many edge nodes it knows.
    pub fn restore_sparkplug(&self, load: impl Fn(&str) -> Option<Vec<u8>>) -> usize {
        self.sparkplug.as_ref().map_or(0, |sp| sp.restore(load))
    }

    /// A Sparkplug outcome under `decode.require_known_devices`: the readings and presence of a
    /// device not in `decode.known_devices` are refused (`unknown_device`), as a JSON message's.
    fn admit(&self, mut o: sparkplug::Outcome) -> sparkplug::Outcome {
        let Some(known) = &self.known_devices else { return o };
        o.presence.retain(|p| {
            let (Presence::Offline { device, .. } | Presence::Online { device, .. }) = p;
            known.contains(device)
        });
        if let Some(device) = o.readings.as_ref().ok().and_then(|r| r.first()).map(|r| &r.device) {
            if !known.contains(device) {
                o.readings = Err(RejectReason::UnknownDevice(device.clone()));
            }
        }
        o
    }

    /// The Sparkplug decoder, when it is configured and `topic` is in its namespace.
    fn sparkplug_for(&self, topic: &str) -> Option<&SparkplugDecoder> {
        let sp = self.sparkplug.as_ref()?;
        let rest = topic.strip_prefix(sparkplug::NAMESPACE)?;
        (rest.is_empty() || rest.starts_with('/')).then_some(sp)
    }

    /// [`Decoder::decode`], noting in `ignored` the fields of an accepted message that look like
    /// metrics but are not numbers (e.g. `"NaN"` beside numeric fields).
    pub fn decode_noting(&self, msg: &Message, ignored: &mut Vec<IgnoredField>) -> Result<Vec<Reading>, RejectReason> {
        if msg.payload.len() > self.max_payload_bytes {
            return Err(RejectReason::TooLarge { size: msg.payload.len(), limit: self.max_payload_bytes });
        }
        let json: Value = serde_json::from_slice(&msg.payload).map_err(|e| RejectReason::NotJson(e.to_string()))?;
        let obj = json.as_object().ok_or(RejectReason::NotObject)?;

        let (mut device, mut site) = self.match_topic(&msg.topic);
        if let Some(ptr) = &self.device_field {
            if let Some(v) = ptr.get(&json) {
                device = Some(id_string(v));
            }
        }
        if let Some(ptr) = &self.site_field {
            if let Some(v) = ptr.get(&json) {
                site = Some(id_string(v));
            }
        }
        let device = device.ok_or(RejectReason::NoDevice)?;
        check_device(&device)?;
        if let Some(known) = &self.known_devices {
            if !known.contains(&device) {
                return Err(RejectReason::UnknownDevice(device));
            }
        }

        let ts = match self.timestamp_field.as_ref().and_then(|p| p.get(&json)) {
            Some(v) => parse_timestamp(v, self.timestamp_format)?,
            None => msg.received_ms,
        };
        check_time(ts, msg.received_ms, self.max_age_ms)?;

        let mut readings = Vec::new();
        let mut push = |metric: &str, value: f64| {
            readings.push(Reading { device: device.clone(), site: site.clone(), metric: metric.to_string(), ts, value })
        };
        if self.metrics.is_empty() {
            for (key, v) in obj {
                if self.not_metrics.iter().any(|k| k == key) {
                    continue;
                }
                match v {
                    Value::Number(_) => match v.as_f64() {
                        Some(n) if n.is_finite() => push(key, n),
                        _ => return Err(RejectReason::NonFinite(key.clone())),
                    },
                    Value::String(t) => {
                        ignored.push(IgnoredField { field: key.clone(), numeric_text: t.trim().parse::<f64>().is_ok() })
                    }
                    Value::Null | Value::Bool(_) => {
                        ignored.push(IgnoredField { field: key.clone(), numeric_text: false })
                    }
                    // Arrays and objects are metadata, not metrics.
                    _ => {}
                }
            }
        } else {
            for (m, pointer) in &self.metrics {
                match pointer.get(&json) {
                    None | Some(Value::Null) => {} // a device may omit a metric in one message
                    Some(v) => match v.as_f64() {
                        Some(n) if n.is_finite() => push(&m.name, n),
                        Some(_) => return Err(RejectReason::NonFinite(m.name.clone())),
                        None => return Err(RejectReason::WrongType { metric: m.name.clone(), found: type_name(v) }),
                    },
                }
            }
        }
        if readings.is_empty() {
            return Err(RejectReason::NoMetrics);
        }
        Ok(readings)
    }

    fn match_topic(&self, topic: &str) -> (Option<String>, Option<String>) {
        let Some(pattern) = &self.pattern else {
            return (None, None);
        };
        let levels: Vec<&str> = topic.split('/').collect();
        if levels.len() != pattern.len() {
            return (None, None);
        }
        let (mut device, mut site) = (None, None);
        for (seg, level) in pattern.iter().zip(levels) {
            match seg {
                Segment::Literal(l) if l != level => return (None, None),
                Segment::Device => device = Some(level.to_string()),
                Segment::Site => site = Some(level.to_string()),
                _ => {}
            }
        }
        (device, site)
    }
}

/// What is kept aside of a rejected message's payload, at most `max` bytes of text: the text
/// itself (lossy), or for a Sparkplug message (protobuf, binary) `hex:` and its first bytes in
/// hex, which a lossy text copy would mangle.
pub fn kept_payload(topic: &str, payload: &[u8], max: usize) -> String {
    if topic.starts_with(sparkplug::NAMESPACE) {
        let bytes = &payload[..payload.len().min(max.saturating_sub(4) / 2)];
        let mut text = String::with_capacity(4 + 2 * bytes.len());
        text.push_str("hex:");
        for b in bytes {
            text.push_str(&format!("{b:02x}"));
        }
        return text;
    }
    String::from_utf8_lossy(&payload[..payload.len().min(max)]).into_owned()
}

/// A device id is 1–128 characters, none of them a control character.
fn check_device(device: &str) -> Result<(), RejectReason> {
    if device.is_empty() || device.len() > 128 || device.chars().any(char::is_control) {
        return Err(RejectReason::BadDevice(device.to_string()));
    }
    Ok(())
}

/// An event time `ts` is usable: after 1970, at most a day ahead of its receive time, and not
/// older than `max_age_ms` before it.
fn check_time(ts: i64, received_ms: i64, max_age_ms: Option<i64>) -> Result<(), RejectReason> {
    if ts > received_ms.saturating_add(MAX_FUTURE_MS) {
        return Err(RejectReason::BadTimestamp("more than 24 h in the future".into()));
    }
    if ts < 0 {
        return Err(RejectReason::BadTimestamp("before 1970".into()));
    }
    if let Some(age) = max_age_ms {
        if ts < received_ms.saturating_sub(age) {
            return Err(RejectReason::TooOld(crate::reading::format_ts(ts)));
        }
    }
    Ok(())
}

/// A JSON pointer (RFC 6901) parsed once, as its unescaped tokens. `serde_json`'s
/// `Value::pointer` splits and unescapes its text at every call, two allocations per token: for
/// the timestamp field alone that was 5 % of the daemon's CPU draining a backlog.
#[derive(Debug, Clone, PartialEq)]
struct Pointer {
    /// `None`: not a pointer (it does not start with `/`), which points at nothing.
    tokens: Option<Vec<String>>,
}

impl Pointer {
    fn parse(p: &str) -> Pointer {
        let tokens = if p.is_empty() {
            Some(Vec::new())
        } else {
            p.strip_prefix('/').map(|rest| rest.split('/').map(|t| t.replace("~1", "/").replace("~0", "~")).collect())
        };
        Pointer { tokens }
    }

    /// What it points at in `v`, as `Value::pointer` finds it.
    fn get<'a>(&self, v: &'a Value) -> Option<&'a Value> {
        let mut at = v;
        for t in self.tokens.as_ref()? {
            at = match at {
                Value::Object(map) => map.get(t.as_str())?,
                // No sign and no leading zero, as RFC 6901 has it.
                Value::Array(list) if !t.starts_with('+') && (t == "0" || !t.starts_with('0')) => {
                    list.get(t.parse::<usize>().ok()?)?
                }
                _ => return None,
            };
        }
        Some(at)
    }

    /// The field it names when it names a top-level field.
    fn top_level_key(&self) -> Option<&str> {
        match self.tokens.as_deref() {
            Some([key]) => Some(key),
            _ => None,
        }
    }
}

fn id_string(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Parses an event time: RFC 3339 text, or epoch seconds / milliseconds.
pub fn parse_timestamp(v: &Value, format: TimestampFormat) -> Result<i64, RejectReason> {
    let bad = |why: String| RejectReason::BadTimestamp(why);
    match (v, format) {
        (Value::String(s), TimestampFormat::Auto | TimestampFormat::Rfc3339) => chrono::DateTime::parse_from_rfc3339(s)
            .map(|t| t.timestamp_millis())
            .map_err(|e| bad(format!("`{s}`: {e}"))),
        (Value::Number(n), TimestampFormat::Auto | TimestampFormat::EpochS | TimestampFormat::EpochMs) => {
            let x = n.as_f64().filter(|x| x.is_finite()).ok_or_else(|| bad(n.to_string()))?;
            let ms = match format {
                TimestampFormat::EpochMs => x,
                TimestampFormat::EpochS => x * 1000.0,
                // Seconds until the year 5138, milliseconds after 1973: unambiguous in practice.
                _ if x.abs() < 1e11 => x * 1000.0,
                _ => x,
            };
            if ms.abs() > 1e15 {
                return Err(bad(format!("{n} is out of range")));
            }
            Ok(ms.round() as i64)
        }
        (other, f) => Err(bad(format!("{} where {f:?} was expected", type_name(other)))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(topic: &str, payload: &str) -> Message {
        Message {
            topic: topic.into(),
            payload: bytes::Bytes::from(payload.to_string()),
            received_ms: 1_700_000_000_000,
        }
    }

    #[test]
    fn device_and_site_come_from_the_topic() {
        let d = Decoder::new(&DecodeConfig::default());
        let r =
            d.decode(&msg("plant/s1/pump-7/telemetry", r#"{"ts": 1700000000, "temp": 71.5, "status": "ok"}"#)).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].device, "pump-7");
        assert_eq!(r[0].site.as_deref(), Some("s1"));
        assert_eq!(r[0].metric, "temp");
        assert_eq!(r[0].ts, 1_700_000_000_000);
    }

    #[test]
    fn timestamps_in_every_format() {
        use TimestampFormat::*;
        let t = |v: Value, f| parse_timestamp(&v, f);
        assert_eq!(t(Value::from("2023-11-14T22:13:20Z"), Auto), Ok(1_700_000_000_000));
        assert_eq!(t(Value::from(1_700_000_000_123i64), Auto), Ok(1_700_000_000_123));
        assert_eq!(t(Value::from(1_700_000_000.5), EpochS), Ok(1_700_000_000_500));
        assert!(t(Value::from("yesterday"), Auto).is_err());
        assert!(t(Value::from(true), Auto).is_err());
    }

    #[test]
    fn device_from_a_json_field_and_pointer_metrics() {
        let cfg = DecodeConfig {
            topic_pattern: None,
            device_field: Some("/id".into()),
            metrics: vec![MetricMapping {
                name: "discharge_temp".into(),
                pointer: "/sensors/discharge/temp".into(),
                unit: Some("°C".into()),
            }],
            ..DecodeConfig::default()
        };
        let d = Decoder::new(&cfg);
        let r = d.decode(&msg("x/y", r#"{"id": 42, "sensors": {"discharge": {"temp": 97.1}}}"#)).unwrap();
        assert_eq!((r[0].device.as_str(), r[0].metric.as_str(), r[0].value), ("42", "discharge_temp", 97.1));
        let err = d.decode(&msg("x/y", r#"{"id": 1, "sensors": {"discharge": {"temp": "hot"}}}"#));
        assert_eq!(err.unwrap_err().label(), "wrong_type");
    }

    #[test]
    fn malformed_payloads_are_rejected_with_a_reason() {
        let cfg = DecodeConfig {
            max_payload_bytes: 64,
            require_known_devices: true,
            known_devices: vec!["p1".into()],
            ..DecodeConfig::default()
        };
        let d = Decoder::new(&cfg);
        let label = |t: &str, p: &str| d.decode(&msg(t, p)).unwrap_err().label();
        assert_eq!(label("plant/s/p1/telemetry", "{not json"), "not_json");
        assert_eq!(label("plant/s/p1/telemetry", "[1,2]"), "not_object");
        assert_eq!(label("plant/s/p1/telemetry", &format!("{{\"a\": \"{}\"}}", "x".repeat(80))), "too_large");
        assert_eq!(label("plant/s/zz/telemetry", r#"{"t": 1}"#), "unknown_device");
        assert_eq!(label("other/topic", r#"{"t": 1}"#), "no_device");
        assert_eq!(label("plant/s/p1/telemetry", r#"{"t": 1e999}"#), "not_json");
        assert_eq!(label("plant/s/p1/telemetry", r#"{"ts": "soon", "t": 1}"#), "bad_timestamp");
        assert_eq!(label("plant/s/p1/telemetry", r#"{"status": "ok"}"#), "no_metrics");
    }

    #[test]
    fn a_parsed_pointer_finds_what_serde_json_finds() {
        let doc: Value = serde_json::json!({
            "ts": 1, "a/b": 2, "m~n": 3, "": 4, "list": [10, 11, {"x": 12}],
            "meta": {"dev": "p1", "deep": {"k": [true]}}
        });
        for p in [
            "",
            "/ts",
            "/a~1b",
            "/m~0n",
            "/",
            "/list/0",
            "/list/2/x",
            "/list/01",
            "/list/+1",
            "/list/3",
            "/list/-",
            "/meta/dev",
            "/meta/deep/k/0",
            "/meta/nope",
            "/ts/x",
            "ts",
            "/meta/dev/0",
        ] {
            assert_eq!(Pointer::parse(p).get(&doc), doc.pointer(p), "pointer `{p}`");
        }
        assert_eq!(Pointer::parse("/a~1b").top_level_key(), Some("a/b"));
        assert_eq!(Pointer::parse("/meta/dev").top_level_key(), None);
    }
}
