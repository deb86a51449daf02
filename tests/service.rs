//! Incidents and tickets a technician can act on, through the real pipeline: mosquitto →
//! daemon (sled on disk) → wiremock ticket API, and the admin API for feedback and silences.

mod common;

use std::time::Duration;

use common::*;
use fieldwatch::config::SecretRef;

const REGISTRY: &str = r#"
[[assets.customers]]
id = "acme"
name = "ACME Foods"
tier = "tier1"
[[assets.customers]]
id = "corner"
name = "Corner Shop"
tier = "tier3"
[[assets.devices]]
id = "comp-1"
site = "site-1"
customer = "acme"
model = "Bitzer 4FES-5Y"
criticality = "high"
location = "Cold store 2, roof"
contacts = ["Site lead: +44 20 7946 0000"]
[[assets.devices]]
id = "comp-2"
site = "site-1"
customer = "corner"
criticality = "low"
[[assets.runbooks]]
fault = "discharge_temp.deviation"
steps = ["Check condenser fan and coil for blockage", "Check refrigerant charge"]
link = "https://runbooks.example.com/compressor/discharge-temp"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tier1_critical_asset_gets_p1_with_its_respond_by_and_a_complete_ticket() {
    let broker = Mosquitto::start();
    let api = ticket_api().await;
    let dir = tempfile::tempdir().unwrap();
    let config = test_config_with(broker.port, dir.path(), vec![webhook(format!("{}/t", api.uri()), None)], REGISTRY);
    let (daemon, m) = start_connected(config).await;
    let p = Publisher::connect(broker.port, "pub-p1").await;
    let t0 = base_ts();
    let before = fieldwatch::reading::now_ms();
    for i in 0..40 {
        p.send("comp-2", t0 + i * 1000, normal(i)).await;
    }
    fault(&p, "comp-1", t0, 5).await;
    wait_until("ticket delivered", || m.delivered("api") == 1).await;
    let after = fieldwatch::reading::now_ms();

    let b = bodies(&api).await;
    let t = &b[0]["ticket"];
    assert_eq!(t["priority"], "P1");
    // The readings are an hour old (event time); people respond from when the ticket was raised.
    let respond_by = chrono::DateTime::parse_from_rfc3339(t["respond_by"].as_str().unwrap()).unwrap();
    let raised = respond_by.timestamp_millis() - 4 * 3_600_000;
    assert!(
        (before..=after).contains(&raised),
        "P1 SLA: respond_by {respond_by} is not 4 h after the ticket was raised"
    );
    assert_eq!(t["customer"]["name"], "ACME Foods");
    assert_eq!(t["customer"]["tier"], "tier1");
    assert_eq!(t["asset"]["criticality"], "high");
    assert_eq!(t["asset"]["model"], "Bitzer 4FES-5Y");
    assert_eq!(t["asset"]["location"], "Cold store 2, roof");
    assert_eq!(t["origin"], "proactive");
    assert!(t["what_happened"].as_str().unwrap().starts_with("discharge_temp rose to 99 °C"));
    assert_eq!(t["next_steps"][0], "Check condenser fan and coil for blockage");
    assert_eq!(t["runbook_link"], "https://runbooks.example.com/compressor/discharge-temp");
    assert!(t["confidence"].as_f64().unwrap() > 0.9);
    assert_eq!(t["needs_review"], false);
    let checks = t["checks_done"].as_array().unwrap();
    let check = |name: &str| checks.iter().find(|c| c["check"] == name).unwrap_or_else(|| panic!("{name}: {checks:?}"));
    assert_eq!(check("sensor alive")["result"], "ok");
    assert_eq!(check("other devices at the site")["result"], "ok");
    assert!(check("other devices at the site")["detail"].as_str().unwrap().starts_with("1 other devices at site-1"));
    assert_eq!(check("other metrics of the device")["result"], "unknown");
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_window_suppresses_a_ticket_that_would_otherwise_open() {
    let broker = Mosquitto::start();
    let api = ticket_api().await;
    let dir = tempfile::tempdir().unwrap();
    let window = "[[maintenance.windows]]\ndevice = \"comp-1\"\ndaily_from = \"00:00:00\"\ndaily_to = \"23:59:59\"\nreason = \"compressor overhaul\"\n";
    let config = test_config_with(broker.port, dir.path(), vec![webhook(format!("{}/t", api.uri()), None)], window);
    let (daemon, m) = start_connected(config).await;
    let p = Publisher::connect(broker.port, "pub-maint").await;
    let t0 = base_ts();
    fault(&p, "comp-1", t0, 5).await;
    fault(&p, "comp-2", t0, 5).await;
    wait_until("both incidents handled", || m.incidents_opened_total() == 2).await;
    all_delivered(&daemon, "api", None).await;
    let b = bodies(&api).await;
    assert_eq!(b.len(), 1);
    assert_eq!(b[0]["ticket"]["device"], "comp-2", "only the device outside the window gets a ticket");
    assert_eq!(m.suppressed("maintenance"), 1);
    let incidents: Vec<fieldwatch::incident::Incident> = daemon.store().incidents().unwrap();
    let planned = incidents.iter().find(|i| i.device == "comp-1").unwrap();
    let overhaul = fieldwatch::suppress::Suppression::Maintenance { reason: "compressor overhaul".into() };
    assert_eq!(planned.suppressed, Some(overhaul));
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flapping_sensor_yields_one_ticket_marked_flapping() {
    let broker = Mosquitto::start();
    let api = ticket_api().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(broker.port, dir.path(), vec![webhook(format!("{}/t", api.uri()), None)]);
    config.incident.quiet_period = Duration::from_secs(5);
    config.incident.cool_down = Duration::from_secs(600);
    config.incident.flap_reopens = 3;
    config.detect.baseline_half_life = 1000.0;
    let (daemon, m) = start_connected(config).await;
    let p = Publisher::connect(broker.port, "pub-flap").await;
    let t0 = base_ts();
    let mut i = 0;
    for _ in 0..40 {
        p.send("comp-6", t0 + i * 1000, normal(i)).await;
        i += 1;
    }
    // Four bursts of 3 bad readings, each followed by 8 s of normal readings (> quiet period).
    for _ in 0..4 {
        for _ in 0..3 {
            p.send("comp-6", t0 + i * 1000, 99.0).await;
            i += 1;
        }
        for _ in 0..8 {
            p.send("comp-6", t0 + i * 1000, normal(i)).await;
            i += 1;
        }
    }
    wait_until("all stored", || m.readings.get() == i as u64).await;
    wait_until("commands delivered", || daemon.store().outbox_len("api") == 0 && m.delivered("api") >= 4).await;
    let b = bodies(&api).await;
    let actions: Vec<&str> = b.iter().map(|x| x["action"].as_str().unwrap()).collect();
    assert_eq!(actions.iter().filter(|a| **a == "open").count(), 1, "one ticket: {actions:?}");
    let ids: std::collections::HashSet<_> = b.iter().map(|x| x["ticket"]["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 1, "every command is about the same ticket");
    let flapping = b.iter().find(|x| x["ticket"]["flapping"] == true).expect("marked flapping");
    assert_eq!(flapping["action"], "update");
    assert!(flapping["ticket"]["note"].as_str().unwrap().starts_with("Flapping: opened 3 times"));
    let last = b.last().unwrap();
    assert_ne!(last["action"], "resolve", "a flapping incident is held open: {actions:?}");
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_mode_records_the_ticket_and_sends_nothing() {
    let broker = Mosquitto::start();
    let api = ticket_api().await;
    let dir = tempfile::tempdir().unwrap();
    let modes = "[modes]\ndefault = \"ticket\"\n[modes.sites]\nsite-1 = \"shadow\"\n";
    let config = test_config_with(broker.port, dir.path(), vec![webhook(format!("{}/t", api.uri()), None)], modes);
    let (daemon, m) = start_connected(config).await;
    let p = Publisher::connect(broker.port, "pub-shadow").await;
    fault(&p, "comp-1", base_ts(), 5).await;
    wait_until("incident opened", || m.incidents_opened_total() == 1).await;
    all_delivered(&daemon, "api", None).await;
    assert!(bodies(&api).await.is_empty(), "shadow mode sends nothing");
    let held = daemon.store().held().unwrap();
    assert_eq!(held.len(), 1);
    assert_eq!(held[0]["reason"], "shadow");
    assert_eq!(held[0]["command"]["ticket"]["device"], "comp-1");
    assert_eq!(m.suppressed("shadow"), 1);
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn technician_feedback_closes_the_loop_through_the_admin_api_and_cli() {
    let broker = Mosquitto::start();
    let api = ticket_api().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(broker.port, dir.path(), vec![webhook(format!("{}/t", api.uri()), None)]);
    config.admin.listen = "127.0.0.1:0".into();
    let (daemon, m) = start_connected(config).await;
    let admin = daemon.admin_addr().unwrap().to_string();
    let p = Publisher::connect(broker.port, "pub-feedback").await;
    let t0 = base_ts();
    fault(&p, "comp-1", t0, 5).await;
    fault(&p, "comp-2", t0, 5).await;
    wait_until("two tickets", || m.delivered("api") == 2).await;
    let b = bodies(&api).await;
    let id_of = |dev: &str| {
        b.iter().find(|x| x["ticket"]["device"] == dev).unwrap()["ticket"]["id"].as_str().unwrap().to_string()
    };

    // False alarm through the CLI: resolves the ticket and widens the baseline.
    let out = fieldwatch()
        .args(["feedback", &id_of("comp-1"), "--verdict", "false_alarm", "--note", "door left open", "--admin", &admin])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("verdict: false_alarm"));
    wait_until("resolve delivered", || m.delivered("api") == 3).await;
    let resolve = bodies(&api).await.pop().unwrap();
    assert_eq!(resolve["action"], "resolve");
    let note = resolve["ticket"]["note"].as_str().unwrap();
    assert!(note.starts_with("Technician verdict: false alarm: door left open"), "{note}");
    assert!(note.contains("less sensitive"), "{note}");

    // Won't fix through the HTTP API: resolved and never reopened by itself.
    let url = format!("http://{admin}/api/incidents/{}/feedback", id_of("comp-2"));
    let resp =
        reqwest::Client::new().post(&url).json(&serde_json::json!({"verdict": "wont_fix"})).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    wait_until("resolve delivered", || m.delivered("api") == 4).await;
    for i in 45..60 {
        p.send("comp-2", t0 + i * 1000, 99.0).await;
    }
    wait_until("stored", || m.readings.get() == 105).await;
    all_delivered(&daemon, "api", None).await;
    assert_eq!(bodies(&api).await.len(), 4, "wont_fix is not reopened");
    let missing = reqwest::Client::new()
        .post(format!("http://{admin}/api/incidents/FW-nope/feedback"))
        .json(&serde_json::json!({"verdict": "fixed"}))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);

    let out = fieldwatch().args(["incidents", "--admin", &admin]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("comp-2/discharge_temp.deviation") && text.contains("verdict: wont_fix"), "{text}");
    assert!(text.contains("opened (P4): discharge_temp rose to 99 °C"), "timeline shown: {text}");
    let text = m.render(fieldwatch::metrics::Format::Text);
    assert!(text.contains("fieldwatch_false_alarms_total{detector=\"baseline\",asset_model=\"unknown\"} 1"), "{text}");
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silence_set_through_the_api_suppresses_tickets() {
    let broker = Mosquitto::start();
    let api = ticket_api().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(broker.port, dir.path(), vec![webhook(format!("{}/t", api.uri()), None)]);
    config.admin.listen = "127.0.0.1:0".into();
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, "s3cret\n").unwrap();
    config.admin.token = Some(SecretRef { file: Some(token_file.clone()), env: None });
    let (daemon, m) = start_connected(config).await;
    let admin = daemon.admin_addr().unwrap().to_string();
    let silence = |extra: &[&str]| {
        fieldwatch()
            .env_remove("FIELDWATCH_ADMIN")
            .env_remove("FIELDWATCH_ADMIN_TOKEN")
            .args(["silence", "--device", "comp-1", "--for", "2h", "--reason", "crane lift"])
            .args(extra)
            .output()
            .unwrap()
    };
    // The address alone is not enough: changing state needs the token ...
    let out = silence(&["--admin", &admin]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("401"), "{out:?}");
    // ... which the CLI reads, with the address, from the daemon's config file.
    let cli_config = dir.path().join("fieldwatch.toml");
    let text = format!("[admin]\nlisten = \"{admin}\"\ntoken = {{ file = \"{}\" }}\n", token_file.display());
    std::fs::write(&cli_config, text).unwrap();
    let out = silence(&["--config", cli_config.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let p = Publisher::connect(broker.port, "pub-silence").await;
    let t0 = base_ts();
    fault(&p, "comp-1", t0, 5).await;
    fault(&p, "comp-2", t0, 5).await;
    wait_until("both incidents handled", || m.incidents_opened_total() == 2).await;
    all_delivered(&daemon, "api", Some("s3cret")).await;
    let b = bodies(&api).await;
    assert_eq!(b.len(), 1);
    assert_eq!(b[0]["ticket"]["device"], "comp-2");
    assert_eq!(m.suppressed("silence"), 1);
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacknowledged_incident_is_escalated_at_its_respond_by_time() {
    // The respond-by timing is tested on a clock of its own in src/core/mod.rs (mod timing); this is the
    // daemon's tick escalating and delivering the update.
    let broker = Mosquitto::start();
    let api = ticket_api().await;
    let dir = tempfile::tempdir().unwrap();
    let sla = "[priority.respond_within]\nP1 = \"1h\"\nP2 = \"2h\"\nP3 = \"3h\"\nP4 = \"1s\"\n";
    let config = test_config_with(broker.port, dir.path(), vec![webhook(format!("{}/t", api.uri()), None)], sla);
    let (daemon, m) = start_connected(config).await;
    let p = Publisher::connect(broker.port, "pub-escalate").await;
    fault(&p, "comp-9", base_ts(), 5).await;
    wait_until("open and escalation delivered", || m.delivered("api") == 2).await;
    let b = bodies(&api).await;
    assert_eq!(b[1]["action"], "update");
    assert!(b[1]["ticket"]["note"].as_str().unwrap().starts_with("Escalated: not acknowledged"));
    assert!(m.render(fieldwatch::metrics::Format::Text).contains("fieldwatch_sla_breaches_total{tier=\"tier3\"} 1"));
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_device_opens_one_sensor_health_incident_and_resolves_when_heard_again() {
    let broker = Mosquitto::start();
    let api = ticket_api().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(broker.port, dir.path(), vec![webhook(format!("{}/t", api.uri()), None)]);
    config.incident.stale_after = Duration::from_secs(1);
    // Every device counts as established here (tests/faults.rs shows one-shot ids open nothing).
    config.incident.establish_after = Duration::ZERO;
    let (daemon, m) = start_connected(config).await;
    let p = Publisher::connect(broker.port, "pub-silent").await;
    let t0 = base_ts();
    p.send("comp-quiet", t0, 70.0).await;
    // comp-busy keeps reporting; comp-quiet says nothing more.
    let mut i = 0;
    while m.delivered("api") == 0 && i < 200 {
        p.send("comp-busy", t0 + i * 1000, normal(i)).await;
        i += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let b = bodies(&api).await;
    assert_eq!(b.len(), 1, "{b:?}");
    let t = &b[0]["ticket"];
    assert_eq!(t["device"], "comp-quiet");
    assert_eq!(t["fault"], "telemetry.silent");
    assert!(t["what_happened"].as_str().unwrap().starts_with("comp-quiet has sent no telemetry for"));
    assert_eq!(t["checks_done"][0]["result"], "anomalous");

    p.send("comp-quiet", t0 + 1000, 70.1).await;
    wait_until("resolve delivered", || m.delivered("api") == 2).await;
    let b = bodies(&api).await;
    assert_eq!(b[1]["action"], "resolve");
    assert!(b[1]["ticket"]["summary"].as_str().unwrap().starts_with("Resolved: comp-quiet reports again"));
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_is_not_blamed_on_the_devices() {
    let mut broker = Mosquitto::start();
    let api = ticket_api().await;
    let dir = tempfile::tempdir().unwrap();
    // The timing of sensor health around an outage is tested on a clock of its own in
    // src/core/mod.rs (mod timing); this is the daemon passing the link's state to it.
    let mut config = test_config(broker.port, dir.path(), vec![webhook(format!("{}/t", api.uri()), None)]);
    config.incident.stale_after = Duration::from_secs(1);
    // comp-a would be silent if it were not for the outage: make it count as established.
    config.incident.establish_after = Duration::ZERO;
    let (daemon, m) = start_connected(config).await;
    let p = Publisher::connect(broker.port, "pub-outage").await;
    let t0 = base_ts();
    p.send("comp-a", t0, 70.0).await;
    wait_until("stored", || m.readings.get() == 1).await;
    broker.stop();
    wait_until("link down noticed", || m.mqtt_connected.get() == 0).await;
    tokio::time::sleep(Duration::from_secs(2)).await; // twice stale_after with the link down
    assert_eq!(m.incidents_opened_total(), 0, "no sensor-health incident while the link is down");
    broker.restart();
    wait_until("reconnected", || m.mqtt_connected.get() == 1).await;
    // The device resumes within the grace period after the reconnect, and goes on for longer.
    for i in 1..14 {
        p.send("comp-a", t0 + i * 1000, normal(i)).await;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert_eq!(m.incidents_opened_total(), 0, "a device that resumes after the outage is not silent");
    assert!(bodies(&api).await.is_empty());
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observe_mode_only_logs_and_low_confidence_goes_to_review() {
    let broker = Mosquitto::start();
    let api = ticket_api().await;
    let dir = tempfile::tempdir().unwrap();
    let modes = "[modes]\ndefault = \"ticket\"\n[modes.sites]\nsite-observed = \"observe\"\n";
    let mut config = test_config_with(broker.port, dir.path(), vec![webhook(format!("{}/t", api.uri()), None)], modes);
    // Only near-certain incidents are dispatched: a modest deviation goes to review.
    config.incident.min_confidence = 0.99;
    let (daemon, m) = start_connected(config).await;
    let p = Publisher::connect(broker.port, "pub-observe").await;
    let t0 = base_ts();
    // A device at an observed site: logged and counted, nothing sent, nothing held.
    for i in 0..40 {
        let payload = serde_json::json!({ "ts": t0 + i * 1000, "discharge_temp": normal(i) }).to_string();
        p.raw("plant/site-observed/comp-o/telemetry", payload.into_bytes()).await;
    }
    for i in 40..45 {
        let payload = serde_json::json!({ "ts": t0 + i * 1000, "discharge_temp": 99.0 }).to_string();
        p.raw("plant/site-observed/comp-o/telemetry", payload.into_bytes()).await;
    }
    // A modest deviation at a ticketing site: about 6σ, confidence below 0.99.
    for i in 0..40 {
        p.send("comp-r", t0 + i * 1000, normal(i)).await;
    }
    for i in 40..45 {
        p.send("comp-r", t0 + i * 1000, 72.2).await;
    }
    wait_until("both incidents opened", || m.incidents_opened_total() == 2).await;
    all_delivered(&daemon, "api", None).await;
    assert!(bodies(&api).await.is_empty(), "neither is dispatched");
    assert_eq!(m.suppressed("observe"), 1);
    assert_eq!(m.suppressed("needs_review"), 1);
    let held = daemon.store().held().unwrap();
    assert_eq!(held.len(), 1, "observe mode holds nothing: {held:?}");
    assert_eq!(held[0]["reason"], "needs_review");
    assert_eq!(held[0]["command"]["ticket"]["device"], "comp-r");
    assert_eq!(held[0]["command"]["ticket"]["needs_review"], true);
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fault_that_outlasts_its_silence_gets_its_ticket_when_the_silence_ends() {
    // The same story on a clock of its own, without waiting, is in src/core/mod.rs; here the
    // admin API sets the silence and the daemon's clock ends it.
    let broker = Mosquitto::start();
    let api = ticket_api().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(broker.port, dir.path(), vec![webhook(format!("{}/t", api.uri()), None)]);
    config.admin.listen = "127.0.0.1:0".into();
    let (daemon, m) = start_connected(config).await;
    let admin = daemon.admin_addr().unwrap().to_string();
    let silence = serde_json::json!({"device": "comp-1", "for": "3s", "reason": "valve swap"});
    let resp = reqwest::Client::new().post(format!("http://{admin}/api/silences")).json(&silence).send().await.unwrap();
    assert_eq!(resp.status(), 201);
    let p = Publisher::connect(broker.port, "pub-silence-ends").await;
    fault(&p, "comp-1", base_ts(), 5).await;
    wait_until("incident opened under the silence", || m.incidents_opened_total() == 1).await;
    assert!(bodies(&api).await.is_empty(), "silenced: no ticket yet");
    // The silence expires while the fault goes on: its readings keep coming, for longer than
    // the debounce, after the planned work ended.
    // (A tick of the daemon's must come between the end of the silence and these readings: it
    // notes where the fault stood when the work ended.)
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    for i in 0..40 {
        p.send("comp-1", base_ts() + 60_000 + i * 10_000, 99.0 + (i % 3) as f64 * 0.1).await;
    }
    wait_until("ticket opened after the silence", || m.delivered("api") == 1).await;
    let b = bodies(&api).await;
    assert_eq!(b[0]["action"], "open");
    assert_eq!(b[0]["ticket"]["device"], "comp-1");
    assert_eq!(m.incidents_opened_total(), 1, "the same incident, counted once");
    daemon.shutdown().await;
}
