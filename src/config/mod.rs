//! Configuration: typed with serde, defaults in one place, validated at load.
//!
//! Every error names the file, the key (a dotted path such as `mqtt.keep_alive`) and the reason, so
//! an operator on a gateway can fix a typo without reading source code. Unknown keys are errors:
//! a misspelt option that is silently ignored is worse than one that stops the daemon.

use std::path::{Path, PathBuf};

use serde::Deserialize;

mod locate;
pub use locate::line_of;
pub mod reference;

pub use crate::admin::AdminConfig;
use crate::core::CoreConfig;
pub use crate::decode::{DecodeConfig, MetricMapping, TimestampFormat};
pub use crate::detect::{DetectConfig, LimitConfig, NoveltyConfig};
pub use crate::incident::IncidentConfig;
pub use crate::ingest::{MqttConfig, MqttProtocol, SessionExpiry, TlsConfig};
pub use crate::logging::LogFormat;
pub use crate::model::ModelsConfig;
use crate::settings::bad;
pub use crate::settings::{Invalid, SecretError, SecretRef};
pub use crate::store::StoreConfig;
pub use crate::suppress::{MaintenanceConfig, MaintenanceWindow, Mode, ModesConfig};
pub use crate::ticket::{SinkConfig, TicketConfig};

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read at all.
    #[error("{file}: cannot read: {source}")]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The TOML is malformed, a key is unknown or a value has the wrong type.
    #[error("{file}:{line}: key `{key}`: {reason}")]
    Parse { file: PathBuf, line: usize, key: String, reason: String },
    /// The values parse but do not make sense together. `line` is where the key is written
    /// (or its table, for a key left at its default).
    #[error("{}: key `{key}`: {reason}", place(.file, *.line))]
    Invalid { file: PathBuf, line: Option<usize>, key: String, reason: String },
}

/// `file:line`, or the file alone when the line is not known.
fn place(file: &Path, line: Option<usize>) -> String {
    match line {
        Some(line) => format!("{}:{line}", file.display()),
        None => file.display().to_string(),
    }
}

impl ConfigError {
    /// A value error in `text` (read from `file`), with the line of `key`.
    pub fn invalid(file: &Path, text: &str, e: Invalid) -> ConfigError {
        ConfigError::Invalid {
            file: file.to_path_buf(),
            line: locate::line_of(text, &e.key),
            key: e.key,
            reason: e.reason,
        }
    }
}

/// The whole daemon configuration (`config/fieldwatch.toml` documents every option).
#[derive(Debug, Clone, Deserialize, serde::Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub daemon: DaemonConfig,
    pub mqtt: MqttConfig,
    pub decode: DecodeConfig,
    pub store: StoreConfig,
    pub detect: DetectConfig,
    pub incident: IncidentConfig,
    pub ticket: TicketConfig,
    pub admin: AdminConfig,
    /// The asset registry (customers, devices, runbooks).
    pub assets: crate::assets::AssetsConfig,
    /// Priority matrix and SLAs.
    pub priority: crate::assets::PriorityConfig,
    /// observe / shadow / ticket, globally and per site.
    pub modes: ModesConfig,
    /// Planned work: no tickets.
    pub maintenance: MaintenanceConfig,
}

/// Process-wide settings.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    /// Where the sled database lives. Under systemd this is `StateDirectory=`.
    pub data_dir: PathBuf,
    /// Log filter (`tracing` env-filter syntax), re-read on SIGHUP; `RUST_LOG` overrides it.
    pub log_level: String,
    /// How log lines are written to stderr (chosen at start).
    pub log_format: LogFormat,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("/var/lib/fieldwatch"),
            log_level: "info,rumqttc=warn".into(),
            log_format: LogFormat::Auto,
        }
    }
}

/// Deserializes TOML, naming the key path and line of the first error.
fn parse_toml<T: serde::de::DeserializeOwned>(text: &str, file: &Path) -> Result<T, ConfigError> {
    let de = toml::Deserializer::new(text);
    serde_path_to_error::deserialize(de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        let line = inner.span().map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1).unwrap_or(0);
        // A syntax error has no key path ("."): the key written on its line, in its table.
        let key = if path == "." { key_at(text, line).unwrap_or(path) } else { path };
        ConfigError::Parse { file: file.to_path_buf(), line, key, reason: inner.message().to_string() }
    })
}

/// The key written on 1-based `line` of `text` (`table.key`), or the table a header on that
/// line opens; `None` for a line that is neither.
fn key_at(text: &str, line: usize) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let here = lines.get(line.checked_sub(1)?)?.trim();
    let header = |l: &str| {
        let l = l.trim();
        l.starts_with('[').then(|| l.trim_start_matches('[').split(']').next().unwrap_or("").trim().to_string())
    };
    if let Some(table) = header(here) {
        return Some(table);
    }
    let key = here.split_once('=')?.0.trim().trim_matches('"');
    if key.is_empty() || key.starts_with('#') {
        return None;
    }
    let table = lines[..line - 1].iter().rev().find_map(|l| header(l));
    Some(match table {
        Some(t) if !t.is_empty() => format!("{t}.{key}"),
        _ => key.to_string(),
    })
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { file: path.to_path_buf(), source })?;
        let mut config = Config::parse(&text, path)?;
        if let Some(rel) = config.assets.file.clone() {
            let assets_path = match path.parent() {
                Some(dir) if rel.is_relative() => dir.join(&rel),
                _ => rel,
            };
            let assets_text = std::fs::read_to_string(&assets_path)
                .map_err(|source| ConfigError::Read { file: assets_path.clone(), source })?;
            let extra: crate::assets::AssetsFile = parse_toml(&assets_text, &assets_path)?;
            crate::assets::Registry::validate(&config.assets, Some(&extra))
                .map_err(|e| ConfigError::invalid(&assets_path, &assets_text, e))?;
            config.assets.customers.extend(extra.customers);
            config.assets.devices.extend(extra.devices);
            config.assets.runbooks.extend(extra.runbooks);
        }
        Ok(config)
    }

    /// The parts of the configuration the processing core is built from.
    pub fn core(&self) -> CoreConfig<'_> {
        CoreConfig {
            decode: &self.decode,
            store: &self.store,
            detect: &self.detect,
            incident: &self.incident,
            ticket: &self.ticket,
            assets: &self.assets,
            priority: &self.priority,
            modes: &self.modes,
            maintenance: &self.maintenance,
        }
    }

    /// Parses and validates config text; `file` is only used in error messages.
    pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
        let config: Config = parse_toml(text, file)?;
        config.validate().map_err(|e| ConfigError::invalid(file, text, e))?;
        Ok(config)
    }

    /// Checks what types alone cannot; returns the offending key and why.
    pub fn validate(&self) -> Result<(), Invalid> {
        self.mqtt.validate()?;
        self.decode.validate()?;
        self.store.validate()?;
        self.detect.validate()?;
        self.incident.validate()?;
        self.ticket.validate()?;
        crate::assets::Registry::validate(&self.assets, None)?;
        self.maintenance.validate()?;
        self.admin.validate()?;
        if self.decode.forget_after < self.incident.stale_after {
            return bad(
                "decode.forget_after",
                "must be at least incident.stale_after (a silent device is reported first)",
            );
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.daemon.log_level) {
            return Err(Invalid::new("daemon.log_level", format!("is not a log filter: {e}")));
        }
        if self.decode.max_payload_bytes > self.mqtt.max_packet_bytes {
            return bad(
                "decode.max_payload_bytes",
                "must not exceed mqtt.max_packet_bytes (a packet carries the payload)",
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"))
    }

    #[test]
    fn empty_config_takes_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.mqtt.port, 1883);
        assert!(!c.mqtt.clean_session);
    }

    #[test]
    fn unknown_key_is_named_with_its_path_and_line() {
        let err = parse("[mqtt]\nhost = \"b\"\nkeepalive = \"5s\"\n").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("test.toml:3"), "{msg}");
        assert!(msg.contains("mqtt.keepalive"), "{msg}");
        assert!(msg.contains("unknown field"), "{msg}");
    }

    #[test]
    fn wrong_type_is_named() {
        let msg = parse("[mqtt]\nport = \"high\"\n").unwrap_err().to_string();
        assert!(msg.contains("mqtt.port"), "{msg}");
    }

    #[test]
    fn invalid_value_names_key_and_reason() {
        let msg = parse("[detect]\nwarmup_readings = 60\nz_threshold = -1.0\n").unwrap_err().to_string();
        assert!(
            msg.contains("test.toml:3:") && msg.contains("detect.z_threshold") && msg.contains("positive"),
            "{msg}"
        );
        // A key left at its default is pointed at by its table.
        let msg = parse("[store]\n\n[decode]\nforget_after = \"1m\"\n").unwrap_err().to_string();
        assert!(msg.starts_with("test.toml:4:") && msg.contains("decode.forget_after"), "{msg}");
    }

    #[test]
    fn maintenance_times_take_offsets_and_say_what_they_expect() {
        let c =
            parse("[[maintenance.windows]]\nstart = \"2026-05-01T08:00:00+02:00\"\nend = \"2026-05-01T07:00:00Z\"\n")
                .unwrap();
        let w = &c.maintenance.windows[0];
        assert_eq!(w.start.unwrap().to_rfc3339(), "2026-05-01T06:00:00+00:00");
        let msg = parse("[[maintenance.windows]]\nstart = \"2026-05-01T06:00:00\"\nend = \"2026-05-01T07:00:00Z\"\n")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("test.toml:2") && msg.contains("maintenance.windows[0].start"), "{msg}");
        assert!(msg.contains("RFC 3339") && msg.contains("2026-05-01T06:00:00Z"), "{msg}");
        let c = parse("[[maintenance.windows]]\ndaily_from = \"22:00\"\ndaily_to = \"02:30:00\"\n").unwrap();
        assert_eq!(c.maintenance.windows[0].daily_from.unwrap().to_string(), "22:00:00");
        let msg =
            parse("[[maintenance.windows]]\ndaily_from = \"10pm\"\ndaily_to = \"02:30\"\n").unwrap_err().to_string();
        assert!(msg.contains("HH:MM"), "{msg}");
    }

    #[test]
    fn sinks_parse_and_bad_url_is_rejected() {
        let ok = parse("[[ticket.sinks]]\ntype = \"file\"\nname = \"f\"\npath = \"/tmp/t.jsonl\"\n").unwrap();
        assert_eq!(ok.ticket.sinks[0].name(), "f");
        let msg =
            parse("[[ticket.sinks]]\ntype = \"webhook\"\nname = \"w\"\nurl = \"ftp://x\"\n").unwrap_err().to_string();
        assert!(msg.contains("ticket.sinks[0].url"), "{msg}");
    }

    #[test]
    fn models_take_defaults_and_bad_values_name_their_key() {
        let c = parse("[detect.models]\nenabled = true\nkinds = [\"pca\"]\nrefit_every = \"1h\"\n").unwrap();
        assert!(c.detect.models.enabled);
        assert_eq!(c.detect.models.kinds, vec![crate::model::ModelKind::Pca]);
        assert_eq!(c.detect.models.min_training_vectors, 300);
        for (text, key) in [
            ("kinds = []", "detect.models.kinds"),
            ("min_training_vectors = 5", "detect.models.min_training_vectors"),
            ("refit_every = \"1s\"", "detect.models.refit_every"),
            ("margin = 0.5", "detect.models.margin"),
            ("kinds = [\"svm2\"]", "detect.models.kinds"),
            ("refit_evry = \"1h\"", "detect.models.refit_evry"),
        ] {
            let msg = parse(&format!("[detect.models]\n{text}\n")).unwrap_err().to_string();
            assert!(msg.contains(key), "{text}: {msg}");
        }
    }

    #[test]
    fn novelty_takes_defaults_and_bad_values_name_their_key() {
        let c = parse("[detect.novelty]\nthreshold = 4.0\n").unwrap();
        assert_eq!(c.detect.novelty.threshold, 4.0);
        assert_eq!(c.detect.novelty.memory, 2000);
        let msg = parse("[detect.novelty]\nneighbours = 0\n").unwrap_err().to_string();
        assert!(msg.contains("detect.novelty.neighbours"), "{msg}");
        let msg = parse("[detect.novelty]\nmemroy = 10\n").unwrap_err().to_string();
        assert!(msg.contains("detect.novelty.memroy") && msg.contains("unknown field"), "{msg}");
    }

    #[test]
    fn mqtt5_options_take_defaults_and_aliases() {
        let c = parse("[mqtt]\nprotocol = \"v5\"\n").unwrap();
        assert_eq!(c.mqtt.protocol, MqttProtocol::V5);
        assert_eq!(c.mqtt.receive_window(), c.mqtt.inflight);
        assert_eq!(c.mqtt.session_expiry_seconds(), u32::MAX, "never expires by default");
        let c = parse("[mqtt]\nprotocol = \"5\"\nreceive_maximum = 10\nsession_expiry = \"7d\"\n").unwrap();
        assert_eq!(c.mqtt.receive_window(), 10);
        assert_eq!(c.mqtt.session_expiry_seconds(), 7 * 24 * 3600);
        let c = parse("[mqtt]\nprotocol = \"v5\"\nsession_expiry = \"never\"\n").unwrap();
        assert_eq!(c.mqtt.session_expiry, Some(SessionExpiry::Never));
        assert_eq!(parse("[mqtt]\nprotocol = \"3.1.1\"\n").unwrap().mqtt.protocol, MqttProtocol::V311);
        assert_eq!(parse("").unwrap().mqtt.protocol, MqttProtocol::V311);
    }

    #[test]
    fn mqtt5_options_that_would_not_apply_are_refused_with_their_key() {
        for (text, key, reason) in [
            ("receive_maximum = 10", "mqtt.receive_maximum", "only MQTT 5"),
            ("session_expiry = \"1h\"", "mqtt.session_expiry", "only MQTT 5"),
            ("protocol = \"v5\"\nreceive_maximum = 0", "mqtt.receive_maximum", "at least 1"),
            ("protocol = \"v5\"\nsession_expiry = \"0s\"", "mqtt.session_expiry", "at least 1s"),
            ("protocol = \"v5\"\nsession_expiry = \"200years\"", "mqtt.session_expiry", "136 years"),
            ("protocol = \"v5\"\nclean_session = true\nsession_expiry = \"1h\"", "mqtt.session_expiry", "no effect"),
            ("protocol = \"v5\"\nsession_expiry = \"soon\"", "mqtt.session_expiry", "never"),
            ("protocol = \"v6\"", "mqtt.protocol", "v5"),
        ] {
            let msg = parse(&format!("[mqtt]\n{text}\n")).unwrap_err().to_string();
            assert!(msg.contains("test.toml") && msg.contains(key) && msg.contains(reason), "{text}: {msg}");
        }
    }

    #[test]
    fn shipped_example_config_loads() {
        for file in ["config/fieldwatch.toml", "config/nab.toml"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
            Config::load(&path).unwrap();
        }
    }
}
