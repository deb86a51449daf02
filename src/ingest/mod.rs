//! Ingest: where messages come from. Today MQTT; files and the simulator feed the core directly.

pub mod config;
pub mod link;
pub mod mqtt;

pub use config::{MqttConfig, MqttProtocol, SessionExpiry, TlsConfig};
