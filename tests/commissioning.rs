//! Commissioning through the real binary: a new device is `commissioning` (shown by
//! `/api/devices`, `fieldwatch devices` and `fieldwatch_devices{state=...}`) until its context
//! reference has seen `detect.context.commissioning` of event time, keeps that state across a
//! restart, and is `watching` afterwards. A short commissioning (10 min of event time) keeps
//! the test quick; the shipped one is a day.

mod common;

use common::*;

const SHORT_COMMISSIONING: &str = "[detect.context]\nenabled = true\ncommissioning = \"10m\"\n\
     max_commissioning = \"15m\"\nsmoothing = \"1m\"\nrefit_every = \"2m\"\nadapt_half_life = \"1d\"\n";

/// The state `/api/devices` gives `device`, and when its commissioning began.
async fn state_of(daemon: &DaemonProcess, device: &str) -> (String, Option<i64>) {
    let (status, body) = daemon.get("/api/devices").await.expect("the admin API answers");
    assert_eq!(status, 200, "{body}");
    let list: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    let d = list.iter().find(|d| d["device"] == device).unwrap_or_else(|| panic!("{device} not in {body}"));
    (d["state"].as_str().unwrap_or_default().to_string(), d["commissioning_since"].as_i64())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_device_commissions_keeps_that_state_across_a_restart_and_then_is_watched() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let config = DaemonConfig::new(broker.port, dir.path()).extra(SHORT_COMMISSIONING);
    let mut daemon = config.start().await;
    let p = Publisher::connect(broker.port, "pub-commissioning").await;
    let t0 = base_ts();
    let at = |i: i64| t0 + i * 10_000;
    // Five minutes of event time: half of commissioning.
    for i in 0..30 {
        p.send("comp-1", at(i), normal(i)).await;
    }
    daemon.wait_metric("fieldwatch_readings_total", 30).await;
    daemon.wait_metric("fieldwatch_devices{state=\"commissioning\"}", 1).await;
    assert_eq!(daemon.metric("fieldwatch_devices{state=\"watching\"}").await, Some(0));
    daemon.signal("TERM");
    assert!(daemon.wait().success());

    // Restarted: still commissioning, since the same time, with the metric it reports.
    let daemon = config.start().await;
    let (status, body) = daemon.get("/api/devices").await.expect("the admin API answers");
    assert_eq!(status, 200, "{body}");
    let list: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    let comp = list.iter().find(|d| d["device"] == "comp-1").unwrap_or_else(|| panic!("comp-1 not in {body}"));
    assert_eq!(comp["metrics"], serde_json::json!(["discharge_temp"]), "{body}");
    let (state, since) = state_of(&daemon, "comp-1").await;
    assert_eq!(state, "commissioning");
    assert_eq!(since, Some(t0), "commissioning began with the first message, before the restart");
    // Sixteen more minutes of event time: past the longest commissioning.
    for i in 30..130 {
        p.send("comp-1", at(i), normal(i)).await;
    }
    daemon.wait_metric("fieldwatch_readings_total", 100).await;
    daemon.wait_metric("fieldwatch_devices{state=\"watching\"}", 1).await;
    let (state, since) = state_of(&daemon, "comp-1").await;
    assert_eq!(state, "watching");
    assert_eq!(since, Some(t0), "one commissioning across the restart, not two");
    assert!(daemon.log().contains("commissioned"), "the end of commissioning is logged");
}
