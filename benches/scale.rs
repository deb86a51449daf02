//! The daemon against a bare subscriber, through the same broker in the same run, and how it
//! scales with the number of devices.
//!
//! For each device count: a mosquitto process gets two persistent QoS 1 sessions (a bare
//! `mosquitto_sub` and `fieldwatch run`, the real binary with the shipped defaults: storage,
//! detection, models), then a backlog of `devices × messages` messages (4 metrics each) is
//! published into both. The bare subscriber drains its copy first, then the daemon drains its
//! copy; the clock of each runs from its process start to the last message stored (daemon:
//! every reading stored, flushed and acknowledged). Printed per row: messages/s of both and
//! their ratio, the daemon's peak RSS, its RSS at the end (all of it, and the anonymous part without
//! the binary's clean file pages), CPU seconds per million readings, and bytes on disk per
//! reading after the daemon stopped (chunks compacted).
//!
//! `FW_SCALE_FORMAT=sparkplug` publishes the same readings as Sparkplug B instead of JSON
//! (`json`, the default): the devices of each site (the group id) in edge nodes of up to 100
//! (`gw-0`, `gw-1`, ...), each node's NBIRTH first, then each device's first message as its
//! DBIRTH (names, aliases and Double types, with the values) and the rest as DDATA by alias,
//! each node's `seq` wrapping at 256. Both sessions subscribe to `spBv1.0/#`, and the daemon
//! reads it with `[decode.sparkplug]` at its defaults. An NBIRTH carries only `bdSeq`, no
//! reading: the readings are those of the JSON run, in one more message per edge node.
//!
//! Run with `cargo bench --bench scale`. `FW_SCALE_DEVICES` [10,100,1000,10000] and
//! `FW_SCALE_READINGS` [2000000: total readings per row, so messages per device = that / 4 /
//! devices, at least 50; 500 per device at 1,000 devices]. `FW_SCALE_EXTRA_TOML` is merged
//! into the daemon's config (`\n` for new lines), `FW_SCALE_WRAP` runs the daemon under
//! a profiler (e.g. `perf record -e cpu-clock -g -o FILE --`), `FW_SCALE_KEEP_DB=DIR` keeps a
//! copy of the row's database for inspection, `FW_SCALE_IDLE_SECS=N` prints the daemon's RSS
//! after N seconds idle once the backlog is drained. Needs `mosquitto` and `mosquitto_sub` in `PATH` (or /usr/sbin,
//! /usr/bin); exits 0 with a message otherwise. The table is also written to
//! `target/bench-scale.md`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fieldwatch::decode::sparkplug::proto::{Metric, Payload};
use fieldwatch::decode::sparkplug::NAMESPACE;
use fieldwatch::demo::sparkplug::{alias, bd_seq, double};
use fieldwatch::sim::{Simulator, METRICS};
use prost::Message as _;

#[path = "../tests/common/mod.rs"]
mod common;
use common::{dir_bytes, find_mosquitto, find_program, DaemonConfig, DaemonProcess, Mosquitto, Publisher};

/// The event times of a device's messages are this far apart.
const STEP_MS: i64 = 10_000;

/// The most devices of one Sparkplug edge node.
const DEVICES_PER_NODE: usize = 100;

/// How the backlog is encoded (`FW_SCALE_FORMAT`).
#[derive(Debug, Clone, Copy)]
enum Format {
    /// `plant/{site}/{device}/telemetry`: a JSON object of the time and the 4 metrics.
    Json,
    /// Sparkplug B, by edge node ([`EdgeNodes`]).
    Sparkplug,
}

impl Format {
    fn from_env() -> Format {
        match std::env::var("FW_SCALE_FORMAT").as_deref() {
            Err(_) | Ok("json") => Format::Json,
            Ok("sparkplug") => Format::Sparkplug,
            Ok(other) => panic!("FW_SCALE_FORMAT={other}: json or sparkplug"),
        }
    }

    /// The topic filter of both sessions.
    fn filter(self) -> String {
        match self {
            Format::Json => "plant/+/+/telemetry".into(),
            Format::Sparkplug => format!("{NAMESPACE}/#"),
        }
    }

    /// What the daemon needs beside the shipped defaults to read this format.
    fn toml(self) -> String {
        match self {
            Format::Json => String::new(),
            Format::Sparkplug => format!("[mqtt]\ntopics = [{:?}]\n[decode.sparkplug]\n", self.filter()),
        }
    }

    /// The backlog of `per_device` messages of every device, `STEP_MS` apart from `t0`.
    fn backlog(self, sim: &mut Simulator, per_device: usize, t0: i64) -> Vec<(String, Vec<u8>)> {
        match self {
            Format::Json => steps(sim, per_device, t0, Vec::new(), |sim, _, d, ts| (sim.topic(d), sim.payload(d, ts))),
            Format::Sparkplug => {
                let mut nodes = EdgeNodes::new(sim);
                let births = nodes.births(t0);
                steps(sim, per_device, t0, births, |sim, step, d, ts| nodes.device(sim, step == 0, d, ts))
            }
        }
    }
}

/// `head`, then time after time (`per_device` of them, `STEP_MS` apart from `t0`) the message of
/// every device, as `message(sim, step, device, time)` encodes it. The simulator is asked for
/// the values in the same order whatever the format, so every format carries the same values.
fn steps(
    sim: &mut Simulator,
    per_device: usize,
    t0: i64,
    head: Vec<(String, Vec<u8>)>,
    mut message: impl FnMut(&mut Simulator, usize, usize, i64) -> (String, Vec<u8>),
) -> Vec<(String, Vec<u8>)> {
    let mut out = head;
    out.reserve(per_device * sim.devices.len());
    for step in 0..per_device {
        let ts = t0 + step as i64 * STEP_MS;
        for d in 0..sim.devices.len() {
            out.push(message(sim, step, d, ts));
        }
    }
    out
}

/// One Sparkplug edge node: `spBv1.0/{group}/{kind}/{name}[/{device}]`, and the `seq` of its
/// next message.
struct EdgeNode {
    group: String,
    name: String,
    seq: u64,
}

impl EdgeNode {
    /// A message of the node (or of its `device`) at `ts`, with the next `seq`.
    fn message(&mut self, kind: &str, device: Option<&str>, ts: i64, metrics: Vec<Metric>) -> (String, Vec<u8>) {
        let topic = match device {
            Some(d) => format!("{NAMESPACE}/{}/{kind}/{}/{d}", self.group, self.name),
            None => format!("{NAMESPACE}/{}/{kind}/{}", self.group, self.name),
        };
        let seq = self.seq;
        self.seq = (seq + 1) % 256;
        let payload = Payload { timestamp: Some(ts as u64), metrics, seq: Some(seq), ..Payload::default() };
        (topic, payload.encode_to_vec())
    }
}

/// The simulated devices as Sparkplug edge nodes: those of a site (the group id) in nodes of up
/// to [`DEVICES_PER_NODE`], `gw-0`, `gw-1`, ...
struct EdgeNodes {
    nodes: Vec<EdgeNode>,
    /// Each device's node, and its place there (which numbers its metrics' aliases).
    place: Vec<(usize, usize)>,
}

impl EdgeNodes {
    fn new(sim: &Simulator) -> EdgeNodes {
        let mut nodes = Vec::new();
        let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
        let mut index: BTreeMap<(&str, usize), usize> = BTreeMap::new();
        let mut place = Vec::with_capacity(sim.devices.len());
        for site in &sim.sites {
            let count = seen.entry(site).or_default();
            let (k, slot) = (*count / DEVICES_PER_NODE, *count % DEVICES_PER_NODE);
            *count += 1;
            let n = *index.entry((site, k)).or_insert_with(|| {
                nodes.push(EdgeNode { group: site.clone(), name: format!("gw-{k}"), seq: 0 });
                nodes.len() - 1
            });
            place.push((n, slot));
        }
        EdgeNodes { nodes, place }
    }

    /// Every node's NBIRTH.
    fn births(&mut self, ts: i64) -> Vec<(String, Vec<u8>)> {
        self.nodes.iter_mut().map(|node| node.message("NBIRTH", None, ts, vec![bd_seq()])).collect()
    }

    /// Device `d`'s values at `ts`: its DBIRTH if `birth`, else a DDATA by alias.
    fn device(&mut self, sim: &mut Simulator, birth: bool, d: usize, ts: i64) -> (String, Vec<u8>) {
        let (n, slot) = self.place[d];
        let values = sim.values(d, ts);
        let metrics = METRICS
            .iter()
            .zip(values)
            .enumerate()
            .map(|(m, (spec, v))| double(birth.then_some(spec.name), alias(slot, m), birth, v))
            .collect();
        let kind = if birth { "DBIRTH" } else { "DDATA" };
        self.nodes[n].message(kind, Some(&sim.devices[d]), ts, metrics)
    }
}

/// The shipped defaults, with what `format` needs and `FW_SCALE_EXTRA_TOML` merged in.
fn config(port: u16, dir: &Path, format: Format) -> DaemonConfig {
    let extra = std::env::var("FW_SCALE_EXTRA_TOML").unwrap_or_default().replace("\\n", "\n");
    DaemonConfig::shipped(port, dir).extra(&format.toml()).extra(&extra)
}

/// `mosquitto_sub` in the bare subscriber's persistent session, on `filter`.
fn bare_sub(sub: &Path, port: u16, filter: &str) -> Command {
    let mut cmd = Command::new(sub);
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-c", "-i", "bare", "-q", "1", "-t", filter]);
    cmd
}

/// FW_SCALE_WRAP="perf record -e cpu-clock -g -o FILE --" (or valgrind ...): runs the daemon
/// under a profiler; the RSS and CPU figures of that run are the wrapper's.
fn spawn_daemon(config: &DaemonConfig) -> DaemonProcess {
    let wrap = std::env::var("FW_SCALE_WRAP").unwrap_or_default();
    let wrapper: Vec<&str> = wrap.split_whitespace().collect();
    let mut cmd = config.command(&wrapper);
    if let Ok(level) = std::env::var("RUST_LOG") {
        cmd.env("RUST_LOG", level);
    }
    DaemonProcess::spawn(cmd, config)
}

/// Publishes every payload at QoS 1 and waits until the broker acknowledged them all.
async fn publish_all(port: u16, payloads: Vec<(String, Vec<u8>)>) {
    let p = Publisher::connect_with(port, "scale-publisher", 1000).await;
    let total = payloads.len() as u64;
    for (topic, payload) in payloads {
        p.raw(&topic, payload).await;
    }
    p.wait_acked_within(total, Duration::from_secs(600)).await;
}

struct Row {
    devices: usize,
    messages: usize,
    readings: usize,
    bare_s: f64,
    daemon_s: f64,
    peak_rss_kib: u64,
    rss_kib: u64,
    anon_kib: u64,
    cpu_s: f64,
    disk_bytes: u64,
}

async fn row(sub: &Path, format: Format, devices: usize, per_device: usize) -> Row {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::for_load(1000);
    let port = broker.port;
    let config = config(port, dir.path(), format);
    let filter = format.filter();

    // Both persistent sessions exist before the backlog is published.
    let ok = bare_sub(sub, port, &filter).arg("-E").status().unwrap();
    assert!(ok.success(), "mosquitto_sub could not subscribe");
    {
        let mut d = spawn_daemon(&config);
        d.wait_metric_within("fieldwatch_mqtt_connected", 1, Duration::from_secs(60), Duration::from_millis(10)).await;
        tokio::time::sleep(Duration::from_millis(300)).await; // its SUBSCRIBE is acknowledged
        d.signal("TERM");
        d.wait();
    }

    let mut sim = Simulator::new(devices, Vec::new(), 11);
    let t0 = fieldwatch::reading::now_ms() / 1000 * 1000 - (per_device as i64 + 60) * STEP_MS;
    let payloads = format.backlog(&mut sim, per_device, t0);
    let messages = payloads.len();
    let bytes: usize = payloads.iter().map(|(topic, payload)| topic.len() + payload.len()).sum();
    eprintln!(
        "scale: {devices} devices: {messages} messages, {:.1} bytes of topic and payload each",
        bytes as f64 / messages as f64
    );
    publish_all(port, payloads).await;

    let start = Instant::now();
    let bare = bare_sub(sub, port, &filter).args(["-C", &messages.to_string()]).stdout(Stdio::null()).status().unwrap();
    assert!(bare.success());
    let bare_s = start.elapsed().as_secs_f64();

    let start = Instant::now();
    let mut daemon = spawn_daemon(&config);
    let readings = devices * per_device * METRICS.len();
    // Every 50 ms: rendering /metrics costs the daemon CPU, and 100 renders a second were 3 %
    // of it; the clock is off by at most the interval (0.5 % of a 10 s drain).
    let (limit, every) = (Duration::from_secs(1800), Duration::from_millis(50));
    daemon.wait_metric_within("fieldwatch_readings_total", readings as u64, limit, every).await;
    let daemon_s = start.elapsed().as_secs_f64();
    let cpu_s = daemon.cpu_seconds();
    let peak_rss_kib = daemon.peak_rss_kib();
    let rss_kib = daemon.rss_kib();
    let anon_kib = daemon.rss_anon_kib();
    // What the run did, beside its speed: how many batches, redeliveries, reconnects, refusals.
    let batches = daemon.metric("fieldwatch_batch_commit_seconds_count").await.unwrap_or(0);
    let redelivered = daemon.metric("fieldwatch_readings_duplicate_total").await.unwrap_or(0);
    let reconnects = daemon.metric("fieldwatch_mqtt_connection_errors_total").await.unwrap_or(0);
    let rejected = daemon.metric("fieldwatch_rejected_messages_total").await.unwrap_or(0);
    let out_of_step = daemon.metric("fieldwatch_sparkplug_out_of_step_total").await.unwrap_or(0);
    eprintln!(
        "scale: {devices} devices: {batches} batches ({:.0} messages each), {redelivered} redelivered readings, \
         {reconnects} broker connection errors, {rejected} rejected messages, {out_of_step} Sparkplug messages \
         out of step",
        messages as f64 / batches.max(1) as f64
    );
    if let Some(idle) = std::env::var("FW_SCALE_IDLE_SECS").ok().and_then(|s| s.parse::<u64>().ok()) {
        // What stays resident once the backlog is drained and the daemon is idle.
        tokio::time::sleep(Duration::from_secs(idle)).await;
        eprintln!("scale: {devices} devices: RSS after {idle} s idle: {:.1} MiB", daemon.rss_kib() as f64 / 1024.0);
    }
    daemon.signal("TERM");
    daemon.wait();
    let disk_bytes = dir_bytes(&config.data_path());
    if let Some(keep) = std::env::var_os("FW_SCALE_KEEP_DB") {
        // For inspection: `cp -a` keeps sled's files as they are.
        let _ = Command::new("cp").arg("-a").arg(config.data_path()).arg(&keep).status();
    }
    Row { devices, messages, readings, bare_s, daemon_s, peak_rss_kib, rss_kib, anon_kib, cpu_s, disk_bytes }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list`
    }
    let (Some(_), Some(sub)) = (find_mosquitto(), find_program("mosquitto_sub")) else {
        eprintln!("scale bench skipped: mosquitto and mosquitto_sub are needed");
        return;
    };
    let devices: Vec<usize> = std::env::var("FW_SCALE_DEVICES")
        .unwrap_or_else(|_| "10,100,1000,10000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let total: usize = std::env::var("FW_SCALE_READINGS").ok().and_then(|s| s.parse().ok()).unwrap_or(2_000_000);
    let format = Format::from_env();
    let mut out = String::from(
        "| devices | msgs/device | messages | bare msg/s | fieldwatch msg/s | ratio | readings/s | peak RSS (MiB) | RSS at end (MiB) | anonymous RSS at end (MiB) | CPU s per M readings | bytes/reading on disk |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for d in devices {
        let per_device = (total / METRICS.len() / d).max(50);
        eprintln!("scale: {d} devices x {per_device} messages, {format:?} ...");
        let r = row(&sub, format, d, per_device).await;
        let readings = r.readings as f64;
        let line = format!(
            "| {} | {} | {} | {:.0} | {:.0} | {:.2} | {:.0} | {:.1} | {:.1} | {:.1} | {:.2} | {:.1} |\n",
            r.devices,
            per_device,
            r.messages,
            r.messages as f64 / r.bare_s,
            r.messages as f64 / r.daemon_s,
            r.bare_s / r.daemon_s,
            readings / r.daemon_s,
            r.peak_rss_kib as f64 / 1024.0,
            r.rss_kib as f64 / 1024.0,
            r.anon_kib as f64 / 1024.0,
            r.cpu_s / readings * 1e6,
            r.disk_bytes as f64 / readings,
        );
        eprint!("{line}");
        out.push_str(&line);
    }
    println!("{out}");
    let _ = std::fs::create_dir_all("target");
    let _ = std::fs::write("target/bench-scale.md", &out);
}
