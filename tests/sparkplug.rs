//! Sparkplug B end to end against the real binary and a real mosquitto: an edge node's births,
//! data by alias, its death certificate (the broker's will) and rebirth requests, beside JSON
//! devices in the same daemon. The payloads are built with the schema's prost types; the test of
//! an independent implementation is `tests/sparkplug_python.rs`.

mod common;

use std::time::Duration;

use common::*;
use fieldwatch::decode::sparkplug::proto::{DataType, Metric, MetricValue, Payload};
use prost::Message as _;
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Packet, QoS};

/// The test settings, JSON and Sparkplug topics both, rebirth requests on.
fn config(broker: &Mosquitto, dir: &tempfile::TempDir) -> DaemonConfig {
    DaemonConfig::new(broker.port, dir.path()).extra(
        r#"
        [mqtt]
        topics = ["plant/+/+/telemetry", "spBv1.0/#"]
        [decode.sparkplug]
        request_rebirth = true
        rebirth_interval = "100ms"
        [decode.sparkplug.sites]
        plantA = "north"
        [detect.models]
        enabled = false
        "#,
    )
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

fn metric(name: &str, alias: u64, datatype: DataType, value: MetricValue) -> Metric {
    Metric {
        name: Some(name.into()),
        alias: Some(alias),
        datatype: Some(datatype as u32),
        value: Some(value),
        ..Metric::default()
    }
}

fn payload_at(ts: u64, seq: Option<u64>, metrics: Vec<Metric>) -> Vec<u8> {
    Payload { timestamp: Some(ts), metrics, seq, ..Payload::default() }.encode_to_vec()
}

fn payload(seq: Option<u64>, metrics: Vec<Metric>) -> Vec<u8> {
    payload_at(now_ms(), seq, metrics)
}

fn bd_seq_metric(n: u64) -> Metric {
    metric("bdSeq", 0, DataType::Int64, MetricValue::LongValue(n))
}

/// An edge node `plantA/gw1` with device `comp-1`: an MQTT client whose will is its NDEATH.
struct EdgeNode {
    client: AsyncClient,
    task: tokio::task::JoinHandle<()>,
    seq: u64,
    bd_seq: u64,
    /// The event time of the next message: 100 ms apart, so no two readings of a series share
    /// a time (the store keeps one reading per series and time).
    ts: u64,
}

impl EdgeNode {
    async fn connect(port: u16, bd_seq: u64) -> EdgeNode {
        let mut o = MqttOptions::new(format!("edge-gw1-{bd_seq}"), "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(5));
        o.set_last_will(LastWill::new(
            "spBv1.0/plantA/NDEATH/gw1",
            payload(None, vec![bd_seq_metric(bd_seq)]),
            QoS::AtLeastOnce,
            false,
        ));
        let (client, mut eventloop) = AsyncClient::new(o, 100);
        let task = tokio::spawn(async move {
            loop {
                if eventloop.poll().await.is_err() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        });
        EdgeNode { client, task, seq: 0, bd_seq, ts: now_ms() - 60_000 + bd_seq * 10_000 }
    }

    /// A payload 100 ms after the last.
    fn payload(&mut self, seq: Option<u64>, metrics: Vec<Metric>) -> Vec<u8> {
        self.ts += 100;
        payload_at(self.ts, seq, metrics)
    }

    async fn publish(&self, kind: &str, device: Option<&str>, body: Vec<u8>) {
        let topic = match device {
            Some(d) => format!("spBv1.0/plantA/{kind}/gw1/{d}"),
            None => format!("spBv1.0/plantA/{kind}/gw1"),
        };
        self.client.publish(topic, QoS::AtLeastOnce, false, body).await.unwrap();
    }

    /// NBIRTH (seq 0) and the DBIRTH of `comp-1`: temperature (alias 10), running (11), model
    /// name (12, a String).
    async fn birth(&mut self) {
        self.seq = 0;
        let node = vec![
            bd_seq_metric(self.bd_seq),
            metric("Node Control/Rebirth", 1, DataType::Boolean, MetricValue::BooleanValue(false)),
        ];
        let body = self.payload(Some(0), node);
        self.publish("NBIRTH", None, body).await;
        let device = vec![
            metric("Discharge/Temp", 10, DataType::Double, MetricValue::DoubleValue(70.0)),
            metric("Running", 11, DataType::Boolean, MetricValue::BooleanValue(true)),
            metric("Model", 12, DataType::String, MetricValue::StringValue("GA37".into())),
        ];
        self.seq = 1;
        let body = self.payload(Some(1), device);
        self.publish("DBIRTH", Some("comp-1"), body).await;
    }

    /// DDATA of `comp-1` by alias, with the next seq.
    async fn data(&mut self, temp: f64) {
        self.seq = (self.seq + 1) % 256;
        let m = Metric { alias: Some(10), value: Some(MetricValue::DoubleValue(temp)), ..Metric::default() };
        let body = self.payload(Some(self.seq), vec![m]);
        self.publish("DDATA", Some("comp-1"), body).await;
    }

    /// Drops the connection without a DISCONNECT: the broker publishes the will.
    fn kill(self) {
        self.task.abort();
    }
}

/// A client that records every rebirth request the daemon publishes.
async fn command_listener(port: u16) -> (AsyncClient, tokio::sync::mpsc::UnboundedReceiver<(String, Payload)>) {
    let (client, mut eventloop) = AsyncClient::new(MqttOptions::new("ncmd-listener", "127.0.0.1", port), 100);
    client.subscribe("spBv1.0/+/NCMD/#", QoS::AtLeastOnce).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if let Ok(body) = Payload::decode(p.payload.as_ref()) {
                        let _ = tx.send((p.topic.clone(), body));
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    // Subscribed before anything is published.
    tokio::time::sleep(Duration::from_millis(300)).await;
    (client, rx)
}

async fn incidents(daemon: &DaemonProcess) -> Vec<serde_json::Value> {
    let (_, body) = daemon.get("/api/incidents").await.unwrap();
    serde_json::from_str(&body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sparkplug_and_json_devices_share_one_daemon() {
    let (broker, dir) = (Mosquitto::start(), tempfile::tempdir().unwrap());
    let daemon = config(&broker, &dir).start().await;
    let mut node = EdgeNode::connect(broker.port, 0).await;
    node.birth().await;
    for i in 0..10 {
        node.data(70.0 + f64::from(i) * 0.1).await;
    }
    let json = Publisher::connect(broker.port, "json-pub").await;
    json.send("comp-j", now_ms() as i64, 50.0).await;
    // DBIRTH: temperature and running (the String is skipped); 10 DDATA; 1 JSON reading.
    daemon.wait_metric("fieldwatch_readings_total", 13).await;
    daemon.wait_metric("fieldwatch_fields_ignored_total{reason=\"sparkplug_not_numeric\"}", 1).await;
    let (_, devices) = daemon.get("/api/devices").await.unwrap();
    for id in ["plantA/gw1/comp-1", "comp-j"] {
        assert!(devices.contains(id), "{id} in {devices}");
    }
    assert!(devices.contains("Discharge/Temp") && devices.contains("Running"), "{devices}");
    assert_eq!(daemon.metric("fieldwatch_rejected_messages_total").await, Some(0), "{}", daemon.log());
    assert_eq!(daemon.metric("fieldwatch_sparkplug_rebirths_requested_total").await, Some(0));
    assert_eq!(daemon.metric("fieldwatch_sparkplug_out_of_step_total").await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seq_gap_or_an_alias_never_born_asks_the_edge_node_to_rebirth() {
    let (broker, dir) = (Mosquitto::start(), tempfile::tempdir().unwrap());
    let daemon = config(&broker, &dir).start().await;
    let (_listener, mut commands) = command_listener(broker.port).await;
    let mut node = EdgeNode::connect(broker.port, 0).await;
    node.birth().await;
    node.data(70.0).await;
    node.seq += 3; // three messages lost
    node.data(70.5).await;
    let (topic, request) = tokio::time::timeout(Duration::from_secs(10), commands.recv()).await.unwrap().unwrap();
    assert_eq!(topic, "spBv1.0/plantA/NCMD/gw1");
    assert_eq!(request.metrics[0].name.as_deref(), Some("Node Control/Rebirth"));
    assert_eq!(request.metrics[0].value, Some(MetricValue::BooleanValue(true)));
    daemon.wait_metric("fieldwatch_readings_total", 4).await;
    daemon.wait_metric("fieldwatch_sparkplug_out_of_step_total{reason=\"seq_gap\"}", 1).await;

    // After the rebirth, an alias never born: refused, counted, kept aside, and asked again.
    node.birth().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    node.seq += 1;
    let unknown = Metric { alias: Some(99), value: Some(MetricValue::DoubleValue(1.0)), ..Metric::default() };
    let body = node.payload(Some(node.seq), vec![unknown]);
    node.publish("DDATA", Some("comp-1"), body).await;
    daemon.wait_metric("fieldwatch_rejected_messages_total{reason=\"sparkplug_unknown_alias\"}", 1).await;
    tokio::time::timeout(Duration::from_secs(10), commands.recv()).await.unwrap().unwrap();
    daemon.wait_metric("fieldwatch_sparkplug_rebirths_requested_total", 2).await;
    daemon.wait_metric("fieldwatch_sparkplug_out_of_step_total{reason=\"unknown_alias\"}", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_death_certificate_opens_an_offline_incident_and_a_rebirth_resolves_it() {
    let (broker, dir) = (Mosquitto::start(), tempfile::tempdir().unwrap());
    let api = ticket_api().await;
    // A silence check after 1 s, for devices that report from their first message.
    let silence = "[incident]\nstale_after = \"1s\"\nestablish_after = \"0s\"\n";
    let daemon = config(&broker, &dir).extra(silence).webhook(&api.uri()).start().await;
    let mut node = EdgeNode::connect(broker.port, 1).await;
    node.birth().await;
    node.data(70.0).await;
    daemon.wait_metric("fieldwatch_readings_total", 3).await;
    // A JSON device that goes quiet at the same time: the silence check does report it.
    let json = Publisher::connect(broker.port, "json-pub").await;
    let t0 = now_ms() as i64 - 1000;
    for i in 0..3 {
        json.send("comp-j", t0 + i * 100, 50.0).await;
    }
    daemon.wait_metric("fieldwatch_readings_total", 6).await;
    node.kill();
    daemon.wait_metric("fieldwatch_incidents_opened_total", 3).await;
    // Twice stale_after more: the silence check found the connectivity incidents open.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(daemon.metric("fieldwatch_incidents_opened_total").await, Some(3), "{}", daemon.log());
    let all = incidents(&daemon).await;
    let silent_json = all.iter().find(|i| i["device"] == "comp-j").expect("comp-j reported silent");
    assert_eq!(silent_json["peak"]["detector"], "staleness");
    let open: Vec<serde_json::Value> = all.into_iter().filter(|i| i["device"] != "comp-j").collect();
    let mut devices: Vec<&str> = open.iter().map(|i| i["device"].as_str().unwrap()).collect();
    devices.sort();
    assert_eq!(devices, ["plantA/gw1", "plantA/gw1/comp-1"], "{open:#?}");
    for inc in &open {
        assert_eq!(inc["fault"], "silent", "a connectivity incident, not an equipment fault: {inc}");
        assert_eq!(inc["peak"]["detector"], "death_certificate", "{inc}");
    }
    // The rebirth resolves both; a late NDEATH of the earlier session (bdSeq 1) does nothing
    // to the new one.
    let mut node = EdgeNode::connect(broker.port, 2).await;
    node.birth().await;
    node.data(70.0).await;
    daemon.wait_metric("fieldwatch_incidents_resolved_total", 2).await;
    let old = payload(None, vec![bd_seq_metric(1)]);
    node.publish("NDEATH", None, old).await;
    daemon.wait_metric("fieldwatch_rejected_messages_total{reason=\"sparkplug_old_death\"}", 1).await;
    let deaths = |list: &[serde_json::Value]| {
        list.iter().filter(|i| i["state"] == "open" && i["peak"]["detector"] == "death_certificate").count()
    };
    assert_eq!(deaths(&incidents(&daemon).await), 0, "{}", daemon.log());
    let offline_tickets = |tickets: &[serde_json::Value], action: &str| {
        tickets
            .iter()
            .filter(|t| t["action"] == action && t["ticket"]["summary"].as_str().unwrap().contains("edge node offline"))
            .count()
    };
    for _ in 0..200 {
        if offline_tickets(&bodies(&api).await, "resolve") >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let tickets = bodies(&api).await;
    assert_eq!(offline_tickets(&tickets, "open"), 2, "one ticket per offline device: {tickets:#?}");
    assert_eq!(offline_tickets(&tickets, "resolve"), 2, "the rebirth resolves both: {tickets:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_sparkplug_input_is_rejected_by_reason_and_the_neighbours_readings_flow() {
    let (broker, dir) = (Mosquitto::start(), tempfile::tempdir().unwrap());
    let daemon = config(&broker, &dir).start().await;
    let mut node = EdgeNode::connect(broker.port, 0).await;
    node.birth().await;
    let json = Publisher::connect(broker.port, "json-pub").await;
    let t0 = now_ms() as i64;
    // Malformed protobuf, a metric that changes type, an unknown datatype, 10 MB.
    node.publish("NDATA", None, vec![0x0a, 0xff, 0xff, 0xff]).await;
    json.send("comp-j", t0, 50.0).await;
    node.seq += 1;
    let changed = metric("Discharge/Temp", 10, DataType::String, MetricValue::StringValue("hot".into()));
    let body = node.payload(Some(node.seq), vec![changed]);
    node.publish("DDATA", Some("comp-1"), body).await;
    json.send("comp-j", t0 + 1000, 50.1).await;
    let mut odd = metric("Odd", 40, DataType::Int32, MetricValue::IntValue(1));
    odd.datatype = Some(99);
    let fine = metric("Amps", 41, DataType::Float, MetricValue::FloatValue(4.5));
    let body = node.payload(Some(node.seq + 1), vec![odd, fine]);
    node.publish("DBIRTH", Some("comp-2"), body).await;
    // 10 MB, from a client that may send it (the edge node's own refuses packets over 10 KiB).
    let mut o = MqttOptions::new("big-pub", "127.0.0.1", broker.port);
    o.set_max_packet_size(16 << 20, 16 << 20);
    let (big, mut eventloop) = AsyncClient::new(o, 10);
    let big_task = tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    big.publish("spBv1.0/plantA/DDATA/gw1/comp-1", QoS::AtLeastOnce, false, vec![0u8; 10 * 1024 * 1024]).await.unwrap();
    json.send("comp-j", t0 + 2000, 50.2).await;
    for reason in ["sparkplug_malformed", "sparkplug_type_changed", "sparkplug_unknown_datatype", "sparkplug_too_large"]
    {
        daemon.wait_metric(&format!("fieldwatch_rejected_messages_total{{reason=\"{reason}\"}}"), 1).await;
    }
    // 2 from the births, 3 JSON readings, Amps of the DBIRTH with the unknown datatype.
    daemon.wait_metric("fieldwatch_readings_total", 6).await;
    let (_, rejected) = daemon.get("/api/rejected").await.unwrap();
    let rejected: Vec<serde_json::Value> = serde_json::from_str(&rejected).unwrap();
    assert!(rejected.iter().any(|r| r["reason"].as_str().unwrap().contains("was born Double")), "{rejected:#?}");
    assert!(rejected.iter().all(|r| r["payload"].as_str().unwrap().len() <= 4096));
    // Protobuf is binary: kept as hex.
    let malformed = rejected.iter().find(|r| r["reason"].as_str().unwrap().contains("not a valid protobuf")).unwrap();
    assert_eq!(malformed["payload"], "hex:0affffff");
    let (status, _) = daemon.get("/readyz").await.unwrap();
    assert_eq!(status, 200);
    big_task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_births_taught_outlives_a_daemon_restart() {
    let (broker, dir) = (Mosquitto::start(), tempfile::tempdir().unwrap());
    let config = config(&broker, &dir);
    let mut daemon = config.start().await;
    let mut node = EdgeNode::connect(broker.port, 0).await;
    node.birth().await;
    node.data(70.0).await;
    daemon.wait_metric("fieldwatch_readings_total", 3).await;
    daemon.signal("TERM");
    assert!(daemon.wait().success());
    // DATA by alias while the daemon is away (queued on its persistent session) and after.
    node.data(70.5).await;
    let daemon = config.start().await;
    node.data(71.0).await;
    daemon.wait_metric("fieldwatch_readings_total", 2).await;
    assert_eq!(daemon.metric("fieldwatch_rejected_messages_total").await, Some(0), "{}", daemon.log());
    assert_eq!(daemon.metric("fieldwatch_sparkplug_rebirths_requested_total").await, Some(0));
    assert_eq!(daemon.metric("fieldwatch_sparkplug_out_of_step_total").await, Some(0));
}
