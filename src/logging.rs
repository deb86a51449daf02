//! Log output: human-readable on a terminal, plain under a log file, priority-prefixed for
//! the systemd journal, or JSON lines (`daemon.log_format`). The filter can be changed while
//! running (`daemon.log_level` on SIGHUP) unless `RUST_LOG` pinned it.

use std::fmt;
use std::io::IsTerminal;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use serde::Deserialize;

/// `daemon.log_format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// `journald` when stderr is the systemd journal, else `text` (coloured only on a terminal).
    #[default]
    Auto,
    /// Human-readable lines with a timestamp; ANSI colours only when stderr is a terminal.
    Text,
    /// One JSON object per line (for log shippers).
    Json,
    /// For the systemd journal: a syslog priority prefix (`<3>` error ... `<7>` debug) so
    /// `journalctl -p` works, no timestamp (the journal keeps its own), no colours.
    Journald,
}

/// Changes the log filter of the running process.
pub type SetLogLevel = Box<dyn Fn(&str) + Send + Sync>;

/// Installs the process's logger: `level` (env-filter syntax) unless `RUST_LOG` is set, in
/// `format`. Returns how to change the filter later.
pub fn init(level: &str, format: LogFormat) -> SetLogLevel {
    let from_env = EnvFilter::try_from_default_env().ok();
    let pinned = from_env.is_some();
    let filter = from_env.unwrap_or_else(|| EnvFilter::new(level));
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    tracing_subscriber::registry().with(filter).with(output(resolve(format))).init();
    Box::new(move |level: &str| {
        if pinned {
            return;
        }
        match EnvFilter::try_new(level) {
            Ok(f) => {
                if let Err(e) = handle.reload(f) {
                    tracing::warn!(error = %e, "cannot change the log level");
                }
            }
            Err(e) => tracing::warn!(error = %e, "daemon.log_level is not a log filter"),
        }
    })
}

/// `auto` made concrete for this process's stderr.
pub fn resolve(format: LogFormat) -> LogFormat {
    match format {
        LogFormat::Auto if stderr_is_journal() => LogFormat::Journald,
        LogFormat::Auto => LogFormat::Text,
        other => other,
    }
}

fn output<S>(format: LogFormat) -> Box<dyn Layer<S> + Send + Sync>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    match format {
        LogFormat::Json => layer.json().boxed(),
        LogFormat::Journald => layer.with_ansi(false).event_format(Journald).boxed(),
        LogFormat::Text | LogFormat::Auto => layer.with_ansi(std::io::stderr().is_terminal()).boxed(),
    }
}

/// Whether stderr is the systemd journal: systemd sets `JOURNAL_STREAM` to the device and
/// inode of the stream it connected, so a redirect (`2>file`) is told apart.
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some((dev, ino)) = std::env::var("JOURNAL_STREAM").ok().and_then(|v| {
        let (d, i) = v.split_once(':')?;
        Some((d.parse::<u64>().ok()?, i.parse::<u64>().ok()?))
    }) else {
        return false;
    };
    std::fs::metadata("/proc/self/fd/2").is_ok_and(|m| m.dev() == dev && m.ino() == ino)
}

/// The journal's line format: `<priority>target: message fields`. systemd reads the syslog
/// priority prefix (`SyslogLevelPrefix=`, on by default) and timestamps lines itself.
struct Journald;

impl<S, N> FormatEvent<S, N> for Journald
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut w: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        write!(w, "<{}>{}: ", priority(*event.metadata().level()), event.metadata().target())?;
        ctx.field_format().format_fields(w.by_ref(), event)?;
        writeln!(w)
    }
}

/// syslog priority of a level.
fn priority(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}
