//! Simulated equipment: refrigeration compressors with four metrics driven by one shared load
//! cycle (so they are correlated, as on real equipment), some of them developing faults (spike,
//! drift, stuck sensor, a broken relation between metrics) on a schedule.
//!
//! Used by `demo`, the integration tests and the benchmarks, so all three exercise the same
//! telemetry shapes. Deterministic for a given seed.

pub mod days;
pub mod evaluate;
pub mod fleet;

use std::time::Duration;

use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};
use rumqttc::{AsyncClient, QoS};
use tokio_util::sync::CancellationToken;

use crate::reading::now_ms;

/// One simulated metric: level, noise and a slow oscillation (load cycles).
#[derive(Debug, Clone)]
pub struct SimMetric {
    pub name: &'static str,
    pub unit: &'static str,
    pub level: f64,
    pub noise: f64,
    pub swing: f64,
}

/// The metrics every simulated compressor reports.
pub const METRICS: [SimMetric; 4] = [
    SimMetric { name: "discharge_temp", unit: "°C", level: 71.4, noise: 0.4, swing: 1.0 },
    SimMetric { name: "suction_pressure", unit: "bar", level: 4.2, noise: 0.03, swing: 0.05 },
    SimMetric { name: "vibration", unit: "mm/s", level: 2.1, noise: 0.08, swing: 0.05 },
    SimMetric { name: "current", unit: "A", level: 12.5, noise: 0.15, swing: 0.3 },
];

/// A fault to inject.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FaultShape {
    /// The metric jumps by `delta` and stays there.
    Step { delta: f64 },
    /// The metric rises by `per_s` every second.
    Drift { per_s: f64 },
    /// The sensor freezes at its last value.
    Stuck,
    /// The metric moves against the shared load instead of with it: it stays inside its own
    /// normal range, but its relation to the device's other metrics breaks.
    Relation,
}

/// A fault of one metric of one device, starting at a time (ms since the epoch).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlannedFault {
    pub device: usize,
    pub metric: usize,
    pub shape: FaultShape,
    pub start_ms: i64,
    /// When the fault clears by itself (`None`: it lasts).
    pub end_ms: Option<i64>,
}

/// What a transmitter sends for the true value `v`: the frozen value while the sensor is stuck
/// (the first value it froze at), else `v`, with two decimals like a real transmitter.
pub(crate) fn transmit(frozen: &mut Option<f64>, v: f64, stuck: bool) -> f64 {
    let v = if stuck {
        *frozen.get_or_insert(v)
    } else {
        *frozen = None;
        v
    };
    (v * 100.0).round() / 100.0
}

/// A telemetry payload: `{"ts": ..., "<metric>": <value>, ...}`.
pub(crate) fn json_payload<'a>(ts: i64, values: impl Iterator<Item = (&'a str, f64)>) -> Vec<u8> {
    let mut obj = serde_json::Map::new();
    obj.insert("ts".into(), ts.into());
    for (name, v) in values {
        obj.insert(name.into(), v.into());
    }
    serde_json::Value::Object(obj).to_string().into_bytes()
}

/// A fleet of simulated devices.
pub struct Simulator {
    pub devices: Vec<String>,
    pub sites: Vec<String>,
    faults: Vec<PlannedFault>,
    rng: StdRng,
    noise: Normal<f64>,
    frozen: Vec<Option<f64>>,
}

impl Simulator {
    /// `n` devices over two sites, with the given faults.
    pub fn new(n: usize, faults: Vec<PlannedFault>, seed: u64) -> Simulator {
        Simulator {
            devices: (0..n).map(|i| format!("comp-{:02}", i + 1)).collect(),
            sites: (0..n).map(|i| if i % 2 == 0 { "site-north".into() } else { "site-south".into() }).collect(),
            frozen: vec![None; n * METRICS.len()],
            faults,
            rng: StdRng::seed_from_u64(seed),
            // Normal::new only fails for a negative or NaN deviation; 1.0 is neither.
            noise: Normal::new(0.0, 1.0).unwrap_or_else(|_| unreachable!()),
        }
    }

    /// The demo's fault plan: a step, a stuck sensor and a drift towards a limit, starting
    /// `after` the given time.
    pub fn demo_faults(start_ms: i64) -> Vec<PlannedFault> {
        let at = |s: i64| start_ms + s * 1000;
        vec![
            // comp-03: discharge temperature jumps, recovers, then comes back (one ticket, updated).
            PlannedFault {
                device: 2,
                metric: 0,
                shape: FaultShape::Step { delta: 18.0 },
                start_ms: at(0),
                end_ms: Some(at(15)),
            },
            PlannedFault {
                device: 2,
                metric: 0,
                shape: FaultShape::Step { delta: 18.0 },
                start_ms: at(42),
                end_ms: None,
            },
            // comp-07: the vibration sensor freezes.
            PlannedFault { device: 6, metric: 2, shape: FaultShape::Stuck, start_ms: at(0), end_ms: None },
            // comp-11: current drifts up towards its 20 A limit (forecast, then the crossing).
            PlannedFault {
                device: 10,
                metric: 3,
                shape: FaultShape::Drift { per_s: 0.25 },
                start_ms: at(5),
                end_ms: None,
            },
            // comp-16: suction pressure drops during planned maintenance (no ticket).
            PlannedFault {
                device: 15,
                metric: 1,
                shape: FaultShape::Step { delta: -1.2 },
                start_ms: at(10),
                end_ms: None,
            },
        ]
    }

    /// The MQTT topic of a device.
    pub fn topic(&self, device: usize) -> String {
        format!("plant/{}/{}/telemetry", self.sites[device], self.devices[device])
    }

    /// The values of a device at time `ts` (ms).
    pub fn values(&mut self, device: usize, ts: i64) -> Vec<f64> {
        let mut out = Vec::with_capacity(METRICS.len());
        for (m, spec) in METRICS.iter().enumerate() {
            let phase = (ts as f64 / 600_000.0 + device as f64 * 0.37) * std::f64::consts::TAU;
            // The load cycle every metric of the device follows.
            let load = phase.sin();
            let mut v = spec.level + spec.swing * load + spec.noise * self.noise.sample(&mut self.rng);
            let slot = device * METRICS.len() + m;
            let mut stuck = false;
            let active = |f: &&PlannedFault| {
                f.device == device && f.metric == m && ts >= f.start_ms && f.end_ms.is_none_or(|end| ts < end)
            };
            for f in self.faults.iter().filter(active) {
                match f.shape {
                    FaultShape::Step { delta } => v += delta,
                    FaultShape::Drift { per_s } => v += per_s * (ts - f.start_ms) as f64 / 1000.0,
                    FaultShape::Stuck => stuck = true,
                    FaultShape::Relation => v -= 2.0 * spec.swing * load,
                }
            }
            out.push(transmit(&mut self.frozen[slot], v, stuck));
        }
        out
    }

    /// The JSON payload of a device at time `ts`.
    pub fn payload(&mut self, device: usize, ts: i64) -> Vec<u8> {
        let values = self.values(device, ts);
        json_payload(ts, METRICS.iter().map(|m| m.name).zip(values))
    }

    /// Publishes `history` of past readings (1 Hz per device, with past event times) as fast as
    /// the broker takes them, then live readings every `period` until `cancel`, or until `live`
    /// has elapsed if given.
    pub async fn publish(
        &mut self,
        client: &AsyncClient,
        history: Duration,
        period: Duration,
        live: Option<Duration>,
        cancel: &CancellationToken,
    ) -> Result<u64, rumqttc::ClientError> {
        let mut sent = 0u64;
        let start = now_ms();
        let steps = history.as_secs() as i64;
        for s in (1..=steps).rev() {
            let ts = start - s * 1000;
            for d in 0..self.devices.len() {
                let payload = self.payload(d, ts);
                client.publish(self.topic(d), QoS::AtLeastOnce, false, payload).await?;
                sent += 1;
            }
            if cancel.is_cancelled() {
                return Ok(sent);
            }
        }
        let mut tick = tokio::time::interval(period);
        let end = live.map(|l| tokio::time::Instant::now() + l);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return Ok(sent),
                _ = tick.tick() => {}
            }
            if end.is_some_and(|e| tokio::time::Instant::now() >= e) {
                return Ok(sent);
            }
            let ts = now_ms();
            for d in 0..self.devices.len() {
                let payload = self.payload(d, ts);
                client.publish(self.topic(d), QoS::AtLeastOnce, false, payload).await?;
                sent += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_shape_the_values() {
        let faults = vec![
            PlannedFault {
                device: 0,
                metric: 0,
                shape: FaultShape::Step { delta: 20.0 },
                start_ms: 10_000,
                end_ms: Some(30_000),
            },
            PlannedFault { device: 1, metric: 2, shape: FaultShape::Stuck, start_ms: 10_000, end_ms: None },
        ];
        let mut sim = Simulator::new(2, faults, 7);
        let before = sim.values(0, 0)[0];
        let after = sim.values(0, 20_000)[0];
        assert!(after - before > 15.0, "{before} -> {after}");
        let cleared = sim.values(0, 31_000)[0];
        assert!((cleared - before).abs() < 5.0, "the step ends: {before} -> {cleared}");
        let s1 = sim.values(1, 11_000)[2];
        let s2 = sim.values(1, 12_000)[2];
        assert_eq!(s1, s2, "stuck sensor repeats its value");
        let p: serde_json::Value = serde_json::from_slice(&sim.payload(0, 5)).unwrap();
        assert_eq!(p["ts"], 5);
        assert!(p["current"].as_f64().is_some());
    }
}
