use prost::Message as _;

use super::proto::{DataSet, DataType, Metric, MetricValue, Payload};
use super::*;

const NOW: i64 = 1_700_000_000_000;

fn decoder(request_rebirth: bool) -> SparkplugDecoder {
    decoder_with(SparkplugConfig { request_rebirth, ..SparkplugConfig::default() })
}

fn decoder_with(cfg: SparkplugConfig) -> SparkplugDecoder {
    let cfg = SparkplugConfig { sites: [("plantA".to_string(), "north".to_string())].into(), ..cfg };
    SparkplugDecoder::new(&cfg, 64 * 1024)
}

fn metric(name: Option<&str>, alias: Option<u64>, datatype: DataType, value: MetricValue) -> Metric {
    Metric {
        name: name.map(str::to_string),
        alias,
        datatype: Some(datatype as u32),
        value: Some(value),
        ..Metric::default()
    }
}

fn payload(seq: Option<u64>, metrics: Vec<Metric>) -> Vec<u8> {
    Payload { timestamp: Some(NOW as u64 - 1000), metrics, seq, ..Payload::default() }.encode_to_vec()
}

fn msg(topic: &str, payload: Vec<u8>) -> Message {
    Message { topic: topic.into(), payload: payload.into(), received_ms: NOW }
}

fn nbirth(d: &SparkplugDecoder, bd_seq: u64) -> Outcome {
    let p = payload(
        Some(0),
        vec![
            metric(Some("bdSeq"), None, DataType::Int64, MetricValue::LongValue(bd_seq)),
            metric(Some("Node Control/Rebirth"), Some(0), DataType::Boolean, MetricValue::BooleanValue(false)),
            metric(Some("uptime"), Some(1), DataType::UInt32, MetricValue::IntValue(12)),
        ],
    );
    d.decode(&msg("spBv1.0/plantA/NBIRTH/gw1", p), None)
}

fn dbirth(d: &SparkplugDecoder, seq: u64) -> Outcome {
    let p = payload(
        Some(seq),
        vec![
            metric(Some("Discharge/Temp"), Some(10), DataType::Float, MetricValue::FloatValue(71.5)),
            metric(Some("Running"), Some(11), DataType::Boolean, MetricValue::BooleanValue(true)),
            metric(Some("Offset"), Some(12), DataType::Int8, MetricValue::IntValue(255)),
            metric(Some("Model"), Some(13), DataType::String, MetricValue::StringValue("GA37".into())),
        ],
    );
    d.decode(&msg("spBv1.0/plantA/DBIRTH/gw1/comp-1", p), None)
}

fn ddata(d: &SparkplugDecoder, seq: u64, metrics: Vec<Metric>) -> Outcome {
    d.decode(&msg("spBv1.0/plantA/DDATA/gw1/comp-1", payload(Some(seq), metrics)), None)
}

fn temp(alias: u64, v: f32) -> Metric {
    Metric { alias: Some(alias), value: Some(MetricValue::FloatValue(v)), ..Metric::default() }
}

fn values(o: &Outcome) -> Vec<(String, String, f64)> {
    o.readings.as_ref().unwrap().iter().map(|r| (r.device.clone(), r.metric.clone(), r.value)).collect()
}

#[test]
fn births_name_the_metrics_and_data_by_alias_becomes_readings() {
    let d = decoder(false);
    let n = nbirth(&d, 3);
    // bdSeq and the node's commands are bookkeeping, not telemetry.
    assert_eq!(values(&n), vec![("plantA/gw1".into(), "uptime".into(), 12.0)]);
    assert_eq!(n.presence, vec![Presence::Online { device: "plantA/gw1".into(), at_ms: NOW }]);
    let b = dbirth(&d, 1);
    let r = b.readings.as_ref().unwrap();
    assert_eq!(r[0].site.as_deref(), Some("north"), "the group's configured site");
    assert_eq!(r[0].ts, NOW - 1000, "the payload's timestamp when the metric has none");
    assert_eq!(
        values(&b),
        vec![
            ("plantA/gw1/comp-1".into(), "Discharge/Temp".into(), 71.5),
            ("plantA/gw1/comp-1".into(), "Running".into(), 1.0),
            ("plantA/gw1/comp-1".into(), "Offset".into(), -1.0),
        ]
    );
    assert_eq!(b.skipped, 1, "the String metric is skipped and counted");
    let mut t = temp(10, 72.25);
    t.timestamp = Some(NOW as u64 - 500);
    let o = ddata(&d, 2, vec![t, temp(11, 0.0)]);
    // Alias 11 is a Boolean: a float value for it is no reading of its type.
    assert_eq!(values(&o), vec![("plantA/gw1/comp-1".into(), "Discharge/Temp".into(), 72.25)]);
    assert_eq!(o.readings.as_ref().unwrap()[0].ts, NOW - 500, "the metric's own timestamp");
    assert!(o.publish.is_none() && o.partial.is_none());
    assert!(d.sessions().in_step("plantA/gw1"));
}

#[test]
fn every_numeric_datatype_reads_as_its_number() {
    use DataType::*;
    use MetricValue::*;
    let cases = [
        (Int8, IntValue(0xFFFF_FF80), -128.0),
        (Int16, IntValue(0xFFFF_8000), -32768.0),
        (Int32, IntValue(u32::MAX), -1.0),
        (Int64, LongValue(u64::MAX), -1.0),
        (UInt8, IntValue(200), 200.0),
        (UInt16, IntValue(65535), 65535.0),
        (UInt32, IntValue(u32::MAX), 4_294_967_295.0),
        (UInt64, LongValue(1 << 40), (1u64 << 40) as f64),
        (Float, FloatValue(1.5), 1.5),
        (Double, DoubleValue(-2.25), -2.25),
        (Boolean, BooleanValue(false), 0.0),
    ];
    for (t, v, want) in cases {
        assert_eq!(number(t, &v), Some(want), "{t:?}");
    }
    for t in [String, Bytes, DataSet, Template, File, Text, Uuid, DateTime] {
        assert!(!is_numeric(t));
    }
}

#[test]
fn seq_wraps_at_255_and_a_gap_asks_for_a_rebirth() {
    let d = decoder(true);
    nbirth(&d, 0);
    dbirth(&d, 1);
    for seq in 2..=255 {
        assert!(ddata(&d, seq, vec![temp(10, 1.0)]).publish.is_none(), "seq {seq}");
    }
    let wrapped = ddata(&d, 0, vec![temp(10, 1.0)]);
    assert!(wrapped.publish.is_none(), "255 is followed by 0");
    assert!(d.sessions().in_step("plantA/gw1"));

    let gap = ddata(&d, 5, vec![temp(10, 2.0)]);
    assert_eq!(values(&gap).len(), 1, "the readings of the message after a gap are kept");
    let rebirth = gap.publish.expect("a rebirth request");
    assert_eq!(rebirth.topic, "spBv1.0/plantA/NCMD/gw1");
    let p = Payload::decode(rebirth.payload.as_slice()).unwrap();
    assert_eq!(p.metrics[0].name.as_deref(), Some(REBIRTH_METRIC));
    assert_eq!(p.metrics[0].value, Some(MetricValue::BooleanValue(true)));
    assert!(!d.sessions().in_step("plantA/gw1"));
    // Not asked again within rebirth_interval.
    assert!(ddata(&d, 9, vec![temp(10, 2.0)]).publish.is_none());
    // A new NBIRTH puts the node back in step.
    nbirth(&d, 1);
    assert!(d.sessions().in_step("plantA/gw1"));
}

#[test]
fn rebirth_requests_need_the_setting() {
    let d = decoder(false);
    let o = ddata(&d, 1, vec![temp(10, 1.0)]);
    assert_eq!(o.readings.unwrap_err().label(), "sparkplug_not_born");
    assert!(o.publish.is_none());
}

#[test]
fn data_before_birth_and_aliases_never_born_are_refused_and_ask_for_a_rebirth() {
    let d = decoder(true);
    let before = ddata(&d, 1, vec![temp(10, 1.0)]);
    assert_eq!(before.readings.unwrap_err().label(), "sparkplug_not_born");
    assert!(before.publish.is_some());

    let d = decoder(true);
    nbirth(&d, 0);
    dbirth(&d, 1);
    let o = ddata(&d, 2, vec![temp(10, 1.0), temp(99, 2.0)]);
    assert_eq!(o.readings.unwrap_err().label(), "sparkplug_unknown_alias");
    assert!(o.publish.is_some());
    // Another device of the node that was never born.
    let p = payload(Some(3), vec![temp(10, 1.0)]);
    let o = d.decode(&msg("spBv1.0/plantA/DDATA/gw1/comp-2", p), None);
    assert_eq!(o.readings.unwrap_err().label(), "sparkplug_not_born");
}

#[test]
fn a_metric_that_changes_type_is_refused() {
    let d = decoder(false);
    nbirth(&d, 0);
    dbirth(&d, 1);
    let o = ddata(&d, 2, vec![metric(None, Some(10), DataType::String, MetricValue::StringValue("hot".into()))]);
    let err = o.readings.unwrap_err();
    assert_eq!(err.label(), "sparkplug_type_changed");
    assert!(err.to_string().contains("Discharge/Temp"), "{err}");
}

#[test]
fn an_unknown_datatype_skips_its_metric_and_keeps_the_rest() {
    let d = decoder(false);
    nbirth(&d, 0);
    let mut odd = metric(Some("Weird"), Some(20), DataType::Int32, MetricValue::IntValue(1));
    odd.datatype = Some(77);
    let p =
        payload(Some(1), vec![odd, metric(Some("Amps"), Some(21), DataType::Double, MetricValue::DoubleValue(4.5))]);
    let o = d.decode(&msg("spBv1.0/plantA/DBIRTH/gw1/comp-9", p), None);
    assert_eq!(values(&o), vec![("plantA/gw1/comp-9".into(), "Amps".into(), 4.5)]);
    assert_eq!(o.partial.unwrap().label(), "sparkplug_unknown_datatype");
}

#[test]
fn datasets_templates_and_bytes_are_skipped_and_counted() {
    let d = decoder(false);
    nbirth(&d, 0);
    let p = payload(
        Some(1),
        vec![
            metric(Some("Table"), Some(30), DataType::DataSet, MetricValue::DatasetValue(DataSet::default())),
            metric(Some("Blob"), Some(31), DataType::Bytes, MetricValue::BytesValue(vec![1, 2])),
            metric(Some("Pressure"), Some(32), DataType::Float, MetricValue::FloatValue(7.0)),
        ],
    );
    let o = d.decode(&msg("spBv1.0/plantA/DBIRTH/gw1/comp-3", p), None);
    assert_eq!(o.skipped, 2);
    assert_eq!(values(&o).len(), 1);
}

#[test]
fn bad_payloads_are_refused_with_a_sparkplug_reason() {
    let d = decoder(false);
    let label = |topic: &str, bytes: Vec<u8>| d.decode(&msg(topic, bytes), None).readings.unwrap_err().label();
    assert_eq!(label("spBv1.0/plantA/NBIRTH/gw1", vec![0xff, 0xff, 0xff]), "sparkplug_malformed");
    assert_eq!(label("spBv1.0/plantA/NBIRTH/gw1", b"{\"temp\": 1}".to_vec()), "sparkplug_malformed");
    assert_eq!(label("spBv1.0/plantA/NBIRTH/gw1", vec![0; 65 * 1024]), "sparkplug_too_large");
    assert_eq!(label("spBv1.0/plantA/NFOO/gw1", payload(Some(0), vec![])), "sparkplug_bad_topic");
    assert_eq!(label("spBv1.0/plantA/DDATA/gw1", payload(Some(0), vec![])), "sparkplug_bad_topic");
    assert_eq!(label("spBv1.0/plantA/NDATA/gw1/x", payload(Some(0), vec![])), "sparkplug_bad_topic");
    // Commands (our own rebirth requests among them) and host state are taken without a word.
    for topic in ["spBv1.0/plantA/NCMD/gw1", "spBv1.0/STATE/scada-1"] {
        let o = d.decode(&msg(topic, vec![1, 2, 3]), None);
        assert_eq!(o.readings.unwrap(), vec![]);
    }
}

#[test]
fn a_death_takes_the_node_and_its_devices_offline_unless_it_is_of_an_earlier_session() {
    let d = decoder(false);
    nbirth(&d, 7);
    dbirth(&d, 1);
    let death = |bd: u64| {
        let p = payload(None, vec![metric(Some("bdSeq"), None, DataType::Int64, MetricValue::LongValue(bd))]);
        d.decode(&msg("spBv1.0/plantA/NDEATH/gw1", p), None)
    };
    let late = death(6);
    assert_eq!(late.readings.unwrap_err().label(), "sparkplug_old_death");
    assert!(late.presence.is_empty(), "a late NDEATH of an old session does not end the new one");
    assert!(d.sessions().in_step("plantA/gw1"));

    let o = death(7);
    assert_eq!(o.readings.unwrap(), vec![]);
    let offline: Vec<&str> = o
        .presence
        .iter()
        .map(|p| match p {
            Presence::Offline { device, since_ms, .. } if *since_ms == NOW => device.as_str(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(offline, ["plantA/gw1", "plantA/gw1/comp-1"]);
    // After the death its DATA is refused until it is born again.
    assert_eq!(ddata(&d, 2, vec![temp(10, 1.0)]).readings.unwrap_err().label(), "sparkplug_not_born");
}

#[test]
fn a_device_death_takes_only_that_device_offline() {
    let d = decoder(false);
    nbirth(&d, 0);
    dbirth(&d, 1);
    let o = d.decode(&msg("spBv1.0/plantA/DDEATH/gw1/comp-1", payload(Some(2), vec![])), None);
    assert_eq!(o.presence.len(), 1);
    assert!(matches!(&o.presence[0], Presence::Offline { device, .. } if device == "plantA/gw1/comp-1"));
    let again = dbirth(&d, 3);
    assert_eq!(again.presence, vec![Presence::Online { device: "plantA/gw1/comp-1".into(), at_ms: NOW }]);
    assert!(d.sessions().in_step("plantA/gw1"));
}

#[test]
fn the_group_is_the_site_unless_mapped() {
    let d = decoder(false);
    let p = payload(Some(0), vec![metric(Some("v"), None, DataType::Double, MetricValue::DoubleValue(1.0))]);
    let o = d.decode(&msg("spBv1.0/other/NBIRTH/gw9", p), None);
    assert_eq!(o.readings.unwrap()[0].site.as_deref(), Some("other"));
}

#[test]
fn legacy_nodes_end_their_session_with_the_bd_seq_before_their_births() {
    let death = |d: &SparkplugDecoder, bd: u64| {
        let p = payload(None, vec![metric(Some("bdSeq"), None, DataType::Int64, MetricValue::LongValue(bd))]);
        d.decode(&msg("spBv1.0/plantA/NDEATH/gw1", p), None)
    };
    let strict = decoder(false);
    nbirth(&strict, 0);
    assert_eq!(death(&strict, 255).readings.unwrap_err().label(), "sparkplug_old_death");
    let legacy = decoder_with(SparkplugConfig { legacy_bd_seq: true, ..SparkplugConfig::default() });
    nbirth(&legacy, 5);
    assert_eq!(death(&legacy, 3).readings.unwrap_err().label(), "sparkplug_old_death");
    assert_eq!(death(&legacy, 4).presence.len(), 1, "one below the NBIRTH's ends the session");
    nbirth(&legacy, 0);
    assert_eq!(death(&legacy, 255).presence.len(), 1, "and wraps");
}

#[test]
fn a_kept_session_reads_data_by_alias_after_a_restart() {
    let d = decoder(true);
    let n = nbirth(&d, 4);
    assert_eq!(n.session_changed.as_deref(), Some("plantA/gw1"));
    let b = dbirth(&d, 1);
    assert_eq!(b.session_changed.as_deref(), Some("plantA/gw1"));
    assert!(ddata(&d, 2, vec![temp(10, 1.0)]).session_changed.is_none(), "DATA changes no session");
    let kept: std::collections::HashMap<String, Vec<u8>> = d.saved("plantA/gw1").into_iter().collect();

    let after = decoder(true);
    assert_eq!(after.restore(|key| kept.get(key).cloned()), 1);
    // The seq it is at is not known after the restart: the first one is taken as it comes.
    let o = ddata(&after, 77, vec![temp(10, 3.5)]);
    assert_eq!(values(&o), vec![("plantA/gw1/comp-1".into(), "Discharge/Temp".into(), 3.5)]);
    assert!(o.publish.is_none());
    assert!(ddata(&after, 79, vec![temp(10, 3.5)]).publish.is_some(), "then seq is checked again");
    // bdSeq is kept too: the session's own death certificate ends it.
    let p = payload(None, vec![metric(Some("bdSeq"), None, DataType::Int64, MetricValue::LongValue(4))]);
    assert_eq!(after.decode(&msg("spBv1.0/plantA/NDEATH/gw1", p), None).presence.len(), 2);

    let nothing = decoder(false);
    assert_eq!(nothing.restore(|_| Some(b"not json".to_vec())), 0);
}

#[test]
fn a_rejected_sparkplug_payload_is_kept_as_hex_within_the_limit() {
    use crate::decode::kept_payload;
    assert_eq!(kept_payload("spBv1.0/g/NDATA/n", &[0x0a, 0xff, 0x00], 4096), "hex:0aff00");
    assert_eq!(kept_payload("spBv1.0/g/NDATA/n", &[7; 10_000], 4096).len(), 4 + 2 * 2046);
    assert_eq!(kept_payload("plant/s/d/telemetry", b"{\"a\": 1}", 4096), "{\"a\": 1}");
    assert_eq!(kept_payload("plant/s/d/telemetry", &[b'x'; 5000], 4096).len(), 4096);
}

#[test]
fn known_devices_are_required_of_sparkplug_devices_too() {
    use crate::decode::{DecodeConfig, Decoder};
    let cfg = DecodeConfig {
        require_known_devices: true,
        known_devices: vec!["plantA/gw1/comp-1".into()],
        sparkplug: Some(SparkplugConfig::default()),
        ..DecodeConfig::default()
    };
    let d = Decoder::new(&cfg);
    let birth = |topic: &str, seq: u64| {
        let p = payload(Some(seq), vec![metric(Some("v"), Some(seq), DataType::Double, MetricValue::DoubleValue(1.0))]);
        d.decode_message(msg(topic, p))
    };
    let node = birth("spBv1.0/plantA/NBIRTH/gw1", 0);
    assert_eq!(node.readings.unwrap_err().label(), "unknown_device");
    assert!(node.presence.is_empty());
    assert_eq!(birth("spBv1.0/plantA/DBIRTH/gw1/comp-1", 1).readings.unwrap().len(), 1);
    assert_eq!(birth("spBv1.0/plantA/DBIRTH/gw1/comp-2", 2).readings.unwrap_err().label(), "unknown_device");
}
