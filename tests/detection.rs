//! Detection through the real core with the shipped configuration and a sled store on disk:
//! slow degradation, changes of operating point, restarts mid-fault, untrusted models, and
//! replay that never looks ahead.

use std::path::Path;
use std::sync::Arc;

use fieldwatch::core::{metric_labels, BatchOutcome, Core};
use fieldwatch::detect::FaultKind;
use fieldwatch::incident::{Incident, SiteNotice, Transition};
use fieldwatch::metrics::Metrics;
use fieldwatch::reading::Reading;
use fieldwatch::store::Store;
use fieldwatch::Config;
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};

const T0: i64 = 1_767_225_600_000;
const STEP: i64 = 10_000;
const HOUR: i64 = 3_600_000;
/// A day of healthy history and an hour: the shipped commissioning (`detect.context`) is over.
const COMMISSIONED: i64 = 25 * HOUR;

fn shipped() -> Config {
    Config::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("config/fieldwatch.toml")).unwrap()
}

fn open(dir: &Path) -> Arc<Store> {
    Arc::new(Store::open(dir, 64, 100).unwrap())
}

/// A compressor whose four metrics follow its load, with noise: `load(ts)` and `extra(ts)`
/// (added to each metric) shape the scenario.
struct Compressor {
    rng: StdRng,
    noise: Normal<f64>,
    device: String,
    site: Option<String>,
}

const METRICS: [(&str, f64, f64, f64); 4] = [
    // name, level at zero load, change per unit of load, noise
    ("discharge_temp", 24.0, 14.0, 0.5),
    ("suction_pressure", 4.6, -0.6, 0.04),
    ("vibration", 1.8, 1.6, 0.12),
    ("current", 6.0, 12.0, 0.2),
];

impl Compressor {
    fn new(seed: u64) -> Compressor {
        Compressor::at(seed, "comp-1", None)
    }

    /// A compressor named `device` at `site`.
    fn at(seed: u64, device: &str, site: Option<&str>) -> Compressor {
        Compressor {
            rng: StdRng::seed_from_u64(seed),
            noise: Normal::new(0.0, 1.0).unwrap(),
            device: device.into(),
            site: site.map(str::to_string),
        }
    }

    fn readings(&mut self, ts: i64, load: f64, extra: [f64; 4]) -> Vec<Reading> {
        let cycle = 0.05 * ((ts as f64 / 600_000.0) * std::f64::consts::TAU).sin();
        METRICS
            .iter()
            .zip(extra)
            .map(|(&(name, level, gain, noise), extra)| Reading {
                device: self.device.clone(),
                site: self.site.clone(),
                metric: name.into(),
                ts,
                value: level + gain * (load + cycle) + extra + noise * self.noise.sample(&mut self.rng),
            })
            .collect()
    }
}

/// Feeds `[from, to)` through the core (one message per step), fitting models when the core
/// asks, and returns the transitions.
fn feed(
    core: &mut Core,
    sim: &mut Compressor,
    from: i64,
    to: i64,
    shape: impl Fn(i64) -> (f64, [f64; 4]),
) -> Vec<Transition> {
    feed_fitting(core, sim, from, to, shape, true)
}

fn feed_fitting(
    core: &mut Core,
    sim: &mut Compressor,
    from: i64,
    to: i64,
    shape: impl Fn(i64) -> (f64, [f64; 4]),
    fit: bool,
) -> Vec<Transition> {
    let mut out = Vec::new();
    let mut ts = from;
    while ts < to {
        let (load, extra) = shape(ts);
        let mut o = BatchOutcome::default();
        core.process_readings(&sim.readings(ts, load, extra), ts, &mut o).unwrap();
        out.extend(o.transitions);
        if fit {
            core.fit_pending(ts);
        }
        ts += STEP;
    }
    out
}

fn opened(ts: &[Transition]) -> Vec<&Incident> {
    ts.iter()
        .filter_map(|t| match t {
            Transition::Opened(i) => Some(i),
            _ => None,
        })
        .collect()
}

/// Vibration climbs 10 mm/s over 3 h from `start`.
fn wear(start: i64) -> impl Fn(i64) -> (f64, [f64; 4]) {
    move |ts| {
        let p = ((ts - start) as f64 / (3 * HOUR) as f64).clamp(0.0, 1.0);
        (0.6, [0.0, 0.0, 10.0 * p * p, 0.0])
    }
}

#[test]
fn a_slow_climb_is_ticketed_early_with_a_forecast_of_when_it_fails() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut core = Core::new(shipped().core(), store.clone(), Arc::new(Metrics::new(&metric_labels()))).unwrap();
    let mut sim = Compressor::new(1);
    let start = T0 + COMMISSIONED;
    let healthy = feed(&mut core, &mut sim, T0, start, wear(start));
    assert!(opened(&healthy).is_empty(), "healthy history opened: {:?}", opened(&healthy));
    assert_eq!(core.models_installed(), 1, "the model was fitted as soon as the history allowed");
    let t = feed(&mut core, &mut sim, start, start + 3 * HOUR, wear(start));
    let first = *opened(&t).first().expect("the climb opened an incident");
    assert_eq!(first.device, "comp-1");
    assert!(first.opened_at < start + HOUR, "ticketed {} min into a 3 h climb", (first.opened_at - start) / 60_000);
    // The ticket says when the climb reaches the edge of what this machine does when healthy.
    let entry = store.outbox_first("local-log").unwrap().expect("a ticket command in the outbox");
    let cmd: serde_json::Value = serde_json::from_slice(&entry.body).unwrap();
    let ticket = &cmd["command"]["ticket"];
    let ticket = if ticket.is_null() { &cmd["ticket"] } else { ticket };
    assert!(ticket["predicted_failure_at"].is_string(), "no forecast in {cmd}");
}

#[test]
fn a_change_of_operating_point_opens_no_incident_and_is_relearnt() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Arc::new(Metrics::new(&metric_labels()));
    let mut core = Core::new(shipped().core(), open(dir.path()), metrics.clone()).unwrap();
    let mut sim = Compressor::new(2);
    // 0.5 load while commissioning and 3 h more, then 0.85 (every metric moves with it), then
    // back to 0.6.
    let load = |ts: i64| {
        let l = if ts < T0 + COMMISSIONED + 3 * HOUR {
            0.5
        } else if ts < T0 + COMMISSIONED + 7 * HOUR {
            0.85
        } else {
            0.6
        };
        (l, [0.0; 4])
    };
    let t = feed(&mut core, &mut sim, T0, T0 + COMMISSIONED + 10 * HOUR, load);
    assert!(opened(&t).is_empty(), "operating point changes opened: {:?}", opened(&t));
    assert!(metrics.operating_point_changes.get() >= 1, "the new operating point was recognised");
}

#[test]
fn a_restart_mid_fault_keeps_the_incident_open() {
    let dir = tempfile::tempdir().unwrap();
    let mut sim = Compressor::new(3);
    let start = T0 + COMMISSIONED;
    let restart_at = start + 2 * HOUR;
    let first = {
        let store = open(dir.path());
        let mut core = Core::new(shipped().core(), store.clone(), Arc::new(Metrics::new(&metric_labels()))).unwrap();
        let t = feed(&mut core, &mut sim, T0, restart_at, wear(start));
        // What the daemon's periodic tick writes; then the process dies without a goodbye.
        core.tick(restart_at, None).unwrap();
        store.flush_blocking().unwrap();
        opened(&t).iter().map(|i| i.key.clone()).collect::<Vec<_>>()
    };
    assert!(!first.is_empty(), "the fault opened an incident before the restart");
    let store = open(dir.path());
    let mut core = Core::new(shipped().core(), store, Arc::new(Metrics::new(&metric_labels()))).unwrap();
    let open_keys: Vec<String> = core.open_incidents().iter().map(|i| i.key.clone()).collect();
    let after = feed(&mut core, &mut sim, restart_at, restart_at + HOUR, wear(start));
    let resolved: Vec<&str> = after
        .iter()
        .filter_map(|t| match t {
            Transition::Resolved(i) if open_keys.contains(&i.key) => Some(i.key.as_str()),
            _ => None,
        })
        .collect();
    assert!(resolved.is_empty(), "the fault is still there, yet {resolved:?} resolved after the restart");
    let reopened: Vec<_> = opened(&after).iter().filter(|i| first.contains(&i.key)).map(|i| i.key.clone()).collect();
    assert!(reopened.is_empty(), "the same fault opened again after the restart: {reopened:?}");
}

#[test]
fn a_model_that_cries_wolf_on_held_out_data_raises_no_incident() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = shipped();
    // Only the model speaks here.
    config.detect.baseline = false;
    config.detect.drift.enabled = false;
    let mut sim = Compressor::new(4);
    // Current rises against the load: a broken relation, every metric inside its range. The
    // context reference is off: only the model speaks.
    config.detect.context.enabled = false;
    let start = T0 + 2 * HOUR;
    let relation = move |ts: i64| {
        let broken = if ts >= start { 1.5 } else { 0.0 };
        (0.6, [0.0, 0.0, 0.0, broken])
    };
    for trusted in [true, false] {
        let dir = dir.path().join(format!("{trusted}"));
        let store = open(&dir);
        {
            let mut core = Core::new(config.core(), store.clone(), Arc::new(Metrics::new(&metric_labels()))).unwrap();
            feed(&mut core, &mut sim, T0, start, relation);
        }
        let mut model: fieldwatch::model::DeviceModel = store.models().unwrap().remove(0);
        assert!(model.distrust(config.detect.models.max_held_out_alarm_rate).is_none(), "{:?}", model.validation);
        if !trusted {
            // As a model would look that alarmed on a quarter of its held-out healthy data.
            model.validation.held_out_alarms = model.validation.held_out / 4;
            model.validation.held_out_alarm_rate = 0.25;
            assert!(model.distrust(config.detect.models.max_held_out_alarm_rate).is_some());
            store.put_model(&model.device, model.kind.as_str(), &model).unwrap();
        }
        // A fresh core scores with the stored model (no refit during the fault).
        let mut core = Core::new(config.core(), store.clone(), Arc::new(Metrics::new(&metric_labels()))).unwrap();
        assert_eq!(core.models_installed(), 1);
        let t = feed_fitting(&mut core, &mut sim, start, start + HOUR, relation, false);
        let multivariate = opened(&t).iter().filter(|i| i.fault == FaultKind::Multivariate).count();
        if trusted {
            assert_eq!(multivariate, 1, "the trusted model flags the broken relation");
        } else {
            assert_eq!(multivariate, 0, "an untrusted model raised an incident");
        }
    }
}

#[test]
fn a_device_is_silent_against_its_own_reporting_cadence() {
    let dir = tempfile::tempdir().unwrap();
    let mut core = Core::new(shipped().core(), open(dir.path()), Arc::new(Metrics::new(&metric_labels()))).unwrap();
    let mut sim = Compressor::new(5);
    // One message every 10 min for 5 h (stale_after is 15 min).
    let every = 10 * 60_000;
    let mut ts = T0;
    while ts < T0 + 5 * HOUR {
        let mut o = BatchOutcome::default();
        core.process_readings(&sim.readings(ts, 0.6, [0.0; 4]), ts, &mut o).unwrap();
        let t = core.tick(ts + every - 1, Some(T0)).unwrap();
        assert!(t.is_empty(), "a device that reports every 10 min is not silent between reports: {t:?}");
        ts += every;
    }
    let last = ts - every;
    assert!(core.tick(last + 30 * 60_000, Some(T0)).unwrap().is_empty(), "three missed reports are not yet silence");
    let t = core.tick(last + 60 * 60_000, Some(T0)).unwrap();
    assert!(
        matches!(t.as_slice(), [Transition::Opened(i)] if i.fault == FaultKind::Silent),
        "six missed reports are: {t:?}"
    );
}

/// Six compressors at one site, commissioned; then the site's cooling water warms and every
/// discharge temperature runs 8 °C above what its load predicts, all within minutes; later the
/// same on one compressor alone. What opened, the metrics, the site's change and the lone
/// fault's start (event time).
fn site_change_then_one_alone(notice: SiteNotice) -> (Vec<Transition>, Arc<Metrics>, i64, i64) {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Arc::new(Metrics::new(&metric_labels()));
    let mut config = shipped();
    config.incident.site_wide.notice = notice;
    let mut core = Core::new(config.core(), open(dir.path()), metrics.clone()).unwrap();
    let mut sims: Vec<Compressor> =
        (0..6).map(|k| Compressor::at(10 + k, &format!("comp-{k}"), Some("north"))).collect();
    let step = 30_000;
    let site_change = T0 + COMMISSIONED + HOUR;
    let alone = site_change + 8 * HOUR;
    // Each compressor on its own load; the site's change reaches them a minute apart.
    let warm = |k: usize, ts: i64| {
        let site = if ts >= site_change + k as i64 * 60_000 && ts < alone - 3 * HOUR { 8.0 } else { 0.0 };
        let own = if k == 0 && ts >= alone { 8.0 } else { 0.0 };
        site + own
    };
    let mut transitions = Vec::new();
    let mut ts = T0;
    while ts < alone + 2 * HOUR {
        for (k, sim) in sims.iter_mut().enumerate() {
            let load = 0.55 + 0.1 * k as f64 / 6.0 + 0.15 * ((ts as f64 / 5.4e6) + k as f64).sin();
            let mut o = BatchOutcome::default();
            core.process_readings(&sim.readings(ts, load, [warm(k, ts), 0.0, 0.0, 0.0]), ts, &mut o).unwrap();
            transitions.extend(o.transitions);
        }
        ts += step;
    }
    (transitions, metrics, site_change, alone)
}

/// A site that moves together is one change of the site, not six faults; later the same on one
/// compressor alone is a fault.
#[test]
fn a_site_that_moves_together_opens_no_device_ticket_and_one_device_alone_does() {
    let (transitions, metrics, site_change, alone) = site_change_then_one_alone(SiteNotice::Log);
    let opened = opened(&transitions);
    let ticketed: Vec<&Incident> = opened.iter().copied().filter(|i| i.suppressed.is_none()).collect();
    let grouped: Vec<&Incident> =
        opened.iter().copied().filter(|i| i.suppressed.as_ref().is_some_and(|s| s.label() == "site_wide")).collect();
    let early: Vec<_> = ticketed
        .iter()
        .filter(|i| i.opened_at < alone)
        .map(|i| (&i.device, &i.metric, i.opened_at - site_change))
        .collect();
    assert!(early.is_empty(), "the site's change opened device tickets: {early:?}");
    assert!(grouped.len() >= 3, "the devices that moved together are recorded as one change: {grouped:?}");
    assert_eq!(metrics.site_wide_changes.get(), 1, "the site is noticed once");
    assert!(opened.iter().all(|i| i.site_notice.is_none()), "a notice in the log only, by default");
    assert!(
        ticketed.iter().any(|i| i.device == "comp-0" && i.opened_at >= alone),
        "one compressor alone is a fault: {:?}",
        opened.iter().map(|i| (&i.device, &i.metric, i.opened_at - alone, &i.suppressed)).collect::<Vec<_>>()
    );
}

/// With `incident.site_wide.notice = "ticket"` the site's change is one ticket, the site's
/// notice; the devices' own incidents open none, and the lone fault later opens its own.
#[test]
fn a_site_wide_change_can_be_one_ticket_for_the_site() {
    let (transitions, metrics, _, alone) = site_change_then_one_alone(SiteNotice::Ticket);
    let opened = opened(&transitions);
    let ticketed: Vec<&Incident> = opened.iter().copied().filter(|i| i.suppressed.is_none()).collect();
    let notices: Vec<&Incident> = ticketed.iter().copied().filter(|i| i.site_notice.is_some()).collect();
    assert_eq!(notices.len(), 1, "one notice for the change: {notices:?}");
    assert!(notices[0]
        .site_notice
        .as_deref()
        .is_some_and(|n| n.contains("devices at north began to deviate together")));
    assert_eq!(metrics.site_wide_changes.get(), 1);
    let devices: Vec<_> = ticketed
        .iter()
        .filter(|i| i.site_notice.is_none() && i.opened_at < alone)
        .map(|i| (&i.device, &i.metric))
        .collect();
    assert!(devices.is_empty(), "no device ticket besides the notice: {devices:?}");
    assert!(ticketed.iter().any(|i| i.device == "comp-0" && i.opened_at >= alone && i.site_notice.is_none()));
}

/// A stuck sensor freezes alone: when two of a machine's metrics repeat one value together
/// (its gateway repeating the last values, a machine standing still), no sensor is called stuck;
/// one metric frozen while the others go on is.
#[test]
fn sensors_that_freeze_together_are_not_stuck_and_one_alone_is() {
    let dir = tempfile::tempdir().unwrap();
    let mut core = Core::new(shipped().core(), open(dir.path()), Arc::new(Metrics::new(&metric_labels()))).unwrap();
    let mut sim = Compressor::new(7);
    let mut transitions = Vec::new();
    let mut frozen: Option<Vec<Reading>> = None;
    let together = T0 + 2 * HOUR;
    let alone = together + 2 * HOUR;
    let mut ts = T0;
    while ts < alone + HOUR {
        let mut readings = sim.readings(ts, 0.6, [0.0; 4]);
        if ts >= together && ts < together + HOUR {
            // The gateway repeats the last values it had of every metric.
            let last = frozen.get_or_insert_with(|| readings.clone());
            for (r, f) in readings.iter_mut().zip(last.iter()) {
                r.value = f.value;
            }
        } else if ts >= alone {
            // Only the vibration transmitter freezes.
            let last = frozen.get_or_insert_with(|| readings.clone());
            readings[2].value = last[2].value;
        } else {
            frozen = None;
        }
        let mut o = BatchOutcome::default();
        core.process_readings(&readings, ts, &mut o).unwrap();
        transitions.extend(o.transitions);
        ts += STEP;
    }
    let stuck: Vec<_> = opened(&transitions)
        .into_iter()
        .filter(|i| i.fault == FaultKind::Stuck)
        .map(|i| (i.metric.clone(), i.opened_at))
        .collect();
    assert!(stuck.iter().all(|(_, at)| *at >= alone), "frozen together is not stuck: {stuck:?}");
    assert!(
        stuck.iter().any(|(m, at)| m == "vibration" && *at < alone + 15 * 60_000),
        "one frozen alone is: {stuck:?}"
    );
}

#[test]
fn an_abrupt_break_of_several_metrics_opens_within_a_minute_at_one_hertz() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Arc::new(Metrics::new(&metric_labels()));
    let mut core = Core::new(shipped().core(), open(dir.path()), metrics.clone()).unwrap();
    let mut sim = Compressor::new(11);
    // A load that wanders through the day while commissioning, so the relations are learnt
    // over a range; then the machine runs steady at 0.6, reporting every second.
    let wander = |ts: i64| 0.6 + 0.2 * ((ts - T0) as f64 / (6 * HOUR) as f64 * std::f64::consts::TAU).sin();
    let t = feed(&mut core, &mut sim, T0, T0 + COMMISSIONED, |ts| (wander(ts), [0.0; 4]));
    assert!(opened(&t).is_empty(), "commissioning opened: {:?}", opened(&t));
    // At `brk` its current jumps 4 A (20 times its noise) and its vibration 2 mm/s at the same
    // load: a seizing bearing, not a new operating point.
    let brk = T0 + COMMISSIONED + HOUR;
    let mut transitions = Vec::new();
    let mut ts = T0 + COMMISSIONED;
    while ts < brk + 5 * 60_000 {
        let extra = if ts >= brk { [0.0, 0.0, 2.0, 4.0] } else { [0.0; 4] };
        let mut o = BatchOutcome::default();
        core.process_readings(&sim.readings(ts, 0.6, extra), ts, &mut o).unwrap();
        transitions.extend(o.transitions);
        core.fit_pending(ts);
        ts += 1_000;
    }
    let opened = opened(&transitions);
    assert!(opened.iter().all(|i| i.opened_at >= brk), "opened before the break: {opened:?}");
    let first = opened.iter().map(|i| i.opened_at).min().expect("the break opened nothing in 5 min");
    assert!(first - brk <= 60_000, "the break opened {} s after it began: {opened:?}", (first - brk) / 1000);
}
