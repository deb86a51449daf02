//! The daemon binary killed with SIGKILL at the worst moments: no ticket lost, none duplicated.

mod common;

use std::path::Path;

use common::*;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

fn write_config(dir: &Path, broker_port: u16, api: &str, admin: &str) -> std::path::PathBuf {
    let mut config = test_config(broker_port, &dir.join("db"), vec![]);
    let text = format!(
        r#"[daemon]
data_dir = "{data}"
[mqtt]
port = {broker_port}
client_id = "{client}"
topics = ["plant/+/+/telemetry"]
reconnect_min = "100ms"
reconnect_max = "1s"
[store]
batch_linger = "5ms"
cache_mb = 16
[detect]
warmup_readings = {warmup}
baseline_half_life = 100
[incident]
debounce_readings = 3
[ticket]
retry_min = "100ms"
retry_max = "300ms"
[[ticket.sinks]]
type = "webhook"
name = "api"
url = "{api}/tickets"
[admin]
listen = "{admin}"
"#,
        data = dir.join("db").display(),
        client = config.mqtt.client_id,
        warmup = config.detect.warmup_readings,
    );
    config.daemon.data_dir = dir.join("db");
    let path = dir.join("fieldwatch.toml");
    std::fs::write(&path, text).unwrap();
    path
}

async fn open_requests(api: &MockServer) -> Vec<serde_json::Value> {
    bodies(api).await.into_iter().filter(|b| b["action"] == "open").collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_daemon_neither_loses_nor_duplicates_tickets() {
    let broker = Mosquitto::start();
    let api = MockServer::start().await;
    // The ticket API is down at first: the ticket waits in the outbox when the daemon dies.
    Mock::given(method("POST")).respond_with(ResponseTemplate::new(503)).mount(&api).await;
    let dir = tempfile::tempdir().unwrap();
    let admin = format!("127.0.0.1:{}", free_port());
    let config = write_config(dir.path(), broker.port, &api.uri(), &admin);
    let log = dir.path().join("daemon.log");

    let daemon = DaemonProcess::start(&config, &admin, &log);
    daemon.wait_metric("fieldwatch_mqtt_connected", 1).await;
    let p = Publisher::connect(broker.port, "pub-crash").await;
    let t0 = base_ts();
    fault(&p, "comp-1", t0, 5).await;
    daemon.wait_metric("fieldwatch_incidents_opened_total", 1).await;
    daemon.wait_metric("fieldwatch_ticket_attempts_failed_total{sink=\"api\"}", 2).await;
    daemon.kill9();

    // The fault goes on while the daemon is dead; the API recovers.
    for i in 45..50 {
        p.send("comp-1", t0 + i * 1000, 99.0).await;
    }
    api.reset().await;
    Mock::given(method("POST")).respond_with(ResponseTemplate::new(201)).mount(&api).await;

    let daemon = DaemonProcess::start(&config, &admin, &log);
    daemon.wait_metric("fieldwatch_tickets_delivered_total{sink=\"api\"}", 1).await;
    daemon.wait_metric("fieldwatch_readings_total", 5).await;
    assert_eq!(
        daemon.metric("fieldwatch_incidents_opened_total").await,
        Some(0),
        "the stored incident is not reopened"
    );
    daemon.kill9();

    // Killed again right after delivery: a restart must not send the ticket a second time.
    let daemon = DaemonProcess::start(&config, &admin, &log);
    daemon.wait_metric("fieldwatch_mqtt_connected", 1).await;
    for i in 50..55 {
        p.send("comp-1", t0 + i * 1000, 99.0).await;
    }
    daemon.wait_metric("fieldwatch_readings_total", 5).await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let opens = open_requests(&api).await;
    assert_eq!(
        opens.len(),
        1,
        "exactly one ticket after two kills; log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert_eq!(opens[0]["ticket"]["device"], "comp-1");
    drop(daemon);
}

/// A slow climb under way when the daemon is killed: after the restart its healthy reference is
/// the one learnt before the fault, so the incident stays open instead of resolving while the
/// detector re-learns the fault as normal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_fault_stays_open_across_a_sigkill() {
    let broker = Mosquitto::start();
    let api = MockServer::start().await;
    Mock::given(method("POST")).respond_with(ResponseTemplate::new(201)).mount(&api).await;
    let dir = tempfile::tempdir().unwrap();
    let admin = format!("127.0.0.1:{}", free_port());
    let config = write_config(dir.path(), broker.port, &api.uri(), &admin);
    // Only the drift detector: the test is about its reference.
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("[detect]\n", "[detect]\nbaseline = false\nflatline = false\n");
    std::fs::write(&config, format!("{text}[detect.models]\nenabled = false\n")).unwrap();
    let log = dir.path().join("daemon.log");
    // Readings every 10 s: 400 healthy (over an hour, the commissioning), then a climb.
    let t0 = base_ts() - 2 * 3_600_000;
    let at = |i: i64| t0 + i * 10_000;
    let value = |i: i64| normal(i) + 0.02 * (i - 400).max(0) as f64;

    let daemon = DaemonProcess::start(&config, &admin, &log);
    daemon.wait_metric("fieldwatch_mqtt_connected", 1).await;
    let p = Publisher::connect(broker.port, "pub-slow").await;
    for i in 0..550 {
        p.send("comp-1", at(i), value(i)).await;
    }
    daemon.wait_metric("fieldwatch_readings_total", 550).await;
    daemon.wait_metric("fieldwatch_incidents_opened_total", 1).await;
    // The batcher's next tick stores the reference fixed during commissioning.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    daemon.kill9();

    let daemon = DaemonProcess::start(&config, &admin, &log);
    daemon.wait_metric("fieldwatch_mqtt_connected", 1).await;
    // The climb goes on for 20 more minutes of event time (twice the quiet period).
    for i in 550..670 {
        p.send("comp-1", at(i), value(i)).await;
    }
    daemon.wait_metric("fieldwatch_readings_total", 120).await;
    assert_eq!(
        daemon.metric("fieldwatch_incidents_resolved_total").await,
        Some(0),
        "the fault resolved after the restart"
    );
    assert_eq!(daemon.metric("fieldwatch_incidents_opened_total").await, Some(0), "the fault opened a second incident");
    let opens = open_requests(&api).await;
    assert_eq!(opens.len(), 1, "one ticket for one fault: {opens:?}");
}
