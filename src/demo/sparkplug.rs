//! `fieldwatch demo --sparkplug`: the simulated compressors as Sparkplug B devices. Each site is
//! an edge node (group = the site, edge node `gw`), on an MQTT connection of its own whose will
//! is its NDEATH; it publishes its NBIRTH, a DBIRTH per compressor (each metric a Double with an
//! alias) and then DDATA by alias, the same values the JSON demo sends.

use std::collections::BTreeMap;
use std::time::Duration;

use prost::Message as _;
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Outgoing, QoS};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::decode::sparkplug::proto::{DataType, Metric, MetricValue, Payload};
use crate::decode::sparkplug::{SparkplugConfig, NAMESPACE};
use crate::reading::now_ms;
use crate::sim::{Simulator, METRICS};

/// The edge node of each site.
pub const EDGE_NODE: &str = "gw";

/// The Sparkplug id of simulated device `name` at `site`: `{site}/gw/{name}` (the site is the
/// group id, so it stays the device's site).
pub fn device_id(site: &str, name: &str) -> String {
    format!("{site}/{EDGE_NODE}/{name}")
}

/// `config` made to read the demo's Sparkplug topics: the registered devices and maintenance
/// windows of the simulated compressors are renamed to their Sparkplug ids.
pub fn sparkplug_config(config: &mut Config, devices: usize) {
    config.mqtt.topics = vec![format!("{NAMESPACE}/#")];
    config.decode.sparkplug = Some(SparkplugConfig::default());
    let sim = Simulator::new(devices, Vec::new(), 0);
    let ids: BTreeMap<&str, String> =
        sim.devices.iter().zip(&sim.sites).map(|(d, s)| (d.as_str(), device_id(s, d))).collect();
    for d in &mut config.assets.devices {
        if let Some(id) = ids.get(d.id.as_str()) {
            d.id = id.clone();
        }
    }
    for w in &mut config.maintenance.windows {
        if let Some(id) = w.device.as_deref().and_then(|d| ids.get(d)) {
            w.device = Some(id.clone());
        }
    }
}

/// One site's edge node: its connection and where it is in its session.
struct EdgeNode {
    site: String,
    client: AsyncClient,
    /// The simulator's indexes of its devices.
    devices: Vec<usize>,
    seq: u64,
}

impl EdgeNode {
    fn next_seq(&mut self) -> u64 {
        let seq = self.seq;
        self.seq = (self.seq + 1) % 256;
        seq
    }

    async fn publish(&self, kind: &str, device: Option<&str>, payload: Payload) -> Result<(), rumqttc::ClientError> {
        let topic = match device {
            Some(d) => format!("{NAMESPACE}/{}/{kind}/{EDGE_NODE}/{d}", self.site),
            None => format!("{NAMESPACE}/{}/{kind}/{EDGE_NODE}", self.site),
        };
        self.client.publish(topic, QoS::AtLeastOnce, false, payload.encode_to_vec()).await
    }
}

/// The alias of metric `m` of device `d` (numbered uniquely within its edge node): unique across
/// the edge node.
pub fn alias(d: usize, m: usize) -> u64 {
    (d * METRICS.len() + m) as u64
}

/// A Double metric: `name` and `datatype` as in a BIRTH, or only the alias as in a DATA.
pub fn double(name: Option<&str>, alias: u64, datatype: bool, v: f64) -> Metric {
    Metric {
        name: name.map(str::to_string),
        alias: Some(alias),
        datatype: datatype.then_some(DataType::Double as u32),
        value: Some(MetricValue::DoubleValue(v)),
        ..Metric::default()
    }
}

/// The `bdSeq` metric of an NBIRTH or NDEATH: 0, in every session.
pub fn bd_seq() -> Metric {
    Metric {
        name: Some("bdSeq".into()),
        datatype: Some(DataType::Int64 as u32),
        value: Some(MetricValue::LongValue(0)),
        ..Metric::default()
    }
}

/// Publishes like [`Simulator::publish`] (`history` of past readings at 1 Hz, then live ones
/// every `period` until `cancel`), as one Sparkplug edge node per site on the broker at `port`.
pub async fn publish(
    sim: &mut Simulator,
    port: u16,
    history: Duration,
    period: Duration,
    cancel: &CancellationToken,
) -> Result<u64, rumqttc::ClientError> {
    let mut sites: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (d, site) in sim.sites.iter().enumerate() {
        sites.entry(site.clone()).or_default().push(d);
    }
    let mut nodes = Vec::new();
    let mut pollers = Vec::new();
    for (site, devices) in sites {
        let mut o = MqttOptions::new(format!("fieldwatch-demo-{site}"), "127.0.0.1", port);
        o.set_inflight(200).set_request_channel_capacity(1000);
        let death = Payload { metrics: vec![bd_seq()], ..Payload::default() };
        let will = format!("{NAMESPACE}/{site}/NDEATH/{EDGE_NODE}");
        o.set_last_will(LastWill::new(will, death.encode_to_vec(), QoS::AtLeastOnce, false));
        let (client, mut eventloop) = AsyncClient::new(o, 1000);
        let stop = cancel.clone();
        pollers.push(tokio::spawn(async move {
            // Until our DISCONNECT is out (a clean end sends no NDEATH), or the broker is gone.
            loop {
                match eventloop.poll().await {
                    Ok(Event::Outgoing(Outgoing::Disconnect)) => break,
                    Ok(_) => {}
                    Err(_) if stop.is_cancelled() => break,
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        }));
        nodes.push(EdgeNode { site, client, devices, seq: 0 });
    }
    let start = now_ms();
    let first = start - history.as_secs() as i64 * 1000;
    let mut sent = 0u64;
    for node in &mut nodes {
        let seq = node.next_seq();
        let birth =
            Payload { timestamp: Some(first as u64), metrics: vec![bd_seq()], seq: Some(seq), ..Payload::default() };
        node.publish("NBIRTH", None, birth).await?;
        for &d in &node.devices.clone() {
            let values = sim.values(d, first);
            let metrics = METRICS
                .iter()
                .enumerate()
                .map(|(m, spec)| double(Some(spec.name), alias(d, m), true, values[m]))
                .collect();
            let seq = node.next_seq();
            let birth = Payload { timestamp: Some(first as u64), metrics, seq: Some(seq), ..Payload::default() };
            node.publish("DBIRTH", Some(&sim.devices[d]), birth).await?;
            sent += 1;
        }
    }
    let data = |sim: &mut Simulator, node: &mut EdgeNode, d: usize, ts: i64| {
        let values = sim.values(d, ts);
        let metrics = (0..METRICS.len()).map(|m| double(None, alias(d, m), false, values[m])).collect();
        Payload { timestamp: Some(ts as u64), metrics, seq: Some(node.next_seq()), ..Payload::default() }
    };
    for s in (1..history.as_secs() as i64).rev() {
        let ts = start - s * 1000;
        for node in &mut nodes {
            for d in node.devices.clone() {
                let payload = data(sim, node, d, ts);
                node.publish("DDATA", Some(&sim.devices[d]), payload).await?;
                sent += 1;
            }
        }
        if cancel.is_cancelled() {
            break;
        }
    }
    let mut tick = tokio::time::interval(period);
    while !cancel.is_cancelled() {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        let ts = now_ms();
        for node in &mut nodes {
            for d in node.devices.clone() {
                let payload = data(sim, node, d, ts);
                node.publish("DDATA", Some(&sim.devices[d]), payload).await?;
                sent += 1;
            }
        }
    }
    for node in &nodes {
        let _ = node.client.try_disconnect();
    }
    for p in pollers {
        if tokio::time::timeout(Duration::from_secs(2), p).await.is_err() {
            tracing::debug!("a demo edge node did not disconnect in time");
        }
    }
    Ok(sent)
}
