//! `fieldwatch demo`: the whole pipeline on one machine with nothing installed.
//!
//! An embedded MQTT broker (rumqttd) on a free loopback port, simulated compressors publishing
//! ten minutes of history and then live 1 Hz telemetry with injected faults, the real daemon,
//! and the file sink writing `DIR/tickets.jsonl`. Each ticket is printed as it opens. With
//! `--sparkplug` the compressors speak Sparkplug B instead of JSON ([`sparkplug`]).

pub mod sparkplug;

use std::io::{BufRead, Seek};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::reading::now_ms;
use crate::sim::Simulator;
use crate::ticket::SinkConfig;
use crate::ticket::{Action, TicketCommand};
use crate::Daemon;

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("demo config: {0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("embedded broker: {0}")]
    Broker(String),
    #[error("daemon: {0}")]
    Daemon(#[from] crate::daemon::DaemonError),
}

/// What the demo should do.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Stop by itself after this long; `None` runs until Ctrl-C.
    pub duration: Option<Duration>,
    pub data_dir: PathBuf,
    pub devices: usize,
    /// A config to run instead of the built-in `config/demo.toml` (see [`demo_config_from`]).
    pub config: Option<PathBuf>,
    /// The compressors publish Sparkplug B, one edge node per site (see [`sparkplug`]).
    pub sparkplug: bool,
}

/// What the demo did.
#[derive(Debug, Default)]
pub struct DemoReport {
    pub readings: u64,
    pub tickets_opened: usize,
    pub tickets_updated: usize,
    pub tickets_resolved: usize,
    pub tickets_file: PathBuf,
}

/// The shipped demo configuration.
pub const DEMO_CONFIG: &str = include_str!("../../config/demo.toml");

/// A free TCP port on loopback (the embedded broker cannot bind port 0 and report it).
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Starts rumqttd on `127.0.0.1:port` in its own thread (its `start` blocks).
pub fn start_broker(port: u16) -> Result<(), DemoError> {
    let text = format!(
        r#"
id = 0
[router]
id = 0
max_connections = 1000
max_outgoing_packet_count = 1000
max_segment_size = 104857600
max_segment_count = 10
[v4.1]
name = "v4-1"
listen = "127.0.0.1:{port}"
next_connection_delay_ms = 1
[v4.1.connections]
connection_timeout_ms = 60000
max_payload_size = 65536
max_inflight_count = 500
dynamic_filters = true
"#
    );
    let config: rumqttd::Config = toml::from_str(&text).map_err(|e| DemoError::Broker(e.to_string()))?;
    std::thread::Builder::new().name("embedded-broker".into()).spawn(move || {
        let mut broker = rumqttd::Broker::new(config);
        if let Err(e) = broker.start() {
            tracing::error!(error = %e, "embedded broker stopped");
        }
    })?;
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(DemoError::Broker(format!("did not start listening on 127.0.0.1:{port}")))
}

/// The daemon config for a demo on `port`, writing into `dir`.
pub fn demo_config(port: u16, dir: &Path) -> Result<Config, DemoError> {
    demo_config_from(Config::parse(DEMO_CONFIG, Path::new("config/demo.toml"))?, port, dir)
}

/// `config` made into a demo on `port` writing into `dir`: the demo's broker, database
/// and ticket file replace the configured ones; detection, incidents, assets and other
/// sinks stay as configured.
pub fn demo_config_from(mut config: Config, port: u16, dir: &Path) -> Result<Config, DemoError> {
    config.mqtt.host = "127.0.0.1".into();
    config.mqtt.tls = None;
    config.mqtt.username = None;
    config.mqtt.password = None;
    config.mqtt.topics = vec!["plant/+/+/telemetry".into()];
    config.decode.topic_pattern = Some("plant/{site}/{device}/telemetry".into());
    config.mqtt.port = port;
    config.daemon.data_dir = dir.join("db");
    for sink in &mut config.ticket.sinks {
        if let SinkConfig::File(c) = sink {
            c.path = dir.join("tickets.jsonl");
        }
    }
    Ok(config)
}

/// Runs the demo until its duration elapses or `stop` completes.
pub async fn run(opts: DemoOptions, stop: impl std::future::Future<Output = ()>) -> Result<DemoReport, DemoError> {
    std::fs::create_dir_all(&opts.data_dir)?;
    let port = free_port()?;
    start_broker(port)?;
    let mut config = match &opts.config {
        Some(path) => demo_config_from(Config::load(path)?, port, &opts.data_dir)?,
        None => demo_config(port, &opts.data_dir)?,
    };
    if opts.sparkplug {
        sparkplug::sparkplug_config(&mut config, opts.devices);
    }
    let tickets_file = opts.data_dir.join("tickets.jsonl");
    let already = std::fs::metadata(&tickets_file).map(|m| m.len()).unwrap_or(0);
    println!(
        "fieldwatch demo: broker on 127.0.0.1:{port}, {} simulated compressors{}, data in {}",
        opts.devices,
        if opts.sparkplug { " as Sparkplug B edge nodes (one per site)" } else { "" },
        opts.data_dir.display()
    );
    println!("tickets are written to {}\n", tickets_file.display());

    let daemon = Daemon::start(config).await?;
    let metrics = daemon.metrics().clone();
    let cancel = CancellationToken::new();

    let mut opts_pub = rumqttc::MqttOptions::new("fieldwatch-demo-sim", "127.0.0.1", port);
    opts_pub.set_inflight(200).set_request_channel_capacity(1000);
    let (client, mut eventloop) = rumqttc::AsyncClient::new(opts_pub, 1000);
    let pub_cancel = cancel.clone();
    let poller = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = pub_cancel.cancelled() => break,
                ev = eventloop.poll() => if ev.is_err() { tokio::time::sleep(Duration::from_millis(200)).await },
            }
        }
    });
    let live_start = now_ms() + 3_000;
    let mut sim = Simulator::new(opts.devices, Simulator::demo_faults(live_start), 42);
    let sim_cancel = cancel.clone();
    let sparkplug = opts.sparkplug;
    let publisher = tokio::spawn(async move {
        let (history, period) = (Duration::from_secs(600), Duration::from_secs(1));
        if sparkplug {
            sparkplug::publish(&mut sim, port, history, period, &sim_cancel).await
        } else {
            sim.publish(&client, history, period, None, &sim_cancel).await
        }
    });

    let mut report = DemoReport { tickets_file: tickets_file.clone(), ..DemoReport::default() };
    let mut offset = already;
    let deadline = async {
        match opts.duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    tokio::pin!(stop);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            _ = &mut deadline => break,
            _ = &mut stop => break,
            _ = tick.tick() => {
                for cmd in read_new_tickets(&tickets_file, &mut offset) {
                    print_ticket(&cmd);
                    match cmd.action {
                        Action::Open => report.tickets_opened += 1,
                        Action::Update => report.tickets_updated += 1,
                        Action::Resolve => report.tickets_resolved += 1,
                    }
                }
            }
        }
    }
    cancel.cancel();
    let _ = publisher.await;
    let _ = poller.await;
    daemon.shutdown().await;
    for cmd in read_new_tickets(&tickets_file, &mut offset) {
        print_ticket(&cmd);
    }
    report.readings = metrics.readings.get();
    let planned = metrics.suppressed("maintenance");
    if planned > 0 {
        println!("{planned} fault(s) during planned maintenance opened no ticket (see the maintenance window in config/demo.toml)");
    }
    println!(
        "\ndemo finished: {} readings stored, {} tickets opened, {} resolved; see {}",
        report.readings,
        report.tickets_opened,
        report.tickets_resolved,
        tickets_file.display()
    );
    Ok(report)
}

/// Reads ticket lines appended since `offset`.
fn read_new_tickets(path: &Path, offset: &mut u64) -> Vec<TicketCommand> {
    let Ok(mut f) = std::fs::File::open(path) else {
        return Vec::new();
    };
    if f.seek(std::io::SeekFrom::Start(*offset)).is_err() {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut reader = std::io::BufReader::new(f);
    let mut line = String::new();
    while let Ok(n) = reader.read_line(&mut line) {
        if n == 0 || !line.ends_with('\n') {
            break; // a partial line is read again next time
        }
        *offset += n as u64;
        if let Ok(cmd) = serde_json::from_str(&line) {
            out.push(cmd);
        }
        line.clear();
    }
    out
}

fn print_ticket(cmd: &TicketCommand) {
    let t = &cmd.ticket;
    let site = t.site.as_deref().unwrap_or("-");
    let customer =
        t.customer.as_ref().map(|c| format!("{} ({})", c.name, c.tier)).unwrap_or_else(|| "unregistered".into());
    let verb = match cmd.action {
        Action::Open => "OPENED",
        Action::Update => "UPDATED",
        Action::Resolve => "RESOLVED",
    };
    println!("TICKET {} {verb}  {}  [{customer} / {site} / {}]  {}", t.id, t.priority.as_str(), t.device, t.title);
    match cmd.action {
        Action::Open => {
            println!("    what happened: {}", t.what_happened);
            println!("    respond by {} (first seen {}, confidence {:.2})", t.respond_by, t.first_seen, t.confidence);
            let checks: Vec<String> = t.checks_done.iter().map(|c| format!("{}: {}", c.check, c.result)).collect();
            println!("    checked: {}", checks.join(" · "));
            for (i, step) in t.next_steps.iter().enumerate() {
                println!("    next {}. {step}", i + 1);
            }
            if let Some(at) = &t.predicted_failure_at {
                println!("    predicted to reach its limit at {at}");
            }
        }
        Action::Update | Action::Resolve => println!("    {}", t.note.as_deref().unwrap_or(&t.summary)),
    }
    println!();
}
