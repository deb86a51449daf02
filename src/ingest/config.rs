//! `[mqtt]`: the broker connection.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::settings::{bad, Invalid, SecretRef};

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

impl MqttConfig {
    /// Checks what types alone cannot; names the offending key.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.host.trim().is_empty() {
            return bad("mqtt.host", "must not be empty");
        }
        if self.client_id.trim().is_empty() {
            return bad("mqtt.client_id", "must not be empty (a persistent session needs a fixed id)");
        }
        if self.topics.is_empty() {
            return bad("mqtt.topics", "subscribe to at least one topic filter");
        }
        for (i, t) in self.topics.iter().enumerate() {
            if !rumqttc::valid_filter(t) {
                return Err(Invalid::new(
                    format!("mqtt.topics[{i}]"),
                    format!("`{t}` is not a valid MQTT topic filter"),
                ));
            }
        }
        if self.keep_alive < Duration::from_secs(5) {
            return bad("mqtt.keep_alive", "must be at least 5s");
        }
        if self.inflight == 0 {
            return bad("mqtt.inflight", "must be at least 1");
        }
        if self.reconnect_min.is_zero() || self.reconnect_min > self.reconnect_max {
            return bad("mqtt.reconnect_min", "must be above zero and at most mqtt.reconnect_max");
        }
        if let Some(pw) = &self.password {
            if pw.file.is_none() && pw.env.is_none() {
                return bad("mqtt.password", "set `file` or `env`");
            }
            if self.username.is_none() {
                return bad("mqtt.username", "a password is configured but no username");
            }
        }
        if let Some(tls) = &self.tls {
            if tls.client_cert_file.is_some() != tls.client_key_file.is_some() {
                return bad("mqtt.tls.client_key_file", "client_cert_file and client_key_file go together");
            }
        }
        self.validate_mqtt5()
    }

    /// The MQTT 5 options: refused with 3.1.1 rather than ignored, so nobody believes a window
    /// or an expiry is in force that the broker never heard of.
    fn validate_mqtt5(&self) -> Result<(), Invalid> {
        let m = self;
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
}
