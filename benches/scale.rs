//! The daemon against a bare subscriber, through the same broker in the same run, and how it
//! scales with the number of devices.
//!
//! For each device count: a mosquitto process gets two persistent QoS 1 sessions (a bare
//! `mosquitto_sub` and `fieldwatch run`, the real binary with the shipped defaults: storage,
//! detection, models), then a backlog of `devices × messages` messages (4 metrics each) is
//! published into both. The bare subscriber drains its copy first, then the daemon drains its
//! copy; the clock of each runs from its process start to the last message stored (daemon:
//! every reading stored, flushed and acknowledged). Printed per row: messages/s of both and
//! their ratio, the daemon's peak RSS, CPU seconds per million readings, and bytes on disk per
//! reading after the daemon stopped (chunks compacted).
//!
//! Run with `cargo bench --bench scale`. `FW_SCALE_DEVICES` [10,100,1000,10000] and
//! `FW_SCALE_READINGS` [2000000: total readings per row, so messages per device = that / 4 /
//! devices, at least 50; 500 per device at 1,000 devices]. `FW_SCALE_EXTRA_TOML` is appended
//! to the daemon's config (`\n` for new lines), `FW_SCALE_WRAP` runs the daemon under
//! a profiler (e.g. `perf record -e cpu-clock -g -o FILE --`), `FW_SCALE_KEEP_DB=DIR` keeps a
//! copy of the row's database for inspection. Needs `mosquitto` and `mosquitto_sub` in `PATH` (or /usr/sbin,
//! /usr/bin); exits 0 with a message otherwise. The table is also written to
//! `target/bench-scale.md`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fieldwatch::sim::{Simulator, METRICS};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

fn binary(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/sbin"])
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file());
    found
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_broker(mosquitto: &Path, dir: &Path) -> (u16, Killed) {
    let port = free_port();
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
             max_queued_messages 100000000\nmax_queued_bytes 0\nmax_inflight_messages 1000\n"
        ),
    )
    .unwrap();
    let broker = Killed(
        Command::new(mosquitto).arg("-c").arg(&conf).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap(),
    );
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return (port, broker);
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("mosquitto did not start");
}

fn write_config(dir: &Path, port: u16, admin: &str) -> PathBuf {
    let text = format!(
        "[daemon]\ndata_dir = \"{}\"\n[mqtt]\nport = {port}\nclient_id = \"fw-scale\"\ntopics = [\"plant/+/+/telemetry\"]\n\
         [admin]\nlisten = \"{admin}\"\n{extra}",
        dir.join("db").display(),
        extra = std::env::var("FW_SCALE_EXTRA_TOML").unwrap_or_default().replace("\\n", "\n"),
    );
    let path = dir.join("fieldwatch.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn spawn_daemon(config: &Path, log: &Path) -> Killed {
    let log = std::fs::File::create(log).unwrap();
    // FW_SCALE_WRAP="perf record -e cpu-clock -g -o FILE --" (or valgrind ...): run the daemon
    // under a profiler; the RSS and CPU figures of that run are the wrapper's.
    let wrap = std::env::var("FW_SCALE_WRAP").unwrap_or_default();
    let mut words = wrap.split_whitespace();
    let mut cmd = match words.next() {
        Some(tool) => {
            let mut c = Command::new(tool);
            c.args(words).arg(env!("CARGO_BIN_EXE_fieldwatch"));
            c
        }
        None => Command::new(env!("CARGO_BIN_EXE_fieldwatch")),
    };
    Killed(cmd.args(["run", "--config"]).arg(config).stdout(Stdio::null()).stderr(log).spawn().unwrap())
}

fn metric(admin: &str, name: &str) -> Option<u64> {
    let mut s = std::net::TcpStream::connect(admin).ok()?;
    use std::io::{Read, Write};
    s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {admin}\r\n\r\n").as_bytes()).ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

fn wait_metric(admin: &str, name: &str, at_least: u64, limit: Duration) {
    let end = Instant::now() + limit;
    while metric(admin, name).is_none_or(|v| v < at_least) {
        assert!(Instant::now() < end, "{name} never reached {at_least}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn proc_status(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// User + system CPU seconds of a process.
fn cpu_seconds(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = s.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields after the command: state is index 0, utime 11, stime 12.
    (ticks(11) + ticks(12)) / 100.0
}

fn dir_bytes(dir: &Path) -> u64 {
    let mut n = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                n += dir_bytes(&p);
            } else if let Ok(m) = e.metadata() {
                n += m.len();
            }
        }
    }
    n
}

/// Publishes every payload at QoS 1 and waits until the broker acknowledged them all.
async fn publish_all(port: u16, payloads: Vec<(String, Vec<u8>)>) {
    let mut o = MqttOptions::new("scale-publisher", "127.0.0.1", port);
    o.set_inflight(1000).set_keep_alive(Duration::from_secs(60)).set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut eventloop) = AsyncClient::new(o, 10_000);
    let total = payloads.len();
    let poll = tokio::spawn(async move {
        let mut acked = 0;
        while acked < total {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                Ok(_) => {}
                Err(e) => panic!("publisher: {e}"),
            }
        }
    });
    for (topic, payload) in payloads {
        client.publish(topic, QoS::AtLeastOnce, false, payload).await.unwrap();
    }
    tokio::time::timeout(Duration::from_secs(600), poll).await.expect("publishing took too long").unwrap();
}

struct Row {
    devices: usize,
    messages: usize,
    bare_s: f64,
    daemon_s: f64,
    peak_rss_kib: u64,
    rss_kib: u64,
    cpu_s: f64,
    disk_bytes: u64,
}

async fn row(mosquitto: &Path, sub: &Path, devices: usize, per_device: usize) -> Row {
    let dir = tempfile::tempdir().unwrap();
    let (port, _broker) = start_broker(mosquitto, dir.path());
    let admin = format!("127.0.0.1:{}", free_port());
    let config = write_config(dir.path(), port, &admin);
    let log = dir.path().join("daemon.log");
    let messages = devices * per_device;

    // Both persistent sessions exist before the backlog is published.
    let ok = Command::new(sub)
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-c",
            "-i",
            "bare",
            "-q",
            "1",
            "-t",
            "plant/+/+/telemetry",
            "-E",
        ])
        .status()
        .unwrap();
    assert!(ok.success(), "mosquitto_sub could not subscribe");
    {
        let d = spawn_daemon(&config, &log);
        wait_metric(&admin, "fieldwatch_mqtt_connected", 1, Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(300)); // its SUBSCRIBE is acknowledged
        let _ = Command::new("kill").arg("-TERM").arg(d.0.id().to_string()).status();
        let mut d = d;
        let _ = d.0.wait();
    }

    let mut sim = Simulator::new(devices, Vec::new(), 11);
    let t0 = fieldwatch::reading::now_ms() / 1000 * 1000 - (per_device as i64 + 60) * 10_000;
    let mut payloads = Vec::with_capacity(messages);
    for i in 0..per_device {
        for d in 0..devices {
            payloads.push((sim.topic(d), sim.payload(d, t0 + i as i64 * 10_000)));
        }
    }
    publish_all(port, payloads).await;

    let start = Instant::now();
    let bare = Command::new(sub)
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-c", "-i", "bare", "-q", "1", "-t", "plant/+/+/telemetry"])
        .args(["-C", &messages.to_string()])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(bare.success());
    let bare_s = start.elapsed().as_secs_f64();

    let start = Instant::now();
    let mut daemon = spawn_daemon(&config, &log);
    let pid = daemon.0.id();
    let readings = (messages * METRICS.len()) as u64;
    wait_metric(&admin, "fieldwatch_readings_total", readings, Duration::from_secs(1800));
    let daemon_s = start.elapsed().as_secs_f64();
    let cpu_s = cpu_seconds(pid);
    let peak_rss_kib = proc_status(pid, "VmHWM:");
    let rss_kib = proc_status(pid, "VmRSS:");
    let _ = Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
    let _ = daemon.0.wait();
    let disk_bytes = dir_bytes(&dir.path().join("db"));
    if let Some(keep) = std::env::var_os("FW_SCALE_KEEP_DB") {
        // For inspection: `cp -a` keeps sled's files as they are.
        let _ = Command::new("cp").arg("-a").arg(dir.path().join("db")).arg(&keep).status();
    }
    Row { devices, messages, bare_s, daemon_s, peak_rss_kib, rss_kib, cpu_s, disk_bytes }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list`
    }
    let (Some(mosquitto), Some(sub)) = (binary("mosquitto"), binary("mosquitto_sub")) else {
        eprintln!("scale bench skipped: mosquitto and mosquitto_sub are needed");
        return;
    };
    let devices: Vec<usize> = std::env::var("FW_SCALE_DEVICES")
        .unwrap_or_else(|_| "10,100,1000,10000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let total: usize = std::env::var("FW_SCALE_READINGS").ok().and_then(|s| s.parse().ok()).unwrap_or(2_000_000);
    let mut out = String::from(
        "| devices | msgs/device | messages | bare msg/s | fieldwatch msg/s | ratio | readings/s | peak RSS (MiB) | RSS at end (MiB) | CPU s per M readings | bytes/reading on disk |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for d in devices {
        let per_device = (total / METRICS.len() / d).max(50);
        eprintln!("scale: {d} devices x {per_device} messages ...");
        let r = row(&mosquitto, &sub, d, per_device).await;
        let readings = (r.messages * METRICS.len()) as f64;
        let line = format!(
            "| {} | {} | {} | {:.0} | {:.0} | {:.2} | {:.0} | {:.1} | {:.1} | {:.2} | {:.1} |\n",
            r.devices,
            per_device,
            r.messages,
            r.messages as f64 / r.bare_s,
            r.messages as f64 / r.daemon_s,
            r.bare_s / r.daemon_s,
            readings / r.daemon_s,
            r.peak_rss_kib as f64 / 1024.0,
            r.rss_kib as f64 / 1024.0,
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
