//! End-to-end figures through real parts: a `mosquitto` process, the daemon in this process on
//! a sled directory on disk, and a wiremock HTTP server as the ticket API.
//!
//! - throughput: readings per second from the first publish until every reading is durably
//!   stored (flushed) and acknowledged, for several `store.batch_max` values;
//! - latency: from publishing the reading that completes an incident's debounce to the moment
//!   the ticket API receives that device's ticket;
//! - memory: growth of this process's resident set per device.
//!
//! Run with `cargo bench --bench e2e`. Sizes come from the environment (defaults in brackets):
//! `FW_BENCH_DEVICES` [200], `FW_BENCH_MESSAGES` [250 per device], `FW_BENCH_BATCH_MAX`
//! [64,512], `FW_BENCH_LATENCY_DEVICES` [20], `FW_BENCH_MEMORY_DEVICES` [1000,5000],
//! `FW_BENCH_MEMORY_MESSAGES` [80 per device], `FW_BENCH_MEMORY_CACHE_MB` [64, the shipped
//! store.cache_mb], `FW_BENCH_BROKER_INFLIGHT` [1000] and
//! `FW_BENCH_PHASES` [memory,throughput,latency]. The summary is printed and written as
//! markdown to `target/bench-e2e.md`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fieldwatch::config::Config;
use fieldwatch::metrics::Metrics;
use fieldwatch::reading::now_ms;
use fieldwatch::sim::{Simulator, METRICS};
use fieldwatch::ticket::webhook::WebhookConfig;
use fieldwatch::ticket::SinkConfig;
use fieldwatch::Daemon;

#[path = "../tests/common/mod.rs"]
mod common;
use common::{find_mosquitto, proc_status_kib, wait_until_within, DaemonConfig, Mosquitto, Publisher};
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

/// What to run, from the environment.
struct Params {
    devices: usize,
    messages: usize,
    batch_max: Vec<usize>,
    latency_devices: usize,
    memory_devices: Vec<usize>,
    memory_messages: usize,
    /// `store.cache_mb` of the memory phase (sled's page cache counts in the resident set).
    memory_cache_mb: u64,
    broker_inflight: usize,
    phases: Vec<String>,
}

fn env_list(name: &str, default: &str) -> Vec<String> {
    std::env::var(name)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

fn env_numbers(name: &str, default: &str) -> Vec<usize> {
    env_list(name, default)
        .iter()
        .map(|s| s.parse().unwrap_or_else(|_| panic!("{name}: `{s}` is not a number")))
        .collect()
}

fn env_number(name: &str, default: usize) -> usize {
    env_numbers(name, &default.to_string())[0]
}

impl Params {
    fn from_env() -> Params {
        Params {
            devices: env_number("FW_BENCH_DEVICES", 200),
            messages: env_number("FW_BENCH_MESSAGES", 250),
            batch_max: env_numbers("FW_BENCH_BATCH_MAX", "64,512"),
            latency_devices: env_number("FW_BENCH_LATENCY_DEVICES", 20),
            memory_devices: env_numbers("FW_BENCH_MEMORY_DEVICES", "1000,5000"),
            memory_messages: env_number("FW_BENCH_MEMORY_MESSAGES", 80),
            memory_cache_mb: env_number("FW_BENCH_MEMORY_CACHE_MB", 64) as u64,
            broker_inflight: env_number("FW_BENCH_BROKER_INFLIGHT", 1000),
            phases: env_list("FW_BENCH_PHASES", "memory,throughput,latency"),
        }
    }

    fn runs(&self, phase: &str) -> bool {
        self.phases.iter().any(|p| p == phase)
    }
}

/// The shipped defaults, pointed at the bench's broker, directory and ticket API.
fn config(port: u16, dir: &Path, batch_max: usize, sinks: Vec<SinkConfig>) -> Config {
    let fast = format!(
        "[mqtt]\nreconnect_min = \"100ms\"\nreconnect_max = \"1s\"\n[store]\nbatch_max = {batch_max}\n\
         [ticket]\nretry_min = \"100ms\"\nretry_max = \"1s\"\n[admin]\nlisten = \"\"\n"
    );
    let mut c = DaemonConfig::shipped(port, dir).data_dir(dir).extra(&fast).config();
    c.ticket.sinks = sinks;
    c
}

/// Waits until the daemon has stored `target` readings; reports progress while it waits and
/// gives up after `limit`, saying how far it got.
async fn wait_for_readings(m: &Metrics, target: usize, limit: Duration) {
    let start = Instant::now();
    let mut report = start + Duration::from_secs(10);
    loop {
        let now = m.readings.get() as usize;
        if now >= target {
            return;
        }
        let t = Instant::now();
        assert!(t < start + limit, "timed out after {limit:?}: {now} of {target} readings stored");
        if t >= report {
            eprintln!("  ... {now} of {target} readings stored");
            report = t + Duration::from_secs(10);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Publishes probes until the daemon has stored one: then it is connected and subscribed.
async fn until_subscribed(p: &Publisher, m: &Metrics) {
    let before = m.readings.get();
    let end = Instant::now() + Duration::from_secs(30);
    while m.readings.get() == before {
        assert!(Instant::now() < end, "the daemon never received a probe");
        let payload = serde_json::json!({ "ts": now_ms(), "probe": 1.0 }).to_string();
        p.raw("plant/bench/probe/telemetry", payload.into_bytes()).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Messages and seconds spent in group commits, from the daemon's histogram.
fn commit_totals(m: &Metrics) -> (f64, f64) {
    let text = m.render(fieldwatch::metrics::Format::Text);
    let value = |name: &str| text.lines().find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok()).unwrap_or(0.0);
    (value("fieldwatch_batch_commit_seconds_count"), value("fieldwatch_batch_commit_seconds_sum"))
}

/// A history start time: whole seconds, far enough back for every message of a run.
fn history_start(messages: usize) -> i64 {
    now_ms() / 1000 * 1000 - (messages as i64 + 3600) * 1000
}

struct Throughput {
    batch_max: usize,
    messages: usize,
    readings: usize,
    publish: Duration,
    total: Duration,
    batches: f64,
    commit_seconds: f64,
}

async fn throughput(p: &Params, batch_max: usize) -> Throughput {
    let broker = Mosquitto::for_load(p.broker_inflight);
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(config(broker.port, dir.path(), batch_max, vec![])).await.unwrap();
    let m = daemon.metrics().clone();
    let publisher = Publisher::connect_with(broker.port, "bench-throughput", 1000).await;
    until_subscribed(&publisher, &m).await;

    // Payloads are built before the clock starts: the figure is the pipeline's, not JSON's.
    let mut sim = Simulator::new(p.devices, Vec::new(), 11);
    let t0 = history_start(p.messages);
    let topics: Vec<String> = (0..p.devices).map(|d| sim.topic(d)).collect();
    let mut payloads = Vec::with_capacity(p.devices * p.messages);
    for i in 0..p.messages {
        for d in 0..p.devices {
            payloads.push((d, sim.payload(d, t0 + i as i64 * 1000)));
        }
    }
    let messages = payloads.len();
    let readings = messages * METRICS.len();
    let base = m.readings.get() as usize;
    let (batches0, seconds0) = commit_totals(&m);

    let start = Instant::now();
    for (d, payload) in payloads {
        publisher.raw(&topics[d], payload).await;
    }
    let publish = start.elapsed();
    wait_for_readings(&m, base + readings, Duration::from_secs(900)).await;
    let total = start.elapsed();
    let (batches1, seconds1) = commit_totals(&m);
    drop(publisher);
    daemon.shutdown().await;
    Throughput {
        batch_max,
        messages,
        readings,
        publish,
        total,
        batches: batches1 - batches0,
        commit_seconds: seconds1 - seconds0,
    }
}

/// Records when the ticket API first received an `open` ticket for each device.
#[derive(Clone, Default)]
struct Arrivals(Arc<Mutex<HashMap<String, Instant>>>);

impl Respond for Arrivals {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let at = Instant::now();
        if let Ok(body) = serde_json::from_slice::<serde_json::Value>(&request.body) {
            if body["action"] == "open" {
                if let Some(device) = body["ticket"]["device"].as_str() {
                    self.0.lock().unwrap().entry(device.to_string()).or_insert(at);
                }
            }
        }
        ResponseTemplate::new(201)
    }
}

struct Latency {
    samples: Vec<Duration>,
}

/// A device's payload with `discharge_temp` raised by `jump`.
fn payload_with_jump(sim: &mut Simulator, d: usize, ts: i64, jump: f64) -> Vec<u8> {
    let mut obj = serde_json::Map::new();
    obj.insert("ts".into(), ts.into());
    for (i, (spec, v)) in METRICS.iter().zip(sim.values(d, ts)).enumerate() {
        let v = if i == 0 { v + jump } else { v };
        obj.insert(spec.name.into(), v.into());
    }
    serde_json::Value::Object(obj).to_string().into_bytes()
}

async fn latency(p: &Params) -> Latency {
    let broker = Mosquitto::for_load(p.broker_inflight);
    let api = MockServer::start().await;
    let arrivals = Arrivals::default();
    Mock::given(method("POST")).respond_with(arrivals.clone()).mount(&api).await;
    let sink = SinkConfig::Webhook(WebhookConfig {
        name: "api".into(),
        url: format!("{}/tickets", api.uri()),
        token: None,
        timeout: Duration::from_secs(2),
    });
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(config(broker.port, dir.path(), 512, vec![sink])).await.unwrap();
    let m = daemon.metrics().clone();
    let publisher = Publisher::connect_with(broker.port, "bench-latency", 1000).await;
    until_subscribed(&publisher, &m).await;

    let n = p.latency_devices;
    let warmup = 100usize; // past the default warm-up of 60 readings per series
    let mut sim = Simulator::new(n, Vec::new(), 13);
    let t0 = history_start(warmup + 10);
    let base = m.readings.get() as usize;
    for i in 0..warmup {
        for d in 0..n {
            let payload = sim.payload(d, t0 + i as i64 * 1000);
            publisher.raw(&sim.topic(d), payload).await;
        }
    }
    let stored = base + warmup * n * METRICS.len();
    wait_for_readings(&m, stored, Duration::from_secs(120)).await;

    // One device at a time, on an otherwise idle daemon: two anomalous readings, then the one
    // that completes the default debounce of three.
    let mut samples = Vec::with_capacity(n);
    for d in 0..n {
        let ts = |k: usize| t0 + (warmup + k) as i64 * 1000;
        let before = m.readings.get() as usize;
        for k in 0..2 {
            let payload = payload_with_jump(&mut sim, d, ts(k), 30.0);
            publisher.raw(&sim.topic(d), payload).await;
        }
        wait_until_within("the first anomalies are stored", Duration::from_secs(10), Duration::from_millis(1), || {
            m.readings.get() as usize >= before + 2 * METRICS.len()
        })
        .await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let payload = payload_with_jump(&mut sim, d, ts(2), 30.0);
        let device = sim.devices[d].clone();
        let published = Instant::now();
        publisher.raw(&sim.topic(d), payload).await;
        let end = Instant::now() + Duration::from_secs(10);
        let arrived = loop {
            if let Some(at) = arrivals.0.lock().unwrap().get(&device) {
                break *at;
            }
            assert!(Instant::now() < end, "no ticket for {device}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        samples.push(arrived.duration_since(published));
    }
    drop(publisher);
    daemon.shutdown().await;
    Latency { samples }
}

/// Resident set of this process, in KiB.
fn rss_kib() -> u64 {
    proc_status_kib("self", "VmRSS:")
}

struct Memory {
    baseline_kib: u64,
    /// (devices, RSS KiB, seconds to feed them)
    points: Vec<(usize, u64, f64)>,
    messages_per_device: usize,
}

async fn memory(p: &Params) -> Memory {
    let broker = Mosquitto::for_load(p.broker_inflight);
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(broker.port, dir.path(), 512, vec![]);
    c.store.cache_mb = p.memory_cache_mb;
    let daemon = Daemon::start(c).await.unwrap();
    let m = daemon.metrics().clone();
    let publisher = Publisher::connect_with(broker.port, "bench-memory", 1000).await;
    until_subscribed(&publisher, &m).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let baseline_kib = rss_kib();

    let most = p.memory_devices.iter().copied().max().unwrap_or(0);
    let mut sim = Simulator::new(most, Vec::new(), 17);
    let t0 = history_start(p.memory_messages);
    let mut points = Vec::new();
    let mut fed = 0;
    for &target in &p.memory_devices {
        let started = Instant::now();
        let base = m.readings.get() as usize;
        // Payloads are made as they are sent, so the bench's own buffers stay small.
        for i in 0..p.memory_messages {
            for d in fed..target {
                let payload = sim.payload(d, t0 + i as i64 * 1000);
                publisher.raw(&sim.topic(d), payload).await;
            }
        }
        let readings = (target - fed) * p.memory_messages * METRICS.len();
        wait_for_readings(&m, base + readings, Duration::from_secs(900)).await;
        let took = started.elapsed().as_secs_f64();
        tokio::time::sleep(Duration::from_millis(500)).await;
        points.push((target, rss_kib(), took));
        fed = target;
    }
    drop(publisher);
    daemon.shutdown().await;
    Memory { baseline_kib, points, messages_per_device: p.memory_messages }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

fn thousands(n: f64) -> String {
    let s = format!("{:.0}", n);
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn report(p: &Params, t: &[Throughput], l: Option<&Latency>, mem: Option<&Memory>) -> String {
    let mut md = String::new();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let _ = writeln!(md, "## End to end (mosquitto → fieldwatch → ticket API)\n");
    let _ = writeln!(
        md,
        "Machine: {cores} cores, {cpu}. mosquitto is a separate process (max_inflight_messages \
         {}, persistence off); the daemon, the publishing client and the ticket API (wiremock) \
         share this process and a tokio runtime with 2 worker threads. sled on a temporary \
         directory on disk; the daemon's shipped defaults unless stated.\n",
        p.broker_inflight
    );
    if !t.is_empty() {
        let _ = writeln!(
            md,
            "### Throughput: publish → stored, flushed and acknowledged\n\n\
             {} devices × {} messages × {} metrics, QoS 1, history timestamps, as fast as one \
             publisher goes.\n",
            p.devices,
            p.messages,
            METRICS.len()
        );
        let _ = writeln!(
            md,
            "| store.batch_max | messages | readings | publish done (s) | all stored (s) | messages/s | readings/s | batches | mean batch (msgs) | mean commit (ms) |"
        );
        let _ = writeln!(md, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for r in t {
            let secs = r.total.as_secs_f64();
            let _ = writeln!(
                md,
                "| {} | {} | {} | {:.2} | {:.2} | {} | {} | {:.0} | {:.0} | {:.2} |",
                r.batch_max,
                r.messages,
                r.readings,
                r.publish.as_secs_f64(),
                secs,
                thousands(r.messages as f64 / secs),
                thousands(r.readings as f64 / secs),
                r.batches,
                r.messages as f64 / r.batches.max(1.0),
                r.commit_seconds * 1000.0 / r.batches.max(1.0),
            );
        }
        let _ = writeln!(md);
    }
    if let Some(l) = l {
        let mut s = l.samples.clone();
        s.sort();
        let _ = writeln!(
            md,
            "### Latency: publish of the debounce-completing reading → ticket received\n\n\
             {} devices, one at a time on an idle daemon (batch_linger 20 ms, debounce 3 readings), \
             webhook sink.\n",
            s.len()
        );
        let _ = writeln!(md, "| samples | min (ms) | p50 (ms) | p95 (ms) | max (ms) |");
        let _ = writeln!(md, "|---:|---:|---:|---:|---:|");
        if !s.is_empty() {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} |\n",
                s.len(),
                ms(s[0]),
                ms(percentile(&s, 50.0)),
                ms(percentile(&s, 95.0)),
                ms(s[s.len() - 1])
            );
        }
    }
    if let Some(mem) = mem {
        let _ = writeln!(
            md,
            "### Memory: resident set of the daemon's process per device\n\n\
             {} metrics × {} messages per device (past the baselines' warm-up); VmRSS of this \
             process, which holds the daemon and the publishing client but not the broker. \
             Includes sled's page cache (store.cache_mb = {}).\n",
            METRICS.len(),
            mem.messages_per_device,
            p.memory_cache_mb
        );
        let _ = writeln!(
            md,
            "| devices | series | RSS (MiB) | Δ from 0 devices (MiB) | KiB per device | marginal KiB per device | feed time (s) |"
        );
        let _ = writeln!(md, "|---:|---:|---:|---:|---:|---:|---:|");
        let _ = writeln!(md, "| 0 | 0 | {:.1} | – | – | – | – |", mem.baseline_kib as f64 / 1024.0);
        let mut prev = (0usize, mem.baseline_kib);
        for &(devices, rss, took) in &mem.points {
            let delta = rss.saturating_sub(mem.baseline_kib);
            let marginal = rss.saturating_sub(prev.1) as f64 / (devices - prev.0).max(1) as f64;
            let _ = writeln!(
                md,
                "| {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
                devices,
                devices * METRICS.len(),
                rss as f64 / 1024.0,
                delta as f64 / 1024.0,
                delta as f64 / devices.max(1) as f64,
                marginal,
                took
            );
            prev = (devices, rss);
        }
        let _ = writeln!(md);
    }
    md
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if find_mosquitto().is_none() {
        println!("e2e bench skipped: mosquitto not found in PATH or /usr/sbin (apt-get install mosquitto)");
        return;
    }
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let p = Params::from_env();

    // Memory first, while the heap has not yet been grown by the other phases.
    let mem = if p.runs("memory") {
        eprintln!("memory: {:?} devices", p.memory_devices);
        Some(memory(&p).await)
    } else {
        None
    };
    let mut t = Vec::new();
    if p.runs("throughput") {
        for &b in &p.batch_max {
            eprintln!("throughput: batch_max {b}");
            t.push(throughput(&p, b).await);
        }
    }
    let l = if p.runs("latency") {
        eprintln!("latency: {} devices", p.latency_devices);
        Some(latency(&p).await)
    } else {
        None
    };

    let md = report(&p, &t, l.as_ref(), mem.as_ref());
    println!("\n{md}");
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    let out = target.join("bench-e2e.md");
    match std::fs::write(&out, &md) {
        Ok(()) => println!("written to {}", out.display()),
        Err(e) => println!("cannot write {}: {e}", out.display()),
    }
}
