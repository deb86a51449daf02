//! # fieldwatch
//!
//! An edge daemon for proactive field service: it watches equipment telemetry arriving over MQTT
//! on a gateway and opens a service ticket before the customer notices an outage.
//!
//! ## Layout
//! One stage, one module; the core does not know where readings come from. The modules are
//! layered without import circles (ARCHITECTURE.md, `tests/architecture.rs`).
//!
//! - [`config`]: the typed, validated configuration (`config/fieldwatch.toml`).
//! - [`ingest`]: the MQTT source (rumqttc, MQTT 3.1.1 or 5, QoS 1, manual acks after storage).
//! - [`decode`]: topic + JSON payload, or a Sparkplug B message, → [`reading::Reading`]s, or a
//!   counted rejection.
//! - [`store`]: the sled database: readings, rejected messages, incidents, the ticket outbox.
//! - [`detect`]: streaming detectors per series (baseline, flatline, limits, novelty).
//! - [`model`]: learned per-device models (PCA, Gaussian mixture) fitted in the background.
//! - [`incident`]: debounce, dedup and auto-resolve; plain-words summaries.
//! - [`suppress`]: whether a ticket goes out: maintenance windows, [`silence`]s, modes.
//! - [`ticket`]: ticket content, the durable outbox and its sinks (webhook, file, ServiceNow,
//!   Jira, PagerDuty).
//! - [`core`]: decode → store → detect → incidents → outbox for one batch.
//! - [`replay`]: a recorded CSV file through the same core, scored row by row (backtests, NAB).
//! - [`daemon`]: wires the stages with bounded channels and shuts them down in order.
//! - [`sim`] and [`demo`]: simulated equipment and the self-contained demo.
//! - [`metrics`] and [`admin`]: Prometheus counters and the loopback HTTP endpoint.
//! - [`score`]: the 0..1 anomaly score every detector and model reports.
//! - [`logging`]: log output for a terminal, a file, the systemd journal or a log shipper.

// Outside tests nothing may panic on an unwrap: input, config, network and disk errors are
// errors (`Result`), and what cannot fail says why in its own code.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

/// A hash map of the hot path: hashbrown's map (the one std's is built on, with `entry_ref`) with
/// aHash, several times cheaper than SipHash for the short device and metric names hashed a
/// dozen times per message, and seeded at random like std's (names come from the wire: no
/// fixed seed to build collisions against).
pub type FastMap<K, V> = hashbrown::HashMap<K, V, ahash::RandomState>;
/// A hash set of the hot path (see [`FastMap`]).
pub type FastSet<K> = hashbrown::HashSet<K, ahash::RandomState>;

pub mod admin;
pub mod assets;
pub mod backoff;
pub mod client;
pub mod config;
pub mod core;
pub mod daemon;
pub mod decode;
#[cfg(feature = "embedded-broker")]
pub mod demo;
pub mod detect;
pub mod health;
pub mod incident;
pub mod ingest;
pub mod logging;
pub mod metrics;
pub mod model;
pub mod model_commands;
pub mod preflight;
pub mod reading;
pub mod replay;
pub mod score;
pub mod settings;
pub mod silence;
pub mod sim;
pub mod store;
pub mod supervisor;
pub mod suppress;
pub mod systemd;
pub mod ticket;
pub mod worker;

pub use config::Config;
pub use daemon::Daemon;
