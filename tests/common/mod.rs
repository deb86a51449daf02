//! Test harness: real parts only, shared by the tests and the benchmarks (`#[path]`). A
//! `mosquitto` process per test on a free loopback port (stop and restart it at will), a
//! wiremock HTTP server standing in for the ticket API ([`ticket_api`]), and a daemon on a
//! temporary sled directory: in the test process ([`test_config`], [`start_connected`]) or as
//! the real binary ([`DaemonConfig`] writes its config, [`DaemonProcess`] runs it). Both take
//! their settings from `settings.toml`. Every wait is bounded ([`wait_until`]); instead of a
//! fixed sleep before asserting that nothing more happened, [`all_delivered`] waits until the
//! daemon has committed its batches and delivered what they queued. Time logic that does not
//! need real processes is tested on a clock of its own (src/core/mod.rs, and paused time in
//! src/ticket/outbox.rs).
#![allow(dead_code)] // each test binary uses a different part of the harness

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fieldwatch::config::Config;
use fieldwatch::ticket::SinkConfig;
use rumqttc::{AsyncClient, MqttOptions, QoS};

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Where the program `name` is installed (in `PATH`, or an sbin or bin directory), if it is.
pub fn find_program(name: &str) -> Option<PathBuf> {
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin", "/usr/bin"])
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file())
}

/// Where `mosquitto` is installed, if it is.
pub fn find_mosquitto() -> Option<PathBuf> {
    find_program("mosquitto")
}

/// A field of `/proc/<pid>/status` given in kB (`VmHWM:`, `VmRSS:`), in KiB; 0 if unreadable.
/// `pid` may be `self`.
pub fn proc_status_kib(pid: &str, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn mosquitto_binary() -> PathBuf {
    find_mosquitto().expect("mosquitto not found: install it (the test script does: apt-get install mosquitto)")
}

/// A real mosquitto broker with persistence, owned by one test.
pub struct Mosquitto {
    pub port: u16,
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    /// Extra lines for the listener (TLS, authentication); empty for plain anonymous MQTT.
    listener: String,
    /// Sessions and queued messages kept across a restart (`persistence true`).
    persistent: bool,
    /// QoS 1 messages queued per client, and in flight to it.
    max_queued: usize,
    max_inflight: usize,
    /// Seconds between saves of its persistence file (`autosave_interval`); None: mosquitto's
    /// default, 30 minutes, so a SIGKILL loses everything since it started.
    autosave_every: Option<u32>,
}

impl Mosquitto {
    pub fn start() -> Mosquitto {
        Mosquitto::start_with(|_| String::new())
    }

    /// A broker whose listener gets extra configuration lines, built from its directory (so
    /// certificate and password files can be written there first).
    pub fn start_with(listener: impl FnOnce(&Path) -> String) -> Mosquitto {
        let mut m = Mosquitto::unstarted(listener);
        m.spawn();
        m
    }

    /// A broker that saves its sessions and queued messages every `secs` seconds
    /// (`autosave_interval`): after a SIGKILL it comes back with what it held at its last save.
    pub fn start_autosaving(secs: u32) -> Mosquitto {
        let mut m = Mosquitto::unstarted(|_| String::new());
        m.autosave_every = Some(secs);
        m.spawn();
        m
    }

    fn unstarted(listener: impl FnOnce(&Path) -> String) -> Mosquitto {
        let dir = tempfile::tempdir().unwrap();
        // Started as root, mosquitto drops to its own user: it must be able to write its
        // persistence file and log here, or a restart silently loses every session.
        let mut perms = std::fs::metadata(dir.path()).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o777);
        std::fs::set_permissions(dir.path(), perms).unwrap();
        let listener = listener(dir.path());
        Mosquitto {
            port: free_port(),
            dir,
            child: None,
            listener,
            persistent: true,
            max_queued: 1_000_000,
            max_inflight: 100,
            autosave_every: None,
        }
    }

    /// A broker for load (benchmarks): no persistence, a deep queue, and `inflight` messages
    /// in flight per client (the default window of 20 is smaller than a batch: the daemon
    /// acknowledges a whole batch at once).
    pub fn for_load(inflight: usize) -> Mosquitto {
        let dir = tempfile::tempdir().unwrap();
        let mut m = Mosquitto {
            port: free_port(),
            dir,
            child: None,
            listener: String::new(),
            persistent: false,
            max_queued: 100_000_000,
            max_inflight: inflight,
            autosave_every: None,
        };
        m.spawn();
        m
    }

    fn spawn(&mut self) {
        let conf = self.dir.path().join("mosquitto.conf");
        let autosave = self.autosave_every.map(|s| format!("autosave_interval {s}\n")).unwrap_or_default();
        // Default queue limits drop QoS 1 messages under a burst: raise them, as operators should.
        std::fs::write(
            &conf,
            format!(
                "per_listener_settings true\nlistener {port} 127.0.0.1\n{listener}\npersistence {persistent}\n\
                 persistence_location {dir}/\nmax_queued_messages {queued}\nmax_queued_bytes 0\n\
                 max_inflight_messages {inflight}\nlog_dest file {dir}/mosquitto.log\n{autosave}",
                port = self.port,
                dir = self.dir.path().display(),
                listener = if self.listener.is_empty() { "allow_anonymous true" } else { &self.listener },
                persistent = self.persistent,
                queued = self.max_queued,
                inflight = self.max_inflight,
            ),
        )
        .unwrap();
        let child = Command::new(mosquitto_binary())
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("mosquitto did not start on port {}: {}", self.port, self.log());
    }

    /// Stops the broker cleanly (SIGTERM: it saves its persistent sessions).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port with the same persistence file.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }

    /// Kills the broker with SIGKILL: it saves nothing (sessions since its last autosave are
    /// lost), as after a power cut.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again after [`Mosquitto::stop`] or [`Mosquitto::kill9`].
    pub fn start_again(&mut self) {
        self.spawn();
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The real binary, `fieldwatch run`, with its logs in the test's directory (see
/// [`DaemonConfig::start`]); killed when dropped.
pub struct DaemonProcess {
    child: Child,
    admin: String,
    log: PathBuf,
}

impl DaemonProcess {
    /// Runs `cmd` (one of [`DaemonConfig::command`]) for the daemon `config` describes.
    pub fn spawn(mut cmd: Command, config: &DaemonConfig) -> DaemonProcess {
        let child = cmd.spawn().unwrap();
        DaemonProcess { child, admin: config.admin().to_string(), log: config.log_path() }
    }

    /// What it has logged so far (every run of the same config logs to the same file).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A counter from `/metrics`, or None while the daemon is not up (see [`sample`]).
    pub async fn metric(&self, name: &str) -> Option<u64> {
        let text = reqwest::get(format!("http://{}/metrics", self.admin)).await.ok()?.text().await.ok()?;
        sample(&text, name)
    }

    /// Waits (bounded, 30 s) until the counter `name` is at least `at_least`.
    pub async fn wait_metric(&self, name: &str, at_least: u64) {
        self.wait_metric_within(name, at_least, Duration::from_secs(30), Duration::from_millis(50)).await
    }

    /// [`DaemonProcess::wait_metric`] with its own bound and polling interval (benchmarks poll
    /// often to see when something happened).
    pub async fn wait_metric_within(&self, name: &str, at_least: u64, limit: Duration, every: Duration) {
        let end = std::time::Instant::now() + limit;
        while self.metric(name).await.is_none_or(|v| v < at_least) {
            if std::time::Instant::now() >= end {
                // The evidence for whoever reads a failure: where it stood, and what the daemon said.
                let now = self.metric(name).await;
                let log = self.log();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                panic!(
                    "{name} never reached {at_least} in {limit:?} (at {now:?}); the daemon's last log lines:\n{}",
                    tail.join("\n")
                );
            }
            tokio::time::sleep(every).await;
        }
    }

    /// Waits (bounded, 30 s) until its log contains `text`.
    pub async fn wait_log(&self, text: &str) {
        wait_until(&format!("the daemon logged {text:?}"), || self.log().contains(text)).await
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name (`HUP`, `TERM`).
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill").arg(format!("-{name}")).arg(self.child.id().to_string()).status().unwrap();
        assert!(ok.success(), "kill -{name} failed");
    }

    /// True while the process has not exited.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Waits for the process to exit and returns its status.
    pub fn wait(&mut self) -> std::process::ExitStatus {
        self.child.wait().unwrap()
    }

    /// Peak resident memory so far (VmHWM), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        proc_status_kib(&self.child.id().to_string(), "VmHWM:")
    }

    /// Resident memory now (VmRSS), in KiB.
    pub fn rss_kib(&self) -> u64 {
        proc_status_kib(&self.child.id().to_string(), "VmRSS:")
    }

    /// Anonymous resident memory now (RssAnon: the heap and stacks, without the binary's
    /// clean file pages, which the kernel can drop and read back), in KiB.
    pub fn rss_anon_kib(&self) -> u64 {
        proc_status_kib(&self.child.id().to_string(), "RssAnon:")
    }

    /// User and system CPU seconds it has used so far.
    pub fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = after.split_whitespace().collect();
        let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        // Fields after the command: state is index 0, utime 11, stime 12 (clock ticks of 10 ms).
        (ticks(11) + ticks(12)) / 100.0
    }

    /// `GET http://<admin><path>`: status and body, or None while the daemon is not up.
    pub async fn get(&self, path: &str) -> Option<(u16, String)> {
        let r = reqwest::get(format!("http://{}{path}", self.admin)).await.ok()?;
        let status = r.status().as_u16();
        Some((status, r.text().await.ok()?))
    }

    pub fn admin(&self) -> &str {
        &self.admin
    }

    pub fn kill9(mut self) {
        self.child.kill().unwrap(); // SIGKILL: no shutdown path runs
        self.child.wait().unwrap();
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of the series `name` (`family{label="value"}`) in an exposition; a bare family
/// name of a labelled family sums its series (`fieldwatch_incidents_opened_total` over the
/// priorities).
pub fn sample(exposition: &str, name: &str) -> Option<u64> {
    let mut found = None;
    for line in exposition.lines() {
        let Some(rest) = line.strip_prefix(name) else { continue };
        let value = match rest.strip_prefix(' ') {
            Some(v) => v,
            None if rest.starts_with('{') && !name.contains('{') => rest.rsplit_once("} ").map_or("", |(_, v)| v),
            None => continue,
        };
        if let Ok(v) = value.trim().parse::<u64>() {
            found = Some(found.unwrap_or(0) + v);
        }
    }
    found
}

/// The settings every test daemon shares, in process or as the real binary: fast timers (reconnect,
/// batching, retries), a short warm-up, a small cache, the test topics.
const TEST_SETTINGS: &str = include_str!("settings.toml");

/// What the daemons started in the test process add (see [`test_config`]): the admin API on a
/// port of its own (see [`all_delivered`]), no sensor-health incidents, the unit tickets show.
const IN_PROCESS_SETTINGS: &str = r#"
[decode.units]
discharge_temp = "°C"
[incident]
quiet_period = "10m"
stale_after = "0s"
[ticket]
retry_max = "500ms"
[admin]
listen = "127.0.0.1:0"
"#;

/// A daemon's configuration file, built from TOML tables: [`DaemonConfig::new`] has the test
/// settings, [`DaemonConfig::shipped`] the shipped defaults; [`DaemonConfig::extra`] merges more
/// TOML over either. It owns the test's directory layout: the config file, the data directory
/// (`db`) and the daemon's log, and an admin address on a free port.
#[derive(Clone)]
pub struct DaemonConfig {
    dir: PathBuf,
    admin: String,
    table: toml::Table,
}

impl DaemonConfig {
    /// The test settings against the broker on `port`, in `dir`.
    pub fn new(port: u16, dir: &Path) -> DaemonConfig {
        DaemonConfig::shipped(port, dir).extra(TEST_SETTINGS)
    }

    /// The shipped defaults, but for what each test needs of its own: data directory, broker
    /// port, client id, topics and admin address.
    pub fn shipped(port: u16, dir: &Path) -> DaemonConfig {
        let admin = format!("127.0.0.1:{}", free_port());
        let base = format!(
            "[daemon]\ndata_dir = {data:?}\n[mqtt]\nport = {port}\nclient_id = \"fieldwatch-test-{name}\"\n\
             topics = [\"plant/+/+/telemetry\"]\n[admin]\nlisten = \"{admin}\"\n",
            data = dir.join("db").display().to_string(),
            name = dir.file_name().unwrap().to_string_lossy(),
        );
        DaemonConfig { dir: dir.to_path_buf(), admin, table: toml::Table::new() }.extra(&base)
    }

    /// Merges `toml` over the config: tables key by key, arrays of tables (`[[ticket.sinks]]`,
    /// `[[assets.devices]]`) appended, any other value replaced.
    pub fn extra(mut self, toml: &str) -> DaemonConfig {
        let more: toml::Table = toml.parse().unwrap_or_else(|e| panic!("test TOML: {e}\n{toml}"));
        merge(&mut self.table, more);
        self
    }

    /// A webhook sink named `api` posting to `url`, with a 1 s timeout.
    pub fn webhook(self, url: &str) -> DaemonConfig {
        let sink = webhook_toml(url, None, "1s");
        self.extra(&format!("[[ticket.sinks]]\n{sink}"))
    }

    /// Stores its data in `data_dir` instead of `<dir>/db`.
    pub fn data_dir(self, data_dir: &Path) -> DaemonConfig {
        self.extra(&format!("[daemon]\ndata_dir = {:?}\n", data_dir.display().to_string()))
    }

    pub fn data_path(&self) -> PathBuf {
        PathBuf::from(self.table["daemon"]["data_dir"].as_str().unwrap())
    }

    /// The daemon's MQTT client id.
    pub fn client_id(&self) -> &str {
        self.table["mqtt"]["client_id"].as_str().unwrap()
    }

    /// The admin API's address (`host:port`).
    pub fn admin(&self) -> &str {
        &self.admin
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join("fieldwatch.toml")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("daemon.log")
    }

    pub fn text(&self) -> String {
        toml::to_string(&self.table).unwrap()
    }

    /// Writes the file (again: a daemon re-reads it on SIGHUP) and returns its path.
    pub fn write(&self) -> PathBuf {
        let path = self.path();
        std::fs::write(&path, self.text()).unwrap();
        path
    }

    /// The config as the daemon reads it, for a daemon in the test process.
    pub fn config(&self) -> Config {
        Config::parse(&self.text(), &self.path()).unwrap()
    }

    /// `fieldwatch run` on the written file, logging at `info` to the daemon's log, run under
    /// `wrapper` (a profiler and its arguments) when one is given.
    pub fn command(&self, wrapper: &[&str]) -> Command {
        let config = self.write();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path()).unwrap();
        let mut cmd = match wrapper.split_first() {
            Some((tool, args)) => {
                let mut c = Command::new(tool);
                c.args(args).arg(env!("CARGO_BIN_EXE_fieldwatch"));
                c
            }
            None => fieldwatch(),
        };
        cmd.args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", std::env::var("FIELDWATCH_TEST_LOG").unwrap_or_else(|_| "info".into()))
            .stdout(Stdio::null())
            .stderr(log);
        cmd
    }

    /// Starts the daemon without waiting for it.
    pub fn spawn(&self) -> DaemonProcess {
        DaemonProcess::spawn(self.command(&[]), self)
    }

    /// Starts the daemon and waits until it is connected to its broker.
    pub async fn start(&self) -> DaemonProcess {
        let daemon = self.spawn();
        daemon.wait_metric("fieldwatch_mqtt_connected", 1).await;
        daemon
    }
}

/// The `fieldwatch` binary this test run built, as a command to add arguments to.
pub fn fieldwatch() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fieldwatch"))
}

/// Merges `more` into `into`: see [`DaemonConfig::extra`].
fn merge(into: &mut toml::Table, more: toml::Table) {
    use toml::Value;
    for (key, value) in more {
        match (into.get_mut(&key), value) {
            (Some(Value::Table(old)), Value::Table(new)) => merge(old, new),
            (Some(Value::Array(old)), Value::Array(new)) if new.iter().all(Value::is_table) => old.extend(new),
            (_, value) => {
                into.insert(key, value);
            }
        }
    }
}

/// A daemon config for tests: fast timers, small warm-up, the given broker and data dir.
pub fn test_config(port: u16, data_dir: &Path, sinks: Vec<SinkConfig>) -> Config {
    test_config_with(port, data_dir, sinks, "")
}

/// Like [`test_config`], with more TOML merged in (assets, modes, maintenance, ...).
pub fn test_config_with(port: u16, data_dir: &Path, sinks: Vec<SinkConfig>, extra: &str) -> Config {
    let mut config =
        DaemonConfig::new(port, data_dir).data_dir(data_dir).extra(IN_PROCESS_SETTINGS).extra(extra).config();
    config.ticket.sinks = sinks;
    config
}

/// The TOML of a webhook sink named `api` (without its table header).
fn webhook_toml(url: &str, token_env: Option<&str>, timeout: &str) -> String {
    let token = token_env.map(|var| format!("token = {{ env = \"{var}\" }}\n")).unwrap_or_default();
    format!("type = \"webhook\"\nname = \"api\"\nurl = \"{url}\"\ntimeout = \"{timeout}\"\n{token}")
}

/// A webhook sink pointing at a wiremock server.
pub fn webhook(url: String, token_env: Option<&str>) -> SinkConfig {
    toml::from_str(&webhook_toml(&url, token_env, "2s")).unwrap()
}

/// A ticket API that answers every POST with `status`.
pub async fn ticket_api_answering(status: u16) -> wiremock::MockServer {
    let server = wiremock::MockServer::start().await;
    wiremock::Mock::given(wiremock::matchers::method("POST"))
        .respond_with(wiremock::ResponseTemplate::new(status))
        .mount(&server)
        .await;
    server
}

/// A ticket API that takes every ticket (201).
pub async fn ticket_api() -> wiremock::MockServer {
    ticket_api_answering(201).await
}

/// The JSON bodies a mock ticket API received, in order.
pub async fn bodies(server: &wiremock::MockServer) -> Vec<serde_json::Value> {
    server
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect()
}

/// The (topic, payload) of each PUBLISH a [`BrokerTap`] handed to its client, in order.
type Delivered = std::sync::Arc<std::sync::Mutex<Vec<(String, Vec<u8>)>>>;

/// What a [`BrokerTap`] saw on its connections, for a failing test to show: per connection, when
/// it opened, when the client closed its side (it read no more after that), when the broker's
/// side ended; per PUBLISH written to a client, the connection, packet id, DUP flag and when; per
/// PUBACK from a client, the connection, packet id and when. Times are µs since the tap started.
#[derive(Default)]
pub struct TapLog {
    /// (opened, client side closed, broker side ended) per connection, by index.
    pub connections: Vec<(u128, Option<u128>, Option<u128>)>,
    /// (connection, packet id, dup, written at, topic, payload) per PUBLISH written whole.
    pub publishes: Vec<(usize, u16, bool, u128, String, Vec<u8>)>,
    /// (connection, packet id, at) per PUBACK the client sent.
    pub acks: Vec<(usize, u16, u128)>,
}

type SharedLog = std::sync::Arc<std::sync::Mutex<TapLog>>;

/// A TCP proxy in front of a broker (MQTT 3.1.1) that forwards every byte both ways and taps
/// what the broker sends: it records each PUBLISH it handed to the client whole (what the broker
/// *delivered*, the ground truth of what a subscriber behind it can be held to), and, when asked,
/// swallows the broker's PINGRESPs and counts them, so the client's PINGREQs go unanswered as
/// they do when a broker's answer waits behind a long backlog, or when the broker is gone.
/// When the broker's side closes, so does the client's; a client that connects again is led to
/// the broker again (a restarted one on the same port). Its [`TapLog`] says what happened when.
pub struct BrokerTap {
    pub port: u16,
    eaten: std::sync::Arc<std::sync::atomic::AtomicU64>,
    delivered: Delivered,
    log: SharedLog,
    task: tokio::task::JoinHandle<()>,
}

impl BrokerTap {
    /// A tap that forwards everything, PINGRESPs included.
    pub async fn start(broker_port: u16) -> BrokerTap {
        Self::start_with(broker_port, false).await
    }

    /// A tap that swallows the broker's PINGRESPs.
    pub async fn eating_pingresps(broker_port: u16) -> BrokerTap {
        Self::start_with(broker_port, true).await
    }

    async fn start_with(broker_port: u16, eat_pingresp: bool) -> BrokerTap {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let eaten = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let delivered: Delivered = Default::default();
        let log: SharedLog = Default::default();
        let (count, record, shared) = (eaten.clone(), delivered.clone(), log.clone());
        let started = std::time::Instant::now();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(broker) = tokio::net::TcpStream::connect(("127.0.0.1", broker_port)).await else { continue };
                let conn = {
                    let mut log = shared.lock().unwrap();
                    log.connections.push((started.elapsed().as_micros(), None, None));
                    log.connections.len() - 1
                };
                let (client_rx, client_tx) = client.into_split();
                let (broker_rx, broker_tx) = broker.into_split();
                let tap = Tap {
                    conn,
                    started,
                    eat_pingresp,
                    eaten: count.clone(),
                    delivered: record.clone(),
                    log: shared.clone(),
                };
                tokio::spawn(Tap { ..tap.clone() }.upstream(client_rx, broker_tx));
                tokio::spawn(tap.forward(broker_rx, client_tx));
            }
        });
        BrokerTap { port, eaten, delivered, log, task }
    }

    /// How many PINGRESPs were swallowed.
    pub fn eaten(&self) -> u64 {
        self.eaten.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The (topic, payload) of every PUBLISH written whole to a client so far, in order; a
    /// message the broker sent again is there again.
    pub fn delivered(&self) -> Vec<(String, Vec<u8>)> {
        self.delivered.lock().unwrap().clone()
    }

    /// The (topic, payload) of every PUBLISH the client provably read, in order. Bytes written
    /// to a socket are read by the client unless it closes first: on a connection the broker
    /// ended first, the client read everything up to the end of the stream (TCP hands it all
    /// over before the FIN), so every PUBLISH written counts; on one the client closed first
    /// (its own error, say), only those up to the last one it acknowledged on it, since bytes
    /// still in its receive buffer when it closed were never read (the broker keeps those
    /// unacknowledged and sends them again, unless it dies before it saved them).
    pub fn received(&self) -> Vec<(String, Vec<u8>)> {
        let log = self.log.lock().unwrap();
        let mut out = Vec::new();
        for (k, (_, client_closed, broker_ended)) in log.connections.iter().enumerate() {
            let publishes: Vec<_> = log.publishes.iter().filter(|p| p.0 == k).collect();
            let read_all = match (client_closed, broker_ended) {
                (Some(client), Some(broker)) => broker < client,
                (Some(_), None) => false,
                (None, _) => true,
            };
            let upto = if read_all {
                publishes.len()
            } else {
                // The last PUBLISH an ack on this connection answers (its packet id, written before it).
                log.acks
                    .iter()
                    .filter(|a| a.0 == k)
                    .filter_map(|a| publishes.iter().rposition(|p| p.1 == a.1 && p.3 <= a.2))
                    .max()
                    .map_or(0, |i| i + 1)
            };
            out.extend(publishes[..upto].iter().map(|p| (p.4.clone(), p.5.clone())));
        }
        out
    }

    /// What the tap saw, for a failing test to print; `about` picks the publishes to show.
    pub fn explain(&self, about: impl Fn(&str, &[u8]) -> bool) -> String {
        let log = self.log.lock().unwrap();
        let mut out = String::new();
        for (k, (opened, client_closed, broker_ended)) in log.connections.iter().enumerate() {
            let acked = log.acks.iter().filter(|a| a.0 == k).count();
            let published = log.publishes.iter().filter(|p| p.0 == k).count();
            out += &format!(
                "connection {k}: opened {opened} µs, client closed {client_closed:?}, broker ended {broker_ended:?}, {published} publishes written, {acked} acks\n"
            );
        }
        for (conn, pkid, dup, at, topic, payload) in log.publishes.iter().filter(|p| about(&p.4, &p.5)) {
            let acks: Vec<_> = log.acks.iter().filter(|a| a.1 == *pkid && a.2 >= *at).take(3).collect();
            let payload = String::from_utf8_lossy(payload);
            out += &format!(
                "  {topic} {payload}: connection {conn}, pkid {pkid}, dup {dup}, written {at} µs; later acks of that pkid (connection, pkid, µs): {acks:?}\n"
            );
        }
        out
    }
}

/// One connection of a [`BrokerTap`].
#[derive(Clone)]
struct Tap {
    conn: usize,
    started: std::time::Instant,
    eat_pingresp: bool,
    eaten: std::sync::Arc<std::sync::atomic::AtomicU64>,
    delivered: Delivered,
    log: SharedLog,
}

impl Tap {
    fn now(&self) -> u128 {
        self.started.elapsed().as_micros()
    }

    /// Copies the client's bytes to the broker, noting the client's PUBACKs and when the client
    /// closed its side.
    async fn upstream(self, mut from: tokio::net::tcp::OwnedReadHalf, mut to: tokio::net::tcp::OwnedWriteHalf) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut buf: Vec<u8> = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        let mut broker_open = true;
        loop {
            let n = from.read(&mut chunk).await.unwrap_or(0);
            if n == 0 {
                self.log.lock().unwrap().connections[self.conn].1 = Some(self.now());
                return;
            }
            buf.extend_from_slice(&chunk[..n]);
            while let Some((_, len)) = mqtt_packet_len(&buf) {
                if buf[0] >> 4 == 4 && len >= 4 {
                    let pkid = u16::from_be_bytes([buf[2], buf[3]]);
                    let at = self.now();
                    self.log.lock().unwrap().acks.push((self.conn, pkid, at));
                }
                buf.drain(..len);
            }
            // Keep reading (and noting) after the broker is gone: the client may still ack.
            if broker_open && to.write_all(&chunk[..n]).await.is_err() {
                broker_open = false;
            }
        }
    }

    /// Copies whole MQTT packets from the broker to the client. A PUBLISH is recorded only once
    /// it has been written to the client's socket.
    async fn forward(self, mut from: tokio::net::tcp::OwnedReadHalf, mut to: tokio::net::tcp::OwnedWriteHalf) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut buf: Vec<u8> = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        loop {
            let n = from.read(&mut chunk).await.unwrap_or(0);
            if n == 0 {
                self.log.lock().unwrap().connections[self.conn].2 = Some(self.now());
                return;
            }
            buf.extend_from_slice(&chunk[..n]);
            let mut out = Vec::new();
            let mut published = Vec::new();
            // A packet: one type byte, its remaining length (1 to 4 bytes of 7 bits), the rest.
            while let Some((header, len)) = mqtt_packet_len(&buf) {
                if self.eat_pingresp && buf[0] == 0xD0 {
                    self.eaten.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                } else {
                    out.extend_from_slice(&buf[..len]);
                }
                if buf[0] >> 4 == 3 {
                    published.push(publish_of(buf[0], &buf[header..len]));
                }
                buf.drain(..len);
            }
            if !out.is_empty() && to.write_all(&out).await.is_err() {
                self.log.lock().unwrap().connections[self.conn].2 = Some(self.now());
                return;
            }
            let at = self.now();
            let mut log = self.log.lock().unwrap();
            for (topic, payload, pkid, dup) in &published {
                log.publishes.push((self.conn, *pkid, *dup, at, topic.clone(), payload.clone()));
            }
            self.delivered.lock().unwrap().extend(published.into_iter().map(|(t, p, _, _)| (t, p)));
        }
    }
}

/// The topic, payload, packet id (0 at QoS 0) and DUP flag of an MQTT 3.1.1 PUBLISH, from its
/// first byte and its variable header and payload.
fn publish_of(first: u8, rest: &[u8]) -> (String, Vec<u8>, u16, bool) {
    let topic_len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
    let topic = String::from_utf8_lossy(&rest[2..2 + topic_len]).into_owned();
    let at = 2 + topic_len;
    let (pkid, id_len) = if (first >> 1) & 3 > 0 { (u16::from_be_bytes([rest[at], rest[at + 1]]), 2) } else { (0, 0) };
    (topic, rest[at + id_len..].to_vec(), pkid, first & 0x08 != 0)
}

/// The length of the fixed header and of the whole MQTT packet at the start of `buf`, if all
/// of it is there.
fn mqtt_packet_len(buf: &[u8]) -> Option<(usize, usize)> {
    let mut remaining = 0usize;
    for i in 0..4 {
        let byte = *buf.get(1 + i)?;
        remaining |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            let len = 2 + i + remaining;
            return (buf.len() >= len).then_some((2 + i, len));
        }
    }
    panic!("malformed MQTT remaining length from the broker")
}

impl Drop for BrokerTap {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A QoS 1 publisher that counts the broker's PUBACKs, its event loop driven in the background.
pub struct Publisher {
    pub client: AsyncClient,
    acked: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Publisher {
    pub async fn connect(port: u16, id: &str) -> Publisher {
        Publisher::connect_with(port, id, 100).await
    }

    /// A publisher with `inflight` unacknowledged messages at a time (benchmarks publish
    /// faster with a wide window).
    pub async fn connect_with(port: u16, id: &str, inflight: u16) -> Publisher {
        let mut o = MqttOptions::new(id, "127.0.0.1", port);
        o.set_inflight(inflight).set_keep_alive(Duration::from_secs(10)).set_max_packet_size(1 << 20, 1 << 20);
        Publisher::open(o, 10 * usize::from(inflight))
    }

    /// A publisher with a persistent session (no clean session): what it had in flight when
    /// the broker went is sent again when it is back.
    pub async fn persistent(port: u16, id: &str) -> Publisher {
        let mut o = MqttOptions::new(id, "127.0.0.1", port);
        o.set_inflight(100).set_keep_alive(Duration::from_secs(10)).set_clean_session(false);
        Publisher::open(o, 1000)
    }

    fn open(options: MqttOptions, capacity: usize) -> Publisher {
        use rumqttc::{Event, Packet};
        let (client, mut eventloop) = AsyncClient::new(options, capacity);
        let acked = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let count = acked.clone();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        Publisher { client, acked, task }
    }

    /// How many publishes the broker has acknowledged.
    pub fn acked(&self) -> u64 {
        self.acked.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits (bounded by `limit`) until the broker has acknowledged `n` publishes: they are
    /// queued there.
    pub async fn wait_acked_within(&self, n: u64, limit: Duration) {
        let what = format!("the broker acknowledged {n} publishes");
        wait_until_within(&what, limit, Duration::from_millis(10), || self.acked() >= n).await;
    }

    /// Publishes a JSON reading at QoS 1.
    pub async fn send(&self, device: &str, ts_ms: i64, temp: f64) {
        let payload = serde_json::json!({ "ts": ts_ms, "discharge_temp": temp }).to_string();
        self.raw(&format!("plant/site-1/{device}/telemetry"), payload.into_bytes()).await;
    }

    pub async fn raw(&self, topic: &str, payload: Vec<u8>) {
        self.client.publish(topic, QoS::AtLeastOnce, false, payload).await.unwrap();
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An MQTT 5 QoS 1 publisher that counts the broker's PUBACKs, its event loop driven in the
/// background. Every message carries the properties a publisher may attach (user properties,
/// content type, correlation data, ...): a reading must not depend on any of them.
pub struct Publisher5 {
    pub client: rumqttc::v5::AsyncClient,
    acked: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Publisher5 {
    pub async fn connect(port: u16, id: &str) -> Publisher5 {
        use rumqttc::v5::{mqttbytes::v5::Packet, Event};
        let mut o = rumqttc::v5::MqttOptions::new(id, "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(10)).set_max_packet_size(Some(1 << 20));
        let (client, mut eventloop) = rumqttc::v5::AsyncClient::new(o, 1000);
        let acked = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let count = acked.clone();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        Publisher5 { client, acked, task }
    }

    /// Publishes a JSON reading at QoS 1, with properties.
    pub async fn send(&self, device: &str, ts_ms: i64, temp: f64) {
        let properties = rumqttc::v5::mqttbytes::v5::PublishProperties {
            payload_format_indicator: Some(1),
            message_expiry_interval: Some(3600),
            response_topic: Some("plant/replies".into()),
            correlation_data: Some(bytes::Bytes::from_static(b"\x00\xffcorrelation")),
            user_properties: vec![
                ("firmware".into(), "4.2.1".into()),
                ("discharge_temp".into(), "-1000".into()),
                ("ts".into(), "0".into()),
                ("ünïcode".into(), "".into()),
            ],
            content_type: Some("application/json".into()),
            ..Default::default()
        };
        let payload = serde_json::json!({ "ts": ts_ms, "discharge_temp": temp }).to_string();
        self.client
            .publish_with_properties(
                format!("plant/site-1/{device}/telemetry"),
                rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                false,
                payload,
                properties,
            )
            .await
            .unwrap();
    }

    /// Waits (bounded) until the broker has acknowledged `n` publishes: they are queued there.
    pub async fn wait_acked(&self, n: u64) {
        let acked = self.acked.clone();
        wait_until(&format!("the broker acknowledged {n} publishes"), move || {
            acked.load(std::sync::atomic::Ordering::Relaxed) >= n
        })
        .await;
    }
}

impl Drop for Publisher5 {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// 40 healthy readings, then `faulty` readings at 99 °C, for one device, a second apart from `t0`.
pub async fn fault(p: &Publisher, device: &str, t0: i64, faulty: i64) {
    for i in 0..40 {
        p.send(device, t0 + i * 1000, normal(i)).await;
    }
    for i in 40..40 + faulty {
        p.send(device, t0 + i * 1000, 99.0).await;
    }
}

/// Every reading in the store under `data_dir` (a stopped daemon's), as (`device/metric`, ts).
pub fn stored_readings(data_dir: &Path) -> std::collections::HashSet<(String, i64)> {
    let store = fieldwatch::store::Store::open(data_dir, 16, 10).unwrap();
    let mut out = std::collections::HashSet::new();
    for (id, device, metric) in store.all_series().unwrap() {
        for (ts, _) in store.range(id, i64::MIN, i64::MAX).unwrap() {
            out.insert((format!("{device}/{metric}"), ts));
        }
    }
    out
}

/// A healthy reading: small deterministic wobble around 70 °C.
pub fn normal(i: i64) -> f64 {
    70.0 + 0.5 * (i as f64 * 0.7).sin()
}

/// A start time for a test's readings: a whole second, an hour ago. Reading `i` is at
/// `t0 + i * 1000`.
pub fn base_ts() -> i64 {
    fieldwatch::reading::now_ms() / 1000 * 1000 - 3_600_000
}

/// Starts a daemon and waits until it is connected to its broker.
pub async fn start_connected(config: Config) -> (fieldwatch::Daemon, std::sync::Arc<fieldwatch::metrics::Metrics>) {
    let daemon = fieldwatch::Daemon::start(config).await.unwrap();
    let m = daemon.metrics().clone();
    wait_until("connected", || m.mqtt_connected.get() == 1).await;
    (daemon, m)
}

/// Returns once the daemon with its admin API at `admin` has committed every batch it took so
/// far, with what the batches queued for the sinks: the batcher answers feedback (here for an
/// incident that does not exist) only between batches. After a wait for a count of readings,
/// no further fixed wait is needed before asserting what those readings did not do. `token`:
/// the admin token, where the daemon has one.
pub async fn batches_committed(admin: &str, token: Option<&str>) {
    let url = format!("http://{admin}/api/incidents/FW-none/feedback");
    let mut request = reqwest::Client::new().post(url).json(&serde_json::json!({ "verdict": "fixed" }));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let r = request.send().await.unwrap();
    assert_eq!(r.status(), 404, "the batcher answers for an incident that does not exist");
}

/// Waits (bounded) until an in-process daemon's batches are committed ([`batches_committed`])
/// and its outbox for `sink` is empty: every ticket it queued has reached the sink. Needs its
/// admin API (`admin.listen = "127.0.0.1:0"`) and, where it has one, its token.
pub async fn all_delivered(daemon: &fieldwatch::Daemon, sink: &str, token: Option<&str>) {
    let admin = daemon.admin_addr().expect("all_delivered needs the admin API").to_string();
    batches_committed(&admin, token).await;
    let store = daemon.store().clone();
    wait_until(&format!("the outbox of {sink} is empty"), || store.outbox_len(sink) == 0).await;
}

/// A socket standing in for systemd's `NOTIFY_SOCKET`: every datagram a daemon sends it
/// (`READY=1`, `WATCHDOG=1`, ...), with the time it arrived. [`NotifySocket::watchdog`] starts
/// a daemon that sends it.
pub struct NotifySocket {
    pub path: PathBuf,
    received: std::sync::Arc<std::sync::Mutex<Vec<(std::time::Instant, String)>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl NotifySocket {
    /// Binds `<dir>/notify.sock` and collects what arrives in a thread of its own.
    pub fn bind(dir: &Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let socket = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (into, stopped) = (received.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(n) = socket.recv(&mut buf) {
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    into.lock().unwrap().push((std::time::Instant::now(), text));
                }
            }
        });
        NotifySocket { path, received, stop }
    }

    /// The daemon's command ([`DaemonConfig::command`]) with this socket as its `NOTIFY_SOCKET`
    /// and a watchdog of `period`; `sh` sets `WATCHDOG_PID` to its own pid and `exec`s the
    /// daemon, so it is the daemon's, as under systemd.
    pub fn watchdog(&self, config: &DaemonConfig, period: Duration) -> Command {
        let mut cmd = config.command(&["sh", "-c", "WATCHDOG_PID=$$ exec \"$0\" \"$@\""]);
        cmd.env("NOTIFY_SOCKET", &self.path).env("WATCHDOG_USEC", period.as_micros().to_string());
        cmd
    }

    /// When each datagram containing the line `state` (`WATCHDOG=1`) arrived.
    pub fn times_of(&self, state: &str) -> Vec<std::time::Instant> {
        let received = self.received.lock().unwrap();
        received.iter().filter(|(_, text)| text.lines().any(|l| l == state)).map(|(at, _)| *at).collect()
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Waits (bounded) until `cond` holds; panics with `what` otherwise. Not a timing assertion:
/// the bound is generous, it only keeps a broken build from hanging.
pub async fn wait_until(what: &str, cond: impl FnMut() -> bool) {
    wait_until_within(what, Duration::from_secs(30), Duration::from_millis(50), cond).await
}

/// [`wait_until`] with its own bound and polling interval (benchmarks poll every millisecond
/// to see when something happened).
pub async fn wait_until_within(what: &str, limit: Duration, every: Duration, mut cond: impl FnMut() -> bool) {
    let end = std::time::Instant::now() + limit;
    while !cond() {
        assert!(std::time::Instant::now() < end, "timed out after {limit:?} waiting until {what}");
        tokio::time::sleep(every).await;
    }
}

/// Bytes of the files under `dir`, recursively (0 for what cannot be read).
pub fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| if e.path().is_dir() { dir_bytes(&e.path()) } else { e.metadata().map_or(0, |m| m.len()) })
        .sum()
}
