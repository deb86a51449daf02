//! `[decode.sparkplug]`: Sparkplug B topics beside the JSON ones.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::settings::{bad, Invalid};

/// How Sparkplug B messages (`spBv1.0/...`) are read. Present: every message on a `spBv1.0/`
/// topic is decoded as Sparkplug B, every other one as JSON by the rest of `[decode]`.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SparkplugConfig {
    /// Ask an edge node for a new BIRTH (`NCMD` with `Node Control/Rebirth` = true) when its
    /// session is out of step: a sequence gap, DATA before any BIRTH, an alias never born. Needs
    /// the right to publish on `spBv1.0/{group}/NCMD/{edge_node}`, so off by default.
    pub request_rebirth: bool,
    /// The least time between two rebirth requests to one edge node: a node that keeps sending
    /// out of step is asked again, not flooded.
    #[serde(with = "humantime_serde")]
    pub rebirth_interval: Duration,
    /// Eclipse Tahu's Python client, and the libraries built on it (mqtt-spb-wrapper), send an
    /// NDEATH whose `bdSeq` is one below their NBIRTH's. Set for such edge nodes: a death with
    /// the NBIRTH's `bdSeq` or the one before ends the session (a late NDEATH of an earlier
    /// session then goes unnoticed only if it is exactly one below). Off: the `bdSeq` must
    /// match, as Sparkplug 3.0 has it.
    pub legacy_bd_seq: bool,
    /// The site of each group id (`group -> site`); a group not listed is its own site.
    pub sites: BTreeMap<String, String>,
}

impl Default for SparkplugConfig {
    fn default() -> Self {
        Self {
            request_rebirth: false,
            rebirth_interval: Duration::from_secs(10),
            legacy_bd_seq: false,
            sites: BTreeMap::new(),
        }
    }
}

impl SparkplugConfig {
    /// Checks what types alone cannot; names the offending key.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.rebirth_interval.is_zero() {
            return bad("decode.sparkplug.rebirth_interval", "must be at least 1 ms");
        }
        for (group, site) in &self.sites {
            if group.is_empty() || group.contains(['/', '+', '#']) {
                return bad("decode.sparkplug.sites", format!("`{group}` is not a Sparkplug group id"));
            }
            if site.is_empty() {
                return bad("decode.sparkplug.sites", format!("the site of group `{group}` is empty"));
            }
        }
        Ok(())
    }
}
