//! Fault injection against the real binary: a real mosquitto, `fieldwatch run` as a process, a
//! real HTTP ticket API (wiremock), loopback only, every wait bounded.
//!
//! Each test prints one `FAULT` line with what it measured (sent / stored / lost / doubled
//! readings, expected / delivered / duplicated tickets, peak RSS); run with `--nocapture` to
//! see them. BENCHMARKS.md quotes them.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use common::*;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

/// A test's broker and directory.
struct Rig {
    broker: Mosquitto,
    dir: tempfile::TempDir,
}

impl Rig {
    fn new() -> Rig {
        Rig { broker: Mosquitto::start(), dir: tempfile::tempdir().unwrap() }
    }

    /// The test settings without device models, and a webhook at `api` when one is given.
    fn config(&self, api: Option<&MockServer>) -> DaemonConfig {
        let config = DaemonConfig::new(self.broker.port, self.dir.path()).extra("[detect.models]\nenabled = false\n");
        match api {
            Some(api) => config.webhook(&format!("{}/tickets", api.uri())),
            None => config,
        }
    }

    /// Readings in the daemon's store (after the daemon stopped), by series and time.
    fn stored(&self) -> HashSet<(String, i64)> {
        stored_readings(&self.dir.path().join("db"))
    }

    /// [`Rig::stored`], and how many readings the store holds beyond one per series and time
    /// (its raw count, which does not deduplicate, minus the distinct ones).
    fn stored_and_doubled(&self) -> (HashSet<(String, i64)>, usize) {
        let raw = fieldwatch::store::Store::open(&self.dir.path().join("db"), 16, 10).unwrap().reading_count();
        let stored = self.stored();
        let doubled = raw.saturating_sub(stored.len());
        (stored, doubled)
    }
}

/// Every reading `devices` x `n` messages from `t0`, a second apart, as (`device/metric`, ts).
fn readings_of(devices: &[String], t0: i64, n: i64) -> HashSet<(String, i64)> {
    devices.iter().flat_map(|d| (0..n).map(move |i| (format!("{d}/discharge_temp"), t0 + i * 1000))).collect()
}

/// Distinct idempotency keys of `action` commands, and how many requests carried them.
async fn keys_of(api: &MockServer, action: &str) -> (HashSet<String>, usize) {
    let cmds: Vec<_> = bodies(api).await.into_iter().filter(|c| c["action"] == action).collect();
    let keys = cmds.iter().map(|c| c["idempotency_key"].as_str().unwrap_or_default().to_string()).collect();
    (keys, cmds.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_message_is_rejected_and_ingestion_goes_on() {
    let rig = Rig::new();
    let daemon = rig.config(None).start().await;
    let p = Publisher::connect(rig.broker.port, "pub-big").await;
    let t0 = base_ts();
    p.send("comp-1", t0, normal(0)).await;
    // 600 kB: over mqtt.max_packet_bytes (256 KiB), so the client first refuses the packet.
    let big = format!("{{\"ts\": {t0}, \"blob\": \"{}\"}}", "x".repeat(600_000));
    p.raw("plant/site-1/comp-2/telemetry", big.into_bytes()).await;
    for i in 1..50 {
        p.send("comp-1", t0 + i * 1000, normal(i)).await;
    }
    daemon.wait_metric("fieldwatch_readings_total", 50).await;
    daemon.wait_metric("fieldwatch_rejected_messages_total{reason=\"too_large\"}", 1).await;
    let (status, _) = daemon.get("/readyz").await.unwrap();
    assert_eq!(status, 200, "ready again after the oversized message");
    let (_, rejected) = daemon.get("/api/rejected").await.unwrap();
    let rejected: Vec<serde_json::Value> = serde_json::from_str(&rejected).unwrap();
    let big = rejected.iter().find(|r| r["topic"] == "plant/site-1/comp-2/telemetry").expect("kept aside");
    assert!(big["payload"].as_str().unwrap().len() <= 4096, "kept aside cut");
    assert!(big["reason"].as_str().unwrap().contains("over the"), "{big}");
    let errors = daemon.metric("fieldwatch_mqtt_connection_errors_total").await.unwrap();
    assert!(errors <= 2, "one refusal, not a reconnect loop: {errors} connection errors");
    println!("FAULT oversized: sent=50 readings + 1 x 600 kB, stored=50, too_large=1, connection errors={errors}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_needs_its_token_and_bounds_requests() {
    let rig = Rig::new();
    let token_file = rig.dir.path().join("admin.token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    let token = format!("[admin]\ntoken = {{ file = {:?} }}\n", token_file.display().to_string());
    let api = ticket_api().await;
    let daemon = rig.config(Some(&api)).extra(&token).start().await;
    let http = reqwest::Client::new();
    let url = |p: &str| format!("http://{}{p}", daemon.admin());
    let silence = serde_json::json!({ "device": "comp-1", "for": "1h", "reason": "test" });

    let none = http.post(url("/api/silences")).json(&silence).send().await.unwrap();
    assert_eq!(none.status(), 401);
    let wrong = http.post(url("/api/silences")).bearer_auth("s3cret-tokeN").json(&silence).send().await.unwrap();
    assert_eq!(wrong.status(), 401);
    let reads = http.get(url("/metrics")).send().await.unwrap();
    assert_eq!(reads.status(), 200, "reads stay open");

    // 20 at once: 20 distinct ids, none overwritten.
    let mut creates = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let req = http.post(url("/api/silences")).bearer_auth("s3cret-token").json(&silence);
        creates.spawn(async move { req.send().await });
    }
    let mut ids = HashSet::new();
    while let Some(r) = creates.join_next().await {
        let r = r.unwrap().unwrap();
        assert_eq!(r.status(), 201);
        let body: serde_json::Value = r.json().await.unwrap();
        ids.insert(body["id"].as_str().unwrap().to_string());
    }
    assert_eq!(ids.len(), 20, "{ids:?}");
    let listed: Vec<serde_json::Value> = http.get(url("/api/silences")).send().await.unwrap().json().await.unwrap();
    assert_eq!(listed.len(), 20);

    let huge = serde_json::json!({ "device": "comp-1", "for": "1h", "reason": "x".repeat(2_000_000) });
    // Refused: 413, or the connection closed by the server before it read the whole body.
    // (On a connection of its own: the server closes it.)
    let once = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    match once.post(url("/api/silences")).bearer_auth("s3cret-token").json(&huge).send().await {
        Ok(r) => assert_eq!(r.status(), 413, "2 MB body refused"),
        Err(e) => assert!(e.is_request(), "{e}"),
    }
    let after: Vec<serde_json::Value> = http.get(url("/api/silences")).send().await.unwrap().json().await.unwrap();
    assert_eq!(after.len(), 20, "nothing of the 2 MB request was stored");
    let long = serde_json::json!({ "device": "comp-1", "for": "1h", "reason": "x".repeat(5_000) });
    let r = http.post(url("/api/silences")).bearer_auth("s3cret-token").json(&long).send().await.unwrap();
    assert_eq!(r.status(), 400, "text fields are bounded");

    // A resolved incident takes one verdict: repeating it changes nothing, another is refused.
    let p = Publisher::connect(rig.broker.port, "pub-admin").await;
    let t0 = base_ts();
    fault(&p, "comp-2", t0, 5).await;
    daemon.wait_metric("fieldwatch_incidents_opened_total", 1).await;
    let list: Vec<serde_json::Value> = http.get(url("/api/incidents")).send().await.unwrap().json().await.unwrap();
    let id = list[0]["id"].as_str().unwrap().to_string();
    let verdict = |v: &str| {
        http.post(url(&format!("/api/incidents/{id}/feedback")))
            .bearer_auth("s3cret-token")
            .json(&serde_json::json!({ "verdict": v }))
            .send()
    };
    assert_eq!(verdict("false_alarm").await.unwrap().status(), 200);
    let again = verdict("false_alarm").await.unwrap();
    assert_eq!(again.status(), 200, "the same verdict again is idempotent");
    let inc: serde_json::Value = again.json().await.unwrap();
    let verdicts = inc["timeline"].as_array().unwrap().iter().filter(|e| e.to_string().contains("verdict")).count();
    assert_eq!(verdicts, 1, "recorded once: {inc}");
    assert_eq!(verdict("fixed").await.unwrap().status(), 409);
    let widened = daemon.get("/metrics").await.unwrap().1;
    let false_alarms: Vec<&str> =
        widened.lines().filter(|l| l.starts_with("fieldwatch_false_alarms_total{") && !l.ends_with(" 0")).collect();
    assert_eq!(false_alarms.len(), 1, "{widened}");
    assert!(false_alarms[0].ends_with(" 1"), "counted once: {}", false_alarms[0]);
    // Every other mutating endpoint needs the token too.
    let del = http.delete(url(&format!("/api/silences/{}", ids.iter().next().unwrap()))).send().await.unwrap();
    assert_eq!(del.status(), 401);
    let train = http.post(url("/api/models/train")).send().await.unwrap();
    assert_eq!(train.status(), 401);
    let feedback = http
        .post(url(&format!("/api/incidents/{id}/feedback")))
        .json(&serde_json::json!({ "verdict": "fixed" }))
        .send()
        .await
        .unwrap();
    assert_eq!(feedback.status(), 401, "a verdict needs the token");
    let feedback = http
        .post(url(&format!("/api/incidents/{id}/feedback")))
        .bearer_auth("s3cret-tokeN")
        .json(&serde_json::json!({ "verdict": "fixed" }))
        .send()
        .await
        .unwrap();
    assert_eq!(feedback.status(), 401, "and the right one");
    println!(
        "FAULT admin: 401 without/with a wrong token (silences, feedback, train), 20/20 silence ids unique, 413 for 2 MB, 409 for a second verdict"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_token_can_come_from_the_environment() {
    let rig = Rig::new();
    let config = rig.config(None).extra("[admin]\ntoken = { env = \"FW_FAULTS_ADMIN_TOKEN\" }\n");
    let mut cmd = config.command(&[]);
    cmd.env("FW_FAULTS_ADMIN_TOKEN", "env-s3cret");
    let daemon = DaemonProcess::spawn(cmd, &config);
    daemon.wait_metric("fieldwatch_mqtt_connected", 1).await;
    let http = reqwest::Client::new();
    let url = |p: &str| format!("http://{}{p}", daemon.admin());
    let silence = serde_json::json!({ "device": "comp-1", "for": "1h", "reason": "test" });
    let none = http.post(url("/api/silences")).json(&silence).send().await.unwrap();
    assert_eq!(none.status(), 401);
    let wrong = http.post(url("/api/silences")).bearer_auth("s3cret-token").json(&silence).send().await.unwrap();
    assert_eq!(wrong.status(), 401);
    let feedback = http
        .post(url("/api/incidents/FW-none/feedback"))
        .json(&serde_json::json!({ "verdict": "fixed" }))
        .send()
        .await
        .unwrap();
    assert_eq!(feedback.status(), 401, "a verdict needs the token");
    let right = http.post(url("/api/silences")).bearer_auth("env-s3cret").json(&silence).send().await.unwrap();
    assert_eq!(right.status(), 201, "the token from the environment is taken");
    batches_committed(daemon.admin(), Some("env-s3cret")).await;
    println!("FAULT admin token from the environment: 401 without/with a wrong token, 201 with it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_flood_is_bounded_and_opens_no_silent_tickets() {
    let rig = Rig::new();
    let api = ticket_api().await;
    let flood = "[decode]\nmax_devices = 100\nforget_after = \"6s\"\n[incident]\nstale_after = \"2s\"\n\
                 [[assets.devices]]\nid = \"comp-reg\"\n";
    let daemon = rig.config(Some(&api)).extra(flood).start().await;
    let p = Publisher::connect(rig.broker.port, "pub-flood").await;
    let t0 = base_ts();
    for i in 0..5 {
        p.send("comp-reg", t0 + i * 1000, normal(i)).await;
    }
    daemon.wait_metric("fieldwatch_readings_total", 5).await;
    for n in 0..300 {
        p.send(&format!("oneshot-{n}"), t0, 70.0).await;
    }
    // The table holds 100: each one-shot beyond takes the place of the oldest one-shot, never
    // of the registered device; nothing is refused.
    daemon.wait_metric("fieldwatch_devices_evicted_total", 201).await;
    daemon.wait_metric("fieldwatch_readings_total", 305).await;
    // The gauge is set by the daemon's one-second tick.
    daemon.wait_metric("fieldwatch_devices_tracked", 100).await;
    assert_eq!(daemon.metric("fieldwatch_devices_tracked").await, Some(100), "the registered one and 99 one-shots");
    let refused = daemon.metric("fieldwatch_rejected_messages_total{reason=\"too_many_devices\"}").await;
    assert_eq!(refused, Some(0));
    let (status, _) = daemon.get("/readyz").await.unwrap();
    assert_eq!(status, 200);
    // At the limit, the devices it tracks keep flowing.
    for i in 5..10 {
        p.send("comp-reg", t0 + i * 1000, normal(i)).await;
    }
    daemon.wait_metric("fieldwatch_readings_total", 310).await;
    assert_eq!(daemon.metric("fieldwatch_readings_total").await, Some(310), "5 more of the registered device");
    assert_eq!(daemon.metric("fieldwatch_devices_evicted_total").await, Some(201));
    // All go quiet: only the registered device is worth a silent-device ticket.
    daemon.wait_metric("fieldwatch_tickets_delivered_total{sink=\"api\"}", 1).await;
    // Then they are forgotten and their state is freed.
    for _ in 0..200 {
        if daemon.metric("fieldwatch_devices_tracked").await == Some(0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(daemon.metric("fieldwatch_devices_tracked").await, Some(0), "forgotten after decode.forget_after");
    let opens = bodies(&api).await.into_iter().filter(|c| c["action"] == "open").collect::<Vec<_>>();
    assert_eq!(opens.len(), 1, "{opens:?}");
    assert_eq!(opens[0]["ticket"]["device"], "comp-reg");
    // A new device is taken again once the old ones are forgotten.
    p.send("late-device", t0 + 10_000, 70.0).await;
    daemon.wait_metric("fieldwatch_readings_total", 110).await;
    println!(
        "FAULT flood: 300 one-shot ids, tracked=100 (limit), refused=201, registered device still stored at the limit (5/5), silent tickets=1 (registered device only), tracked after forget_after=0, peak RSS={} KiB",
        daemon.peak_rss_kib()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_series_are_refused_and_the_tracked_ones_keep_flowing() {
    let rig = Rig::new();
    let mut daemon = rig.config(None).extra("[decode]\nmax_series = 3\n").start().await;
    let p = Publisher::connect(rig.broker.port, "pub-series").await;
    let t0 = base_ts();
    let metrics = ["m1", "m2", "m3", "m4", "m5"];
    // One device, five metrics a message: three series are taken, two refused, every time.
    for i in 0..4 {
        let mut payload = serde_json::json!({ "ts": t0 + i * 1000 });
        for (k, m) in metrics.iter().enumerate() {
            payload[m] = serde_json::json!(10.0 * (k as f64 + 1.0) + i as f64 * 0.1);
        }
        p.raw("plant/site-1/comp-wide/telemetry", payload.to_string().into_bytes()).await;
    }
    daemon.wait_metric("fieldwatch_rejected_messages_total{reason=\"too_many_series\"}", 4).await;
    daemon.wait_metric("fieldwatch_readings_total", 12).await;
    // The gauge follows on the core's next tick (every second).
    daemon.wait_metric("fieldwatch_series_tracked", 3).await;
    // A second device has no room left for its series: refused whole.
    p.send("comp-late", t0, 70.0).await;
    daemon.wait_metric("fieldwatch_rejected_messages_total{reason=\"too_many_series\"}", 5).await;
    batches_committed(daemon.admin(), None).await;
    let refused = daemon.metric("fieldwatch_rejected_messages_total{reason=\"too_many_series\"}").await;
    assert_eq!(refused, Some(5), "one count per message that brought a refused series");
    assert_eq!(daemon.metric("fieldwatch_readings_total").await, Some(12), "3 series x 4 messages");
    assert_eq!(daemon.metric("fieldwatch_series_tracked").await, Some(3), "tracked = decode.max_series");
    let (_, rejected) = daemon.get("/api/rejected").await.unwrap();
    let rejected: Vec<serde_json::Value> = serde_json::from_str(&rejected).unwrap();
    assert_eq!(rejected.len(), 5, "{rejected:?}");
    assert!(rejected.iter().all(|r| r["reason"].as_str().unwrap().contains("decode.max_series")), "{rejected:?}");
    daemon.signal("TERM");
    assert!(daemon.wait().success());
    let stored = rig.stored();
    let series: HashSet<&str> = stored.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(series.len(), 3, "only the allowed series are stored: {series:?}");
    assert!(series.iter().all(|s| s.starts_with("comp-wide/")), "{series:?}");
    assert_eq!(stored.len(), 12, "each of them from every message: {stored:?}");
    println!(
        "FAULT series flood: 1 device x 5 metrics x 4 messages + 1 new device, max_series=3: tracked=3, stored=12 (3 series x 4), too_many_series=5, refused series stored=0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_acks_reports_it_and_resumes_without_loss() {
    if !nix_is_root() {
        println!("FAULT full-disk: skipped, mounting a small tmpfs needs root");
        return;
    }
    let rig = Rig::new();
    let mnt = rig.dir.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=12m", "tmpfs"])
        .arg(&mnt)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        println!("FAULT full-disk: skipped, cannot mount a tmpfs here");
        return;
    }
    let _unmount = Unmount(mnt.clone());
    // Under a watchdog of 2 s, as systemd runs it: pinged every second while batches commit.
    let notify = NotifySocket::bind(rig.dir.path());
    let config = rig.config(None).data_dir(&mnt.join("db"));
    let mut daemon = DaemonProcess::spawn(notify.watchdog(&config, Duration::from_secs(2)), &config);
    daemon.wait_metric("fieldwatch_mqtt_connected", 1).await;
    let pings = || notify.times_of("WATCHDOG=1");
    wait_until("two watchdog pings while healthy", || pings().len() >= 2).await;
    let p = Publisher::connect(rig.broker.port, "pub-full").await;
    let t0 = base_ts();
    let mut sent = 0i64;
    for i in 0..200 {
        p.send("comp-1", t0 + i * 1000, normal(i)).await;
        sent += 1;
    }
    daemon.wait_metric("fieldwatch_readings_total", 200).await;
    // Fill the disk, then keep publishing.
    let filler = mnt.join("filler");
    let _ = std::process::Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", filler.display()))
        .args(["bs=64k", "count=1000"])
        .stderr(std::process::Stdio::null())
        .status();
    for i in 200..3000 {
        p.send("comp-1", t0 + i * 1000, normal(i)).await;
        sent += 1;
    }
    daemon.wait_metric("fieldwatch_store_errors_total", 1).await;
    let failed_at = std::time::Instant::now();
    // Between a failed pipeline and the degraded endpoints there is a moment with no listener.
    let mut answer = (0, String::new());
    for _ in 0..200 {
        if let Some(a) = daemon.get("/readyz").await {
            let done = a.0 == 503 && a.1.contains("store cannot commit");
            answer = a;
            if done {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, body) = answer;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("store cannot commit"), "{body}");
    assert!(daemon.running(), "a full disk does not end the daemon");
    // The disk stays full for longer than the watchdog period: no ping in that time but one
    // that was already on its way.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(daemon.running());
    let freed_at = std::time::Instant::now();
    let while_full = pings().iter().filter(|&&t| t > failed_at && t < freed_at).count();
    assert!(while_full <= 1, "{while_full} watchdog pings while nothing committed; log:\n{}", daemon.log());
    // Space returns: it resumes by itself and stores everything.
    std::fs::remove_file(&filler).unwrap();
    let mut ready = false;
    for _ in 0..600 {
        if daemon.get("/readyz").await.is_some_and(|(s, _)| s == 200) {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "ready again once space returned; log:\n{}", daemon.log());
    daemon.wait_metric("fieldwatch_readings_total", sent as u64).await;
    wait_until("two watchdog pings once space returned", || pings().iter().filter(|&&t| t > freed_at).count() >= 2)
        .await;
    let errors = daemon.metric("fieldwatch_store_errors_total").await.unwrap();
    let healthy = pings().iter().filter(|&&t| t < failed_at).count();
    let resumed = pings().iter().filter(|&&t| t > freed_at).count();
    daemon.signal("TERM");
    assert!(daemon.wait().success());
    let store = fieldwatch::store::Store::open(&mnt.join("db"), 16, 10).unwrap();
    let stored = store.reading_count() as i64;
    assert_eq!(stored, sent, "every reading stored once");
    println!(
        "FAULT full-disk: sent={sent} stored={stored} lost={} store errors={errors}, resumed by itself | watchdog 2 s: pings healthy={healthy}, while full (3 s+)={while_full}, after space returned={resumed}",
        sent - stored
    );
}

fn nix_is_root() -> bool {
    std::process::Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Unmounts a test's tmpfs when the test ends, however it ends.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_config_and_a_bad_file_keeps_the_old_one() {
    let rig = Rig::new();
    let tickets = rig.dir.path().join("tickets.jsonl");
    let config = rig.config(None);
    // Without RUST_LOG, which would pin the log filter: daemon.log_level applies.
    let mut cmd = config.command(&[]);
    cmd.env_remove("RUST_LOG");
    let mut daemon = DaemonProcess::spawn(cmd, &config);
    daemon.wait_metric("fieldwatch_mqtt_connected", 1).await;
    let p = Publisher::connect(rig.broker.port, "pub-hup").await;
    let t0 = base_ts();
    // Readings around 70 °C are fine for comp-9 under the first config.
    for i in 0..5 {
        p.send("comp-9", t0 + i * 1000, normal(i)).await;
    }
    daemon.wait_metric("fieldwatch_readings_total", 5).await;
    batches_committed(daemon.admin(), None).await;
    assert_eq!(daemon.metric("fieldwatch_incidents_opened_total").await, Some(0));
    assert!(!daemon.log().contains(" DEBUG "), "the default log level has no debug lines");
    // Reload with a file sink, debug logging for fieldwatch and a limit of 60 °C for comp-9.
    let sink =
        format!("[[ticket.sinks]]\ntype = \"file\"\nname = \"file\"\npath = {:?}\n", tickets.display().to_string());
    let with_sink = config.extra(&sink).extra(
        "[daemon]\nlog_level = \"info,rumqttc=warn,fieldwatch=debug\"\n\
         [[detect.limits]]\nmetric = \"discharge_temp\"\ndevice = \"comp-9\"\nmax = 60.0\n",
    );
    with_sink.write();
    daemon.signal("HUP");
    daemon.wait_log("SIGHUP: configuration re-read").await;
    daemon.wait_metric("fieldwatch_mqtt_connected", 1).await;
    assert!(daemon.running(), "SIGHUP does not end the daemon");
    // The new log level: the pipeline's restart logs at debug (its subscription, for one).
    daemon.wait_log(" DEBUG fieldwatch").await;
    // The new limit: the same readings now open an incident.
    for i in 5..10 {
        p.send("comp-9", t0 + i * 1000, normal(i)).await;
    }
    daemon.wait_metric("fieldwatch_incidents_opened_total", 1).await;
    fault(&p, "comp-1", t0, 5).await;
    daemon.wait_metric("fieldwatch_incidents_opened_total", 2).await;
    let opened = |device: &str| {
        std::fs::read_to_string(&tickets).unwrap_or_default().lines().any(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap_or_default();
            v["action"] == "open" && l.contains(&format!("\"{device}\""))
        })
    };
    wait_until("the new sink has the tickets of comp-9 and comp-1", || opened("comp-9") && opened("comp-1")).await;
    daemon.wait_metric("fieldwatch_readings_total", 55).await;

    // An invalid file: logged, the running config stays.
    with_sink.extra("[incident]\ndebounce_readings = 0\n").write();
    daemon.signal("HUP");
    daemon.wait_log("keeping the running one").await;
    let log = daemon.log();
    assert!(log.contains("keeping the running one") && log.contains("incident.debounce_readings"), "{log}");
    assert!(daemon.running());
    p.send("comp-1", t0 + 45_000, 99.0).await;
    daemon.wait_metric("fieldwatch_readings_total", 56).await;
    daemon.signal("TERM");
    assert!(daemon.wait().success());
    println!(
        "FAULT sighup: reload applied (new sink delivered, log level raised to debug, a new limit opened an incident on readings that were fine), invalid file kept the old config, clean exit after TERM"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_broker_session_is_counted_and_warned_about() {
    let mut rig = Rig::new();
    let daemon = rig.config(None).start().await;
    assert_eq!(daemon.metric("fieldwatch_mqtt_sessions_lost_total").await, Some(0));
    // SIGKILL: mosquitto has not saved the session yet (its autosave_interval is 30 min).
    rig.broker.kill9();
    rig.broker.start_again();
    daemon.wait_metric("fieldwatch_mqtt_sessions_lost_total", 1).await;
    assert!(daemon.log().contains("lost our persistent session"));
    println!("FAULT session-lost: broker killed -9 and restarted, sessions_lost_total=1, warning logged");
}

/// The broker's PINGRESPs never arrive (a proxy swallows them), as when its answer waits behind
/// a backlog that takes longer than the keep-alive to drain. While messages keep coming the
/// link stays up and nothing is lost; once nothing at all comes back after a ping, the daemon
/// gives the link up within about two keep-alive periods, as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_answered_only_by_messages_keeps_the_link_and_silence_still_drops_it() {
    let rig = Rig::new();
    let proxy = BrokerTap::eating_pingresps(rig.broker.port).await;
    let config = DaemonConfig::new(proxy.port, rig.dir.path())
        .extra("[detect.models]\nenabled = false\n")
        .extra("[mqtt]\nkeep_alive = \"5s\"\n");
    let daemon = config.start().await;
    let publisher = Publisher::connect(rig.broker.port, "pinger").await;
    // 18 s of messages, 5 a second: three keep-alive periods, three unanswered pings.
    let t0 = fieldwatch::reading::now_ms() - 120_000;
    let n = 90i64;
    for i in 0..n {
        publisher.send("comp-1", t0 + i * 1000, 70.0).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    publisher.wait_acked_within(n as u64, Duration::from_secs(10)).await;
    daemon.wait_metric("fieldwatch_readings_total", n as u64).await;
    assert!(proxy.eaten() >= 2, "the test must have swallowed pings; it swallowed {}", proxy.eaten());
    let errors = daemon.metric("fieldwatch_mqtt_connection_errors_total").await;
    assert_eq!(errors, Some(0), "the link was dropped while messages answered the pings:\n{}", daemon.log());
    // Silence: the next ping gets nothing back, and the link is given up at the tick after it.
    let silent = std::time::Instant::now();
    daemon
        .wait_metric_within(
            "fieldwatch_mqtt_connection_errors_total",
            1,
            Duration::from_secs(20),
            Duration::from_millis(100),
        )
        .await;
    let waited = silent.elapsed();
    assert!(daemon.log().contains("pingreq"), "the link must be given up for the unanswered ping:\n{}", daemon.log());
    println!(
        "FAULT pings-unanswered: {} PINGRESPs swallowed, {n} sent, {n} stored, 0 reconnects while messages flowed; \
         silence detected after {:.1} s (keep-alive 5 s)",
        proxy.eaten(),
        waited.as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_timestamps_and_numbers_as_text_are_counted_not_dropped() {
    let rig = Rig::new();
    let mut daemon = rig.config(None).start().await;
    let p = Publisher::connect(rig.broker.port, "pub-bad").await;
    let t0 = base_ts();
    p.raw("plant/site-1/comp-1/telemetry", br#"{"ts": 86400000, "discharge_temp": 70.0}"#.to_vec()).await;
    let mixed = format!(r#"{{"ts": {t0}, "discharge_temp": 70.0, "pressure": "NaN"}}"#);
    p.raw("plant/site-1/comp-1/telemetry", mixed.into_bytes()).await;
    daemon.wait_metric("fieldwatch_rejected_messages_total{reason=\"too_old\"}", 1).await;
    daemon.wait_metric("fieldwatch_fields_ignored_total{reason=\"numeric_text\"}", 1).await;
    daemon.wait_metric("fieldwatch_readings_total", 1).await;
    assert_eq!(
        daemon.metric("fieldwatch_readings_total").await,
        Some(1),
        "the good reading beside it is stored, only it"
    );
    // A metric sent as a number, then as text that is no number: counted, the rest stored.
    let first = format!(r#"{{"ts": {t0}, "discharge_temp": 70.0, "pressure": 5.5}}"#);
    p.raw("plant/site-1/comp-2/telemetry", first.into_bytes()).await;
    let second = format!(r#"{{"ts": {}, "discharge_temp": 70.5, "pressure": "abc"}}"#, t0 + 1000);
    p.raw("plant/site-1/comp-2/telemetry", second.into_bytes()).await;
    daemon.wait_metric("fieldwatch_fields_ignored_total{reason=\"not_a_number\"}", 1).await;
    daemon.wait_metric("fieldwatch_readings_total", 4).await;
    batches_committed(daemon.admin(), None).await;
    assert_eq!(daemon.metric("fieldwatch_fields_ignored_total{reason=\"not_a_number\"}").await, Some(1));
    assert_eq!(daemon.metric("fieldwatch_fields_ignored_total{reason=\"numeric_text\"}").await, Some(1));
    assert_eq!(daemon.metric("fieldwatch_readings_total").await, Some(4), "1 + 2 + 1: only \"abc\" is not stored");
    assert_eq!(daemon.metric("fieldwatch_rejected_messages_total").await, Some(1), "only the 1970 message");
    daemon.signal("TERM");
    assert!(daemon.wait().success());
    let stored = rig.stored();
    assert!(stored.contains(&("comp-2/discharge_temp".to_string(), t0 + 1000)), "{stored:?}");
    assert!(stored.contains(&("comp-2/pressure".to_string(), t0)), "{stored:?}");
    assert!(!stored.contains(&("comp-2/pressure".to_string(), t0 + 1000)), "{stored:?}");
    println!(
        "FAULT bad-values: 1970 timestamp rejected as too_old, \"NaN\" counted as numeric_text, \"abc\" after a number counted as not_a_number, the good readings beside them kept (stored=4)"
    );
}

/// Publishes `n` messages per device from a background task, message `i` at `t0 + i * 1000`,
/// `pace` apart, the first `faulty` devices reading 99 from message `fault_from` on. The task returns how many it published,
/// after waiting (bounded) for the broker to acknowledge them. What the broker really took is
/// measured by an [`Observer`]: a publisher may lose messages of its own when the broker goes.
#[allow(clippy::too_many_arguments)]
fn publish_in_background(
    port: u16,
    id: &'static str,
    devices: Vec<String>,
    t0: i64,
    n: i64,
    pace: Duration,
    faulty: usize,
    fault_from: i64,
) -> tokio::task::JoinHandle<i64> {
    tokio::spawn(async move {
        let p = Publisher::persistent(port, id).await;
        let mut sent = 0;
        for i in 0..n {
            for (k, d) in devices.iter().enumerate() {
                let v = if k < faulty && i >= fault_from { 99.0 } else { normal(i) };
                p.send(d, t0 + i * 1000, v).await;
                sent += 1;
            }
            tokio::time::sleep(pace).await;
        }
        // Bounded, and no failure: what the broker lost when it went is measured elsewhere.
        for _ in 0..600 {
            if p.acked() >= sent {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        sent as i64
    })
}

/// A second subscriber with its own persistent session: the readings the broker accepted, the
/// ground truth the daemon's store is compared with.
struct Observer {
    seen: std::sync::Arc<std::sync::Mutex<HashSet<(String, i64)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Observer {
    async fn start(port: u16) -> Observer {
        let mut o = rumqttc::MqttOptions::new(format!("observer-{port}"), "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(10)).set_clean_session(false).set_inflight(100);
        let (client, mut eventloop) = rumqttc::AsyncClient::new(o, 1000);
        let seen = std::sync::Arc::new(std::sync::Mutex::new(HashSet::new()));
        let into = seen.clone();
        let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
        let mut subscribed_tx = Some(subscribed_tx);
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                        let _ = client.subscribe("plant/#", rumqttc::QoS::AtLeastOnce).await;
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                        if let Some(tx) = subscribed_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                        let device = p.topic.split('/').nth(2).unwrap_or_default().to_string();
                        let v: serde_json::Value = serde_json::from_slice(&p.payload).unwrap_or_default();
                        if let Some(ts) = v["ts"].as_i64() {
                            into.lock().unwrap().insert((format!("{device}/discharge_temp"), ts));
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        assert!(
            matches!(tokio::time::timeout(Duration::from_secs(10), subscribed).await, Ok(Ok(()))),
            "the observer could not subscribe"
        );
        Observer { seen, task }
    }

    /// What it has seen once it has stopped growing for three seconds (longer than a
    /// reconnect backoff of the test config).
    async fn settled(&self) -> HashSet<(String, i64)> {
        let mut last = usize::MAX;
        for _ in 0..40 {
            let n = self.seen.lock().unwrap().len();
            if n == last {
                break;
            }
            last = n;
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restarts_under_load_lose_nothing() {
    let mut rig = Rig::new();
    let mut daemon = rig.config(None).start().await;
    let observer = Observer::start(rig.broker.port).await;
    let devices: Vec<String> = (0..5).map(|k| format!("comp-{k}")).collect();
    let load = publish_in_background(
        rig.broker.port,
        "pub-load",
        devices,
        base_ts(),
        400,
        Duration::from_millis(5),
        0,
        i64::MAX,
    );
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        rig.broker.restart();
    }
    let published = load.await.unwrap();
    let accepted = observer.settled().await;
    for _ in 0..100 {
        if daemon.metric("fieldwatch_readings_total").await >= Some(accepted.len() as u64) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let dup = daemon.metric("fieldwatch_readings_duplicate_total").await.unwrap_or(0);
    daemon.signal("TERM");
    assert!(daemon.wait().success());
    let stored = rig.stored();
    let lost = accepted.difference(&stored).count();
    let mut missing: Vec<_> = accepted.difference(&stored).collect();
    missing.sort();
    assert_eq!(
        lost,
        0,
        "every reading the broker accepted is stored; missing {:?}\n{}\nbroker:\n{}",
        &missing[..missing.len().min(20)],
        daemon.log(),
        rig.broker.log()
    );
    assert!(stored.len() as i64 <= published, "and nothing else");
    println!(
        "FAULT broker-restart x2 under load: published={published} accepted by the broker={} stored={} lost={lost} redelivered (deduplicated)={dup}",
        accepted.len(),
        stored.len()
    );
}

/// Waits (bounded) until the broker, since it last started, has saved its database after all of
/// `clients` connected: a SIGKILL then loses only what came after that save.
async fn saved_with(broker: &Mosquitto, clients: &[&str]) {
    wait_until("the broker saved the sessions of its clients", || {
        let log = broker.log();
        let run = log.rsplit_once(" running\n").map_or("", |(_, r)| r);
        let connected = clients.iter().map(|c| run.find(&format!(" as {c} ")));
        let Some(last) = connected.collect::<Option<Vec<_>>>().and_then(|at| at.into_iter().max()) else {
            return false;
        };
        run[last..].contains("Saving in-memory database")
    })
    .await
}

/// The broker is SIGKILLed twice under load, some 300 ms after a save each time. What it took
/// from the publisher after its last save and had not yet sent on dies with it: mosquitto
/// acknowledges a QoS 1 message on receipt and holds it in memory until its next autosave, and
/// a message queued behind the subscriber's full in-flight window is not on the wire yet. No
/// subscriber can be held to those. What the daemon guarantees, and this test holds it to, is
/// that every reading it *read* from the broker is stored, once: a tap between the two records
/// each PUBLISH written to the daemon's socket, and which of them the daemon provably read (all
/// of a connection the broker ended; on one the daemon closed first, up to the last it
/// acknowledged there). The readings the broker lost are counted and printed, not asserted away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_sigkills_under_load_lose_nothing_the_broker_delivered() {
    // The broker saves its sessions and queues every second; killed, it loses what came after.
    let mut rig = Rig { broker: Mosquitto::start_autosaving(1), dir: tempfile::tempdir().unwrap() };
    let tap = BrokerTap::start(rig.broker.port).await;
    let config = DaemonConfig::new(tap.port, rig.dir.path()).extra("[detect.models]\nenabled = false\n");
    let mut daemon = config.start().await;
    let devices: Vec<String> = (0..5).map(|k| format!("comp-{k}")).collect();
    let t0 = base_ts();
    let expected = readings_of(&devices, t0, 600);
    // A persistent session: what the broker has not acknowledged is sent again when it is back.
    let load =
        publish_in_background(rig.broker.port, "pub-sigkill", devices, t0, 600, Duration::from_millis(8), 0, i64::MAX);
    // Killed mid-load, each time some 300 ms after a save that holds both clients' sessions.
    for _ in 0..2 {
        saved_with(&rig.broker, &["pub-sigkill", config.client_id()]).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!load.is_finished(), "killed under load");
        rig.broker.kill9();
        rig.broker.start_again();
    }
    let sent = load.await.unwrap();
    assert_eq!(sent as usize, expected.len());
    // Until the broker has delivered no more for a second and the daemon has counted as many
    // readings as were delivered (a daemon that lost some never gets there: bounded, 30 s).
    let mut last_delivered = usize::MAX;
    for _ in 0..30 {
        let delivered = readings_in(&tap.received()).len();
        let stored = daemon.metric("fieldwatch_readings_total").await.unwrap_or(0);
        if delivered == last_delivered && stored >= delivered as u64 {
            break;
        }
        last_delivered = delivered;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let redelivered = daemon.metric("fieldwatch_readings_duplicate_total").await.unwrap_or(0);
    let sessions_lost = daemon.metric("fieldwatch_mqtt_sessions_lost_total").await.unwrap_or(0);
    daemon.signal("TERM");
    assert!(daemon.wait().success());
    // What the daemon provably read (see `BrokerTap::received`), and what was only written to
    // a socket the daemon was closing: the broker still owed those, and lost them only if it
    // died before it saved them.
    let delivered = readings_in(&tap.received());
    let written = readings_in(&tap.delivered());
    let (stored, doubled) = rig.stored_and_doubled();
    let mut missing: Vec<_> = delivered.difference(&stored).collect();
    missing.sort();
    let lost_by_broker = expected.difference(&delivered).filter(|r| !stored.contains(r)).count();
    let unread = written.difference(&delivered).filter(|r| !stored.contains(r)).count();
    println!(
        "FAULT broker SIGKILL x2 under load (autosave_interval 1, killed ~300 ms after a save): sent={sent} delivered={} stored={} lost by the daemon={} lost by the broker={lost_by_broker} (of which written to a connection the daemon closed first={unread}) doubled={doubled} redelivered (deduplicated)={redelivered} sessions_lost={sessions_lost}",
        delivered.len(),
        stored.len(),
        missing.len(),
    );
    assert!(
        missing.is_empty(),
        "every reading the daemon read from the broker is stored; missing {:?}\ntap:\n{}\ndaemon:\n{}\nbroker:\n{}",
        &missing[..missing.len().min(20)],
        tap.explain(|topic, payload| {
            readings_in(&[(topic.to_string(), payload.to_vec())]).iter().any(|r| missing.contains(&r))
        }),
        daemon.log(),
        rig.broker.log()
    );
    assert!(stored.is_subset(&expected), "nothing but what was sent is stored");
    assert_eq!(doubled, 0, "none stored twice");
    assert_eq!(sessions_lost, 0, "the broker kept both sessions: it was killed after a save that held them");
}

/// The (`device/metric`, ts) of the test publisher's readings in `messages` (topic, payload).
fn readings_in(messages: &[(String, Vec<u8>)]) -> HashSet<(String, i64)> {
    messages
        .iter()
        .filter_map(|(topic, payload)| {
            let device = topic.split('/').nth(2)?;
            let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
            Some((format!("{device}/discharge_temp"), v["ts"].as_i64()?))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_sigkills_under_load_with_incidents_open() {
    let rig = Rig::new();
    let api = ticket_api().await;
    let config = rig.config(Some(&api));
    let daemon = config.start().await;
    let observer = Observer::start(rig.broker.port).await;
    let devices: Vec<String> = (0..4).map(|k| format!("comp-{k}")).collect();
    // comp-0 is faulty from reading 60 on: one incident, open throughout the kills.
    let load =
        publish_in_background(rig.broker.port, "pub-kill", devices, base_ts(), 400, Duration::from_millis(10), 1, 60);
    daemon.wait_metric("fieldwatch_incidents_opened_total", 1).await;
    daemon.kill9();
    let mut peak = 0;
    for _ in 0..2 {
        let d = config.start().await;
        tokio::time::sleep(Duration::from_millis(800)).await;
        peak = peak.max(d.peak_rss_kib());
        d.kill9();
    }
    let mut last = config.start().await;
    let published = load.await.unwrap();
    let accepted = observer.settled().await;
    last.wait_metric("fieldwatch_readings_total", 1).await;
    last.wait_metric("fieldwatch_mqtt_connected", 1).await;
    // Wait until the broker's backlog is drained (messages stop arriving) and the outbox is empty.
    let mut last_seen = None;
    for _ in 0..120 {
        let seen = last.metric("fieldwatch_messages_total").await;
        let depth = last.metric("fieldwatch_outbox_depth{sink=\"api\"}").await;
        if seen.is_some() && seen == last_seen && depth == Some(0) {
            break;
        }
        last_seen = seen;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    peak = peak.max(last.peak_rss_kib());
    let redelivered = last.metric("fieldwatch_readings_duplicate_total").await.unwrap_or(0);
    last.signal("TERM");
    assert!(last.wait().success());
    let (stored, doubled) = rig.stored_and_doubled();
    let lost = accepted.difference(&stored).count();
    let (opens, open_requests) = keys_of(&api, "open").await;
    assert_eq!(lost, 0, "every accepted reading stored across three SIGKILLs; log:\n{}", last.log());
    assert_eq!(doubled, 0, "none stored twice");
    assert_eq!(accepted.len() as i64, published, "the broker took everything (it stayed up)");
    assert_eq!(opens.len(), 1, "one incident, one ticket: {opens:?}");
    let per_device: HashMap<String, usize> =
        bodies(&api).await.iter().filter(|c| c["action"] == "open").fold(HashMap::new(), |mut m, c| {
            *m.entry(c["ticket"]["device"].as_str().unwrap_or_default().to_string()).or_default() += 1;
            m
        });
    assert_eq!(per_device.get("comp-0"), Some(&open_requests));
    println!(
        "FAULT sigkill x3 under load: sent={published} stored={} lost={lost} doubled={doubled} (redelivered after the last start, deduplicated={redelivered}) | tickets expected=1 delivered={} duplicated=0 (requests={open_requests}) | peak RSS={peak} KiB",
        stored.len(),
        opens.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_api_that_refuses_then_stalls_then_recovers_gets_each_ticket_once() {
    let rig = Rig::new();
    let api = MockServer::start().await;
    Mock::given(method("POST")).respond_with(ResponseTemplate::new(503)).mount(&api).await;
    let daemon = rig.config(Some(&api)).start().await;
    let p = Publisher::connect(rig.broker.port, "pub-api").await;
    let t0 = base_ts();
    for k in 0..3 {
        let d = format!("comp-{k}");
        for i in 0..40 {
            p.send(&d, t0 + i * 1000, normal(i)).await;
        }
        for i in 40..45 {
            p.send(&d, t0 + i * 1000, 99.0).await;
        }
    }
    daemon.wait_metric("fieldwatch_incidents_opened_total", 3).await;
    daemon.wait_metric("fieldwatch_ticket_attempts_failed_total{sink=\"api\"}", 3).await;
    // Slow: answers after the sink's 1 s timeout. A mock of higher priority (a lower number)
    // takes over without a moment in which nothing answers.
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(201).set_delay(Duration::from_secs(2)))
        .with_priority(2)
        .mount(&api)
        .await;
    let failed = daemon.metric("fieldwatch_ticket_attempts_failed_total{sink=\"api\"}").await.unwrap();
    daemon.wait_metric("fieldwatch_ticket_attempts_failed_total{sink=\"api\"}", failed + 2).await;
    let before_recovery = bodies(&api).await.len();
    Mock::given(method("POST")).respond_with(ResponseTemplate::new(201)).with_priority(1).mount(&api).await;
    daemon.wait_metric("fieldwatch_tickets_delivered_total{sink=\"api\"}", 3).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (keys, requests) = keys_of(&api, "open").await;
    assert_eq!(keys.len(), 3, "three incidents, three tickets: {keys:?}");
    assert_eq!(daemon.metric("fieldwatch_tickets_delivered_total{sink=\"api\"}").await, Some(3));
    assert_eq!(daemon.metric("fieldwatch_tickets_dead_lettered_total{sink=\"api\"}").await.unwrap_or(0), 0);
    let stalled = before_recovery;
    println!(
        "FAULT ticket API 503 → slow → up: tickets expected=3 delivered=3 duplicated=0 ({requests} requests in all, {stalled} before recovery; retries carry the same keys)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_with_a_slow_sink_keeps_memory_bounded() {
    let rig = Rig::new();
    let api = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(201).set_delay(Duration::from_millis(300)))
        .mount(&api)
        .await;
    let mut daemon = rig.config(Some(&api)).start().await;
    let devices: Vec<String> = (0..50).map(|k| format!("comp-{k}")).collect();
    let t0 = base_ts();
    let expected = readings_of(&devices, t0, 200);
    let load = publish_in_background(rig.broker.port, "pub-flood-slow", devices, t0, 200, Duration::ZERO, 50, 100);
    let sent = load.await.unwrap();
    assert_eq!(sent as usize, expected.len());
    daemon.wait_metric("fieldwatch_readings_total", sent as u64).await;
    let peak = daemon.peak_rss_kib();
    let depth = daemon.metric("fieldwatch_outbox_depth{sink=\"api\"}").await.unwrap_or(0);
    let redelivered = daemon.metric("fieldwatch_readings_duplicate_total").await.unwrap_or(0);
    daemon.signal("TERM");
    assert!(daemon.wait().success());
    let (stored, doubled) = rig.stored_and_doubled();
    let lost = expected.difference(&stored).count();
    assert_eq!(lost, 0, "every reading sent is stored");
    assert_eq!(stored.len(), expected.len(), "and nothing else");
    assert_eq!(doubled, 0, "each once");
    assert!(peak < 200 * 1024, "peak RSS {peak} KiB");
    println!(
        "FAULT flood with a slow sink (300 ms per ticket): sent={sent} stored={} lost={lost} doubled={doubled} redelivered (deduplicated)={redelivered}, outbox depth at the end={depth}, peak RSS={peak} KiB",
        stored.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_resolve_of_a_recurring_incident_has_its_own_key() {
    let rig = Rig::new();
    let api = ticket_api().await;
    let daemon = rig.config(Some(&api)).extra("[incident]\nquiet_period = \"20s\"\n").start().await;
    let p = Publisher::connect(rig.broker.port, "pub-recur").await;
    let t0 = base_ts();
    // Healthy, faulty, healthy for longer than the quiet period (event time), and again.
    let phases = [(0, 40, false), (40, 45, true), (45, 80, false), (80, 85, true), (85, 120, false)];
    for (from, to, faulty) in phases {
        for i in from..to {
            p.send("comp-1", t0 + i * 1000, if faulty { 99.0 } else { normal(i) }).await;
        }
    }
    daemon.wait_metric("fieldwatch_incidents_resolved_total", 2).await;
    for _ in 0..200 {
        if keys_of(&api, "resolve").await.1 >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (resolves, requests) = keys_of(&api, "resolve").await;
    assert_eq!(requests, 2, "{:?}", bodies(&api).await);
    assert_eq!(resolves.len(), 2, "two resolves, two keys: {resolves:?}");
    let (opens, _) = keys_of(&api, "open").await;
    assert_eq!(opens.len(), 1, "the recurrence reopened the same ticket");
    println!("FAULT recurrence: open=1, resolves=2 with distinct keys {resolves:?}");
}

/// Raises this process's open-file limit to its hard limit (a thousand client sockets).
fn raise_open_file_limit() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// A thousand connections that send a request's first header lines and never finish it cannot
/// hold the admin port: `/readyz` answers at once (the cap evicts the oldest slow connection
/// for each new one), every slow connection is closed within the header timeout, and the
/// daemon's open files come back to where they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_header_connections_cannot_hold_the_admin_port() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    raise_open_file_limit();
    let rig = Rig::new();
    let daemon = rig.config(None).start().await;
    daemon.wait_metric("fieldwatch_mqtt_connected", 1).await;
    let baseline = daemon.metric("process_open_fds").await.expect("process_open_fds");
    let mut slow = Vec::new();
    for _ in 0..1000 {
        let mut s = tokio::net::TcpStream::connect(daemon.admin()).await.expect("connect");
        s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\n").await.expect("write");
        slow.push(s);
    }
    // Within the 1 s a health check allows (systemd's or Prometheus' timeout is longer).
    let client = reqwest::Client::builder().timeout(Duration::from_secs(1)).build().unwrap();
    let ready =
        client.get(format!("http://{}/readyz", daemon.admin())).send().await.expect("readyz answered within 1 s");
    assert_eq!(ready.status(), 200);
    // Every slow connection is closed by the daemon: evicted at once or at the header timeout.
    let closed_within = fieldwatch::admin::HEADER_TIMEOUT + Duration::from_secs(5);
    let all_closed = tokio::time::timeout(closed_within, async {
        for s in &mut slow {
            let mut buf = [0u8; 256];
            // EOF or a reset; an answer would mean the request was served, which it cannot be.
            while let Ok(n) = s.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        }
    })
    .await;
    assert!(all_closed.is_ok(), "slow connections still open after {closed_within:?}");
    drop(slow);
    let mut fds = None;
    for _ in 0..20 {
        fds = daemon.metric("process_open_fds").await;
        if fds.is_some_and(|f| f <= baseline + 2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(fds.is_some_and(|f| f <= baseline + 2), "open fds {fds:?}, {baseline} before");
    println!("FAULT slow headers: 1000 connections, /readyz answered, all closed within {closed_within:?}, open fds {baseline} -> {fds:?}");
}

/// A flood of junk device ids (one message each) fills the device table, yet a real new device
/// gets in with its first message: the devices that never came back are evicted for it, the
/// eviction is counted, and the table stays at its limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_junk_device_ids_does_not_lock_a_real_device_out() {
    let rig = Rig::new();
    let config = rig.config(None).extra("[decode]\nmax_devices = 500\n");
    let mut daemon = config.start().await;
    let p = Publisher::connect(rig.broker.port, "pub-junk").await;
    let t0 = base_ts();
    let junk = 5_000u64;
    for i in 0..junk {
        p.send(&format!("junk-{i}"), t0, normal(i as i64)).await;
    }
    p.wait_acked_within(junk, Duration::from_secs(60)).await;
    daemon.wait_metric("fieldwatch_messages_total", junk).await;
    // A real device, every 10 s of event time.
    for i in 0..6 {
        p.send("newcomer", t0 + i * 10_000, normal(i)).await;
    }
    daemon.wait_metric("fieldwatch_messages_total", junk + 6).await;
    let evicted = daemon.metric("fieldwatch_devices_evicted_total").await.unwrap_or(0);
    let tracked = daemon.metric("fieldwatch_devices_tracked").await;
    let refused = daemon.metric("fieldwatch_rejected_messages_total{reason=\"too_many_devices\"}").await;
    assert!(daemon.log().contains("evicting devices that sent one message"), "the eviction is logged");
    daemon.signal("TERM");
    assert!(daemon.wait().success());
    let stored = rig.stored();
    let newcomer = stored.iter().filter(|(s, _)| s == "newcomer/discharge_temp").count();
    assert_eq!(newcomer, 6, "every reading of the real device is stored");
    assert!(evicted >= junk + 1 - 500, "junk devices were evicted: {evicted}");
    assert!(tracked.is_some_and(|t| t <= 500), "the table stays at its limit: {tracked:?}");
    assert_eq!(refused, Some(0), "no device was refused");
    println!("FAULT junk ids: {junk} one-message ids with max_devices = 500, then a real device: its 6 readings stored, evicted={evicted}, tracked={tracked:?}, refused=0");
}
