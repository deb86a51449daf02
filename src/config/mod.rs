//! Configuration: typed with serde, defaults in one place, validated at load.
//!
//! Every error names the file, the key (a dotted path such as `mqtt.keep_alive`) and the reason, so
//! an operator on a gateway can fix a typo without reading source code. Unknown keys are errors:
//! a misspelt option that is silently ignored is worse than one that stops the daemon.
//!
//! A component with settings of its own keeps their types and checks beside its code (`[ticket]`
//! in [`crate::ticket::TicketConfig`], `[assets]` in [`crate::assets`]); this module loads and
//! merges the files and reports every error the same way.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::ticket::TicketConfig;

mod locate;
pub mod reference;

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
    pub fn invalid(file: &Path, text: &str, key: String, reason: String) -> ConfigError {
        ConfigError::Invalid { file: file.to_path_buf(), line: locate::line_of(text, &key), key, reason }
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

/// What the daemon does with a ticket it would open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Log and count only.
    Observe,
    /// Record the ticket it would open (in the store), send nothing.
    Shadow,
    /// Send tickets.
    #[default]
    Ticket,
}

/// `[modes]`: roll fieldwatch out safely, site by site.
#[derive(Debug, Clone, Deserialize, serde::Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ModesConfig {
    pub default: Mode,
    /// Per-site overrides: `site = "shadow"`.
    pub sites: BTreeMap<String, Mode>,
}

impl ModesConfig {
    /// The mode for a site.
    pub fn for_site(&self, site: Option<&str>) -> Mode {
        site.and_then(|s| self.sites.get(s)).copied().unwrap_or(self.default)
    }
}

/// `[maintenance]`: scheduled windows during which no ticket opens.
#[derive(Debug, Clone, Deserialize, serde::Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct MaintenanceConfig {
    pub windows: Vec<MaintenanceWindow>,
}

/// One planned-work window for a site or a device: absolute (`start`/`end`, RFC 3339) or daily
/// (`daily_from`/`daily_to`, `HH:MM` UTC, optionally on some `days` only).
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceWindow {
    pub site: Option<String>,
    pub device: Option<String>,
    /// RFC 3339 with an offset: `2026-05-01T06:00:00Z` or `2026-05-01T08:00:00+02:00`.
    #[serde(default, deserialize_with = "instant")]
    pub start: Option<chrono::DateTime<chrono::Utc>>,
    #[serde(default, deserialize_with = "instant")]
    pub end: Option<chrono::DateTime<chrono::Utc>>,
    /// Time of day, UTC: `HH:MM` or `HH:MM:SS`.
    #[serde(default, deserialize_with = "time_of_day")]
    pub daily_from: Option<chrono::NaiveTime>,
    #[serde(default, deserialize_with = "time_of_day")]
    pub daily_to: Option<chrono::NaiveTime>,
    /// Weekdays for a daily window (`mon`..`sun`); empty = every day.
    #[serde(default)]
    pub days: Vec<chrono::Weekday>,
    /// Shown in logs and the suppression record.
    #[serde(default)]
    pub reason: String,
}

/// An RFC 3339 time with its offset; the error says what is expected.
fn instant<'de, D: serde::Deserializer<'de>>(de: D) -> Result<Option<chrono::DateTime<chrono::Utc>>, D::Error> {
    let text = String::deserialize(de)?;
    chrono::DateTime::parse_from_rfc3339(text.trim()).map(|t| Some(t.to_utc())).map_err(|e| {
        serde::de::Error::custom(format!(
            "`{text}` is not an RFC 3339 time ({e}): write it with its offset, e.g. \
             2026-05-01T06:00:00Z or 2026-05-01T08:00:00+02:00"
        ))
    })
}

/// A time of day, `HH:MM` or `HH:MM:SS` (UTC); the error says what is expected.
fn time_of_day<'de, D: serde::Deserializer<'de>>(de: D) -> Result<Option<chrono::NaiveTime>, D::Error> {
    let text = String::deserialize(de)?;
    let t = text.trim();
    chrono::NaiveTime::parse_from_str(t, "%H:%M:%S")
        .or_else(|_| chrono::NaiveTime::parse_from_str(t, "%H:%M"))
        .map(Some)
        .map_err(|_| serde::de::Error::custom(format!("`{text}` is not a time of day: write HH:MM or HH:MM:SS (UTC)")))
}

impl MaintenanceWindow {
    /// Whether the window covers `device` at `site` at time `ts` (ms).
    pub fn covers(&self, device: &str, site: Option<&str>, ts: i64) -> bool {
        let target = match (&self.device, &self.site) {
            (Some(d), _) => d == device,
            (None, Some(s)) => site == Some(s.as_str()),
            (None, None) => true,
        };
        if !target {
            return false;
        }
        let Some(t) = chrono::DateTime::from_timestamp_millis(ts) else { return false };
        if let (Some(a), Some(b)) = (self.start, self.end) {
            return a <= t && t < b;
        }
        if let (Some(from), Some(to)) = (self.daily_from, self.daily_to) {
            use chrono::Datelike;
            if !self.days.is_empty() && !self.days.contains(&t.weekday()) {
                return false;
            }
            let now = t.time();
            return if from <= to { from <= now && now < to } else { now >= from || now < to };
        }
        false
    }
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

/// Where a secret comes from. Secrets never sit in the config text itself, so the config can be
/// versioned and shared without leaking credentials.
#[derive(Debug, Clone, Deserialize, serde::Serialize, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SecretRef {
    /// Read the secret from this file (trailing newline trimmed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// Read the secret from this environment variable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
}

/// Why a secret could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read secret file {path}: {source}")]
    File { path: PathBuf, source: std::io::Error },
    #[error("environment variable {0} is not set")]
    Env(String),
    #[error("neither `file` nor `env` is set")]
    Missing,
    #[error("the secret is empty")]
    Empty,
}

impl SecretRef {
    /// Reads the secret now. The value is never logged.
    pub fn resolve(&self) -> Result<String, SecretError> {
        if let Some(path) = &self.file {
            let text =
                std::fs::read_to_string(path).map_err(|source| SecretError::File { path: path.clone(), source })?;
            return Ok(text.trim_end_matches(['\r', '\n']).to_string());
        }
        if let Some(var) = &self.env {
            return std::env::var(var).map_err(|_| SecretError::Env(var.clone()));
        }
        Err(SecretError::Missing)
    }
}

/// The MQTT connection.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    pub host: String,
    pub port: u16,
    /// Fixed client id: with a persistent session the broker keeps our queue under this id.
    pub client_id: String,
    #[serde(with = "humantime_serde")]
    pub keep_alive: Duration,
    /// `false` keeps a persistent session so QoS 1 messages published while we are away are kept.
    pub clean_session: bool,
    pub username: Option<String>,
    pub password: Option<SecretRef>,
    /// Topic filters subscribed at QoS 1.
    pub topics: Vec<String>,
    /// The client's own window of QoS 1 publishes in flight (it sizes the client's queues; we
    /// publish nothing today). Also the receive maximum announced with MQTT 5 unless
    /// `receive_maximum` is set.
    pub inflight: u16,
    pub max_packet_bytes: usize,
    #[serde(with = "humantime_serde")]
    pub reconnect_min: Duration,
    #[serde(with = "humantime_serde")]
    pub reconnect_max: Duration,
    pub tls: Option<TlsConfig>,
    /// The protocol version spoken to the broker.
    pub protocol: MqttProtocol,
    /// MQTT 5: how many unacknowledged QoS 1 messages the broker may have in flight to us (the
    /// Receive Maximum of CONNECT). Unset: `inflight`. With 3.1.1 the broker decides alone.
    pub receive_maximum: Option<u16>,
    /// MQTT 5: how long the broker keeps our session (and what it queues for us) after the
    /// connection drops. Unset: never expires, as a 3.1.1 persistent session.
    pub session_expiry: Option<SessionExpiry>,
}

/// The MQTT protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, Default)]
pub enum MqttProtocol {
    /// MQTT 3.1.1, the default.
    #[default]
    #[serde(rename = "v311", alias = "3.1.1")]
    V311,
    /// MQTT 5.
    #[serde(rename = "v5", alias = "5")]
    V5,
}

/// How long an MQTT 5 broker keeps a session after its connection drops: a duration
/// (`"7d"`), or `"never"` for a session that does not expire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionExpiry {
    Never,
    After(Duration),
}

impl SessionExpiry {
    /// The Session Expiry Interval of CONNECT in seconds; `u32::MAX` is "never" in MQTT 5.
    /// Validation keeps a duration below that.
    pub fn seconds(self) -> u32 {
        match self {
            SessionExpiry::Never => u32::MAX,
            SessionExpiry::After(d) => u32::try_from(d.as_secs()).unwrap_or(u32::MAX),
        }
    }
}

impl serde::Serialize for SessionExpiry {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            SessionExpiry::Never => serializer.serialize_str("never"),
            SessionExpiry::After(d) => serializer.serialize_str(&humantime::format_duration(*d).to_string()),
        }
    }
}

impl<'de> Deserialize<'de> for SessionExpiry {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        if text.trim() == "never" {
            return Ok(SessionExpiry::Never);
        }
        humantime::parse_duration(&text).map(SessionExpiry::After).map_err(|e| {
            serde::de::Error::custom(format!("`{text}` is neither a duration such as \"7d\" nor \"never\": {e}"))
        })
    }
}

impl MqttConfig {
    /// The in-flight window we ask an MQTT 5 broker to keep to, or, with 3.1.1, the one we
    /// size our queues for (the broker's own setting decides there).
    pub fn receive_window(&self) -> u16 {
        match self.protocol {
            MqttProtocol::V5 => self.receive_maximum.unwrap_or(self.inflight),
            MqttProtocol::V311 => self.inflight,
        }
    }

    /// The MQTT 5 Session Expiry Interval sent in CONNECT: 0 (the session ends with the
    /// connection) for a clean session, else `session_expiry`, never by default.
    pub fn session_expiry_seconds(&self) -> u32 {
        if self.clean_session {
            0
        } else {
            self.session_expiry.unwrap_or(SessionExpiry::Never).seconds()
        }
    }
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 1883,
            client_id: "fieldwatch".into(),
            keep_alive: Duration::from_secs(30),
            clean_session: false,
            username: None,
            password: None,
            topics: vec!["plant/+/+/telemetry".into()],
            inflight: 256,
            max_packet_bytes: 256 * 1024,
            reconnect_min: Duration::from_millis(500),
            reconnect_max: Duration::from_secs(60),
            tls: None,
            protocol: MqttProtocol::V311,
            receive_maximum: None,
            session_expiry: None,
        }
    }
}

/// TLS towards the broker (rustls).
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file with the CA certificate(s) that signed the broker's certificate.
    pub ca_file: PathBuf,
    /// PEM client certificate chain, for brokers that require mutual TLS.
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key matching `client_cert_file`.
    pub client_key_file: Option<PathBuf>,
}

/// How a payload's event time is written.
#[derive(Debug, Clone, Copy, Deserialize, serde::Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum TimestampFormat {
    /// RFC 3339 strings, or numbers: seconds below 10^11, milliseconds above.
    #[default]
    Auto,
    Rfc3339,
    EpochS,
    EpochMs,
}

/// One metric taken from a JSON pointer instead of a top-level field.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetricMapping {
    /// Metric name as it appears in tickets and the store.
    pub name: String,
    /// JSON pointer (RFC 6901), e.g. `/sensors/discharge/temp`.
    pub pointer: String,
    /// Unit shown to technicians, e.g. `°C`.
    pub unit: Option<String>,
}

/// How a message becomes readings.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DecodeConfig {
    /// Topic pattern with `{device}` and optional `{site}` placeholders.
    pub topic_pattern: Option<String>,
    /// JSON pointer to the device id, used when the topic does not name it.
    pub device_field: Option<String>,
    /// JSON pointer to the site, used when the topic does not name it.
    pub site_field: Option<String>,
    /// JSON pointer to the event time; absent means receive time.
    pub timestamp_field: Option<String>,
    pub timestamp_format: TimestampFormat,
    /// Explicit metrics. When empty, every numeric top-level field (except the device, site and
    /// timestamp fields) is a metric.
    pub metrics: Vec<MetricMapping>,
    /// Units for metrics found automatically (`metric name -> unit`).
    pub units: BTreeMap<String, String>,
    pub max_payload_bytes: usize,
    /// Reject readings from devices not listed in `known_devices`.
    pub require_known_devices: bool,
    pub known_devices: Vec<String>,
    /// Most devices tracked; messages of new devices beyond it are rejected (`too_many_devices`)
    /// while known ones keep flowing. 0: no limit.
    pub max_devices: usize,
    /// Most series (device × metric) tracked; new series beyond it are rejected
    /// (`too_many_series`). 0: no limit.
    pub max_series: usize,
    /// A device not heard from this long is forgotten: its detectors, models and bookkeeping
    /// are freed (a silent-device incident stays open). It starts afresh if it returns.
    #[serde(with = "humantime_serde")]
    pub forget_after: Duration,
}

impl Default for DecodeConfig {
    fn default() -> Self {
        Self {
            topic_pattern: Some("plant/{site}/{device}/telemetry".into()),
            device_field: None,
            site_field: None,
            timestamp_field: Some("/ts".into()),
            timestamp_format: TimestampFormat::Auto,
            metrics: Vec::new(),
            units: BTreeMap::new(),
            max_payload_bytes: 64 * 1024,
            require_known_devices: false,
            known_devices: Vec::new(),
            max_devices: 10_000,
            max_series: 100_000,
            forget_after: Duration::from_secs(7 * 86_400),
        }
    }
}

/// The embedded database.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Readings older than this (by event time) are deleted in the background.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    #[serde(with = "humantime_serde")]
    pub retention_interval: Duration,
    /// Readings dropped by retention are kept as per-interval aggregates (min, max, mean,
    /// count) of this width ...
    #[serde(with = "humantime_serde")]
    pub downsample_interval: Duration,
    /// ... for this long (event time).
    #[serde(with = "humantime_serde")]
    pub aggregate_retention: Duration,
    /// Largest group-commit batch (messages).
    pub batch_max: usize,
    /// Longest a message waits for its batch to fill before the batch is committed.
    #[serde(with = "humantime_serde")]
    pub batch_linger: Duration,
    /// sled page cache; its own default is 1 GiB, far too much for a gateway.
    pub cache_mb: u64,
    /// Rejected payloads kept for inspection; the oldest are dropped beyond this.
    pub rejected_max: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            retention: Duration::from_secs(14 * 24 * 3600),
            retention_interval: Duration::from_secs(600),
            downsample_interval: Duration::from_secs(300),
            aggregate_retention: Duration::from_secs(365 * 24 * 3600),
            batch_max: 512,
            batch_linger: Duration::from_millis(20),
            cache_mb: 64,
            rejected_max: 10_000,
        }
    }
}

/// A fixed limit for one metric (any device), or for one device's metric.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitConfig {
    pub metric: String,
    /// Only this device; absent means every device.
    pub device: Option<String>,
    pub min: Option<f64>,
    pub max: Option<f64>,
}

/// Streaming detectors.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectConfig {
    /// Readings a series needs before its baseline may raise anomalies.
    pub warmup_readings: u32,
    /// Half-life of the baseline, in readings.
    pub baseline_half_life: f64,
    /// Deviation, in robust standard deviations, above which a reading is anomalous.
    pub z_threshold: f64,
    /// Smallest spread the baseline assumes, relative to its level, so a near-constant series
    /// does not alarm on noise in the last digit.
    pub min_relative_spread: f64,
    /// A series that repeats the same value this long is reported as stuck.
    #[serde(with = "humantime_serde")]
    pub flatline_after: Duration,
    /// ... and at least this many identical readings in a row.
    pub flatline_readings: u32,
    pub limits: Vec<LimitConfig>,
    /// Run the baseline (z-score) detector on every series.
    pub baseline: bool,
    /// Run the flatline (stuck sensor) detector on every series.
    pub flatline: bool,
    /// Drift from each series' healthy reference (slow degradation).
    pub drift: crate::detect::DriftConfig,
    /// The novelty detector: unusual shapes, level shifts and new extremes.
    pub novelty: NoveltyConfig,
    /// Learned per-device models over all of a device's metrics.
    pub models: ModelsConfig,
}

impl Default for DetectConfig {
    fn default() -> Self {
        Self {
            warmup_readings: 60,
            baseline_half_life: 300.0,
            z_threshold: 5.0,
            min_relative_spread: 0.002,
            flatline_after: Duration::from_secs(300),
            flatline_readings: 30,
            limits: Vec::new(),
            baseline: true,
            flatline: true,
            drift: crate::detect::DriftConfig::default(),
            novelty: NoveltyConfig::default(),
            models: ModelsConfig::default(),
        }
    }
}

/// `[detect.models]`: per-device models (`crate::model`) fitted in the background on stored
/// history. Off by default: a model needs `min_training_vectors` of healthy history first.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ModelsConfig {
    pub enabled: bool,
    /// Model kinds fitted per device; a device's score is the highest of them.
    pub kinds: Vec<crate::model::ModelKind>,
    /// History a model is fitted on, ending at the device's latest reading.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Every device is refitted this often (and sooner when its scores drift).
    #[serde(with = "humantime_serde")]
    pub refit_every: Duration,
    /// Complete vectors (one message with every metric) a device needs before it gets a model.
    pub min_training_vectors: usize,
    /// At most this many vectors are fitted on (evenly thinned beyond).
    pub max_training_vectors: usize,
    /// Features per metric: `value`, `delta`, `rolling_mean`.
    pub features: Vec<crate::model::FeatureKind>,
    /// The alarm sits this many times beyond the largest smoothed statistic of the fitting data.
    pub margin: f64,
    /// EWMA weight of the newest vector in the smoothed model statistics (1 = no smoothing).
    pub smoothing: f64,
    /// Share of the variance the PCA's kept components explain.
    pub explained_variance: f64,
    /// A model whose held-out alarm rate is above this is scored but raises no incident.
    pub max_held_out_alarm_rate: f64,
    /// Whether the PCA's Hotelling's T² raises alarms too (it flags an unusual operating point
    /// along the device's known relations; off, only broken relations alarm).
    pub t2_alarms: bool,
}

impl Default for ModelsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            kinds: vec![crate::model::ModelKind::Pca],
            window: Duration::from_secs(7 * 86_400),
            refit_every: Duration::from_secs(6 * 3600),
            min_training_vectors: 300,
            max_training_vectors: 100_000,
            features: vec![crate::model::FeatureKind::Value],
            margin: 2.0,
            smoothing: 0.2,
            explained_variance: 0.8,
            max_held_out_alarm_rate: 0.01,
            t2_alarms: false,
        }
    }
}

impl ModelsConfig {
    /// Checks the values; returns the offending key (below `detect.models`) and why.
    fn validate(&self) -> Result<(), (String, String)> {
        let bad = |key: &str, reason: &str| Err((format!("detect.models.{key}"), reason.to_string()));
        if self.kinds.is_empty() {
            return bad("kinds", "name at least one model kind (\"pca\", \"gmm\")");
        }
        if self.window < Duration::from_secs(600) {
            return bad("window", "must be at least 10m");
        }
        if self.refit_every < Duration::from_secs(60) {
            return bad("refit_every", "must be at least 1m");
        }
        if self.min_training_vectors < 100 {
            return bad("min_training_vectors", "must be at least 100");
        }
        if self.max_training_vectors < self.min_training_vectors {
            return bad("max_training_vectors", "must be at least min_training_vectors");
        }
        if self.features.is_empty() {
            return bad("features", "name at least one feature (\"value\", \"delta\", \"rolling_mean\")");
        }
        if !(self.margin >= 1.0 && self.margin.is_finite()) {
            return bad("margin", "must be at least 1");
        }
        if !(self.smoothing > 0.0 && self.smoothing <= 1.0) {
            return bad("smoothing", "must be in (0, 1]");
        }
        if !(self.explained_variance > 0.0 && self.explained_variance < 1.0) {
            return bad("explained_variance", "must be between 0 and 1");
        }
        if !(0.0..=1.0).contains(&self.max_held_out_alarm_rate) {
            return bad("max_held_out_alarm_rate", "must be between 0 and 1");
        }
        Ok(())
    }
}

/// The novelty detector (`detect::Novelty`). The defaults are the values measured on the
/// Numenta Anomaly Benchmark; the window sizes not listed here are derived from `memory` and
/// `warmup_readings`.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NoveltyConfig {
    pub enabled: bool,
    /// Evidence needed to report, as `-log10 p` of the reading's pattern (3.5: p ≤ 3.2e-4).
    pub threshold: f64,
    /// Readings in the shape compared with the past.
    pub lag: usize,
    /// Past shapes kept per series; the detector's state is about 36 bytes per unit of `memory`.
    pub memory: usize,
    /// Nearest past shapes averaged into the distance.
    pub neighbours: usize,
    /// Readings a series needs before the detector may report.
    pub warmup_readings: u64,
    /// Readings after a report during which the detector holds back further reports.
    pub refractory_readings: u64,
    /// Level shift: mean of the last 20 readings against the 500 before, in standard deviations.
    pub level_shift_z: f64,
    /// New extreme: a reading beyond everything seen by more than this fraction of the range.
    pub new_extreme_margin: f64,
}

impl Default for NoveltyConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            threshold: 3.5,
            lag: 8,
            memory: 2000,
            neighbours: 3,
            warmup_readings: 100,
            refractory_readings: 100,
            level_shift_z: 4.0,
            new_extreme_margin: 0.10,
        }
    }
}

impl NoveltyConfig {
    /// Checks the values; returns the offending key (below `detect.novelty`) and why.
    fn validate(&self) -> Result<(), (String, String)> {
        let bad = |key: &str, reason: &str| Err((format!("detect.novelty.{key}"), reason.to_string()));
        if !(self.threshold.is_finite() && self.threshold > 0.0) {
            return bad("threshold", "must be a positive number (-log10 of a probability, e.g. 3.5)");
        }
        if !(1..=64).contains(&self.lag) {
            return bad("lag", "must be between 1 and 64 readings");
        }
        if !(100..=100_000).contains(&self.memory) {
            return bad("memory", "must be between 100 and 100000 readings");
        }
        if self.neighbours == 0 || self.neighbours * 10 > self.memory {
            return bad("neighbours", "must be at least 1 and at most a tenth of `memory`");
        }
        if self.warmup_readings < 8 {
            return bad("warmup_readings", "must be at least 8");
        }
        if !(self.level_shift_z.is_finite() && self.level_shift_z > 0.0) {
            return bad("level_shift_z", "must be a positive number");
        }
        if !(self.new_extreme_margin.is_finite() && self.new_extreme_margin > 0.0) {
            return bad("new_extreme_margin", "must be a positive fraction of the range, e.g. 0.1");
        }
        Ok(())
    }
}

/// When anomalies become incidents.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct IncidentConfig {
    /// Consecutive anomalous readings before an incident opens ...
    pub debounce_readings: u32,
    /// ... or this long of continuous anomaly, whichever comes first.
    #[serde(with = "humantime_serde")]
    pub debounce_for: Duration,
    /// Slow faults (drift from the healthy reference, device behaviour) must also persist
    /// this long: they develop over hours, and the wait lets a change of operating point be
    /// recognised before it is ticketed.
    #[serde(with = "humantime_serde")]
    pub slow_debounce_for: Duration,
    /// An open incident resolves after this long without anomaly.
    #[serde(with = "humantime_serde")]
    pub quiet_period: Duration,
    /// Readings kept as evidence in a ticket.
    pub evidence_readings: usize,
    /// A fault that recurs this soon after its incident resolved updates the same ticket
    /// instead of opening a new one.
    #[serde(with = "humantime_serde")]
    pub cool_down: Duration,
    /// An incident that reopens this many times is marked flapping and held open ...
    pub flap_reopens: u32,
    /// ... until it has been quiet this many quiet periods.
    pub flap_hold_factor: u32,
    /// Below this confidence (0..1) a ticket goes to review instead of dispatch.
    pub min_confidence: f64,
    /// A device that sends nothing this long (while the broker link is up) opens a
    /// sensor-health incident. Zero disables it.
    #[serde(with = "humantime_serde")]
    pub stale_after: Duration,
    /// Only an established device opens a sensor-health incident when it goes silent: one in
    /// the asset registry, or one that has reported for at least this long. A burst of one-shot
    /// device ids (a misconfigured publisher) then opens no tickets.
    #[serde(with = "humantime_serde")]
    pub establish_after: Duration,
}

impl Default for IncidentConfig {
    fn default() -> Self {
        Self {
            debounce_readings: 3,
            debounce_for: Duration::from_secs(120),
            slow_debounce_for: Duration::from_secs(300),
            quiet_period: Duration::from_secs(600),
            evidence_readings: 10,
            cool_down: Duration::from_secs(3600),
            flap_reopens: 3,
            flap_hold_factor: 3,
            min_confidence: 0.55,
            stale_after: Duration::from_secs(900),
            establish_after: Duration::from_secs(3600),
        }
    }
}

/// The loopback HTTP endpoint for `/metrics` and health checks.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// `host:port`; empty disables it. Anything but a loopback address needs `token`.
    pub listen: String,
    /// Bearer token every request that changes state must carry (`{ file = ... }` or
    /// `{ env = ... }`). Reads (`/metrics`, health, lists) stay open.
    pub token: Option<SecretRef>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self { listen: "127.0.0.1:9797".into(), token: None }
    }
}

/// Deserializes TOML, naming the key path and line of the first error.
fn parse_toml<T: serde::de::DeserializeOwned>(text: &str, file: &Path) -> Result<T, ConfigError> {
    let de = toml::Deserializer::new(text);
    serde_path_to_error::deserialize(de).map_err(|err| {
        let key = err.path().to_string();
        let inner = err.into_inner();
        let line = inner.span().map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1).unwrap_or(0);
        ConfigError::Parse { file: file.to_path_buf(), line, key, reason: inner.message().to_string() }
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
                .map_err(|(key, reason)| ConfigError::invalid(&assets_path, &assets_text, key, reason))?;
            config.assets.customers.extend(extra.customers);
            config.assets.devices.extend(extra.devices);
            config.assets.runbooks.extend(extra.runbooks);
        }
        Ok(config)
    }

    /// Parses and validates config text; `file` is only used in error messages.
    pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
        let config: Config = parse_toml(text, file)?;
        config.validate().map_err(|(key, reason)| ConfigError::invalid(file, text, key, reason))?;
        Ok(config)
    }

    /// Checks what types alone cannot; returns the offending key and why.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let bad = |key: &str, reason: &str| Err((key.to_string(), reason.to_string()));
        if self.mqtt.host.trim().is_empty() {
            return bad("mqtt.host", "must not be empty");
        }
        if self.mqtt.client_id.trim().is_empty() {
            return bad("mqtt.client_id", "must not be empty (a persistent session needs a fixed id)");
        }
        if self.mqtt.topics.is_empty() {
            return bad("mqtt.topics", "subscribe to at least one topic filter");
        }
        for (i, t) in self.mqtt.topics.iter().enumerate() {
            if !rumqttc::valid_filter(t) {
                return Err((format!("mqtt.topics[{i}]"), format!("`{t}` is not a valid MQTT topic filter")));
            }
        }
        if self.mqtt.keep_alive < Duration::from_secs(5) {
            return bad("mqtt.keep_alive", "must be at least 5s");
        }
        if self.mqtt.inflight == 0 {
            return bad("mqtt.inflight", "must be at least 1");
        }
        if self.mqtt.reconnect_min.is_zero() || self.mqtt.reconnect_min > self.mqtt.reconnect_max {
            return bad("mqtt.reconnect_min", "must be above zero and at most mqtt.reconnect_max");
        }
        if let Some(pw) = &self.mqtt.password {
            if pw.file.is_none() && pw.env.is_none() {
                return bad("mqtt.password", "set `file` or `env`");
            }
            if self.mqtt.username.is_none() {
                return bad("mqtt.username", "a password is configured but no username");
            }
        }
        if let Some(tls) = &self.mqtt.tls {
            if tls.client_cert_file.is_some() != tls.client_key_file.is_some() {
                return bad("mqtt.tls.client_key_file", "client_cert_file and client_key_file go together");
            }
        }
        self.validate_mqtt5()?;
        self.validate_decode()?;
        if self.store.batch_max == 0 {
            return bad("store.batch_max", "must be at least 1");
        }
        if self.store.retention < Duration::from_secs(3600) {
            return bad("store.retention", "must be at least 1h");
        }
        if self.store.downsample_interval < Duration::from_secs(1) {
            return bad("store.downsample_interval", "must be at least 1s");
        }
        if self.store.aggregate_retention < self.store.retention {
            return bad("store.aggregate_retention", "must be at least store.retention (aggregates outlive readings)");
        }
        if self.store.cache_mb == 0 {
            return bad("store.cache_mb", "must be at least 1");
        }
        let d = &self.detect;
        if !(d.z_threshold.is_finite() && d.z_threshold > 0.0) {
            return bad("detect.z_threshold", "must be a positive number");
        }
        if !(d.baseline_half_life.is_finite() && d.baseline_half_life >= 1.0) {
            return bad("detect.baseline_half_life", "must be at least 1 reading");
        }
        if !(d.min_relative_spread.is_finite() && d.min_relative_spread >= 0.0) {
            return bad("detect.min_relative_spread", "must be zero or positive");
        }
        if d.flatline_readings < 2 {
            return bad("detect.flatline_readings", "must be at least 2");
        }
        for (i, l) in d.limits.iter().enumerate() {
            if l.min.is_none() && l.max.is_none() {
                return Err((format!("detect.limits[{i}]"), "set `min`, `max` or both".into()));
            }
            if let (Some(lo), Some(hi)) = (l.min, l.max) {
                if lo >= hi {
                    return Err((format!("detect.limits[{i}].min"), "must be below `max`".into()));
                }
            }
        }
        d.novelty.validate()?;
        d.drift.validate()?;
        d.models.validate()?;
        if self.incident.debounce_readings == 0 {
            return bad("incident.debounce_readings", "must be at least 1");
        }
        if self.incident.quiet_period.is_zero() {
            return bad("incident.quiet_period", "must be above zero");
        }
        self.ticket.validate()?;
        if !(0.0..=1.0).contains(&self.incident.min_confidence) {
            return bad("incident.min_confidence", "must be between 0 and 1");
        }
        if self.incident.flap_reopens < 2 {
            return bad("incident.flap_reopens", "must be at least 2");
        }
        if self.incident.flap_hold_factor == 0 {
            return bad("incident.flap_hold_factor", "must be at least 1");
        }
        crate::assets::Registry::validate(&self.assets, None)?;
        for (i, w) in self.maintenance.windows.iter().enumerate() {
            let key = format!("maintenance.windows[{i}]");
            let absolute = w.start.is_some() || w.end.is_some();
            let daily = w.daily_from.is_some() || w.daily_to.is_some();
            match (absolute, daily) {
                (true, true) => return Err((key, "use start/end or daily_from/daily_to, not both".into())),
                (false, false) => return Err((key, "set start and end, or daily_from and daily_to".into())),
                (true, false) if w.start.is_none() || w.end.is_none() || w.start >= w.end => {
                    return Err((format!("{key}.end"), "start and end are both needed, start before end".into()))
                }
                (false, true) if w.daily_from.is_none() || w.daily_to.is_none() => {
                    return Err((format!("{key}.daily_to"), "daily_from and daily_to go together".into()))
                }
                _ => {}
            }
            if w.site.is_some() && w.device.is_some() {
                return Err((key, "name a site or a device, not both".into()));
            }
        }
        if !self.admin.listen.is_empty() {
            let Ok(addr) = self.admin.listen.parse::<std::net::SocketAddr>() else {
                return bad("admin.listen", "must be host:port, e.g. 127.0.0.1:9797, or empty");
            };
            if !addr.ip().is_loopback() && self.admin.token.is_none() {
                return bad(
                    "admin.listen",
                    "is not a loopback address: set admin.token (file or env) so only operators can change state",
                );
            }
        }
        if let Some(t) = &self.admin.token {
            if t.file.is_none() && t.env.is_none() {
                return bad("admin.token", "set `file` or `env`");
            }
        }
        if self.decode.forget_after < self.incident.stale_after {
            return bad(
                "decode.forget_after",
                "must be at least incident.stale_after (a silent device is reported first)",
            );
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.daemon.log_level) {
            return Err(("daemon.log_level".into(), format!("is not a log filter: {e}")));
        }
        if self.decode.max_payload_bytes > self.mqtt.max_packet_bytes {
            return bad(
                "decode.max_payload_bytes",
                "must not exceed mqtt.max_packet_bytes (a packet carries the payload)",
            );
        }
        Ok(())
    }

    /// The MQTT 5 options: refused with 3.1.1 rather than ignored, so nobody believes a window
    /// or an expiry is in force that the broker never heard of.
    fn validate_mqtt5(&self) -> Result<(), (String, String)> {
        let m = &self.mqtt;
        let bad = |key: &str, reason: &str| Err((key.to_string(), reason.to_string()));
        if m.protocol == MqttProtocol::V311 {
            if m.receive_maximum.is_some() {
                return bad(
                    "mqtt.receive_maximum",
                    "only MQTT 5 announces a receive maximum: set mqtt.protocol = \"v5\" or remove it \
                     (with 3.1.1 the broker's own limit applies, e.g. mosquitto's max_inflight_messages)",
                );
            }
            if m.session_expiry.is_some() {
                return bad(
                    "mqtt.session_expiry",
                    "only MQTT 5 has a session expiry: set mqtt.protocol = \"v5\" or remove it \
                     (a 3.1.1 persistent session is kept until the broker expires it, e.g. mosquitto's \
                     persistent_client_expiration)",
                );
            }
            return Ok(());
        }
        if m.receive_maximum == Some(0) {
            return bad("mqtt.receive_maximum", "must be at least 1 (0 is a protocol error in MQTT 5)");
        }
        match m.session_expiry {
            Some(_) if m.clean_session => bad(
                "mqtt.session_expiry",
                "has no effect with mqtt.clean_session = true (every connection starts a new session): \
                 remove it or set clean_session = false",
            ),
            Some(SessionExpiry::After(d)) if d < Duration::from_secs(1) => bad(
                "mqtt.session_expiry",
                "must be at least 1s, or \"never\": with 0 the broker ends the session when the connection \
                 drops, and what is published meanwhile is lost",
            ),
            Some(SessionExpiry::After(d)) if d.as_secs() >= u64::from(u32::MAX) => bad(
                "mqtt.session_expiry",
                "must be below 136 years (MQTT 5 counts it in 32-bit seconds); use \"never\"",
            ),
            _ => Ok(()),
        }
    }

    fn validate_decode(&self) -> Result<(), (String, String)> {
        let d = &self.decode;
        let bad = |key: &str, reason: String| Err((key.to_string(), reason));
        match &d.topic_pattern {
            Some(p) if !p.contains("{device}") && d.device_field.is_none() => {
                return bad("decode.topic_pattern", "must contain `{device}` unless decode.device_field is set".into());
            }
            Some(_) => {}
            None if d.device_field.is_none() => {
                return bad(
                    "decode.device_field",
                    "set decode.topic_pattern or decode.device_field to find the device".into(),
                );
            }
            None => {}
        }
        for (key, ptr) in [
            ("decode.device_field", &d.device_field),
            ("decode.site_field", &d.site_field),
            ("decode.timestamp_field", &d.timestamp_field),
        ] {
            if let Some(p) = ptr {
                if !p.starts_with('/') {
                    return bad(key, format!("`{p}` is not a JSON pointer (it must start with `/`)"));
                }
            }
        }
        for (i, m) in d.metrics.iter().enumerate() {
            if m.name.is_empty() {
                return Err((format!("decode.metrics[{i}].name"), "must not be empty".into()));
            }
            if !m.pointer.starts_with('/') {
                return Err((format!("decode.metrics[{i}].pointer"), format!("`{}` is not a JSON pointer", m.pointer)));
            }
        }
        if d.max_payload_bytes == 0 {
            return bad("decode.max_payload_bytes", "must be at least 1".into());
        }
        if d.require_known_devices && d.known_devices.is_empty() {
            return bad("decode.known_devices", "require_known_devices is set but the list is empty".into());
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
