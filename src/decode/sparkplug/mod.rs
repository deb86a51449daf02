//! Sparkplug B: `spBv1.0/{group}/{NBIRTH|NDATA|NDEATH|DBIRTH|DDATA|DDEATH}/{edge_node}[/{device}]`
//! messages (protobuf, [`proto`]) become readings, and births and deaths become presence.
//!
//! Unlike JSON, Sparkplug is stateful: a BIRTH names each metric, its datatype and its alias,
//! and the DATA after it may carry only aliases; every message of an edge node carries the next
//! `seq` (0–255, wrapping); a death certificate (NDEATH, usually the broker's will) carries the
//! `bdSeq` of the session it ends. [`Sessions`] keeps that per edge node, behind a mutex shared by
//! every clone of the decoder (the daemon decodes on one task, so it is never contended).
//!
//! An edge node whose session is out of step — a `seq` gap, DATA before any BIRTH, an alias
//! never born, a metric whose type changed — is marked stale and, with
//! `decode.sparkplug.request_rebirth`, asked for a new BIRTH ([`Publish`]); the caller publishes it.
//! Ids: the edge node is the device `{group}/{edge_node}` (its own metrics), each of its devices
//! `{group}/{edge_node}/{device}`; the site is the group id or `decode.sparkplug.sites[group]`.

pub mod config;
pub mod proto;
mod session;
mod topic;
mod value;

use std::sync::{Arc, Mutex};

use prost::Message as _;

pub use config::SparkplugConfig;
use proto::{DataType, Metric, MetricValue, Payload};
pub use session::Sessions;
use session::{Born, NodeSession};
use topic::{parse_topic, Kind, Topic};
use value::{integer, is_numeric, known_type, number};

use super::{check_device, check_time, Presence, Publish, RejectReason};
use crate::reading::{Message, Reading};

/// The topic namespace of Sparkplug B.
pub const NAMESPACE: &str = "spBv1.0";

/// The metric an edge node is asked to rebirth with.
pub const REBIRTH_METRIC: &str = "Node Control/Rebirth";

/// Why an edge node is out of step: the `reason` values of
/// `fieldwatch_sparkplug_out_of_step_total`.
pub const OUT_OF_STEP_REASONS: [&str; 4] = [SEQ_GAP, NOT_BORN, UNKNOWN_ALIAS, TYPE_CHANGED];
const SEQ_GAP: &str = "seq_gap";
const NOT_BORN: &str = "not_born";
const UNKNOWN_ALIAS: &str = "unknown_alias";
const TYPE_CHANGED: &str = "type_changed";

/// The metric of NBIRTH and NDEATH that ties a death certificate to its session.
const BD_SEQ: &str = "bdSeq";

/// What one Sparkplug message came to.
#[derive(Debug)]
pub struct Outcome {
    /// The readings, or why the message was refused whole.
    pub readings: Result<Vec<Reading>, RejectReason>,
    /// The message was taken, but part of it was refused: counted and kept aside like a rejection.
    pub partial: Option<RejectReason>,
    /// Metrics of a type that is not a reading (String, Bytes, DataSet, Template, File, ...).
    pub skipped: u32,
    /// Devices that went offline or came back.
    pub presence: Vec<Presence>,
    /// A rebirth request to publish.
    pub publish: Option<Publish>,
    /// Why the edge node is out of step after this message (one of [`OUT_OF_STEP_REASONS`]).
    pub out_of_step: Option<&'static str>,
    /// The edge node whose session a BIRTH or DEATH changed: what it learnt is to be kept
    /// ([`SparkplugDecoder::saved`]).
    pub session_changed: Option<String>,
}

impl Outcome {
    fn rejected(reason: RejectReason) -> Outcome {
        Outcome {
            readings: Err(reason),
            partial: None,
            skipped: 0,
            presence: Vec::new(),
            publish: None,
            out_of_step: None,
            session_changed: None,
        }
    }

    /// A message taken that says nothing to a consumer (a command, the host's state).
    fn nothing() -> Outcome {
        Outcome { readings: Ok(Vec::new()), ..Outcome::rejected(RejectReason::NoMetrics) }
    }
}

/// What a message adds up to while it is decoded.
#[derive(Debug, Default)]
struct Found {
    readings: Vec<Reading>,
    partial: Option<RejectReason>,
    skipped: u32,
    presence: Vec<Presence>,
}

/// Decodes Sparkplug B messages, keeping each edge node's session.
#[derive(Debug, Clone)]
pub struct SparkplugDecoder {
    config: Arc<SparkplugConfig>,
    sessions: Arc<Mutex<Sessions>>,
    max_payload_bytes: usize,
}

impl SparkplugDecoder {
    pub fn new(config: &SparkplugConfig, max_payload_bytes: usize) -> SparkplugDecoder {
        SparkplugDecoder {
            config: Arc::new(config.clone()),
            sessions: Arc::new(Mutex::new(Sessions::default())),
            max_payload_bytes,
        }
    }

    /// Decodes one message; `max_age_ms` as [`super::Decoder::with_max_age`].
    pub fn decode(&self, msg: &Message, max_age_ms: Option<i64>) -> Outcome {
        if msg.payload.len() > self.max_payload_bytes {
            let (size, limit) = (msg.payload.len(), self.max_payload_bytes);
            return Outcome::rejected(RejectReason::SparkplugTooLarge { size, limit });
        }
        let topic = match parse_topic(&msg.topic) {
            Ok(t) if t.kind == Kind::Other => return Outcome::nothing(),
            Ok(t) => t,
            Err(reason) => return Outcome::rejected(reason),
        };
        let node_id = format!("{}/{}", topic.group, topic.node);
        let device_id = match topic.device {
            Some(d) => format!("{node_id}/{d}"),
            None => node_id.clone(),
        };
        if let Err(reason) = check_device(&node_id).and_then(|()| check_device(&device_id)) {
            return Outcome::rejected(reason);
        }
        let payload = match Payload::decode(msg.payload.as_ref()) {
            Ok(p) => p,
            Err(e) => return Outcome::rejected(RejectReason::SparkplugMalformed(e.to_string())),
        };
        let site = self.config.sites.get(topic.group).cloned().unwrap_or_else(|| topic.group.to_string());
        let mut sessions = self.sessions.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut step = Step {
            msg,
            max_age_ms,
            payload: &payload,
            device: &device_id,
            site: &site,
            found: Found::default(),
            stale: None,
            legacy_bd_seq: self.config.legacy_bd_seq,
        };
        let result = match topic.kind {
            Kind::NBirth => sessions.birth(&node_id).and_then(|node| step.node_birth(node)),
            Kind::NDeath => step.node_death(&node_id, &mut sessions),
            Kind::DDeath if sessions.get_mut(&node_id).is_none() => {
                step.offline(std::iter::once(device_id.clone()));
                Ok(())
            }
            kind => match sessions.get_mut(&node_id) {
                Some(node) => step.in_session(kind, node, topic.device.unwrap_or_default()),
                None => Err(step.not_born()),
            },
        };
        let Step { found, stale, .. } = step;
        let publish = stale.and_then(|why| {
            sessions.mark_stale(&node_id);
            self.rebirth(&mut sessions, &topic, &node_id, msg.received_ms, why)
        });
        drop(sessions);
        let births_or_deaths = matches!(topic.kind, Kind::NBirth | Kind::NDeath | Kind::DBirth | Kind::DDeath);
        Outcome {
            session_changed: (births_or_deaths && result.is_ok()).then_some(node_id),
            readings: result.map(|()| found.readings),
            partial: found.partial,
            skipped: found.skipped,
            presence: found.presence,
            publish,
            out_of_step: stale,
        }
    }

    /// A rebirth request for a node out of step, when they are enabled and the last one to this
    /// node is older than `rebirth_interval`.
    fn rebirth(
        &self,
        sessions: &mut Sessions,
        topic: &Topic<'_>,
        node_id: &str,
        now: i64,
        why: &'static str,
    ) -> Option<Publish> {
        if !self.config.request_rebirth {
            return None;
        }
        let interval = self.config.rebirth_interval.as_millis().min(i64::MAX as u128) as i64;
        if !sessions.may_request_rebirth(node_id, now, interval) {
            return None;
        }
        let payload = Payload {
            timestamp: u64::try_from(now).ok(),
            metrics: vec![Metric {
                name: Some(REBIRTH_METRIC.into()),
                datatype: Some(DataType::Boolean as u32),
                value: Some(MetricValue::BooleanValue(true)),
                ..Metric::default()
            }],
            ..Payload::default()
        };
        Some(Publish {
            topic: format!("{NAMESPACE}/{}/NCMD/{}", topic.group, topic.node),
            payload: payload.encode_to_vec(),
            why,
        })
    }

    /// The store entries (key, value) that keep `node`'s session across a restart.
    pub fn saved(&self, node: &str) -> Vec<(String, Vec<u8>)> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner()).saved(node)
    }

    /// Restores the sessions kept by [`SparkplugDecoder::saved`]; `load` reads a store key.
    /// Returns how many edge nodes it knows.
    pub fn restore(&self, load: impl Fn(&str) -> Option<Vec<u8>>) -> usize {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner()).restore(load)
    }

    /// The sessions, for tests.
    #[cfg(test)]
    fn sessions(&self) -> std::sync::MutexGuard<'_, Sessions> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One message being decoded.
struct Step<'a> {
    msg: &'a Message,
    max_age_ms: Option<i64>,
    payload: &'a Payload,
    device: &'a str,
    site: &'a str,
    found: Found,
    /// Why the node's session is out of step, if it is.
    stale: Option<&'static str>,
    /// `decode.sparkplug.legacy_bd_seq`.
    legacy_bd_seq: bool,
}

impl Step<'_> {
    fn node_birth(&mut self, node: &mut NodeSession) -> Result<(), RejectReason> {
        node.seq = self.seq();
        node.bd_seq = self.payload.metrics.iter().find(|m| m.name.as_deref() == Some(BD_SEQ)).and_then(integer);
        node.born = true;
        self.found.presence.push(Presence::Online { device: self.device.to_string(), at_ms: self.msg.received_ms });
        self.birth(node, "")
    }

    fn node_death(&mut self, node_id: &str, sessions: &mut Sessions) -> Result<(), RejectReason> {
        let bd_seq = self.payload.metrics.iter().find(|m| m.name.as_deref() == Some(BD_SEQ)).and_then(integer);
        let Some(node) = sessions.get_mut(node_id) else {
            // Never born while we listened: still offline from now on.
            self.offline(std::iter::once(node_id.to_string()));
            return Ok(());
        };
        if let (Some(theirs), Some(ours)) = (bd_seq, node.bd_seq) {
            let one_below = self.legacy_bd_seq && theirs.wrapping_add(1) % 256 == ours % 256;
            if theirs != ours && !one_below {
                return Err(RejectReason::SparkplugOldDeath { death: theirs, session: ours });
            }
        }
        let devices: Vec<String> = node.devices.keys().map(|d| format!("{node_id}/{d}")).collect();
        node.die();
        self.offline(std::iter::once(node_id.to_string()).chain(devices));
        Ok(())
    }

    fn offline(&mut self, devices: impl Iterator<Item = String>) {
        let since_ms = self.msg.received_ms;
        let site = Some(self.site.to_string());
        self.found.presence.extend(devices.map(|device| Presence::Offline { device, site: site.clone(), since_ms }));
    }

    /// DBIRTH, NDATA, DDATA, DDEATH: in an edge node's session, after its `seq`.
    fn in_session(&mut self, kind: Kind, node: &mut NodeSession, device: &str) -> Result<(), RejectReason> {
        if kind == Kind::DDeath && (!node.born || self.payload.seq.is_none()) {
            // A device's will (it cannot know the seq), or a death after its node's: the device
            // is offline either way, and nothing is out of step.
            node.device_death(device);
            self.offline(std::iter::once(self.device.to_string()));
            return Ok(());
        }
        if !node.born {
            return Err(self.not_born());
        }
        let (seq, last) = (self.seq(), node.seq);
        if !node.next_seq(seq) {
            self.stale = Some(SEQ_GAP);
            tracing::debug!(device = %self.device, ?seq, ?last, "Sparkplug sequence gap");
        }
        match kind {
            Kind::DBirth => {
                node.born_device(device)?;
                self.found
                    .presence
                    .push(Presence::Online { device: self.device.to_string(), at_ms: self.msg.received_ms });
                self.birth(node, device)
            }
            Kind::DDeath => {
                if !node.device_death(device) {
                    return Err(self.not_born());
                }
                self.offline(std::iter::once(self.device.to_string()));
                Ok(())
            }
            Kind::DData if !node.devices.contains_key(device) => Err(self.not_born()),
            _ => self.data(node, device),
        }
    }

    /// The node (or this device of it) was not born: the message is refused and the node asked to
    /// rebirth.
    fn not_born(&mut self) -> RejectReason {
        self.stale = Some(NOT_BORN);
        RejectReason::SparkplugNotBorn(self.device.to_string())
    }

    fn seq(&self) -> Option<u8> {
        self.payload.seq.and_then(|s| u8::try_from(s).ok())
    }

    /// A BIRTH's metrics: names, aliases and types learnt, values read.
    fn birth(&mut self, node: &mut NodeSession, device: &str) -> Result<(), RejectReason> {
        node.forget_metrics(device);
        for m in &self.payload.metrics {
            let Some(name) = m.name.as_deref() else {
                return Err(RejectReason::SparkplugMalformed("a BIRTH metric has no name".into()));
            };
            if device.is_empty() && (name == BD_SEQ || name.starts_with("Node Control/")) {
                continue; // the session's bookkeeping and the node's commands: not telemetry
            }
            let Some(datatype) = m.datatype.and_then(known_type) else {
                self.partial(RejectReason::SparkplugUnknownDatatype { metric: name.to_string(), datatype: m.datatype });
                continue;
            };
            node.learn(device, name, m.alias, datatype)?;
            self.read(name, datatype, m)?;
        }
        Ok(())
    }

    /// A DATA's metrics, by alias or by name, with the types their BIRTH declared.
    fn data(&mut self, node: &NodeSession, device: &str) -> Result<(), RejectReason> {
        for m in &self.payload.metrics {
            let Some(Born { name, datatype }) = node.born_metric(device, m.alias, m.name.as_deref()) else {
                self.stale = Some(UNKNOWN_ALIAS);
                return Err(RejectReason::SparkplugUnknownAlias {
                    alias: m.alias,
                    name: m.name.as_deref().map(|n| n.chars().take(200).collect()),
                });
            };
            match m.datatype {
                None => {}
                Some(d) if Some(d) == Some(datatype as u32) => {}
                Some(d) if known_type(d).is_none() => {
                    self.partial(RejectReason::SparkplugUnknownDatatype { metric: name.clone(), datatype: Some(d) });
                    continue;
                }
                Some(d) => {
                    self.stale = Some(TYPE_CHANGED);
                    return Err(RejectReason::SparkplugTypeChanged {
                        metric: name.clone(),
                        born: format!("{datatype:?}"),
                        now: known_type(d).map_or_else(|| format!("datatype {d}"), |t| format!("{t:?}")),
                    });
                }
            }
            self.read(&name, datatype, m)?;
        }
        Ok(())
    }

    /// Notes a refused part of a taken message (the first one names the message's reason).
    fn partial(&mut self, reason: RejectReason) {
        self.found.partial.get_or_insert(reason);
    }

    /// One metric's value as a reading, if it is a number.
    fn read(&mut self, name: &str, datatype: DataType, m: &Metric) -> Result<(), RejectReason> {
        if m.is_null == Some(true) {
            return Ok(());
        }
        let Some(value) = m.value.as_ref() else { return Ok(()) };
        let Some(number) = number(datatype, value) else {
            if !is_numeric(datatype) {
                self.found.skipped += 1;
            }
            return Ok(());
        };
        if !number.is_finite() {
            self.partial(RejectReason::NonFinite(name.to_string()));
            return Ok(());
        }
        let ts = match m.timestamp.or(self.payload.timestamp) {
            Some(t) => i64::try_from(t).map_err(|_| RejectReason::BadTimestamp(format!("{t} is out of range")))?,
            None => self.msg.received_ms,
        };
        check_time(ts, self.msg.received_ms, self.max_age_ms)?;
        self.found.readings.push(Reading {
            device: self.device.to_string(),
            site: Some(self.site.to_string()),
            metric: name.to_string(),
            ts,
            value: number,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests;
