//! MQTT source (rumqttc): QoS 1, persistent session, manual acks.
//!
//! The event loop is polled continuously in its own task (rumqttc requires it). Each publish is
//! forwarded, with the packet needed to acknowledge it, over a bounded channel to the batcher,
//! which acknowledges only after the batch is durably stored. When the batcher falls behind the
//! channel fills and this task stops polling: backpressure reaches the broker instead of memory.
//! Connection errors back off exponentially with jitter; the loop is never hot.
//!
//! A queued message over `mqtt.max_packet_bytes` would otherwise wedge a persistent session:
//! the client refuses it, reconnects, and the broker sends the same message first again. When
//! that happens the limit is raised for one connection, to exactly the size the broker
//! announced (at most 64 MiB), so the message can be taken, acknowledged and rejected as
//! `too_large` (decode keeps a cut copy aside); the connection after it has the normal limit.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, Packet, Publish, QoS, StateError, TlsConfiguration,
    Transport,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::backoff::backoff;
use crate::config::MqttConfig;
use crate::metrics::Metrics;
use crate::reading::{now_ms, Message};
use crate::store::Store;

/// Why the MQTT client could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("mqtt.password: {0}")]
    Password(#[from] crate::config::SecretError),
    #[error("{key}: cannot read {path}: {source}")]
    File { key: &'static str, path: std::path::PathBuf, source: std::io::Error },
}

/// A message and, for QoS 1, the packet to acknowledge once it is stored.
#[derive(Debug)]
pub struct Inbound {
    pub message: Message,
    pub publish: Option<Publish>,
}

/// Builds client options from config (resolving the password and reading TLS files now).
pub fn options(cfg: &MqttConfig, request_capacity: usize) -> Result<MqttOptions, IngestError> {
    let mut o = MqttOptions::new(cfg.client_id.clone(), cfg.host.clone(), cfg.port);
    o.set_keep_alive(cfg.keep_alive)
        .set_clean_session(cfg.clean_session)
        .set_manual_acks(true)
        .set_inflight(cfg.inflight)
        .set_max_packet_size(cfg.max_packet_bytes, cfg.max_packet_bytes)
        // Acks are queued here by the batcher; room for a full broker in-flight window of them
        // keeps the batcher from waiting on the event loop while the event loop waits on it.
        .set_request_channel_capacity(request_capacity);
    if let Some(user) = &cfg.username {
        let password = match &cfg.password {
            Some(p) => p.resolve()?,
            None => String::new(),
        };
        o.set_credentials(user.clone(), password);
    }
    if let Some(tls) = &cfg.tls {
        let read = |key: &'static str, path: &std::path::Path| {
            std::fs::read(path).map_err(|source| IngestError::File { key, path: path.to_path_buf(), source })
        };
        let ca = read("mqtt.tls.ca_file", &tls.ca_file)?;
        let client_auth = match (&tls.client_cert_file, &tls.client_key_file) {
            (Some(c), Some(k)) => Some((read("mqtt.tls.client_cert_file", c)?, read("mqtt.tls.client_key_file", k)?)),
            _ => None,
        };
        o.set_transport(Transport::Tls(TlsConfiguration::Simple { ca, alpn: None, client_auth }));
    }
    Ok(o)
}

/// Creates the client and its event loop.
pub fn connect(cfg: &MqttConfig, request_capacity: usize) -> Result<(AsyncClient, EventLoop), IngestError> {
    let opts = options(cfg, request_capacity)?;
    Ok(AsyncClient::new(opts, request_capacity))
}

/// The largest refused message taken once to reject it; beyond this the memory is not worth
/// risking on a gateway (the broker's `message_size_limit` should stop such messages).
const OVERSIZE_MAX: usize = 64 * 1024 * 1024;

/// The size of the packet the client refused, when that is why the connection failed.
fn refused_size(e: &ConnectionError) -> Option<usize> {
    match e {
        ConnectionError::MqttState(StateError::Deserialization(
            rumqttc::mqttbytes::Error::PayloadSizeLimitExceeded(n),
        )) => Some(*n),
        _ => None,
    }
}

/// The store key saying a persistent session was established under this client id: when the
/// broker later answers `session_present = false`, what it queued for us meanwhile is gone.
fn session_key(cfg: &MqttConfig) -> String {
    format!("mqtt.session.{}", cfg.client_id)
}

/// Polls the event loop until `cancel`, forwarding publishes to `tx`.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    client: AsyncClient,
    mut eventloop: EventLoop,
    cfg: MqttConfig,
    tx: mpsc::Sender<Inbound>,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
    drained: CancellationToken,
) {
    let mut delays = backoff(cfg.reconnect_min, cfg.reconnect_max);
    let mut connected = false;
    // Raised above `max_packet_bytes` for one connection to take a refused message.
    let mut raised = false;
    let persistent = !cfg.clean_session;
    let mut had_session = persistent && matches!(store.meta(&session_key(&cfg)), Ok(Some(_)));
    loop {
        let event = tokio::select! {
            _ = cancel.cancelled() => break,
            e = eventloop.poll() => e,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                if raised {
                    // This connection reads with the raised limit; the next ones do not.
                    raised = false;
                    eventloop.mqtt_options.set_max_packet_size(cfg.max_packet_bytes, cfg.max_packet_bytes);
                }
                connected = true;
                metrics.mqtt_connected.set(1);
                metrics.connected_since_ms.store(now_ms(), std::sync::atomic::Ordering::Relaxed);
                delays = backoff(cfg.reconnect_min, cfg.reconnect_max);
                tracing::info!(host = %cfg.host, port = cfg.port, session_present = ack.session_present, "connected to broker");
                if persistent && !ack.session_present {
                    if had_session {
                        metrics.mqtt_sessions_lost.inc();
                        tracing::warn!(
                            client_id = %cfg.client_id,
                            "the broker lost our persistent session: messages published while we were away are gone \
                             (keep mosquitto's `persistence true` and a short `autosave_interval`)"
                        );
                    } else if let Err(e) = store.set_meta(&session_key(&cfg), b"1") {
                        tracing::warn!(error = %e, "cannot record the broker session");
                    }
                    had_session = true;
                }
                // Subscribing again on a resumed session is harmless and covers a broker that
                // lost its session store. try_: the event loop that drains requests is this task.
                let filters = cfg.topics.iter().map(|t| rumqttc::SubscribeFilter::new(t.clone(), QoS::AtLeastOnce));
                if let Err(e) = client.try_subscribe_many(filters) {
                    tracing::error!(error = %e, "cannot subscribe");
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                // What acknowledging needs is the packet id: the ack handle carries no topic or
                // payload, so a message waiting for its ack does not pin the read buffer.
                let publish = (p.qos != QoS::AtMostOnce).then(|| Publish {
                    dup: p.dup,
                    qos: p.qos,
                    retain: p.retain,
                    topic: String::new(),
                    pkid: p.pkid,
                    payload: bytes::Bytes::new(),
                });
                let message = Message { topic: p.topic, payload: p.payload, received_ms: now_ms() };
                let send = tokio::select! {
                    _ = cancel.cancelled() => break,
                    r = tx.send(Inbound { message, publish }) => r,
                };
                if send.is_err() {
                    break; // the batcher is gone: we are shutting down
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                tracing::debug!(?ack.return_codes, "subscribed");
            }
            Ok(_) => {}
            Err(e) => {
                match refused_size(&e) {
                    Some(size) if size <= OVERSIZE_MAX => {
                        tracing::warn!(
                            size,
                            limit = cfg.max_packet_bytes,
                            "a message over mqtt.max_packet_bytes is queued for us; taking it once to reject it as too_large"
                        );
                        raised = true;
                        eventloop.mqtt_options.set_max_packet_size(size, cfg.max_packet_bytes);
                    }
                    Some(size) => tracing::error!(
                        size,
                        max = OVERSIZE_MAX,
                        "a queued message is too large even to take and reject; remove it at the broker and set its message_size_limit"
                    ),
                    None => {}
                }
                metrics.mqtt_connection_errors.inc();
                metrics.mqtt_connected.set(0);
                metrics.connected_since_ms.store(0, std::sync::atomic::Ordering::Relaxed);
                let delay = delays.next().unwrap_or(cfg.reconnect_max);
                if connected {
                    tracing::warn!(error = %e, retry_in = ?delay, "lost broker connection");
                } else {
                    tracing::warn!(error = %e, retry_in = ?delay, host = %cfg.host, port = cfg.port, "cannot reach broker");
                }
                connected = false;
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    // Stop forwarding, let the batcher store and ack what it has, and keep polling meanwhile so
    // those acks reach the broker. Anything unacked is redelivered after restart.
    drop(tx);
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            tokio::select! {
                _ = drained.cancelled() => break,
                ev = eventloop.poll() => if ev.is_err() { break },
            }
        }
    })
    .await;
    metrics.mqtt_connected.set(0);
    // Best effort: a clean DISCONNECT keeps the persistent session and avoids a will message.
    if client.try_disconnect().is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while let Ok(ev) = eventloop.poll().await {
                if matches!(ev, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                    break;
                }
            }
        })
        .await;
    }
}
