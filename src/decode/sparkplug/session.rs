//! What a Sparkplug consumer must remember of each edge node between messages: whether it is
//! born, its `seq` and `bdSeq`, and the names, aliases and types its BIRTHs declared.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use super::proto::DataType;
use crate::decode::RejectReason;

/// The store key of the list of edge nodes whose sessions are kept (see [`Sessions::saved`]).
pub const SAVED_NODES_KEY: &str = "sparkplug.nodes";

/// The store key of an edge node's kept session.
fn saved_key(node: &str) -> String {
    format!("sparkplug.node.{node}")
}

/// Most edge nodes remembered; a new one beyond is refused (`too_many_devices`).
const MAX_NODES: usize = 10_000;
/// Most devices of one edge node.
const MAX_DEVICES_PER_NODE: usize = 1_000;
/// Most metrics born on one edge node, its devices' included.
const MAX_METRICS_PER_NODE: usize = 100_000;

/// A metric as its BIRTH declared it.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Born {
    pub name: String,
    pub datatype: DataType,
}

/// One edge node's session.
#[derive(Debug, Default)]
pub(super) struct NodeSession {
    /// An NBIRTH was seen and no NDEATH since.
    pub born: bool,
    /// Out of step since the last NBIRTH (told apart only for logging and tests).
    pub stale: bool,
    /// The last `seq`; `None` after a message without one.
    pub seq: Option<u8>,
    /// Restored from the store after a restart: the `seq` the node is at is not known, so the
    /// next one is taken as it comes.
    resumed: bool,
    /// The NBIRTH's `bdSeq`: the NDEATH that ends this session carries the same.
    pub bd_seq: Option<u64>,
    /// Each born device's metrics by name (`""`: the node's own).
    pub devices: HashMap<String, HashMap<String, DataType>>,
    /// The node's own metrics by name.
    own: HashMap<String, DataType>,
    /// Aliases are unique across an edge node and its devices: alias → (device, metric).
    aliases: HashMap<u64, (String, Born)>,
    /// When a rebirth was last requested (ms).
    rebirth_requested_at: Option<i64>,
}

impl NodeSession {
    /// `seq` follows the last one (255 wraps to 0); records it either way.
    pub fn next_seq(&mut self, seq: Option<u8>) -> bool {
        let in_step = matches!((self.seq, seq), (Some(last), Some(now)) if now == last.wrapping_add(1))
            || (self.resumed && seq.is_some());
        self.resumed = false;
        self.seq = seq;
        in_step
    }

    /// A DBIRTH of `device`: it is born (again).
    pub fn born_device(&mut self, device: &str) -> Result<(), RejectReason> {
        if !self.devices.contains_key(device) && self.devices.len() >= MAX_DEVICES_PER_NODE {
            return Err(RejectReason::TooManyDevices(device.to_string()));
        }
        self.devices.entry(device.to_string()).or_default();
        Ok(())
    }

    /// Forgets what an earlier BIRTH of `device` (`""`: the node) declared.
    pub fn forget_metrics(&mut self, device: &str) {
        if device.is_empty() {
            self.own.clear();
        } else if let Some(m) = self.devices.get_mut(device) {
            m.clear();
        }
        self.aliases.retain(|_, (d, _)| d != device);
    }

    /// A BIRTH declares `name` (with `alias`) of `datatype` on `device` (`""`: the node).
    pub fn learn(
        &mut self,
        device: &str,
        name: &str,
        alias: Option<u64>,
        datatype: DataType,
    ) -> Result<(), RejectReason> {
        let born = self.own.len() + self.devices.values().map(HashMap::len).sum::<usize>();
        if born >= MAX_METRICS_PER_NODE {
            return Err(RejectReason::TooManySeries(name.to_string()));
        }
        let metrics =
            if device.is_empty() { &mut self.own } else { self.devices.entry(device.to_string()).or_default() };
        metrics.insert(name.to_string(), datatype);
        if let Some(alias) = alias {
            self.aliases.insert(alias, (device.to_string(), Born { name: name.to_string(), datatype }));
        }
        Ok(())
    }

    /// The born metric a DATA metric refers to: by alias if it has one, else by name.
    pub fn born_metric(&self, device: &str, alias: Option<u64>, name: Option<&str>) -> Option<Born> {
        if let Some(alias) = alias {
            return self.aliases.get(&alias).filter(|(d, _)| d == device).map(|(_, b)| b.clone());
        }
        let name = name?;
        let metrics = if device.is_empty() { &self.own } else { self.devices.get(device)? };
        metrics.get(name).map(|&datatype| Born { name: name.to_string(), datatype })
    }

    /// A DDEATH of `device`: false if it was not born.
    pub fn device_death(&mut self, device: &str) -> bool {
        self.aliases.retain(|_, (d, _)| d != device);
        self.devices.remove(device).is_some()
    }

    /// An NDEATH ends the session: every device with it.
    pub fn die(&mut self) {
        let requested = self.rebirth_requested_at;
        *self = NodeSession { rebirth_requested_at: requested, ..NodeSession::default() };
    }
}

/// What is kept of a session across a restart: what its BIRTHs declared (the DATA after a
/// restart carries only aliases) and its `bdSeq`. Datatypes as their numbers.
#[derive(Debug, Default, Serialize, Deserialize)]
struct SavedSession {
    born: bool,
    bd_seq: Option<u64>,
    own: BTreeMap<String, i32>,
    devices: BTreeMap<String, BTreeMap<String, i32>>,
    /// alias → (device, metric).
    aliases: BTreeMap<u64, (String, String)>,
}

impl SavedSession {
    fn of(n: &NodeSession) -> SavedSession {
        let types = |m: &HashMap<String, DataType>| m.iter().map(|(k, t)| (k.clone(), *t as i32)).collect();
        SavedSession {
            born: n.born,
            bd_seq: n.bd_seq,
            own: types(&n.own),
            devices: n.devices.iter().map(|(d, m)| (d.clone(), types(m))).collect(),
            aliases: n.aliases.iter().map(|(a, (d, b))| (*a, (d.clone(), b.name.clone()))).collect(),
        }
    }

    fn restore(self) -> NodeSession {
        let known = |t: i32| DataType::try_from(t).ok();
        let types = |m: BTreeMap<String, i32>| -> HashMap<String, DataType> {
            m.into_iter().filter_map(|(k, t)| Some((k, known(t)?))).collect()
        };
        let own = types(self.own);
        let devices: HashMap<String, HashMap<String, DataType>> =
            self.devices.into_iter().map(|(d, m)| (d, types(m))).collect();
        let aliases = self
            .aliases
            .into_iter()
            .filter_map(|(alias, (device, name))| {
                let metrics = if device.is_empty() { &own } else { devices.get(&device)? };
                let datatype = *metrics.get(&name)?;
                Some((alias, (device, Born { name, datatype })))
            })
            .collect();
        NodeSession {
            born: self.born,
            bd_seq: self.bd_seq,
            resumed: true,
            own,
            devices,
            aliases,
            ..NodeSession::default()
        }
    }
}

/// Every edge node's session, by `{group}/{edge_node}`.
#[derive(Debug, Default)]
pub struct Sessions {
    nodes: HashMap<String, NodeSession>,
}

impl Sessions {
    pub(super) fn get_mut(&mut self, node: &str) -> Option<&mut NodeSession> {
        self.nodes.get_mut(node)
    }

    /// An NBIRTH: the node's session starts afresh.
    pub(super) fn birth(&mut self, node: &str) -> Result<&mut NodeSession, RejectReason> {
        let session = self.entry(node)?;
        session.die();
        Ok(session)
    }

    fn entry(&mut self, node: &str) -> Result<&mut NodeSession, RejectReason> {
        if !self.nodes.contains_key(node) && self.nodes.len() >= MAX_NODES {
            return Err(RejectReason::TooManyDevices(node.to_string()));
        }
        Ok(self.nodes.entry(node.to_string()).or_default())
    }

    /// The node is out of step until its next NBIRTH.
    pub(super) fn mark_stale(&mut self, node: &str) {
        if let Some(n) = self.nodes.get_mut(node) {
            n.stale = true;
        }
    }

    /// Whether a rebirth may be requested of `node` now (and notes it if so): not within
    /// `interval_ms` of the last request.
    pub(super) fn may_request_rebirth(&mut self, node: &str, now: i64, interval_ms: i64) -> bool {
        let Ok(session) = self.entry(node) else { return false };
        if session.rebirth_requested_at.is_some_and(|at| now.saturating_sub(at) < interval_ms && now >= at) {
            return false;
        }
        session.rebirth_requested_at = Some(now);
        true
    }

    /// The store entries that keep `node`'s session across a restart: its own, and the list
    /// of nodes (empty when `node` is not known).
    pub fn saved(&self, node: &str) -> Vec<(String, Vec<u8>)> {
        let Some(session) = self.nodes.get(node) else { return Vec::new() };
        let mut names: Vec<&String> = self.nodes.keys().collect();
        names.sort();
        // Maps with string keys and plain values: serialising them cannot fail (an empty entry
        // would only be skipped at restore).
        let session = serde_json::to_vec(&SavedSession::of(session)).unwrap_or_default();
        let names = serde_json::to_vec(&names).unwrap_or_default();
        vec![(saved_key(node), session), (SAVED_NODES_KEY.to_string(), names)]
    }

    /// Restores the sessions [`Sessions::saved`] kept; `load` reads a store key. An entry that
    /// cannot be read is skipped: its node is asked to rebirth when it next sends DATA.
    pub fn restore(&mut self, load: impl Fn(&str) -> Option<Vec<u8>>) -> usize {
        let Some(names) = load(SAVED_NODES_KEY).and_then(|b| serde_json::from_slice::<Vec<String>>(&b).ok()) else {
            return 0;
        };
        for node in names.into_iter().take(MAX_NODES) {
            let saved = load(&saved_key(&node)).and_then(|b| serde_json::from_slice::<SavedSession>(&b).ok());
            if let Some(saved) = saved {
                self.nodes.insert(node, saved.restore());
            }
        }
        self.nodes.len()
    }

    /// Whether `node` is born and in step, for tests.
    #[cfg(test)]
    pub(super) fn in_step(&self, node: &str) -> bool {
        self.nodes.get(node).is_some_and(|n| n.born && !n.stale)
    }
}
