//! The `fieldwatch` command line: parse, set up logging, dispatch. Everything else is the library.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use fieldwatch::Config;

#[derive(Parser)]
#[command(
    name = "fieldwatch",
    version,
    about = "Watches equipment telemetry and opens service tickets before the customer notices"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where the daemon's configuration lives when `--config` is not given.
const DEFAULT_CONFIG: &str = "/etc/fieldwatch/fieldwatch.toml";

/// The configuration file, for commands that need one.
#[derive(clap::Args)]
struct ConfigFile {
    /// Configuration file.
    #[arg(short, long, value_name = "FILE", default_value = DEFAULT_CONFIG)]
    config: PathBuf,
}

/// How a client command finds the running daemon: `--admin`, else the config's `admin.listen`;
/// the token from `FIELDWATCH_ADMIN_TOKEN`, else the config's `admin.token`.
#[derive(clap::Args)]
struct AdminTarget {
    /// The daemon's configuration, read for `admin.listen` and `admin.token` [default:
    /// /etc/fieldwatch/fieldwatch.toml, when it exists].
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The daemon's admin address (overrides the config's admin.listen).
    #[arg(long, env = "FIELDWATCH_ADMIN", value_name = "HOST:PORT")]
    admin: Option<String>,
}

impl AdminTarget {
    fn client(&self) -> anyhow::Result<fieldwatch::client::AdminClient> {
        let config = match &self.config {
            Some(path) => Some(Config::load(path)?),
            None if std::path::Path::new(DEFAULT_CONFIG).exists() => {
                match Config::load(std::path::Path::new(DEFAULT_CONFIG)) {
                    Ok(c) => Some(c),
                    Err(e) => {
                        eprintln!("warning: {e}; using the built-in admin address");
                        None
                    }
                }
            }
            None => None,
        };
        let addr = match (&self.admin, &config) {
            (Some(a), _) => a.clone(),
            (None, Some(c)) if !c.admin.listen.is_empty() => c.admin.listen.clone(),
            (None, Some(_)) => anyhow::bail!(
                "{}: admin.listen is empty, so the daemon serves no admin API",
                self.config.as_deref().unwrap_or(std::path::Path::new(DEFAULT_CONFIG)).display()
            ),
            (None, None) => fieldwatch::config::AdminConfig::default().listen,
        };
        let token = match std::env::var(fieldwatch::client::TOKEN_ENV).ok().filter(|t| !t.is_empty()) {
            Some(t) => Some(t),
            None => match config.as_ref().and_then(|c| c.admin.token.as_ref()) {
                Some(secret) => Some(secret.resolve().map_err(|e| anyhow::anyhow!("admin.token: {e}"))?),
                None => None,
            },
        };
        Ok(fieldwatch::client::AdminClient::with_token(&addr, token)?)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon.
    Run {
        #[command(flatten)]
        config: ConfigFile,
    },
    /// Check a configuration file and exit: 0 when valid, 2 with the file, line, key and reason
    /// when not.
    CheckConfig {
        /// Configuration file [default: /etc/fieldwatch/fieldwatch.toml].
        #[arg(short, long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// The configuration file, given without `--config`.
        #[arg(value_name = "FILE", conflicts_with = "config")]
        file: Option<PathBuf>,
    },
    /// Print the reference configuration: every option with its default and what it is for
    /// (the shipped config/fieldwatch.toml).
    PrintDefaultConfig,
    /// List incidents with their timeline (asks the running daemon).
    Incidents {
        /// Only open incidents.
        #[arg(long)]
        open: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Record a technician's verdict on an incident.
    Feedback {
        /// Incident id, e.g. FW-1a2b3c4d5e.
        id: String,
        #[arg(long, value_enum)]
        verdict: fieldwatch::core::Verdict,
        /// Root-cause code.
        #[arg(long)]
        root_cause: Option<String>,
        #[arg(long)]
        note: Option<String>,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Silence tickets for a device or a site for a while (planned work not in the config).
    Silence {
        #[arg(long, conflicts_with = "site", required_unless_present_any = ["site", "list"])]
        device: Option<String>,
        #[arg(long)]
        site: Option<String>,
        /// How long, e.g. `2h`.
        #[arg(long = "for", value_parser = humantime::parse_duration, required_unless_present = "list")]
        duration: Option<Duration>,
        #[arg(long, default_value = "")]
        reason: String,
        /// List active silences instead.
        #[arg(long)]
        list: bool,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Feed a recorded CSV file through the detectors and incident policy, and write its scores.
    Replay {
        /// CSV with a header, a timestamp column and one numeric column per metric.
        #[arg(long)]
        input: PathBuf,
        /// Where the scored rows go (`timestamp,<metrics>,anomaly_score`).
        #[arg(long)]
        output: PathBuf,
        /// Also write one JSON line per incident event (open, reopen, update, resolve), with
        /// `opened_at` and `resolved_at` in event time.
        #[arg(long)]
        incidents: Option<PathBuf>,
        /// A recording of known-good operation (same columns): the detectors learn their healthy
        /// references and the device models are fitted on it before the replay.
        #[arg(long)]
        train: Option<PathBuf>,
        /// Configuration file (detection and incident settings); built-in defaults without it.
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Device the metrics belong to; defaults to the input's file stem.
        #[arg(long)]
        device: Option<String>,
    },
    /// Fit device models now from the stored history (with the daemon stopped; while it runs,
    /// use POST /api/models/train).
    Train {
        /// Only this device; all devices with enough history without it.
        #[arg(long)]
        device: Option<String>,
        #[command(flatten)]
        config: ConfigFile,
    },
    /// The devices and where each is in its life: commissioning (learning its normal operation
    /// for a day of event time; only limits, stuck sensors and silence raise incidents) or
    /// watching.
    Devices {
        #[command(flatten)]
        config: ConfigFile,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List the fitted device models and how well they validated.
    Models {
        #[command(flatten)]
        config: ConfigFile,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Judge detection on a simulated fleet (pumps and compressors wearing out over hours,
    /// healthy ones changing their operating point): which failures were ticketed in time, and
    /// how many tickets were false. Runs the real core in event time, no broker needed.
    Evaluate {
        /// Configuration whose detection and incident settings are judged; defaults without it.
        #[arg(short, long)]
        config: Option<PathBuf>,
        #[arg(long, default_value_t = 30)]
        devices: usize,
        #[arg(long, default_value_t = 24)]
        hours: i64,
        /// Real days instead of `--hours` of set points: a fleet with day shifts, nights,
        /// weekends, weather and communication gaps over this many days (see `--family`).
        #[arg(long)]
        days: Option<i64>,
        /// The physics of a `--days` fleet: `a` (linear), `b` (affinity laws and compression),
        /// `c` (the fleets of `b` as a PLC gateway reports them: exact zeros at rest, coarse
        /// sensors) or `d` (the machines of `b` on on/off control: starts and stops all shift
        /// long, an inrush at each start, a discharge temperature that lags).
        #[arg(long, default_value = "a")]
        family: fieldwatch::sim::fleet::Family,
        /// Days of healthy history before a `--days` fleet's faults may start (commissioning).
        #[arg(long, default_value_t = 2.0)]
        quiet_days: f64,
        /// Scenario seeds, e.g. `1` or `1,2,3`: each gives another fleet.
        #[arg(long, value_delimiter = ',', default_value = "1")]
        seeds: Vec<u64>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run everything on this machine: embedded broker, simulated equipment, the real pipeline.
    #[cfg(feature = "embedded-broker")]
    Demo {
        /// Stop by itself after this long (e.g. `30s`, `2m`); without it, run until Ctrl-C.
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
        /// Where the database and `tickets.jsonl` go.
        #[arg(long, default_value = "fieldwatch-demo")]
        data_dir: PathBuf,
        /// Number of simulated compressors.
        #[arg(long, default_value_t = 20)]
        devices: usize,
        /// Run with this config instead of the built-in demo config (its detection, incident,
        /// asset and sink settings; the demo keeps its own broker, database and ticket file).
        #[arg(short, long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// The compressors speak Sparkplug B (one edge node per site) instead of JSON.
        #[arg(long)]
        sparkplug: bool,
    },
}

/// Logging for the short-lived commands: `RUST_LOG`, else `default`.
fn init_logging(default: &str) {
    let _ = fieldwatch::logging::init(default, fieldwatch::config::LogFormat::Auto);
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("shutdown requested");
}

/// The allocator: mimalloc, not glibc's malloc. Draining a 1,000-device backlog, the daemon
/// spent most of its time in glibc's allocator (the ingest task allocates what the core thread
/// frees); with mimalloc it took 1.5 instead of 2.3 CPU seconds per million readings and ran
/// 50 % faster (BENCHMARKS.md). `daemon::tune_allocator` sets its options.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    fieldwatch::daemon::tune_allocator();
    fieldwatch::worker::install_panic_hook();
    let cli = Cli::parse();
    match cli.command {
        Command::PrintDefaultConfig => {
            print!("{}", fieldwatch::config::reference::REFERENCE);
            ExitCode::SUCCESS
        }
        Command::CheckConfig { config, file } => {
            let file = file.or(config).unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG));
            check_config(&file)
        }
        Command::Run { config: ConfigFile { config: path } } => {
            let config = match load_config(&path) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let set_log_level = fieldwatch::logging::init(&config.daemon.log_level, config.daemon.log_format);
            run_async(async move {
                fieldwatch::supervisor::supervise(path, config, set_log_level, shutdown_signal()).await?;
                Ok(())
            })
        }
        Command::Incidents { open, json, target } => run_async(async move {
            let list = target.client()?.incidents(open).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                print!("{}", fieldwatch::client::render_incidents(&list));
            }
            Ok(())
        }),
        Command::Feedback { id, verdict, root_cause, note, target } => run_async(async move {
            let fb = fieldwatch::core::Feedback { verdict, root_cause, note };
            let inc = target.client()?.feedback(&id, &fb).await?;
            print!("{}", fieldwatch::client::render_incidents(std::slice::from_ref(&inc)));
            Ok(())
        }),
        Command::Silence { device, site, duration, reason, list, target } => run_async(async move {
            let client = target.client()?;
            if list {
                for s in client.silences().await? {
                    let target = s
                        .device
                        .as_deref()
                        .map(|d| format!("device {d}"))
                        .unwrap_or_else(|| format!("site {}", s.site.as_deref().unwrap_or("-")));
                    println!("{}  {target}  until {}  {}", s.id, fieldwatch::reading::format_ts(s.until), s.reason);
                }
                return Ok(());
            }
            let duration = duration.ok_or_else(|| anyhow::anyhow!("--for is required"))?;
            let s = client.silence(device.as_deref(), site.as_deref(), duration, &reason).await?;
            println!("{} silenced until {}", s.id, fieldwatch::reading::format_ts(s.until));
            Ok(())
        }),
        Command::Replay { input, output, incidents, train, config, device } => {
            init_logging("warn");
            let config = match config.map(|c| load_config(&c)).transpose() {
                Ok(c) => c.unwrap_or_default(),
                Err(code) => return code,
            };
            let opts = fieldwatch::replay::ReplayOptions { input, output, incidents, train, device, config };
            match fieldwatch::replay::replay(&opts) {
                Ok(r) => {
                    eprintln!(
                        "{}: {} rows ({} readings) in {:.2} s; {} incidents opened; {} rows skipped; {} duplicate readings",
                        opts.input.display(),
                        r.rows,
                        r.readings,
                        r.elapsed.as_secs_f64(),
                        r.incidents.len(),
                        r.skipped_rows,
                        r.duplicates
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Train { device, config: ConfigFile { config } } => {
            init_logging("info");
            let config = match load_config(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            match fieldwatch::model_commands::train(&config, device.as_deref()) {
                Ok(list) => {
                    print!("{}", fieldwatch::model_commands::render(&list));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Devices { config: ConfigFile { config }, json } => {
            let config = match load_config(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            run_async(async move {
                let list = fieldwatch::model_commands::devices(&config).await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&list)?);
                } else {
                    print!("{}", fieldwatch::model_commands::render_devices(&list));
                }
                Ok(())
            })
        }
        Command::Models { config: ConfigFile { config }, json } => {
            let config = match load_config(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            run_async(async move {
                let list = fieldwatch::model_commands::list(&config).await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&list)?);
                } else {
                    print!("{}", fieldwatch::model_commands::render(&list));
                }
                Ok(())
            })
        }
        Command::Evaluate { config, devices, hours, days, family, quiet_days, seeds, json } => {
            init_logging("warn");
            let config = match config {
                Some(path) => match load_config(&path) {
                    Ok(c) => c,
                    Err(code) => return code,
                },
                None => Config::default(),
            };
            let (mut caught, mut total, mut false_tickets, mut healthy_hours) = (0, 0, 0, 0.0);
            for seed in seeds {
                let start = 1_767_225_600_000;
                let mut fleet = match days {
                    Some(days) => fieldwatch::sim::fleet::Fleet::week(family, devices, days, quiet_days, start, seed),
                    None => fieldwatch::sim::fleet::Fleet::scenario(devices, hours, start, seed),
                };
                let report = match fieldwatch::sim::evaluate::run(&mut fleet, &config) {
                    Ok(r) => r,
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::FAILURE;
                    }
                };
                if json {
                    println!("{}", serde_json::to_string(&report).unwrap_or_default());
                } else {
                    println!("== seed {seed}");
                    print!("{}", report.render());
                }
                caught += report.caught();
                total += report.failures.len();
                false_tickets += report.false_tickets.len();
                healthy_hours += report.healthy_device_hours;
            }
            if !json {
                println!(
                    "overall: {caught} of {total} failures ticketed before failure, {false_tickets} false tickets ({:.2} per 100 healthy device-hours)",
                    false_tickets as f64 * 100.0 / f64::max(healthy_hours, 1e-9)
                );
            }
            ExitCode::SUCCESS
        }
        #[cfg(feature = "embedded-broker")]
        Command::Demo { duration, data_dir, devices, config, sparkplug } => {
            init_logging("warn,rumqttd=off");
            run_async(async move {
                let opts = fieldwatch::demo::DemoOptions { duration, data_dir, devices, config, sparkplug };
                fieldwatch::demo::run(opts, shutdown_signal()).await?;
                Ok(())
            })
        }
    }
}

/// `check-config`: the file's errors, then the machine checks (files, broker, sinks).
fn check_config(file: &std::path::Path) -> ExitCode {
    match Config::load(file) {
        Ok(config) => {
            let findings = fieldwatch::preflight::check(&config);
            // Each finding at `FILE:LINE:`, the line where its key (or its table) is written.
            let text = std::fs::read_to_string(file).unwrap_or_default();
            for f in &findings {
                match fieldwatch::config::line_of(&text, &f.key) {
                    Some(line) => eprintln!("{}:{line}: {f}", file.display()),
                    None => eprintln!("{}: {f}", file.display()),
                }
            }
            if findings.iter().any(|f| f.severity == fieldwatch::preflight::Severity::Error) {
                return ExitCode::from(2);
            }
            println!("{}: ok", file.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

/// Loads a config file; on error prints it (file, key, reason) and returns exit code 2.
fn load_config(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })
}

/// The async runtime: one worker thread unless `TOKIO_WORKER_THREADS` says otherwise. It only
/// polls the broker, serves the admin API and runs the sinks; the core and the flushes have
/// threads of their own. Draining a 1,000-device backlog, one worker ran as fast as two and
/// held 4 MiB less (BENCHMARKS.md): each thread that allocates keeps an allocator heap.
fn run_async(fut: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        builder.worker_threads(1);
    }
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(fut) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
