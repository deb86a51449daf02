//! Sparkplug topics: `spBv1.0/{group}/{type}/{edge_node}[/{device}]`.

use super::NAMESPACE;
use crate::decode::RejectReason;

/// The message types of a Sparkplug topic that concern a consumer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Kind {
    NBirth,
    NData,
    NDeath,
    DBirth,
    DData,
    DDeath,
    /// Commands (ours included) and host state: not telemetry, taken without a word.
    Other,
}

/// A parsed topic.
pub(super) struct Topic<'a> {
    pub group: &'a str,
    pub kind: Kind,
    pub node: &'a str,
    pub device: Option<&'a str>,
}

pub(super) fn parse_topic(topic: &str) -> Result<Topic<'_>, RejectReason> {
    let bad = || RejectReason::SparkplugTopic(topic.chars().take(200).collect());
    let mut levels = topic.split('/');
    if levels.next() != Some(NAMESPACE) {
        return Err(bad());
    }
    let group = levels.next().filter(|g| !g.is_empty()).ok_or_else(bad)?;
    let kind = match levels.next() {
        _ if group == "STATE" => Kind::Other,
        Some("NBIRTH") => Kind::NBirth,
        Some("NDATA") => Kind::NData,
        Some("NDEATH") => Kind::NDeath,
        Some("DBIRTH") => Kind::DBirth,
        Some("DDATA") => Kind::DData,
        Some("DDEATH") => Kind::DDeath,
        Some("NCMD" | "DCMD") => Kind::Other,
        _ => return Err(bad()),
    };
    if kind == Kind::Other {
        return Ok(Topic { group, kind, node: "", device: None });
    }
    let node = levels.next().filter(|n| !n.is_empty()).ok_or_else(bad)?;
    let device = levels.next();
    let needs_device = matches!(kind, Kind::DBirth | Kind::DData | Kind::DDeath);
    if levels.next().is_some() || device.is_some_and(str::is_empty) || needs_device != device.is_some() {
        return Err(bad());
    }
    Ok(Topic { group, kind, node, device })
}
