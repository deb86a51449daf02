//! MQTT source (rumqttc, MQTT 3.1.1 or 5): QoS 1, persistent session, manual acks.
//!
//! The event loop is polled continuously in its own task (rumqttc requires it). Each publish is
//! forwarded, with what is needed to acknowledge it, over a bounded channel to the batcher,
//! which acknowledges only after the batch is durably stored. When the batcher falls behind the
//! channel fills and this task stops polling: backpressure reaches the broker instead of memory.
//! Connection errors back off exponentially with jitter; the loop is never hot. Both protocol
//! versions run this one loop; `link.rs` hides which client is behind it.
//!
//! A queued message over `mqtt.max_packet_bytes` would otherwise wedge a persistent session:
//! the client refuses it, reconnects, and the broker sends the same message first again. When
//! that happens the limit is raised for one connection, to exactly the size the broker
//! announced (at most 64 MiB), so the message can be taken, acknowledged and rejected as
//! `too_large` (decode keeps a cut copy aside); the connection after it has the normal limit.
//! With MQTT 5 the limit is announced in CONNECT and the broker itself discards a larger
//! message for us (mosquitto logs "Dropping too large outgoing PUBLISH"), so this is only the
//! fallback for a broker that sends it anyway.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::config::{MqttConfig, MqttProtocol};
use super::link::Polled;
pub use super::link::{connect, Ack, Client, Connection, IngestError};
use super::LinkState;
use crate::backoff::backoff;
use crate::decode::{Decoded, Decoder, Publish};
use crate::metrics::{Metrics, ReasonLabel};
use crate::reading::{now_ms, Message};
use crate::store::Store;

/// A message, decoded, and, for QoS 1, how to acknowledge it once it is stored. Messages are
/// decoded here, as they arrive, so that decoding runs beside the core (which works on the batch
/// before) instead of on its thread; a payload is at most `decode.max_payload_bytes`.
#[derive(Debug)]
pub struct Inbound {
    pub message: Decoded,
    pub ack: Option<Ack>,
}

/// The largest refused message taken once to reject it; beyond this the memory is not worth
/// risking on a gateway (the broker's `message_size_limit` should stop such messages).
const OVERSIZE_MAX: usize = 64 * 1024 * 1024;
/// A connection that stayed up this long (or `reconnect_max`, if shorter) was a real one: the
/// reconnect delays start again from `reconnect_min` when it drops.
const STABLE_AFTER: std::time::Duration = std::time::Duration::from_secs(10);
/// How long a stop waits for its DISCONNECT (and the acks queued before it) to go out.
const DISCONNECT_WAIT: Duration = Duration::from_secs(5);

/// The store key saying a persistent session was established under this client id: when the
/// broker later answers `session_present = false`, what it queued for us meanwhile is gone.
fn session_key(cfg: &MqttConfig) -> String {
    format!("mqtt.session.{}", cfg.client_id)
}

/// Polls the event loop until `cancel`, forwarding publishes to `tx`.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    client: Client,
    mut connection: Connection,
    cfg: MqttConfig,
    decoder: Decoder,
    tx: mpsc::Sender<Inbound>,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    link: Arc<LinkState>,
    cancel: CancellationToken,
    drained: CancellationToken,
) {
    let mut delays = backoff(cfg.reconnect_min, cfg.reconnect_max);
    let mut connected = false;
    // When the current connection came up: the delays start over only after one that lasted
    // (`STABLE_AFTER`), so a broker that accepts and then drops us at once is not hammered at
    // `reconnect_min`.
    let mut up_since: Option<std::time::Instant> = None;
    // Raised above `max_packet_bytes` for one connection to take a refused message.
    let mut raised = false;
    let persistent = !cfg.clean_session;
    let mut had_session = persistent && matches!(store.meta(&session_key(&cfg)), Ok(Some(_)));
    let mut out_of_step = OutOfStep::new(&metrics);
    let nodes = decoder.restore_sparkplug(|key| store.meta(key).ok().flatten());
    if nodes > 0 {
        tracing::info!(edge_nodes = nodes, "Sparkplug sessions restored: their DATA is read without a new BIRTH");
    }
    loop {
        let event = tokio::select! {
            _ = cancel.cancelled() => break,
            e = connection.poll() => e,
        };
        match event {
            Ok(Polled::Connected { session_present }) => {
                if raised {
                    // This connection reads with the raised limit; the next ones do not.
                    raised = false;
                    connection.set_max_packet_size(cfg.max_packet_bytes);
                }
                connected = true;
                up_since = Some(std::time::Instant::now());
                metrics.mqtt_connected.set(1);
                link.up(now_ms());
                tracing::info!(host = %cfg.host, port = cfg.port, protocol = ?cfg.protocol, session_present, "connected to broker");
                if persistent && !session_present {
                    if had_session {
                        session_lost(&cfg, &metrics);
                    } else if let Err(e) = store.set_meta(&session_key(&cfg), b"1") {
                        tracing::warn!(error = %e, "cannot record the broker session");
                    }
                    had_session = true;
                }
                // Subscribing again on a resumed session is harmless and covers a broker that
                // lost its session store. try_: the event loop that drains requests is this task.
                if let Err(e) = client.try_subscribe(&cfg.topics) {
                    tracing::error!(error = %e, "cannot subscribe");
                }
            }
            Ok(Polled::Message { topic, payload, ack }) => {
                tracing::trace!(%topic, ?ack, "received");
                let mut message = decoder.decode_message(Message { topic, payload, received_ms: now_ms() });
                if let Some(reason) = message.out_of_step {
                    out_of_step.note(reason, &message.message.topic, &metrics);
                }
                if let Some(request) = message.publish.take() {
                    request_rebirth(&client, request, &metrics);
                }
                if let Some(node) = message.session_changed.take() {
                    keep_session(&decoder, &node, &store);
                }
                let send = tokio::select! {
                    _ = cancel.cancelled() => break,
                    r = tx.send(Inbound { message, ack }) => r,
                };
                if send.is_err() {
                    break; // the batcher is gone: we are shutting down
                }
            }
            Ok(Polled::Subscribed(codes)) => tracing::debug!(codes, "subscribed"),
            Ok(Polled::Disconnected | Polled::Other) => {}
            Err(e) => {
                match e.refused_size {
                    Some(size) if size <= OVERSIZE_MAX => {
                        tracing::warn!(
                            size,
                            limit = cfg.max_packet_bytes,
                            "a message over mqtt.max_packet_bytes is queued for us; taking it once to reject it as too_large"
                        );
                        raised = true;
                        connection.set_max_packet_size(size);
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
                link.down();
                if up_since.take().is_some_and(|t| t.elapsed() >= cfg.reconnect_max.min(STABLE_AFTER)) {
                    delays = backoff(cfg.reconnect_min, cfg.reconnect_max);
                }
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
                ev = connection.poll() => if ev.is_err() { break },
            }
        }
    })
    .await;
    metrics.mqtt_connected.set(0);
    // Best effort: a clean DISCONNECT keeps the persistent session and avoids a will message.
    // It is queued behind the last acks, so once it is out they are too: on a loaded machine
    // that takes longer than a moment, and an ack that never left is a redelivery after the
    // restart (deduplicated, but a waste).
    if client.try_disconnect().is_ok() {
        let _ = tokio::time::timeout(DISCONNECT_WAIT, async {
            while let Ok(ev) = connection.poll().await {
                if matches!(ev, Polled::Disconnected) {
                    break;
                }
            }
        })
        .await;
    }
}

/// Sparkplug edge nodes found out of step: counted by reason, logged at most once per reason
/// every 10 s (with a count of the lines left out).
struct OutOfStep {
    logged: std::collections::HashMap<&'static str, (std::time::Instant, u64)>,
}

impl OutOfStep {
    const LOG_EVERY: Duration = Duration::from_secs(10);

    /// Every reason's series exists at zero from the start.
    fn new(metrics: &Metrics) -> OutOfStep {
        for reason in crate::decode::sparkplug::OUT_OF_STEP_REASONS {
            metrics.sparkplug_out_of_step.get_or_create_owned(&ReasonLabel { reason: reason.into() });
        }
        OutOfStep { logged: std::collections::HashMap::new() }
    }

    fn note(&mut self, reason: &'static str, topic: &str, metrics: &Metrics) {
        metrics.sparkplug_out_of_step.get_or_create(&ReasonLabel { reason: reason.into() }).inc();
        let now = std::time::Instant::now();
        let entry = self.logged.entry(reason).or_insert((now - Self::LOG_EVERY, 0));
        if now.duration_since(entry.0) >= Self::LOG_EVERY {
            tracing::warn!(
                topic,
                reason,
                suppressed_since_last = entry.1,
                "Sparkplug edge node out of step: it needs a new BIRTH (decode.sparkplug.request_rebirth asks for one)"
            );
            *entry = (now, 0);
        } else {
            entry.1 += 1;
        }
    }
}

/// Keeps what a Sparkplug BIRTH or DEATH changed in an edge node's session, so that its DATA
/// (aliases only) is read after a restart without a new BIRTH. Durable with the next flush; a
/// write that fails is logged: the node is then asked to rebirth after a restart.
fn keep_session(decoder: &Decoder, node: &str, store: &Store) {
    for (key, value) in decoder.sparkplug_saved(node) {
        if let Err(e) = store.set_meta(&key, &value) {
            tracing::warn!(node, error = %e, "cannot keep a Sparkplug session");
        }
    }
}

/// Publishes a Sparkplug rebirth request the decoder asked for (`decode.sparkplug.request_rebirth`);
/// logged and counted here only.
fn request_rebirth(client: &Client, request: Publish, metrics: &Metrics) {
    match client.try_publish(&request.topic, request.payload) {
        Ok(()) => {
            metrics.sparkplug_rebirths_requested.inc();
            tracing::info!(topic = %request.topic, why = request.why, "asked a Sparkplug edge node to rebirth");
        }
        Err(e) => tracing::warn!(topic = %request.topic, error = %e, "cannot queue a Sparkplug rebirth request"),
    }
}

/// The broker answered `session_present = false` where we had a persistent session: what it
/// queued for us meanwhile is gone. Logged and counted here only.
fn session_lost(cfg: &MqttConfig, metrics: &Metrics) {
    metrics.mqtt_sessions_lost.inc();
    let hint = match cfg.protocol {
        MqttProtocol::V311 => "",
        MqttProtocol::V5 => "; or we were away longer than mqtt.session_expiry",
    };
    tracing::warn!(
        client_id = %cfg.client_id,
        "the broker lost our persistent session: messages published while we were away are gone \
         (keep mosquitto's `persistence true` and a short `autosave_interval`{hint})"
    );
}
