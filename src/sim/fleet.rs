//! A fleet scenario for judging detection the way a field-service team would: pumps and
//! compressors at three sites reporting every 10 s, each on its own duty (a load that changes set
//! point now and then, plus a short cycle), some of them wearing out over hours.
//!
//! The faults are the ones proactive maintenance exists for: bearing wear (vibration climbs
//! slowly, then faster), cooling drift (discharge temperature creeps up 15–25 °C over 1–2 h),
//! fouling (a pump delivers less flow for more current), a relation fault (current rises
//! against the load while every metric stays inside its own range) and a stuck sensor. Healthy
//! devices change their operating point (every metric moves with the load to a new steady state),
//! which is not a fault. One device's fault falls into a maintenance window.
//!
//! Every fault has a *failure* time: when the equipment would stop or trip. A detector is judged
//! on whether the device was ticketed before it, and on the tickets of healthy devices.
//! Deterministic for a given seed; different seeds give different fleets (levels, noise, load
//! profiles, which devices fail and when).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};

use super::days::{lag, Disturbances, Duty, Weather, DAY};

/// One reading every this many ms per device.
pub const PERIOD_MS: i64 = 10_000;

/// What a device is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Equipment {
    Pump,
    Compressor,
}

/// One metric of a device: its level at zero load, how it follows the load, its noise.
#[derive(Debug, Clone)]
pub struct MetricModel {
    pub name: &'static str,
    pub unit: &'static str,
    pub level: f64,
    /// Change per unit of load (load runs 0..1).
    pub load_gain: f64,
    pub noise: f64,
}

/// A degradation or fault that ends in a failure.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FaultKind {
    /// Vibration climbs by `rise` mm/s, slowly then faster (quadratic), over the fault.
    BearingWear { rise: f64 },
    /// Discharge temperature climbs by `rise` °C, linearly, over the fault.
    CoolingDrift { rise: f64 },
    /// A pump's flow falls by `loss` (share) while its current rises, over the fault.
    Fouling { loss: f64 },
    /// Current moves against the load instead of with it.
    Relation,
    /// One sensor freezes at its last value.
    Stuck { metric: usize },
}

impl FaultKind {
    pub fn label(&self) -> &'static str {
        match self {
            FaultKind::BearingWear { .. } => "bearing wear",
            FaultKind::CoolingDrift { .. } => "cooling drift",
            FaultKind::Fouling { .. } => "fouling",
            FaultKind::Relation => "relation fault",
            FaultKind::Stuck { .. } => "stuck sensor",
        }
    }
}

/// A fault of one device: from `start_ms` it develops; at `fail_ms` the equipment fails.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FleetFault {
    pub device: usize,
    pub kind: FaultKind,
    pub start_ms: i64,
    pub fail_ms: i64,
}

/// A device of the fleet.
#[derive(Debug, Clone)]
pub struct FleetDevice {
    pub id: String,
    pub site: String,
    pub equipment: Equipment,
    pub metrics: Vec<MetricModel>,
    /// Load set points: from each time on (ms), the load the device runs at.
    pub set_points: Vec<(i64, f64)>,
    /// Period (ms) and depth of its short duty cycle.
    pub cycle_ms: f64,
    pub cycle_depth: f64,
    phase: f64,
}

impl FleetDevice {
    /// Which of the three sites (0..3) it stands at.
    fn site_index(&self) -> usize {
        ["site-north", "site-east", "site-south"].iter().position(|s| *s == self.site).unwrap_or(0)
    }
}

/// The whole scenario.
pub struct Fleet {
    pub devices: Vec<FleetDevice>,
    pub faults: Vec<FleetFault>,
    /// Planned work: (device, from ms, to ms).
    pub maintenance: Vec<(usize, i64, i64)>,
    pub start_ms: i64,
    pub end_ms: i64,
    rng: StdRng,
    noise: Normal<f64>,
    frozen: Vec<Option<f64>>,
    /// Smoothed load per device (set points are approached over minutes, not in one step).
    load: Vec<Option<f64>>,
    /// Real days (shifts, weather, gaps), for the fleets of [`Fleet::week`]; `None` for the
    /// set-point fleets of [`Fleet::scenario`].
    week: Option<Week>,
}

/// Which physics a fleet's equipment follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Every metric linear in the load, a compressor's discharge temperature offset by the
    /// ambient.
    Linear,
    /// Pumps on the affinity laws (flow with speed, pressure with its square, power with its
    /// cube); compressors on a pressure ratio (discharge temperature from the ambient through
    /// the compression, current with load and ratio).
    Physics,
    /// The fleets of [`Family::Physics`] (the same seeds give the same machines, days and
    /// faults) as a PLC gateway reports them: a stopped machine's current, flow and vibration
    /// read exactly 0, and every value comes in its sensor's resolution (0.5 °C, 0.1 bar,
    /// 0.1 A, 0.1 mm/s, 0.1 m³/h), so healthy sensors repeat themselves.
    Gateway,
    /// The machines of [`Family::Physics`] on on/off control, as most small plant runs: during
    /// the shift a compressor or pump does not follow its demand smoothly but starts and stops
    /// (a pressure or level band: full load for minutes, then stopped or unloaded for minutes,
    /// the share of time on following the demand; below its lowest load it only cycles). A start
    /// draws an inrush current and shakes for a few seconds; a compressor's discharge
    /// temperature follows its compression with a thermal lag of minutes, so it lags every start
    /// and stop.
    Cycling,
}

impl std::str::FromStr for Family {
    type Err = String;
    fn from_str(s: &str) -> Result<Family, String> {
        match s {
            "a" | "linear" => Ok(Family::Linear),
            "b" | "physics" => Ok(Family::Physics),
            "c" | "gateway" => Ok(Family::Gateway),
            "d" | "cycling" => Ok(Family::Cycling),
            _ => Err(format!("unknown fleet family `{s}` (a or linear, b or physics, c or gateway, d or cycling)")),
        }
    }
}

/// What makes a fleet's days real (see `days.rs`).
struct Week {
    family: Family,
    weather: Vec<Weather>,
    duty: Vec<Duty>,
    disturbances: Vec<Disturbances>,
    /// Per device: how strongly and how slowly its temperatures follow the ambient.
    ambient_gain: Vec<f64>,
    thermal_lag_ms: Vec<f64>,
    lagged_ambient: Vec<Option<f64>>,
    /// Per device: its own slow wander of load.
    wander: Vec<f64>,
    last_ts: Vec<Option<i64>>,
    /// Per device: its on/off control ([`Family::Cycling`] only).
    cycling: Vec<OnOff>,
}

/// A device on on/off control ([`Family::Cycling`]): a store (a receiver's pressure, a tank's
/// level) that the device fills while on and the demand empties; it starts at the bottom of
/// its band and stops at the top.
#[derive(Debug, Clone)]
struct OnOff {
    /// The load it runs at while on.
    on_load: f64,
    /// The load while "off": 0 (stopped) or a compressor's unloaded running.
    off_load: f64,
    /// Minutes to fill the whole band at full load with no demand (sets the cycle length).
    band_min: f64,
    /// Where in the band the store is (0..1), and whether the device is on.
    store: f64,
    on: bool,
    /// When it last started (ms).
    started: Option<i64>,
    /// The thermal lag of its discharge temperature (ms) and its lagged value.
    temp_tau_ms: f64,
    temp: Option<f64>,
    temp_at: Option<i64>,
}

impl OnOff {
    fn new(rng: &mut StdRng, equipment: Equipment) -> OnOff {
        let unloads = equipment == Equipment::Compressor && rng.gen_bool(0.5);
        OnOff {
            on_load: rng.gen_range(0.85..1.0),
            off_load: if unloads { rng.gen_range(0.15..0.3) } else { 0.0 },
            band_min: rng.gen_range(4.0..12.0),
            store: rng.gen_range(0.0..1.0),
            on: false,
            started: None,
            temp_tau_ms: rng.gen_range(3.0..8.0) * 60_000.0,
            temp: None,
            temp_at: None,
        }
    }

    /// The load at `ts` after `dt` ms of `demand` (0..1): on, off, or following the demand
    /// smoothly when it is above what the device delivers on/off.
    fn step(&mut self, ts: i64, dt: i64, demand: f64) -> f64 {
        let per_ms = 1.0 / (self.band_min * 60_000.0);
        if demand >= self.on_load * 0.97 {
            // Demand past what the band can hold: it runs continuously and modulates.
            if !self.on {
                self.started = Some(ts);
            }
            self.on = true;
            self.store = 0.5;
            return demand;
        }
        // Unloaded or stopped, it delivers nothing.
        let supply = if self.on { self.on_load } else { 0.0 };
        self.store = (self.store + (supply - demand) * dt as f64 * per_ms).clamp(0.0, 1.0);
        if self.on && self.store >= 1.0 {
            self.on = false;
        } else if !self.on && self.store <= 0.0 && demand > 0.02 {
            self.on = true;
            // Somewhere within the last reporting period.
            self.started = Some(ts - (ts / PERIOD_MS).rem_euclid(7) * PERIOD_MS / 7);
        }
        if self.on {
            self.on_load
        } else {
            self.off_load
        }
    }

    /// Seconds since the last start, while on.
    fn since_start_s(&self, ts: i64) -> Option<f64> {
        self.started.filter(|_| self.on).map(|s| (ts - s) as f64 / 1000.0)
    }
}

fn compressor(rng: &mut StdRng) -> Vec<MetricModel> {
    let j = |rng: &mut StdRng, x: f64| x * rng.gen_range(0.85..1.15);
    vec![
        MetricModel {
            name: "discharge_temp",
            unit: "°C",
            level: j(rng, 24.0),
            load_gain: j(rng, 14.0),
            noise: j(rng, 0.5),
        },
        MetricModel {
            name: "suction_pressure",
            unit: "bar",
            level: j(rng, 4.6),
            load_gain: j(rng, -0.6),
            noise: j(rng, 0.04),
        },
        MetricModel {
            name: "vibration",
            unit: "mm/s",
            level: j(rng, 1.8),
            load_gain: j(rng, 1.6),
            noise: j(rng, 0.12),
        },
        MetricModel { name: "current", unit: "A", level: j(rng, 6.0), load_gain: j(rng, 12.0), noise: j(rng, 0.2) },
    ]
}

fn pump(rng: &mut StdRng) -> Vec<MetricModel> {
    let j = |rng: &mut StdRng, x: f64| x * rng.gen_range(0.85..1.15);
    vec![
        MetricModel { name: "flow", unit: "m³/h", level: j(rng, 10.0), load_gain: j(rng, 60.0), noise: j(rng, 0.8) },
        MetricModel {
            name: "discharge_pressure",
            unit: "bar",
            level: j(rng, 1.5),
            load_gain: j(rng, 4.0),
            noise: j(rng, 0.05),
        },
        MetricModel { name: "vibration", unit: "mm/s", level: j(rng, 1.2), load_gain: j(rng, 2.0), noise: j(rng, 0.1) },
        MetricModel { name: "current", unit: "A", level: j(rng, 4.0), load_gain: j(rng, 16.0), noise: j(rng, 0.25) },
    ]
}

const HOUR: i64 = 3_600_000;

/// A value as a PLC gateway reports it (see [`Family::Gateway`]): exactly 0 for what stands
/// still when the machine is stopped, in its sensor's resolution otherwise.
fn gateway_reading(metric: &str, v: f64, load: f64) -> f64 {
    let at_rest = matches!(metric, "current" | "flow" | "vibration");
    if at_rest && load <= 0.02 {
        return 0.0;
    }
    let step = if metric == "discharge_temp" { 0.5 } else { 0.1 };
    (v / step).round() * step
}

/// A metric of the [`Family::Physics`] equipment at `load` (0..1; 0 is stopped) and `ambient`
/// (°C from the site's mean), from the metric's rated level and gain.
fn physics(equipment: Equipment, spec: &MetricModel, load: f64, ambient: f64) -> f64 {
    let running = load > 0.02;
    match equipment {
        Equipment::Pump => {
            // Affinity laws on the speed: flow ~ n, head ~ n², shaft power ~ n³.
            let n = if running { 0.35 + 0.65 * load } else { 0.0 };
            match spec.name {
                "flow" => (spec.level + spec.load_gain) * n,
                "discharge_pressure" => 0.3 * spec.level + (spec.level + spec.load_gain) * n * n,
                "vibration" => 0.3 * spec.level + (spec.level + spec.load_gain) * n * n,
                "current" => 0.4 + (spec.level + spec.load_gain) * n * n * n,
                _ => spec.level + spec.load_gain * load,
            }
        }
        Equipment::Compressor => {
            // Pressure ratio with load; discharge temperature from the (lagged) ambient through
            // the compression, a polytropic exponent of 0.18.
            let ratio = if running { 1.6 + 2.4 * load } else { 1.0 };
            let ambient_k = 273.15 + 15.0 + ambient;
            match spec.name {
                "discharge_temp" => ambient_k * ratio.powf(0.18) - 273.15 + (spec.level - 24.0),
                "suction_pressure" => spec.level + spec.load_gain * load + 0.04 * ambient,
                "vibration" => {
                    if running {
                        spec.level + spec.load_gain * load.powf(1.5)
                    } else {
                        0.2
                    }
                }
                "current" => {
                    if running {
                        spec.level + spec.load_gain * load * ratio.powf(0.3) / 1.5
                    } else {
                        0.3
                    }
                }
                _ => spec.level + spec.load_gain * load,
            }
        }
    }
}

impl Fleet {
    /// A fleet of `n` devices (at least 8) over `hours` (at least 12) from `start_ms`: half pumps,
    /// half compressors, at three sites; eight of them fail (two each of bearing wear and
    /// cooling drift, one each of fouling, relation fault and two stuck sensors), the rest stay
    /// healthy while changing their operating point. Faults start after 3 h of healthy history.
    pub fn scenario(n: usize, hours: i64, start_ms: i64, seed: u64) -> Fleet {
        let n = n.max(8);
        let hours = hours.max(12);
        let mut rng = StdRng::seed_from_u64(seed);
        let end_ms = start_ms + hours * HOUR;
        let sites = ["site-north", "site-east", "site-south"];
        let mut devices = Vec::with_capacity(n);
        for i in 0..n {
            let equipment = if i % 2 == 0 { Equipment::Pump } else { Equipment::Compressor };
            let metrics = match equipment {
                Equipment::Pump => pump(&mut rng),
                Equipment::Compressor => compressor(&mut rng),
            };
            // Two to four set-point changes over the run, between 40 % and 95 % load.
            let mut set_points = vec![(start_ms, rng.gen_range(0.5..0.8))];
            let changes = rng.gen_range(2..=4);
            for _ in 0..changes {
                let at = start_ms + rng.gen_range(2 * HOUR..hours * HOUR);
                set_points.push((at, rng.gen_range(0.4..0.95)));
            }
            set_points.sort_by_key(|p| p.0);
            let prefix = if equipment == Equipment::Pump { "pump" } else { "comp" };
            devices.push(FleetDevice {
                id: format!("{prefix}-{:02}", i + 1),
                site: sites[i % 3].to_string(),
                equipment,
                metrics,
                set_points,
                cycle_ms: rng.gen_range(8.0..20.0) * 60_000.0,
                cycle_depth: rng.gen_range(0.03..0.08),
                phase: rng.gen_range(0.0..1.0),
            });
        }
        // Which devices fail: a shuffled pick, so each seed fails different ones.
        let mut order: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            order.swap(i, rng.gen_range(0..=i));
        }
        let pumps: Vec<usize> = order.iter().copied().filter(|&d| devices[d].equipment == Equipment::Pump).collect();
        let comps: Vec<usize> =
            order.iter().copied().filter(|&d| devices[d].equipment == Equipment::Compressor).collect();
        let mut faults = Vec::new();
        let at = |rng: &mut StdRng, dur_h: (f64, f64)| {
            let start = start_ms + 3 * HOUR + rng.gen_range(0..(hours - 3 - 5).max(1) * HOUR);
            let dur = (rng.gen_range(dur_h.0..dur_h.1) * HOUR as f64) as i64;
            (start, (start + dur).min(end_ms))
        };
        let push = |faults: &mut Vec<FleetFault>, device: usize, kind: FaultKind, span: (i64, i64)| {
            faults.push(FleetFault { device, kind, start_ms: span.0, fail_ms: span.1 });
        };
        let s = at(&mut rng, (2.0, 4.0));
        push(&mut faults, pumps[0], FaultKind::BearingWear { rise: rng.gen_range(8.0..13.0) }, s);
        let s = at(&mut rng, (2.0, 4.0));
        push(&mut faults, comps[0], FaultKind::BearingWear { rise: rng.gen_range(8.0..13.0) }, s);
        let s = at(&mut rng, (1.0, 2.0));
        push(&mut faults, comps[1], FaultKind::CoolingDrift { rise: rng.gen_range(15.0..25.0) }, s);
        let s = at(&mut rng, (1.0, 2.0));
        push(&mut faults, comps[2], FaultKind::CoolingDrift { rise: rng.gen_range(15.0..25.0) }, s);
        let s = at(&mut rng, (2.0, 4.0));
        push(&mut faults, pumps[1], FaultKind::Fouling { loss: rng.gen_range(0.25..0.4) }, s);
        let s = at(&mut rng, (1.0, 3.0));
        push(&mut faults, comps[3], FaultKind::Relation, s);
        let s = at(&mut rng, (1.0, 2.0));
        push(&mut faults, pumps[2], FaultKind::Stuck { metric: 0 }, s);
        let s = at(&mut rng, (1.0, 2.0));
        push(&mut faults, comps[4], FaultKind::Stuck { metric: 2 }, s);
        // Planned work on a healthy pump: its vibration transmitter reads nothing while a
        // technician calibrates it.
        let m_from = start_ms + 5 * HOUR;
        let maintenance = vec![(pumps[3], m_from, m_from + HOUR)];
        Fleet {
            devices,
            faults,
            maintenance,
            start_ms,
            end_ms,
            rng,
            noise: Normal::new(0.0, 1.0).unwrap_or_else(|_| unreachable!()),
            frozen: vec![None; n * 4],
            load: vec![None; n],
            week: None,
        }
    }

    /// A fleet of `n` devices (at least 8) of `family` over `days` (at least 3) of real days
    /// (shifts, nights, weekends, weather, gaps; see `days.rs`): half pumps, half compressors at
    /// three sites, eight of them failing as in [`Fleet::scenario`]. Faults start after the
    /// first `quiet_days` of healthy history (commissioning), at any hour of the day.
    pub fn week(family: Family, n: usize, days: i64, quiet_days: f64, start_ms: i64, seed: u64) -> Fleet {
        let days = days.max(3);
        let mut fleet = Fleet::scenario(n, days * 24, start_ms, seed);
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed_da75);
        let end_ms = fleet.end_ms;
        let weather = (0..3).map(|_| Weather::new(&mut rng, start_ms, end_ms)).collect();
        let n = fleet.devices.len();
        let duty = (0..n).map(|_| Duty::new(&mut rng, start_ms, end_ms)).collect();
        let disturbances = (0..n).map(|_| Disturbances::new(&mut rng, start_ms, end_ms)).collect();
        let ambient_gain = (0..n).map(|_| rng.gen_range(0.8..1.2)).collect();
        let thermal_lag_ms = (0..n).map(|_| rng.gen_range(15.0..60.0) * 60_000.0).collect();
        // Its own generator, so the other families' fleets stay what they were.
        let mut on_off_rng = StdRng::seed_from_u64(seed ^ 0x0c0c_1e5e);
        let cycling = fleet.devices.iter().map(|d| OnOff::new(&mut on_off_rng, d.equipment)).collect();
        // Faults after the quiet days, at any hour, lasting as in `scenario`.
        let first = start_ms + (quiet_days * DAY as f64) as i64;
        for f in &mut fleet.faults {
            let dur = f.fail_ms - f.start_ms;
            let latest = (end_ms - dur - HOUR).max(first + 1);
            f.start_ms = rng.gen_range(first..latest);
            f.fail_ms = (f.start_ms + dur).min(end_ms);
        }
        for m in &mut fleet.maintenance {
            let at = rng.gen_range(first..end_ms - 2 * HOUR);
            *m = (m.0, at, at + HOUR);
        }
        fleet.week = Some(Week {
            family,
            weather,
            duty,
            disturbances,
            ambient_gain,
            thermal_lag_ms,
            lagged_ambient: vec![None; n],
            wander: vec![0.0; n],
            last_ts: vec![None; n],
            cycling,
        });
        fleet
    }

    /// Whether the device sends at `ts` (a fleet with real days has communication gaps).
    pub fn reports(&self, device: usize, ts: i64) -> bool {
        self.week.as_ref().is_none_or(|w| !w.disturbances[device].silent(ts))
    }

    /// Whether the device was in a communication gap at `ts` or in the hour before it: a
    /// "no telemetry" ticket then is about the link, not a false alarm.
    pub fn was_silent(&self, device: usize, ts: i64) -> bool {
        self.week.as_ref().is_some_and(|w| w.disturbances[device].gaps.iter().any(|&(a, b)| a <= ts && b + HOUR >= ts))
    }

    /// The load of a device with real days at `ts`, and the ambient it feels (relative to its
    /// site's mean), both lagged; called in time order per device.
    fn day_load(&mut self, device: usize, ts: i64) -> (f64, f64, f64) {
        let site = self.devices[device].site_index();
        let Some(w) = self.week.as_mut() else { return (0.6, 0.0, 1.0) };
        let dt = w.last_ts[device].map_or(PERIOD_MS, |t| (ts - t).max(0));
        w.last_ts[device] = Some(ts);
        // Its own wander: a mean-reverting random walk, about ±0.04 over hours.
        let k = dt as f64 / (2.0 * HOUR as f64);
        w.wander[device] += -k * w.wander[device] + 0.04 * (2.0 * k).sqrt() * self.noise.sample(&mut self.rng);
        let target = (w.duty[device].target(ts) + w.wander[device]).clamp(0.0, 1.0);
        let mut load = lag(&mut self.load[device], target, dt, 10.0 * 60_000.0);
        if w.family == Family::Cycling {
            load = w.cycling[device].step(ts, dt, load);
        }
        let weather = &w.weather[site];
        let ambient = lag(&mut w.lagged_ambient[device], weather.ambient(ts), dt, w.thermal_lag_ms[device]);
        let relative = w.ambient_gain[device] * (ambient - weather.mean);
        (load, relative, w.disturbances[device].noise_factor(ts))
    }

    /// Indexes of the devices with a fault.
    pub fn failing(&self) -> Vec<usize> {
        let mut d: Vec<usize> = self.faults.iter().map(|f| f.device).collect();
        d.sort_unstable();
        d.dedup();
        d
    }

    /// The MQTT topic of a device.
    pub fn topic(&self, device: usize) -> String {
        format!("plant/{}/{}/telemetry", self.devices[device].site, self.devices[device].id)
    }

    /// The metric values of a device at `ts` (ms), called in time order per device.
    pub fn values(&mut self, device: usize, ts: i64) -> Vec<f64> {
        let (load_now, ambient, noise_factor) = match self.week {
            Some(_) => self.day_load(device, ts),
            None => (self.set_point_load(device, ts), 0.0, 1.0),
        };
        let family = self.week.as_ref().map(|w| w.family);
        let d = &self.devices[device];
        let cycle = ((ts as f64 / d.cycle_ms + d.phase) * std::f64::consts::TAU).sin() * d.cycle_depth;
        // A stopped device (real days, at night) has no duty cycle either.
        let load = match family {
            // On/off control is its short cycle.
            Some(Family::Cycling) => load_now,
            Some(_) => (load_now + cycle * load_now.min(1.0)).max(0.0),
            None => load_now + cycle,
        };
        let in_maintenance = self.maintenance.iter().any(|&(dev, from, to)| dev == device && ts >= from && ts < to);
        let faults: Vec<FleetFault> =
            self.faults.iter().filter(|f| f.device == device && ts >= f.start_ms).copied().collect();
        let mut out = Vec::with_capacity(d.metrics.len());
        for (m, spec) in d.metrics.clone().iter().enumerate() {
            let mut effective_load = load;
            let mut extra = 0.0;
            let mut stuck = false;
            for f in &faults {
                let progress = ((ts - f.start_ms) as f64 / (f.fail_ms - f.start_ms).max(1) as f64).clamp(0.0, 1.2);
                match (f.kind, spec.name) {
                    (FaultKind::BearingWear { rise }, "vibration") => extra += rise * progress * progress,
                    (FaultKind::CoolingDrift { rise }, "discharge_temp") => extra += rise * progress,
                    (FaultKind::Fouling { loss }, "flow") => extra -= loss * progress * spec.load_gain * load,
                    (FaultKind::Fouling { loss }, "current") => extra += 0.5 * loss * progress * spec.load_gain * load,
                    // On/off, the load is either set: the current rises against it instead.
                    (FaultKind::Relation, "current") if family == Some(Family::Cycling) => {
                        effective_load = load * (1.0 + 0.3 * progress)
                    }
                    (FaultKind::Relation, "current") => {
                        effective_load = (2.0 * load_now - load + 0.15 * progress).max(0.0)
                    }
                    (FaultKind::Stuck { metric }, _) if metric == m => stuck = true,
                    _ => {}
                }
            }
            let base = match family {
                Some(Family::Physics | Family::Gateway) => {
                    physics(self.devices[device].equipment, spec, effective_load, ambient)
                }
                Some(Family::Cycling) => {
                    let v = physics(self.devices[device].equipment, spec, effective_load, ambient);
                    self.cycling_transients(device, spec, v, ts)
                }
                Some(Family::Linear) if spec.name == "discharge_temp" => {
                    spec.level + spec.load_gain * effective_load + ambient
                }
                _ => spec.level + spec.load_gain * effective_load,
            };
            let mut v = base + extra;
            if in_maintenance && spec.name == "vibration" {
                // The technician has the vibration transmitter off for calibration.
                v = 0.0;
            }
            v += spec.noise * noise_factor * self.noise.sample(&mut self.rng);
            if family == Some(Family::Gateway) {
                v = gateway_reading(spec.name, v, load);
            }
            out.push(super::transmit(&mut self.frozen[device * 4 + m], v, stuck));
        }
        out
    }

    /// What a start and the thermal mass add to a [`Family::Cycling`] device's steady value
    /// `v`: the inrush current and a shake in the first seconds after a start, and the discharge
    /// temperature's lag behind its compression.
    fn cycling_transients(&mut self, device: usize, spec: &MetricModel, v: f64, ts: i64) -> f64 {
        let Some(w) = self.week.as_mut() else { return v };
        let start = w.cycling[device].since_start_s(ts).map_or(0.0, |s| (-s / 6.0).exp());
        match spec.name {
            "current" => v * (1.0 + 2.5 * start),
            "vibration" => v + 1.5 * spec.level * start,
            "discharge_temp" => {
                let c = &mut w.cycling[device];
                let dt = c.temp_at.map_or(PERIOD_MS, |t| (ts - t).max(0));
                c.temp_at = Some(ts);
                lag(&mut c.temp, v, dt, c.temp_tau_ms)
            }
            _ => v,
        }
    }

    /// The load of a set-point fleet's device at `ts`: its set point, approached over minutes.
    fn set_point_load(&mut self, device: usize, ts: i64) -> f64 {
        let d = &self.devices[device];
        let target = d.set_points.iter().rev().find(|p| p.0 <= ts).map(|p| p.1).unwrap_or(0.6);
        // A set-point change settles over a few minutes (first order, 2 min time constant).
        let load_now = match self.load[device] {
            Some(l) => l + (target - l) * (PERIOD_MS as f64 / 120_000.0).min(1.0),
            None => target,
        };
        self.load[device] = Some(load_now);
        load_now
    }

    /// The JSON payload of a device at `ts`.
    pub fn payload(&mut self, device: usize, ts: i64) -> Vec<u8> {
        let values = self.values(device, ts);
        super::json_payload(ts, self.devices[device].metrics.iter().map(|m| m.name).zip(values))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scenario_has_eight_failures_after_healthy_history_and_is_reproducible() {
        let a = Fleet::scenario(30, 24, 0, 1);
        assert_eq!(a.faults.len(), 8);
        assert_eq!(a.failing().len(), 8, "eight different devices fail");
        assert!(a.faults.iter().all(|f| f.start_ms >= 3 * HOUR && f.fail_ms > f.start_ms && f.fail_ms <= a.end_ms));
        let mut b = Fleet::scenario(30, 24, 0, 1);
        let mut a = a;
        assert_eq!(a.values(3, 0), b.values(3, 0));
        let other = Fleet::scenario(30, 24, 0, 2);
        assert_ne!(other.failing(), a.failing(), "another seed fails other devices");
    }

    #[test]
    fn a_cycling_machine_starts_and_stops_through_its_shift_with_an_inrush_and_a_lagging_temperature() {
        let mut f = Fleet::week(Family::Cycling, 30, 3, 2.0, 0, 7);
        let comp = (0..30)
            .find(|&d| f.devices[d].equipment == Equipment::Compressor && !f.failing().contains(&d))
            .unwrap_or(1);
        let names: Vec<&str> = f.devices[comp].metrics.iter().map(|m| m.name).collect();
        let current = names.iter().position(|n| *n == "current").unwrap_or(3);
        let temp = names.iter().position(|n| *n == "discharge_temp").unwrap_or(0);
        let (mut starts, mut stops, mut inrush) = (0, 0, 0);
        let mut was_on = None;
        let mut temps_after_start = Vec::new();
        let mut rises = Vec::new();
        let mut ts = 0;
        while ts < 2 * DAY {
            let v = f.values(comp, ts);
            let w = f.week.as_ref().unwrap();
            let on = w.cycling[comp].on;
            if was_on == Some(false) && on {
                starts += 1;
                if v[current]
                    > 1.3 * (f.devices[comp].metrics[current].level + f.devices[comp].metrics[current].load_gain)
                {
                    inrush += 1;
                }
                temps_after_start.clear();
            }
            if was_on == Some(true) && !on {
                stops += 1;
            }
            if on && temps_after_start.len() < 30 {
                temps_after_start.push(v[temp]);
                if temps_after_start.len() == 30 {
                    rises.push(temps_after_start[29] - temps_after_start[1]);
                }
            }
            was_on = Some(on);
            ts += PERIOD_MS;
        }
        assert!(starts >= 10 && stops >= 10, "{starts} starts, {stops} stops in two days");
        assert!(inrush * 2 >= starts, "a start draws an inrush: {inrush} of {starts}");
        // Between ten seconds and five minutes after a start the discharge temperature climbs.
        rises.sort_by(f64::total_cmp);
        assert!(!rises.is_empty() && rises[rises.len() / 2] > 1.0, "rises after starts: {rises:?}");
    }

    #[test]
    fn bearing_wear_climbs_to_its_rise_by_the_failure() {
        let mut f = Fleet::scenario(30, 24, 0, 3);
        let wear = *f.faults.iter().find(|x| matches!(x.kind, FaultKind::BearingWear { .. })).expect("wear");
        let FaultKind::BearingWear { rise } = wear.kind else { unreachable!() };
        let vib = f.devices[wear.device].metrics.iter().position(|m| m.name == "vibration").unwrap_or(2);
        let mut ts = wear.start_ms - HOUR;
        let mut before = 0.0;
        while ts < wear.fail_ms {
            let v = f.values(wear.device, ts)[vib];
            if ts < wear.start_ms {
                before = v;
            }
            ts += PERIOD_MS;
        }
        let at_failure = f.values(wear.device, wear.fail_ms)[vib];
        assert!(at_failure - before > rise * 0.6, "{before} -> {at_failure} (rise {rise})");
    }
}
