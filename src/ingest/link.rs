//! The broker link: rumqttc's MQTT 3.1.1 and MQTT 5 clients behind one small interface.
//!
//! The source loop (`mqtt.rs`) and the batcher only see [`Client`] (acknowledge, subscribe,
//! disconnect), [`Connection`] (poll, the packet limit) and what a poll yields, [`Polled`]. Both
//! versions share the options that mean the same (persistent session, manual acks, keep-alive,
//! credentials, TLS); MQTT 5 adds the receive maximum and the session expiry.
//!
//! Properties of an MQTT 5 publish (user properties, content type, expiry, correlation data) are
//! dropped here: a reading is its topic and payload, whatever a publisher attaches. Topic aliases
//! are not announced (Topic Alias Maximum 0), so a broker must send every topic in full. rumqttc
//! 0.25 hands an aliased publish out before it resolves the alias: one from a broker that
//! ignores our maximum arrives with an empty topic, which a `decode.topic_pattern` rejects
//! (counted, kept aside, acknowledged) instead of guessing a device.

use rumqttc::v5;
use rumqttc::{Event, Outgoing, Packet, QoS, TlsConfiguration, Transport};

use super::config::{MqttConfig, MqttProtocol};

/// Why the MQTT client could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("mqtt.password: {0}")]
    Password(#[from] crate::settings::SecretError),
    #[error("{key}: cannot read {path}: {source}")]
    File { key: &'static str, path: std::path::PathBuf, source: std::io::Error },
}

/// What acknowledging a message needs: its packet id. It carries no topic or payload, so a
/// message waiting for its ack does not pin the read buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    pkid: u16,
    /// QoS 2 is acknowledged with PUBREC. We subscribe at QoS 1, so a broker never sends it; a
    /// broker that does still gets the ack that protocol expects.
    exactly_once: bool,
}

/// The request queue of the client refused a request (full, or the event loop is gone).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RequestError(String);

/// The handle that queues requests for the event loop (cheap to clone).
#[derive(Clone)]
pub enum Client {
    V311(rumqttc::AsyncClient),
    V5(v5::AsyncClient),
}

impl Client {
    /// Queues the acknowledgement of a stored message without waiting.
    pub fn try_ack(&self, ack: Ack) -> Result<(), RequestError> {
        match self {
            Client::V311(c) => {
                let qos = if ack.exactly_once { QoS::ExactlyOnce } else { QoS::AtLeastOnce };
                let mut p = rumqttc::Publish::new("", qos, Vec::new());
                p.pkid = ack.pkid;
                c.try_ack(&p).map_err(|e| RequestError(e.to_string()))
            }
            Client::V5(c) => {
                let qos =
                    if ack.exactly_once { v5::mqttbytes::QoS::ExactlyOnce } else { v5::mqttbytes::QoS::AtLeastOnce };
                let mut p = v5::mqttbytes::v5::Publish::new("", qos, Vec::new(), None);
                p.pkid = ack.pkid;
                c.try_ack(&p).map_err(|e| RequestError(e.to_string()))
            }
        }
    }

    /// Queues a QoS 1 subscription to every filter without waiting.
    pub fn try_subscribe(&self, filters: &[String]) -> Result<(), RequestError> {
        match self {
            Client::V311(c) => c
                .try_subscribe_many(filters.iter().map(|t| rumqttc::SubscribeFilter::new(t.clone(), QoS::AtLeastOnce)))
                .map_err(|e| RequestError(e.to_string())),
            Client::V5(c) => c
                .try_subscribe_many(
                    filters.iter().map(|t| v5::mqttbytes::v5::Filter::new(t.clone(), v5::mqttbytes::QoS::AtLeastOnce)),
                )
                .map_err(|e| RequestError(e.to_string())),
        }
    }

    /// Queues a QoS 0 publish without waiting (a Sparkplug rebirth request: asked again if
    /// lost, never worth holding the event loop for).
    pub fn try_publish(&self, topic: &str, payload: Vec<u8>) -> Result<(), RequestError> {
        match self {
            Client::V311(c) => {
                c.try_publish(topic, QoS::AtMostOnce, false, payload).map_err(|e| RequestError(e.to_string()))
            }
            Client::V5(c) => c
                .try_publish(topic, v5::mqttbytes::QoS::AtMostOnce, false, payload)
                .map_err(|e| RequestError(e.to_string())),
        }
    }

    /// Queues a clean DISCONNECT, which keeps the persistent session and sends no will.
    pub fn try_disconnect(&self) -> Result<(), RequestError> {
        match self {
            Client::V311(c) => c.try_disconnect().map_err(|e| RequestError(e.to_string())),
            Client::V5(c) => c.try_disconnect().map_err(|e| RequestError(e.to_string())),
        }
    }
}

/// What one poll of the event loop yielded, in the terms the source needs.
#[derive(Debug)]
pub enum Polled {
    /// The broker accepted the connection (CONNACK).
    Connected { session_present: bool },
    /// A message and, unless it came at QoS 0, how to acknowledge it.
    Message { topic: String, payload: bytes::Bytes, ack: Option<Ack> },
    /// The broker answered a subscription (SUBACK), with its codes for the log.
    Subscribed(String),
    /// The clean DISCONNECT went out.
    Disconnected,
    /// Anything else (pings, our acks going out).
    Other,
}

/// Why the connection failed or ended.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct PollError {
    message: String,
    /// The size the client refused a packet at, when that is why (see [`Connection::set_max_packet_size`]).
    pub refused_size: Option<usize>,
}

/// The event loop: owns the network connection and reconnects when polled after an error.
///
/// Keep-alive: rumqttc sends a PINGREQ every `keep_alive` and drops the connection if the
/// PINGRESP has not come back by the next one. A broker answers a PINGREQ in order, after the
/// messages it already queued for us, so while a large backlog drains the answer can wait
/// longer than that although messages arrive at full speed (mosquitto 2.0 writes more than its
/// `max_inflight_messages` ahead into the socket). Here any packet that arrives after the
/// PINGREQ answers it: the link is dropped only when nothing at all has come back for a whole
/// keep-alive period after a ping, which is what the ping is there to detect.
pub struct Connection {
    link: Link,
    /// A PINGREQ went out and no packet has come in since.
    ping_unanswered: bool,
}

enum Link {
    // Boxed: both are large, and they differ in size.
    V311(Box<rumqttc::EventLoop>),
    V5(Box<v5::EventLoop>),
}

/// What a poll yielded, as far as the keep-alive is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    /// Our PINGREQ went out.
    Ping,
    /// A packet came in from the broker.
    Incoming,
    Other,
    /// The connection failed (the next one starts without a ping outstanding).
    Failure,
}

/// Whether `seen` answers the PINGREQ that is outstanding (`unanswered`), so the client must
/// stop waiting for its PINGRESP. Events come out in the order they happened, so a packet seen
/// after our PINGREQ was read after it went out.
fn answers_ping(unanswered: &mut bool, seen: Seen) -> bool {
    match seen {
        Seen::Ping => *unanswered = true,
        Seen::Incoming if *unanswered => {
            *unanswered = false;
            return true;
        }
        Seen::Failure => *unanswered = false,
        Seen::Incoming | Seen::Other => {}
    }
    false
}

impl Connection {
    /// Drives the connection (rumqttc requires continuous polling) until the next event.
    pub async fn poll(&mut self) -> Result<Polled, PollError> {
        match &mut self.link {
            Link::V311(el) => {
                let event = el.poll().await;
                let seen = match &event {
                    Ok(Event::Outgoing(Outgoing::PingReq)) => Seen::Ping,
                    Ok(Event::Incoming(_)) => Seen::Incoming,
                    Ok(_) => Seen::Other,
                    Err(_) => Seen::Failure,
                };
                if answers_ping(&mut self.ping_unanswered, seen) {
                    el.state.await_pingresp = false;
                }
                match event {
                    Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                        Ok(Polled::Connected { session_present: ack.session_present })
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        Ok(Polled::Message { ack: ack_for(p.qos as u8, p.pkid), topic: p.topic, payload: p.payload })
                    }
                    Ok(Event::Incoming(Packet::SubAck(ack))) => {
                        Ok(Polled::Subscribed(format!("{:?}", ack.return_codes)))
                    }
                    Ok(Event::Outgoing(Outgoing::Disconnect)) => Ok(Polled::Disconnected),
                    Ok(_) => Ok(Polled::Other),
                    Err(e) => {
                        let refused_size = match &e {
                            rumqttc::ConnectionError::MqttState(rumqttc::StateError::Deserialization(
                                rumqttc::mqttbytes::Error::PayloadSizeLimitExceeded(n),
                            )) => Some(*n),
                            _ => None,
                        };
                        Err(PollError { message: e.to_string(), refused_size })
                    }
                }
            }
            Link::V5(el) => {
                let event = el.poll().await;
                let seen = match &event {
                    Ok(v5::Event::Outgoing(Outgoing::PingReq)) => Seen::Ping,
                    Ok(v5::Event::Incoming(_)) => Seen::Incoming,
                    Ok(_) => Seen::Other,
                    Err(_) => Seen::Failure,
                };
                if answers_ping(&mut self.ping_unanswered, seen) {
                    el.state.await_pingresp = false;
                }
                match event {
                    Ok(v5::Event::Incoming(v5::Incoming::ConnAck(ack))) => {
                        Ok(Polled::Connected { session_present: ack.session_present })
                    }
                    Ok(v5::Event::Incoming(v5::Incoming::Publish(p))) => Ok(Polled::Message {
                        ack: ack_for(p.qos as u8, p.pkid),
                        // The broker checked the topic is UTF-8 when it was published to it.
                        topic: String::from_utf8_lossy(&p.topic).into_owned(),
                        payload: p.payload,
                    }),
                    Ok(v5::Event::Incoming(v5::Incoming::SubAck(ack))) => {
                        Ok(Polled::Subscribed(format!("{:?}", ack.return_codes)))
                    }
                    Ok(v5::Event::Outgoing(Outgoing::Disconnect)) => Ok(Polled::Disconnected),
                    Ok(_) => Ok(Polled::Other),
                    Err(e) => {
                        let refused_size = match &e {
                            v5::ConnectionError::MqttState(v5::StateError::Deserialization(
                                v5::mqttbytes::Error::PayloadSizeLimitExceeded { pkt_size, .. },
                            )) => Some(*pkt_size),
                            _ => None,
                        };
                        Err(PollError { message: e.to_string(), refused_size })
                    }
                }
            }
        }
    }

    /// The largest packet (after its fixed header) the next connections accept. MQTT 5 also
    /// announces it to the broker, which then does not send a larger one at all.
    pub fn set_max_packet_size(&mut self, bytes: usize) {
        match &mut self.link {
            // The outgoing limit follows: we send nothing larger than a subscription anyway.
            Link::V311(el) => {
                el.mqtt_options.set_max_packet_size(bytes, bytes);
            }
            // The announced Maximum Packet Size counts the whole packet: add the fixed header.
            Link::V5(el) => {
                el.options.set_max_packet_size(Some(u32::try_from(bytes.saturating_add(5)).unwrap_or(u32::MAX)));
            }
        }
    }
}

/// The acknowledgement a publish at `qos` (0, 1, 2) needs, if any.
fn ack_for(qos: u8, pkid: u16) -> Option<Ack> {
    match qos {
        0 => None,
        q => Some(Ack { pkid, exactly_once: q == 2 }),
    }
}

/// Creates the client and its event loop for the configured protocol (resolving the password
/// and reading the TLS files now). `request_capacity` bounds the client's request queue: the
/// batcher queues its acks there, and room for a full in-flight window of them keeps it from
/// waiting on the event loop while the event loop waits on it.
pub fn connect(cfg: &MqttConfig, request_capacity: usize) -> Result<(Client, Connection), IngestError> {
    let credentials = credentials(cfg)?;
    let transport = transport(cfg)?;
    let max_packet = u32::try_from(cfg.max_packet_bytes).unwrap_or(u32::MAX);
    match cfg.protocol {
        MqttProtocol::V311 => {
            let mut o = rumqttc::MqttOptions::new(cfg.client_id.clone(), cfg.host.clone(), cfg.port);
            o.set_keep_alive(cfg.keep_alive)
                .set_clean_session(cfg.clean_session)
                .set_manual_acks(true)
                .set_inflight(cfg.inflight)
                .set_max_packet_size(cfg.max_packet_bytes, cfg.max_packet_bytes)
                .set_request_channel_capacity(request_capacity);
            if let Some((user, password)) = credentials {
                o.set_credentials(user, password);
            }
            if let Some(t) = transport {
                o.set_transport(t);
            }
            let (client, eventloop) = rumqttc::AsyncClient::new(o, request_capacity);
            Ok((Client::V311(client), Connection { link: Link::V311(Box::new(eventloop)), ping_unanswered: false }))
        }
        MqttProtocol::V5 => {
            let mut o = v5::MqttOptions::new(cfg.client_id.clone(), cfg.host.clone(), cfg.port);
            o.set_keep_alive(cfg.keep_alive)
                // clean_session = false is clean_start = false plus a session expiry above 0:
                // without the expiry an MQTT 5 broker ends the session with the connection.
                .set_clean_start(cfg.clean_session)
                .set_session_expiry_interval(Some(cfg.session_expiry_seconds()))
                .set_receive_maximum(Some(cfg.receive_window()))
                .set_manual_acks(true)
                .set_outgoing_inflight_upper_limit(cfg.inflight)
                .set_max_packet_size(Some(max_packet))
                .set_request_channel_capacity(request_capacity);
            if let Some((user, password)) = credentials {
                o.set_credentials(user, password);
            }
            if let Some(t) = transport {
                o.set_transport(t);
            }
            let (client, eventloop) = v5::AsyncClient::new(o, request_capacity);
            Ok((Client::V5(client), Connection { link: Link::V5(Box::new(eventloop)), ping_unanswered: false }))
        }
    }
}

/// Username and the resolved password, if a username is configured.
fn credentials(cfg: &MqttConfig) -> Result<Option<(String, String)>, IngestError> {
    let Some(user) = &cfg.username else { return Ok(None) };
    let password = match &cfg.password {
        Some(p) => p.resolve()?,
        None => String::new(),
    };
    Ok(Some((user.clone(), password)))
}

/// TLS with the CA file and, for mutual TLS, the client certificate and key, if configured.
fn transport(cfg: &MqttConfig) -> Result<Option<Transport>, IngestError> {
    let Some(tls) = &cfg.tls else { return Ok(None) };
    let read = |key: &'static str, path: &std::path::Path| {
        std::fs::read(path).map_err(|source| IngestError::File { key, path: path.to_path_buf(), source })
    };
    let ca = read("mqtt.tls.ca_file", &tls.ca_file)?;
    let client_auth = match (&tls.client_cert_file, &tls.client_key_file) {
        (Some(c), Some(k)) => Some((read("mqtt.tls.client_cert_file", c)?, read("mqtt.tls.client_key_file", k)?)),
        _ => None,
    };
    Ok(Some(Transport::Tls(TlsConfiguration::Simple { ca, alpn: None, client_auth })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_packet_after_the_ping_answers_it() {
        let mut u = false;
        assert!(!answers_ping(&mut u, Seen::Incoming), "no ping outstanding");
        assert!(!answers_ping(&mut u, Seen::Ping));
        assert!(!answers_ping(&mut u, Seen::Other), "our own acks going out answer nothing");
        assert!(answers_ping(&mut u, Seen::Incoming));
        assert!(!answers_ping(&mut u, Seen::Incoming), "answered once");
        assert!(!answers_ping(&mut u, Seen::Ping));
        assert!(!answers_ping(&mut u, Seen::Failure));
        assert!(!answers_ping(&mut u, Seen::Incoming), "a new connection has no ping outstanding");
    }

    #[test]
    fn qos_0_needs_no_ack_and_qos_2_is_acked_as_such() {
        assert_eq!(ack_for(0, 7), None);
        assert_eq!(ack_for(1, 7), Some(Ack { pkid: 7, exactly_once: false }));
        assert_eq!(ack_for(2, 7), Some(Ack { pkid: 7, exactly_once: true }));
    }

    #[test]
    fn mqtt5_options_carry_the_window_and_the_session_expiry() {
        let mut cfg = MqttConfig { protocol: MqttProtocol::V5, receive_maximum: Some(7), ..MqttConfig::default() };
        let (_, Connection { link: Link::V5(el), .. }) = connect(&cfg, 16).unwrap() else {
            panic!("not an MQTT 5 event loop")
        };
        assert!(!el.options.clean_start());
        assert_eq!(el.options.receive_maximum(), Some(7));
        assert_eq!(el.options.session_expiry_interval(), Some(u32::MAX), "never expires by default");
        assert_eq!(el.options.topic_alias_max(), None, "no topic aliases announced");
        cfg.clean_session = true;
        cfg.receive_maximum = None;
        let (_, Connection { link: Link::V5(el), .. }) = connect(&cfg, 16).unwrap() else {
            panic!("not an MQTT 5 event loop")
        };
        assert!(el.options.clean_start());
        assert_eq!(el.options.session_expiry_interval(), Some(0));
        assert_eq!(el.options.receive_maximum(), Some(cfg.inflight));
    }
}
