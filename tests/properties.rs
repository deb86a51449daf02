//! Property tests for the two places where untrusted text enters the daemon: message decoding
//! (topic + payload from the broker) and config loading (a file an operator edits by hand).
//!
//! Pure and in-process: no broker, no disk. Case counts are kept moderate so the whole file runs
//! in a few seconds in a debug build.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use fieldwatch::config::{Config, ConfigError, DecodeConfig, MetricMapping, TimestampFormat};
use fieldwatch::decode::{Decoder, RejectReason, ALL_REJECT_LABELS};
use fieldwatch::reading::{Message, Reading};
use proptest::prelude::*;
use serde_json::{Map, Value};

/// How far ahead of the receive time an event time may be (mirrors the decoder's limit).
const MAX_FUTURE_MS: i64 = 24 * 3600 * 1000;
/// The longest device id the decoder accepts, in bytes.
const MAX_DEVICE_BYTES: usize = 128;

const SHIPPED_CONFIG: &str = include_str!("../config/fieldwatch.toml");

fn message(topic: impl Into<String>, payload: impl Into<bytes::Bytes>, received_ms: i64) -> Message {
    Message { topic: topic.into(), payload: payload.into(), received_ms }
}

fn json_message(topic: &str, payload: &Value, received_ms: i64) -> Message {
    message(topic, serde_json::to_vec(payload).unwrap(), received_ms)
}

/// Checks what holds for every outcome of `decode`, whatever the input.
fn check_outcome(
    cfg: &DecodeConfig,
    msg: &Message,
    out: &Result<Vec<Reading>, RejectReason>,
) -> Result<(), TestCaseError> {
    match out {
        Err(reason) => {
            prop_assert!(ALL_REJECT_LABELS.contains(&reason.label()), "unlisted label {}", reason.label());
            prop_assert!(!reason.to_string().is_empty());
        }
        Ok(readings) => {
            prop_assert!(!readings.is_empty(), "Ok with no readings");
            prop_assert!(msg.payload.len() <= cfg.max_payload_bytes);
            let first = &readings[0];
            let mut metrics = BTreeSet::new();
            for r in readings {
                prop_assert!(r.value.is_finite(), "non-finite value {r:?}");
                prop_assert!(!r.device.is_empty(), "empty device {r:?}");
                prop_assert!(r.device.len() <= MAX_DEVICE_BYTES, "device too long {r:?}");
                prop_assert!(!r.device.chars().any(char::is_control), "control character in device {r:?}");
                prop_assert!(r.ts >= 0, "event time before 1970 {r:?}");
                prop_assert!(r.ts <= msg.received_ms.saturating_add(MAX_FUTURE_MS), "event time too far ahead {r:?}");
                // One message is one device at one time.
                prop_assert_eq!(&r.device, &first.device);
                prop_assert_eq!(&r.site, &first.site);
                prop_assert_eq!(r.ts, first.ts);
                prop_assert!(metrics.insert(r.metric.clone()), "metric {} twice", r.metric);
                if cfg.require_known_devices {
                    prop_assert!(cfg.known_devices.contains(&r.device));
                }
                if !cfg.metrics.is_empty() {
                    prop_assert!(cfg.metrics.iter().any(|m| m.name == r.metric), "unmapped metric {}", r.metric);
                }
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------------

/// A finite f64 of any magnitude, sign and class (zero, subnormal, normal).
fn finite_f64() -> impl Strategy<Value = f64> {
    use proptest::num::f64::*;
    POSITIVE | NEGATIVE | NORMAL | SUBNORMAL | ZERO
}

/// A metric value as a device may write it, with the f64 the decoder should make of it.
fn number() -> impl Strategy<Value = (Value, f64)> {
    prop_oneof![
        finite_f64().prop_map(|x| (Value::from(x), x)),
        any::<i64>().prop_map(|i| (Value::from(i), i as f64)),
        any::<u64>().prop_map(|u| (Value::from(u), u as f64)),
        (-10_000i64..10_000).prop_map(|i| (Value::from(i), i as f64)),
    ]
}

/// One topic level that the decoder accepts as a device or site id: 1-32 characters (so at
/// most 128 bytes), no `/`, no control characters.
fn id_level() -> impl Strategy<Value = String> {
    prop_oneof!["[a-z][a-z0-9-]{0,15}", "[^/\\p{Cc}]{1,32}"]
}

/// A metric name as a top-level JSON key, never the timestamp field `ts`.
fn metric_key() -> impl Strategy<Value = String> {
    prop_oneof!["[a-z_][a-z0-9_]{0,15}", "[A-Za-z][A-Za-z0-9_.:-]{0,23}", "[^\\p{Cc}]{1,12}"]
        .prop_filter("ts is the timestamp field", |k| k != "ts")
}

/// How the event time is written in a valid payload.
#[derive(Debug, Clone)]
enum Ts {
    /// No `ts` field: the receive time is used.
    Absent,
    EpochMs(i64),
    EpochS(i64),
    Rfc3339(i64),
}

/// A receive time and an event time written in one of the accepted forms, with the epoch
/// milliseconds the decoder should make of it.
fn times() -> impl Strategy<Value = (i64, Ts, i64)> {
    (1_000_000_000_000i64..4_000_000_000_000).prop_flat_map(|received| {
        // An event time up to the 24 h the decoder allows ahead of the receive time.
        let latest = received + MAX_FUTURE_MS;
        prop_oneof![
            Just((received, Ts::Absent, received)),
            // Epoch ms: the decoder reads numbers of at least 10^11 as milliseconds.
            (100_000_000_000i64..=latest).prop_map(move |ms| (received, Ts::EpochMs(ms), ms)),
            // Epoch s: below 10^11.
            (0i64..=latest / 1000).prop_map(move |s| (received, Ts::EpochS(s), s * 1000)),
            (0i64..=latest).prop_map(move |ms| (received, Ts::Rfc3339(ms), ms)),
        ]
    })
}

fn ts_value(ts: &Ts) -> Option<Value> {
    match *ts {
        Ts::Absent => None,
        Ts::EpochMs(ms) => Some(Value::from(ms)),
        Ts::EpochS(s) => Some(Value::from(s)),
        Ts::Rfc3339(ms) => {
            let t = chrono::DateTime::from_timestamp_millis(ms).unwrap();
            Some(Value::from(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)))
        }
    }
}

/// Arbitrary JSON, biased towards the keys and shapes the decoder looks at.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        finite_f64().prop_map(Value::from),
        // Timestamp-like numbers around the boundaries the decoder cares about.
        prop_oneof![Just(-1i64), Just(0), Just(99_999_999_999), Just(100_000_000_000), Just(1_700_000_000_000)]
            .prop_map(Value::from),
        Just(Value::from(1e15)),
        Just(Value::from(-1e15)),
        "\\PC{0,12}".prop_map(Value::from),
        Just(Value::from("2023-11-14T22:13:20Z")),
        Just(Value::from("")),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map(json_key(), inner, 0..6).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn json_key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec!["ts", "device", "site", "temp", "a", "b", "id", ""]).prop_map(String::from),
        1 => "\\PC{0,8}",
    ]
}

/// A top-level payload object.
fn json_object() -> impl Strategy<Value = Value> {
    prop::collection::btree_map(json_key(), json_value(), 0..8).prop_map(|m| Value::Object(m.into_iter().collect()))
}

/// Topics: the default pattern with arbitrary levels, near misses and anything at all.
fn topic() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => ("\\PC{0,6}", "\\PC{0,40}").prop_map(|(site, dev)| format!("plant/{site}/{dev}/telemetry")),
        1 => ("\\PC{0,6}", ".{0,140}").prop_map(|(site, dev)| format!("plant/{site}/{dev}/telemetry")),
        1 => "[a-z/+#]{0,24}",
        1 => ".{0,64}",
    ]
}

/// Decode configs of the shapes `Config::validate` accepts (pointers start with `/`, at least
/// one way to find the device, a payload limit of at least 1 byte).
fn decode_config() -> impl Strategy<Value = DecodeConfig> {
    let format = prop::sample::select(vec![
        TimestampFormat::Auto,
        TimestampFormat::Rfc3339,
        TimestampFormat::EpochS,
        TimestampFormat::EpochMs,
    ]);
    let device_source = prop_oneof![
        Just((Some("plant/{site}/{device}/telemetry".to_string()), None)),
        Just((Some("plant/{site}/{device}/telemetry".to_string()), Some("/device".to_string()))),
        Just((Some("+/{device}/{kind}/telemetry".to_string()), None)),
        Just((None, Some("/device".to_string()))),
        Just((None, Some("/id".to_string()))),
    ];
    let metrics = prop_oneof![
        2 => Just(Vec::new()),
        1 => Just(vec![
            MetricMapping { name: "temp".into(), pointer: "/temp".into(), unit: None },
            MetricMapping { name: "nested".into(), pointer: "/a/b".into(), unit: Some("bar".into()) },
        ]),
    ];
    let limits = prop_oneof![Just(64 * 1024), 1usize..512];
    let known = prop_oneof![
        3 => Just((false, Vec::new())),
        1 => Just((true, vec!["a".to_string(), "pump-7".to_string(), "42".to_string()])),
    ];
    (
        device_source,
        prop::option::of(Just("/site".to_string())),
        prop::option::of(prop::sample::select(vec!["/ts", "/a", "/device"]).prop_map(String::from)),
        format,
        metrics,
        limits,
        known,
    )
        .prop_map(|((topic_pattern, device_field), site_field, timestamp_field, fmt, metrics, max, known)| {
            DecodeConfig {
                topic_pattern,
                device_field,
                site_field,
                timestamp_field,
                timestamp_format: fmt,
                metrics,
                max_payload_bytes: max,
                require_known_devices: known.0,
                known_devices: known.1,
                ..DecodeConfig::default()
            }
        })
}

/// Two floats equal up to one unit in the last place. serde_json (without its `float_roundtrip`
/// feature) parses decimal floats with best-effort precision, so a value written by
/// `serde_json::to_vec` may come back one ulp off.
fn close(a: f64, b: f64) -> bool {
    if a == b {
        return true;
    }
    if a.is_sign_negative() != b.is_sign_negative() {
        return false;
    }
    a.to_bits().abs_diff(b.to_bits()) <= 1
}

// ---------------------------------------------------------------------------------------------
// Decode
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn decode_never_panics_on_arbitrary_bytes(
        topic in any::<String>(),
        payload in prop::collection::vec(any::<u8>(), 0..512),
        received_ms in any::<i64>(),
    ) {
        let cfg = DecodeConfig::default();
        let msg = message(topic, payload, received_ms);
        let out = Decoder::new(&cfg).decode(&msg);
        check_outcome(&cfg, &msg, &out)?;
    }

    #[test]
    fn decode_never_panics_on_arbitrary_json(
        cfg in decode_config(),
        topic in topic(),
        payload in prop_oneof![4 => json_object(), 1 => json_value()],
        received_ms in prop_oneof![
            3 => 1_000_000_000_000i64..4_000_000_000_000,
            1 => any::<i64>(),
            1 => Just(i64::MAX),
            1 => Just(i64::MIN),
        ],
    ) {
        let msg = json_message(&topic, &payload, received_ms);
        let out = Decoder::new(&cfg).decode(&msg);
        check_outcome(&cfg, &msg, &out)?;
    }

    /// A valid payload decodes to exactly the readings it carries.
    #[test]
    fn valid_payload_round_trips(
        site in id_level(),
        device in id_level(),
        fields in prop::collection::btree_map(metric_key(), number(), 1..8),
        (received_ms, ts, expected_ts) in times(),
    ) {
        let mut obj = Map::new();
        for (k, (v, _)) in &fields {
            obj.insert(k.clone(), v.clone());
        }
        if let Some(t) = ts_value(&ts) {
            obj.insert("ts".into(), t);
        }
        let topic = format!("plant/{site}/{device}/telemetry");
        let cfg = DecodeConfig::default();
        let msg = json_message(&topic, &Value::Object(obj), received_ms);
        let out = Decoder::new(&cfg).decode(&msg);
        check_outcome(&cfg, &msg, &out)?;
        let readings = out.map_err(|e| TestCaseError::fail(format!("rejected as {}: {e}", e.label())))?;

        let got: BTreeMap<&str, &Reading> = readings.iter().map(|r| (r.metric.as_str(), r)).collect();
        prop_assert_eq!(got.len(), readings.len(), "a metric came out twice");
        prop_assert_eq!(
            got.keys().copied().collect::<Vec<_>>(),
            fields.keys().map(String::as_str).collect::<Vec<_>>()
        );
        for (name, (_, want)) in &fields {
            let r = got[name.as_str()];
            prop_assert_eq!(&r.device, &device);
            prop_assert_eq!(r.site.as_deref(), Some(site.as_str()));
            prop_assert_eq!(r.ts, expected_ts, "{:?}", ts);
            prop_assert!(close(r.value, *want), "{name}: got {}, wrote {}", r.value, want);
        }
    }

    /// The same, with explicit `[[decode.metrics]]` pointers into nested objects.
    #[test]
    fn mapped_metrics_round_trip(
        device in id_level(),
        values in prop::collection::vec(number(), 1..6),
        (received_ms, ts, expected_ts) in times(),
    ) {
        let metrics: Vec<MetricMapping> = (0..values.len())
            .map(|i| MetricMapping { name: format!("m{i}"), pointer: format!("/sensors/s{i}/value"), unit: None })
            .collect();
        let mut sensors = Map::new();
        for (i, (v, _)) in values.iter().enumerate() {
            sensors.insert(format!("s{i}"), serde_json::json!({ "value": v }));
        }
        let mut obj = Map::new();
        obj.insert("id".into(), Value::from(device.clone()));
        obj.insert("sensors".into(), Value::Object(sensors));
        if let Some(t) = ts_value(&ts) {
            obj.insert("ts".into(), t);
        }
        let cfg = DecodeConfig {
            topic_pattern: None,
            device_field: Some("/id".into()),
            metrics,
            ..DecodeConfig::default()
        };
        let msg = json_message("any/topic", &Value::Object(obj), received_ms);
        let out = Decoder::new(&cfg).decode(&msg);
        check_outcome(&cfg, &msg, &out)?;
        let readings = out.map_err(|e| TestCaseError::fail(format!("rejected as {}: {e}", e.label())))?;
        prop_assert_eq!(readings.len(), values.len());
        for (i, (r, (_, want))) in readings.iter().zip(&values).enumerate() {
            prop_assert_eq!(&r.metric, &format!("m{i}"));
            prop_assert_eq!(&r.device, &device);
            prop_assert_eq!(r.site.as_deref(), None);
            prop_assert_eq!(r.ts, expected_ts);
            prop_assert!(close(r.value, *want), "m{i}: got {}, wrote {}", r.value, want);
        }
    }

    /// Anything over `max_payload_bytes` is rejected as too large before it is even parsed.
    #[test]
    fn oversized_payloads_are_too_large(
        limit in 1usize..512,
        extra in 1usize..512,
        fill in any::<u8>(),
        topic in topic(),
    ) {
        let cfg = DecodeConfig { max_payload_bytes: limit, ..DecodeConfig::default() };
        let payload = vec![fill; limit + extra];
        let out = Decoder::new(&cfg).decode(&message(topic, payload, 1_700_000_000_000));
        prop_assert_eq!(out, Err(RejectReason::TooLarge { size: limit + extra, limit }));
        prop_assert_eq!(RejectReason::TooLarge { size: limit + extra, limit }.label(), "too_large");
    }

    /// A payload at or under the limit is never rejected for its size.
    #[test]
    fn payloads_within_the_limit_are_not_too_large(
        payload in json_object(),
        slack in 0usize..64,
        site in id_level(),
        device in id_level(),
    ) {
        let bytes = serde_json::to_vec(&payload).unwrap();
        let cfg = DecodeConfig { max_payload_bytes: bytes.len().max(1) + slack, ..DecodeConfig::default() };
        let out = Decoder::new(&cfg).decode(&message(format!("plant/{site}/{device}/telemetry"), bytes, 1_700_000_000_000));
        prop_assert_ne!(out.err().map(|e| e.label()), Some("too_large"));
    }

    /// JSON has no NaN or infinity, and serde_json refuses a literal that overflows f64, so today
    /// a non-finite number next to good metrics rejects the whole message as not JSON (in both
    /// the automatic and the mapped mode).
    #[test]
    fn non_finite_numbers_reject_the_message(
        good in prop::collection::btree_map("[a-z]{1,8}", finite_f64(), 0..4),
        key in "[a-z]{1,8}",
        sign in prop::sample::select(vec!["", "-"]),
        mantissa in "[1-9][0-9]{0,5}(\\.[0-9]{1,5})?",
        exponent in 310u32..100_000,
        token in prop::sample::select(vec!["NaN", "nan", "Infinity", "-Infinity", "inf", "-inf"]),
        use_token in any::<bool>(),
        mapped in any::<bool>(),
    ) {
        let bad = if use_token { token.to_string() } else { format!("{sign}{mantissa}e{exponent}") };
        let mut text = String::from("{");
        for (k, v) in &good {
            text.push_str(&format!("{}: {}, ", Value::from(k.as_str()), Value::from(*v)));
        }
        text.push_str(&format!("{}: {bad}}}", Value::from(key.as_str())));

        let cfg = match mapped {
            false => DecodeConfig::default(),
            true => DecodeConfig {
                metrics: vec![MetricMapping { name: "x".into(), pointer: format!("/{key}"), unit: None }],
                ..DecodeConfig::default()
            },
        };
        let out = Decoder::new(&cfg).decode(&message("plant/s1/p1/telemetry", text.clone(), 1_700_000_000_000));
        prop_assert_eq!(out.as_ref().err().map(|e| e.label()), Some("not_json"), "{} -> {:?}", text, out);
    }

    /// With explicit `[[decode.metrics]]`, a string (or any other non-number) where a metric is
    /// expected rejects the whole message as `wrong_type`, whatever the other metrics hold.
    #[test]
    fn mapped_metric_of_the_wrong_type_is_rejected(
        before in prop::collection::vec(finite_f64(), 0..3),
        after in prop::collection::vec(finite_f64(), 0..3),
        bad in prop_oneof![
            "\\PC{0,12}".prop_map(Value::from),
            Just(Value::from("42")),
            any::<bool>().prop_map(Value::from),
            Just(serde_json::json!([1.0])),
            Just(serde_json::json!({"v": 1.0})),
        ],
    ) {
        let mut metrics = Vec::new();
        let mut obj = Map::new();
        let mut add = |name: String, v: Value| {
            metrics.push(MetricMapping { name: name.clone(), pointer: format!("/{name}"), unit: None });
            obj.insert(name, v);
        };
        for (i, v) in before.iter().enumerate() {
            add(format!("before{i}"), Value::from(*v));
        }
        add("bad".into(), bad.clone());
        for (i, v) in after.iter().enumerate() {
            add(format!("after{i}"), Value::from(*v));
        }
        let cfg = DecodeConfig { metrics, ..DecodeConfig::default() };
        let out = Decoder::new(&cfg).decode(&json_message("plant/s1/p1/telemetry", &Value::Object(obj), 1_700_000_000_000));
        let expected_found = match &bad {
            Value::String(_) => "a string",
            Value::Bool(_) => "a boolean",
            Value::Array(_) => "an array",
            _ => "an object",
        };
        prop_assert_eq!(out, Err(RejectReason::WrongType { metric: "bad".into(), found: expected_found }));
    }
}

// ---------------------------------------------------------------------------------------------
// Config
// ---------------------------------------------------------------------------------------------

const FILE: &str = "x.toml";

/// Parses and checks that an error names the file.
fn check_config(text: &str) -> Result<(), TestCaseError> {
    // Config is large: keep only whether it parsed.
    let out = Config::parse(text, Path::new(FILE)).map(|_| ());
    if let Err(e) = out {
        let shown = e.to_string();
        prop_assert!(shown.contains(FILE), "error does not name the file: {shown}");
        if let ConfigError::Parse { line, .. } = e {
            prop_assert!(line <= text.matches('\n').count() + 1, "line {line} is past the end: {shown}");
        }
    }
    Ok(())
}

/// `(section, key)` pairs from the shipped config, so random files reach past the
/// unknown-key check into the type and validation checks.
fn shipped_keys() -> Vec<(String, String)> {
    fn walk(prefix: &str, table: &toml::Table, out: &mut Vec<(String, String)>) {
        for (k, v) in table {
            match v {
                toml::Value::Table(t) => {
                    let p = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    walk(&p, t, out);
                }
                _ => out.push((prefix.to_string(), k.clone())),
            }
        }
    }
    let table: toml::Table = toml::from_str(SHIPPED_CONFIG).expect("shipped config is TOML");
    let mut out = Vec::new();
    walk("", &table, &mut out);
    assert!(out.len() > 20, "expected many keys in the shipped config, found {}", out.len());
    out
}

/// Strings that mean something somewhere in the config.
const SPECIAL_STRINGS: &[&str] = &[
    "30s",
    "0s",
    "5m",
    "14d",
    "1h",
    "",
    " ",
    "auto",
    "ticket",
    "shadow",
    "observe",
    "127.0.0.1:9797",
    "http://127.0.0.1/x",
    "plant/{site}/{device}/telemetry",
    "/ts",
    "ts",
    "x",
];

fn toml_scalar() -> impl Strategy<Value = toml::Value> {
    prop_oneof![
        any::<i64>().prop_map(toml::Value::Integer),
        (-5i64..100_000).prop_map(toml::Value::Integer),
        any::<f64>().prop_map(toml::Value::Float),
        any::<bool>().prop_map(toml::Value::Boolean),
        "\\PC{0,16}".prop_map(toml::Value::String),
        prop::sample::select(SPECIAL_STRINGS).prop_map(|s| toml::Value::String(s.into())),
    ]
}

fn toml_value() -> impl Strategy<Value = toml::Value> {
    toml_scalar().prop_recursive(2, 12, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(toml::Value::Array),
            prop::collection::btree_map("[a-z_]{1,10}", inner, 0..4)
                .prop_map(|m| toml::Value::Table(m.into_iter().collect())),
        ]
    })
}

/// Inserts `value` at `section.key`, creating the tables on the way; gives up quietly where a
/// non-table is already in the way.
fn insert(root: &mut toml::Table, section: &str, key: &str, value: toml::Value) {
    let mut table = root;
    for part in section.split('.').filter(|p| !p.is_empty()) {
        let entry = table.entry(part.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        match entry {
            toml::Value::Table(t) => table = t,
            _ => return,
        }
    }
    table.insert(key.to_string(), value);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn config_parse_never_panics_on_arbitrary_text(text in any::<String>()) {
        check_config(&text)?;
    }

    #[test]
    fn config_parse_never_panics_on_toml_like_text(
        lines in prop::collection::vec(
            prop_oneof![
                "\\[[a-z._]{0,12}\\]",
                "\\[\\[[a-z._]{0,12}\\]\\]",
                "[a-z_]{1,12} ?= ?[^\\n]{0,16}",
                "[a-z_]{1,12} = \"[^\"\\n]{0,12}\"",
                "[^\\n]{0,20}",
                "# \\PC{0,20}",
            ],
            0..16,
        ),
    ) {
        check_config(&lines.join("\n"))?;
    }

    /// Well-formed TOML with random sections, keys and values, many of them real ones.
    #[test]
    fn config_parse_never_panics_on_random_toml(
        entries in prop::collection::vec(
            (
                prop_oneof![
                    3 => prop::sample::select(shipped_keys()),
                    1 => ("[a-z]{1,8}(\\.[a-z]{1,8})?", "[a-z_]{1,12}"),
                    1 => (Just(String::new()), "[a-z_]{1,12}"),
                ],
                toml_value(),
            ),
            0..12,
        ),
    ) {
        let mut root = toml::Table::new();
        for ((section, key), value) in entries {
            insert(&mut root, &section, &key, value);
        }
        let text = toml::to_string(&root);
        prop_assume!(text.is_ok(), "toml cannot write this table: {:?}", text);
        let text = text.unwrap();
        check_config(&text)?;
    }

    /// The shipped config with one value replaced: the realistic typo.
    #[test]
    fn config_parse_never_panics_on_the_shipped_file_with_one_value_changed(
        which in any::<prop::sample::Index>(),
        value in toml_value(),
    ) {
        let keys = shipped_keys();
        let (section, key) = which.get(&keys);
        let mut root: toml::Table = toml::from_str(SHIPPED_CONFIG).unwrap();
        insert(&mut root, section, key, value);
        let text = toml::to_string(&root);
        prop_assume!(text.is_ok(), "toml cannot write this table: {:?}", text);
        let text = text.unwrap();
        check_config(&text)?;
    }

    /// The shipped config text with one line cut short or dropped.
    #[test]
    fn config_parse_never_panics_on_the_shipped_file_with_a_line_damaged(
        which in any::<prop::sample::Index>(),
        cut in any::<prop::sample::Index>(),
        drop in any::<bool>(),
    ) {
        let mut lines: Vec<String> = SHIPPED_CONFIG.lines().map(String::from).collect();
        let i = which.index(lines.len());
        if drop {
            lines.remove(i);
        } else {
            let chars: Vec<char> = lines[i].chars().collect();
            lines[i] = chars[..cut.index(chars.len() + 1)].iter().collect();
        }
        check_config(&lines.join("\n"))?;
    }
}

#[test]
fn shipped_config_parses() {
    let config = Config::parse(SHIPPED_CONFIG, Path::new("config/fieldwatch.toml"))
        .unwrap_or_else(|e| panic!("config/fieldwatch.toml: {e}"));
    // The shipped file documents the defaults, so it decodes like the default decoder.
    let (shipped, default) = (Decoder::new(&config.decode), Decoder::new(&DecodeConfig::default()));
    let msg = message("plant/s1/pump-7/telemetry", r#"{"ts": 1700000000, "temp": 71.5}"#, 1_700_000_000_000);
    assert_eq!(shipped.decode(&msg), default.decode(&msg));
}

#[test]
fn config_errors_name_the_file() {
    for text in ["[mqtt\nhost = 1", "[nope]\n", "[mqtt]\nport = \"x\"", "[mqtt]\nhost = \"\""] {
        let err = Config::parse(text, Path::new(FILE)).err().unwrap_or_else(|| panic!("{text:?} parsed"));
        assert!(err.to_string().contains(FILE), "{err}");
    }
}

/// A Sparkplug metric as a sender might write it: a name or an alias of a small set (so DATA
/// meets what a BIRTH declared), any datatype number, any kind of value.
fn sparkplug_metric() -> impl Strategy<Value = fieldwatch::decode::sparkplug::proto::Metric> {
    use fieldwatch::decode::sparkplug::proto::{Metric, MetricValue};
    let value = prop_oneof![
        any::<u32>().prop_map(MetricValue::IntValue),
        any::<u64>().prop_map(MetricValue::LongValue),
        any::<f32>().prop_map(MetricValue::FloatValue),
        any::<f64>().prop_map(MetricValue::DoubleValue),
        any::<bool>().prop_map(MetricValue::BooleanValue),
        "[a-z]{0,4}".prop_map(MetricValue::StringValue),
    ];
    (
        prop::option::of(prop::sample::select(vec!["a", "b", "bdSeq", "Node Control/Rebirth"])),
        prop::option::of(0u64..6),
        prop::option::of(0u32..40),
        prop::option::of(value),
        // Mostly the payload's time; sometimes a metric's own, anywhere.
        prop::option::weighted(0.2, any::<u64>()),
    )
        .prop_map(|(name, alias, datatype, value, timestamp)| Metric {
            name: name.map(str::to_string),
            alias,
            datatype,
            value,
            timestamp,
            ..Metric::default()
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// A Sparkplug session of births, data and deaths (some corrupted), decoded in order by one
    /// decoder: it never panics, every rejection has a listed label, readings are finite and
    /// belong to the topic's edge node, and rebirth requests go to that node's NCMD topic.
    #[test]
    fn any_sparkplug_session_decodes_to_readings_or_listed_reasons(
        messages in prop::collection::vec(
            (
                0usize..8,
                any::<bool>(),
                prop::option::of(0u64..300),
                prop::collection::vec(sparkplug_metric(), 0..5),
                prop::option::of((any::<prop::sample::Index>(), any::<u8>())),
            ),
            1..30,
        ),
    ) {
        use fieldwatch::decode::sparkplug::proto::Payload;
        use fieldwatch::decode::sparkplug::SparkplugConfig;
        use fieldwatch::decode::Presence;
        use prost::Message as _;
        const KINDS: [&str; 8] = ["NBIRTH", "NDATA", "NDEATH", "DBIRTH", "DDATA", "DDEATH", "NCMD", "NBOGUS"];
        let cfg = DecodeConfig {
            sparkplug: Some(SparkplugConfig { request_rebirth: true, ..SparkplugConfig::default() }),
            ..DecodeConfig::default()
        };
        let decoder = Decoder::new(&cfg);
        for (i, (kind, second, seq, metrics, corrupt)) in messages.into_iter().enumerate() {
            let kind = KINDS[kind];
            let device = if second { "d2" } else { "d1" };
            let topic = if kind.starts_with('D') { format!("spBv1.0/g/{kind}/n/{device}") } else { format!("spBv1.0/g/{kind}/n") };
            let received_ms = 1_700_000_000_000 + i as i64;
            let mut payload = Payload { timestamp: Some(received_ms as u64), metrics, seq, ..Payload::default() }.encode_to_vec();
            if let Some((at, xor)) = corrupt {
                if !payload.is_empty() {
                    let at = at.index(payload.len());
                    payload[at] ^= xor;
                }
            }
            let decoded = decoder.decode_message(message(topic, payload, received_ms));
            match &decoded.readings {
                Ok(readings) => {
                    for r in readings {
                        prop_assert!(r.value.is_finite(), "{r:?}");
                        prop_assert!(r.device == "g/n" || r.device.starts_with("g/n/d"), "{r:?}");
                        prop_assert_eq!(r.site.as_deref(), Some("g"));
                    }
                }
                Err(reason) => prop_assert!(ALL_REJECT_LABELS.contains(&reason.label()), "{reason:?}"),
            }
            if let Some(p) = &decoded.partial {
                prop_assert!(ALL_REJECT_LABELS.contains(&p.label()), "{p:?}");
            }
            for p in &decoded.presence {
                let (Presence::Offline { device, .. } | Presence::Online { device, .. }) = p;
                prop_assert!(device.starts_with("g/n"), "{p:?}");
            }
            if let Some(publish) = &decoded.publish {
                prop_assert_eq!(publish.topic.as_str(), "spBv1.0/g/NCMD/n");
            }
        }
    }
}
