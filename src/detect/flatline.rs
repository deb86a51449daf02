//! Flatline: a sensor that repeats exactly the same value for too long is probably stuck.

use serde::{Deserialize, Serialize};

use super::{Anomaly, FaultKind, SeriesDetector};

/// A run of identical readings this improbable, given the series' own repeat rate, is stuck.
const RUN_PROBABILITY: f64 = 1e-6;
/// Until the repeat rate has been learnt from this many readings, a run must also be this many
/// times `min_readings`: a sensor that reports in coarse steps is not called stuck on its
/// first long step.
const REPEAT_WARMUP: u32 = 360;
const WARMUP_FACTOR: u32 = 4;
/// A series whose readings repeat the one before this often while healthy (a coarse sensor at
/// a steady state, a report-by-exception deadband) cannot be told frozen from steady by its
/// own readings: the flatline leaves it to the context reference, which sees a frozen metric
/// stop following the rest of its device.
const MAX_REPEAT_RATE: f64 = 0.5;
/// The repeat rate is a plain mean over a series' first readings, then a moving one over about
/// this many.
const REPEAT_MEMORY: f64 = 2000.0;

/// Reports a stuck sensor after `min_readings` identical readings spanning at least `min_ms`.
///
/// A series that has never varied (a setpoint, a status code) is not reported: only a series
/// that moved before and then froze. Nor is a series that rests at the lowest value it has ever
/// shown: a stopped machine's current, flow or vibration reads exactly 0 (or its transmitter's
/// floor) for as long as it stands still, every night, and that is the machine at rest, not a
/// sensor stuck. A stuck sensor freezes where it was, mid-range.
///
/// How many identical readings make a stuck sensor is learnt per series: a sensor that reports
/// in coarse steps, or by exception with a deadband, repeats its value often while healthy.
/// Taking each reading as a repeat of the last with the series' own repeat rate `p`, a run of
/// `n` repeats has probability `p^n`; the series is stuck only after a run that improbable
/// ([`RUN_PROBABILITY`]), and never before `min_readings` and `min_ms`. A series that repeats
/// itself more often than not ([`MAX_REPEAT_RATE`]) is not judged by it at all.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Flatline {
    min_readings: u32,
    min_ms: i64,
    last: Option<f64>,
    run_start: i64,
    run_len: u32,
    has_varied: bool,
    /// The lowest value the series has shown (its rest level, for a machine that stops).
    #[serde(default)]
    floor: Option<f64>,
    /// How often a reading repeats the one before it while the series is healthy and running.
    #[serde(default)]
    repeat_rate: f64,
    #[serde(default)]
    repeats_seen: u32,
}

impl Flatline {
    pub fn new(min_readings: u32, min_ms: i64) -> Flatline {
        Flatline {
            min_readings,
            min_ms,
            last: None,
            run_start: 0,
            run_len: 0,
            has_varied: false,
            floor: None,
            repeat_rate: 0.0,
            repeats_seen: 0,
        }
    }
}

/// [`Flatline`] as stored before it learnt its rest level and repeat rate.
#[derive(Debug, Clone, Deserialize)]
pub struct FlatlineV1 {
    min_readings: u32,
    min_ms: i64,
    last: Option<f64>,
    run_start: i64,
    run_len: u32,
    has_varied: bool,
}

impl From<FlatlineV1> for Flatline {
    /// The run goes on; the rest level and the repeat rate are learnt from now on.
    fn from(old: FlatlineV1) -> Flatline {
        Flatline {
            last: old.last,
            run_start: old.run_start,
            run_len: old.run_len,
            has_varied: old.has_varied,
            ..Flatline::new(old.min_readings, old.min_ms)
        }
    }
}

impl Flatline {
    /// Identical readings in a row so far (the current value's).
    pub fn run(&self) -> u32 {
        self.run_len
    }

    /// Identical readings in a row that make this series stuck.
    fn readings_needed(&self) -> u32 {
        let p = self.repeat_rate;
        let learnt = if p > 0.0 && p < 1.0 { (RUN_PROBABILITY.ln() / p.ln()).ceil() } else { 0.0 };
        let learnt = if p >= MAX_REPEAT_RATE { f64::from(u32::MAX) } else { learnt };
        let warming =
            if self.repeats_seen < REPEAT_WARMUP { self.min_readings.saturating_mul(WARMUP_FACTOR) } else { 0 };
        self.min_readings.max(warming).max(learnt.min(f64::from(u32::MAX)) as u32)
    }
}

impl SeriesDetector for Flatline {
    fn observe(&mut self, ts: i64, value: f64) -> Option<Anomaly> {
        let at_rest = self.floor.is_none_or(|f| value <= f);
        // The repeat rate is learnt from runs that ended while healthy and running: not at
        // rest, not long enough to be stuck (a run that goes on teaches nothing yet, or a stuck
        // sensor would teach that it is normal).
        if let Some(last) = self.last.filter(|&l| l != value) {
            if self.floor.is_some_and(|f| last > f) && self.run_len < self.readings_needed() {
                for k in 0..self.run_len.min(REPEAT_MEMORY as u32) {
                    self.repeats_seen = self.repeats_seen.saturating_add(1);
                    let weight = (1.0 / f64::from(self.repeats_seen)).max(1.0 / REPEAT_MEMORY);
                    // The run's first reading changed from the one before; the others repeated.
                    let repeat = if k == 0 { 0.0 } else { 1.0 };
                    self.repeat_rate += (repeat - self.repeat_rate) * weight;
                }
            }
        }
        match self.last {
            Some(last) if last == value => self.run_len += 1,
            Some(_) => {
                self.has_varied = true;
                self.run_start = ts;
                self.run_len = 1;
            }
            None => {
                self.run_start = ts;
                self.run_len = 1;
            }
        }
        self.last = Some(value);
        self.floor = Some(self.floor.map_or(value, |f| f.min(value)));
        let stuck_ms = ts - self.run_start;
        (self.has_varied && !at_rest && self.run_len >= self.readings_needed() && stuck_ms >= self.min_ms)
            .then(|| Anomaly::new(FaultKind::Stuck, "flatline", ts, value, 1.0).with_bound(stuck_ms as f64 / 1000.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frozen_sensor_is_reported_constant_one_is_not() {
        let mut f = Flatline::new(5, 4000);
        for t in 0..20 {
            assert!(f.observe(t * 1000, 3.0).is_none(), "never-varying series is not stuck");
        }
        // A noisy sensor, then frozen mid-range: stuck after 5 readings and 4 s once its
        // repeat rate (none) is learnt, and after 4 × 5 readings before that.
        let noisy = |t: i64| 10.0 + ((t as f64) * 0.7).sin();
        let mut f = Flatline::new(5, 4000);
        for t in 0..400 {
            assert!(f.observe(t * 1000, noisy(t)).is_none());
        }
        let hits: Vec<_> = (400..420).filter_map(|t| f.observe(t * 1000, 9.5)).collect();
        assert!(!hits.is_empty());
        assert_eq!(hits[0].kind, FaultKind::Stuck);
        assert_eq!(hits[0].ts, 404_000);
        let mut f = Flatline::new(5, 4000);
        for t in 0..10 {
            assert!(f.observe(t * 1000, noisy(t)).is_none());
        }
        let first = (10..60).find_map(|t| f.observe(t * 1000, 9.5)).map(|a| a.ts);
        assert_eq!(first, Some(29_000), "a young series: 20 readings");
    }

    #[test]
    fn a_sensor_that_reports_in_coarse_steps_is_left_to_the_context() {
        // A steady temperature read in whole degrees: it sits on one step for minutes at a
        // time (runs of up to 40 readings), then moves a step. Frozen or steady, its readings
        // alone cannot tell.
        let mut f = Flatline::new(30, 300_000);
        let mut t = 0;
        for k in 0..300i64 {
            let run = 5 + (k * 7919) % 36;
            let value = 70.0 + (k % 3) as f64;
            for _ in 0..run {
                assert!(f.observe(t * 10_000, value).is_none(), "a healthy run of {run} at step {k}");
                t += 1;
            }
        }
        assert_eq!(f.readings_needed(), u32::MAX, "repeat rate {}", f.repeat_rate);
        assert!((0..2000).all(|i| f.observe((t + i) * 10_000, 71.0).is_none()));
    }

    #[test]
    fn a_sensor_that_sometimes_repeats_needs_a_longer_run() {
        // Every third reading repeats the one before: a run of 30 is not that unlikely.
        let mut f = Flatline::new(10, 100_000);
        let mut t = 0;
        for k in 0..600i64 {
            let value = 50.0 + (k % 7) as f64;
            for _ in 0..(1 + k % 2) {
                assert!(f.observe(t * 10_000, value).is_none());
                t += 1;
            }
        }
        let needed = f.readings_needed();
        assert!((11..40).contains(&needed), "learnt: {needed} readings, repeat rate {}", f.repeat_rate);
        let hit = (0..200).find_map(|i| f.observe((t + i) * 10_000, 53.0).map(|_| i));
        assert_eq!(hit, Some(i64::from(needed) - 1), "frozen mid-range: stuck after {needed} readings");
    }

    #[test]
    fn a_machine_at_rest_is_not_a_stuck_sensor() {
        // Current of a machine that runs (noisy, 8-12 A), stops (exactly 0 A for an hour),
        // runs again, then its sensor freezes mid-range.
        let mut f = Flatline::new(5, 4000);
        let running = |t: i64| 10.0 + 2.0 * ((t as f64) * 0.7).sin();
        for t in 0..100 {
            assert!(f.observe(t * 1000, running(t)).is_none());
        }
        for t in 100..3700 {
            assert!(f.observe(t * 1000, 0.0).is_none(), "a stopped machine reads 0 at {t}");
        }
        for t in 3700..3800 {
            assert!(f.observe(t * 1000, running(t)).is_none());
        }
        let frozen = running(3799);
        assert!((3800..3820).any(|t| f.observe(t * 1000, frozen).is_some()), "frozen mid-range is stuck");
    }
}
