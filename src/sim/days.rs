//! Real days for the fleet: what healthy equipment does over a week that a detector must not
//! mistake for a fault.
//!
//! - A day-shift load profile: a ramp-up of one to three hours in the morning, a day load with a
//!   small swing, a ramp-down in the evening, nights at low load or stopped; weekends idle or at
//!   low load on most devices. Each device's load also wanders on its own (a slow random walk),
//!   and its day load is set anew now and then (a set-point change).
//! - The weather: each site's ambient temperature swings ±4–7 °C over the day, and fronts move
//!   it ±4–10 °C over one to three days. What follows the ambient (a compressor's discharge
//!   temperature) does so with a thermal lag of its own.
//! - Communication gaps (minutes to hours, the device sends nothing) and sensor-noise bursts.
//!
//! Deterministic for a given random generator state.

use rand::rngs::StdRng;
use rand::Rng;

pub(crate) const HOUR: i64 = 3_600_000;
pub(crate) const DAY: i64 = 24 * HOUR;

/// A site's weather: a daily swing and fronts.
#[derive(Debug, Clone)]
pub struct Weather {
    /// Mean ambient (°C).
    pub mean: f64,
    /// Half the daily swing (°C); the warmest hour is mid-afternoon.
    pub swing: f64,
    /// Fronts: (start ms, duration ms, change °C at their height).
    pub fronts: Vec<(i64, i64, f64)>,
}

impl Weather {
    pub fn new(rng: &mut StdRng, start_ms: i64, end_ms: i64) -> Weather {
        let mut fronts = Vec::new();
        let mut at = start_ms + rng.gen_range(0..2 * DAY);
        while at < end_ms {
            let dur = rng.gen_range(DAY..3 * DAY);
            let sign = if rng.gen_bool(0.5) { 1.0 } else { -1.0 };
            fronts.push((at, dur, sign * rng.gen_range(4.0..10.0)));
            at += dur + rng.gen_range(0..2 * DAY);
        }
        Weather { mean: rng.gen_range(8.0..24.0), swing: rng.gen_range(4.0..7.0), fronts }
    }

    /// The ambient temperature at `ts` (°C).
    pub fn ambient(&self, ts: i64) -> f64 {
        let hour = hour_of_day(ts);
        let daily = self.swing * ((hour - 9.0) / 24.0 * std::f64::consts::TAU).sin();
        let fronts: f64 = self
            .fronts
            .iter()
            .filter(|&&(at, dur, _)| ts >= at && ts < at + dur)
            .map(|&(at, dur, amp)| amp * ((ts - at) as f64 / dur as f64 * std::f64::consts::PI).sin().powi(2))
            .sum();
        self.mean + daily + fronts
    }
}

/// A device's duty over the week: when it runs and how hard.
#[derive(Debug, Clone)]
pub struct Duty {
    /// Hour of day the morning ramp starts, and how long it takes (h).
    pub shift_from: f64,
    pub ramp_h: f64,
    /// Hour of day the evening ramp-down starts.
    pub shift_to: f64,
    /// Day load, and the changes of it: from each time on (ms), the day load.
    pub day_loads: Vec<(i64, f64)>,
    /// Load at night (0: stopped).
    pub night_load: f64,
    /// Whether the device runs its day shift on Saturdays and Sundays too.
    pub runs_weekends: bool,
    /// Depth of the small daily swing of the day load.
    pub swing: f64,
}

impl Duty {
    pub fn new(rng: &mut StdRng, start_ms: i64, end_ms: i64) -> Duty {
        let mut day_loads = vec![(start_ms, rng.gen_range(0.55..0.9))];
        let mut at = start_ms + rng.gen_range(DAY..3 * DAY);
        while at < end_ms {
            day_loads.push((at, rng.gen_range(0.5..0.95)));
            at += rng.gen_range(2 * DAY..5 * DAY);
        }
        Duty {
            shift_from: rng.gen_range(4.5..8.0),
            ramp_h: rng.gen_range(1.0..3.0),
            shift_to: rng.gen_range(16.0..22.0),
            day_loads,
            night_load: if rng.gen_bool(0.3) { 0.0 } else { rng.gen_range(0.1..0.35) },
            runs_weekends: rng.gen_bool(0.3),
            swing: rng.gen_range(0.02..0.06),
        }
    }

    /// The load the device is driven to at `ts` (before its own wander and lag).
    pub fn target(&self, ts: i64) -> f64 {
        let day_load = self.day_loads.iter().rev().find(|p| p.0 <= ts).map_or(0.7, |p| p.1);
        // 1 January 2026 was a Thursday: day 0 of the epoch was a Thursday too.
        let weekday = (ts.div_euclid(DAY) + 3).rem_euclid(7); // 0 = Monday
        if weekday >= 5 && !self.runs_weekends {
            return self.night_load;
        }
        let h = hour_of_day(ts);
        let up = ((h - self.shift_from) / self.ramp_h).clamp(0.0, 1.0);
        let down = ((h - self.shift_to) / self.ramp_h).clamp(0.0, 1.0);
        let on = smooth(up) * (1.0 - smooth(down));
        let swing = self.swing * ((h - 12.0) / 24.0 * std::f64::consts::TAU).cos();
        self.night_load + on * (day_load + swing - self.night_load)
    }
}

/// When a device sends nothing (communication gaps) and when its sensors are noisy.
#[derive(Debug, Clone, Default)]
pub struct Disturbances {
    /// (from, to) ms: nothing is sent.
    pub gaps: Vec<(i64, i64)>,
    /// (from, to) ms: the sensors' noise is four times as large.
    pub noisy: Vec<(i64, i64)>,
}

impl Disturbances {
    pub fn new(rng: &mut StdRng, start_ms: i64, end_ms: i64) -> Disturbances {
        let days = ((end_ms - start_ms) / DAY).max(1);
        let mut d = Disturbances::default();
        for _ in 0..rng.gen_range(0..=days / 2) {
            let at = rng.gen_range(start_ms..end_ms);
            // Minutes to hours: most gaps are short.
            let minutes = if rng.gen_bool(0.8) { rng.gen_range(2.0..30.0) } else { rng.gen_range(30.0..240.0) };
            d.gaps.push((at, at + (minutes * 60_000.0) as i64));
        }
        for _ in 0..rng.gen_range(0..=days) {
            let at = rng.gen_range(start_ms..end_ms);
            d.noisy.push((at, at + rng.gen_range(2..20) * 60_000));
        }
        d
    }

    pub fn silent(&self, ts: i64) -> bool {
        self.gaps.iter().any(|&(a, b)| ts >= a && ts < b)
    }

    pub fn noise_factor(&self, ts: i64) -> f64 {
        if self.noisy.iter().any(|&(a, b)| ts >= a && ts < b) {
            4.0
        } else {
            1.0
        }
    }
}

/// Hours since midnight (UTC) at `ts`.
pub fn hour_of_day(ts: i64) -> f64 {
    ts.rem_euclid(DAY) as f64 / HOUR as f64
}

/// A smooth step from 0 to 1 over 0..1.
fn smooth(x: f64) -> f64 {
    x * x * (3.0 - 2.0 * x)
}

/// A first-order lag: `state` moves towards `target` with time constant `tau_ms` over `dt_ms`.
pub fn lag(state: &mut Option<f64>, target: f64, dt_ms: i64, tau_ms: f64) -> f64 {
    let v = match *state {
        Some(s) => s + (target - s) * (1.0 - (-(dt_ms as f64) / tau_ms).exp()),
        None => target,
    };
    *state = Some(v);
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn a_day_shift_runs_by_day_and_rests_at_night_and_on_weekends() {
        let mut rng = StdRng::seed_from_u64(4);
        let mut duty = Duty::new(&mut rng, 0, 7 * DAY);
        duty.runs_weekends = false;
        duty.shift_from = 6.0;
        duty.shift_to = 18.0;
        duty.ramp_h = 2.0;
        // Day 0 (a Thursday): night, then the day shift at noon.
        assert_eq!(duty.target(2 * HOUR), duty.night_load);
        assert!(duty.target(12 * HOUR) > duty.night_load + 0.3);
        // Day 2 is a Saturday.
        assert_eq!(duty.target(2 * DAY + 12 * HOUR), duty.night_load);
    }

    #[test]
    fn the_ambient_swings_daily_and_fronts_move_it_for_days() {
        let mut rng = StdRng::seed_from_u64(5);
        let w = Weather::new(&mut rng, 0, 7 * DAY);
        let temps: Vec<f64> = (0..7 * 24).map(|h| w.ambient(h * HOUR)).collect();
        let (lo, hi) = temps.iter().fold((f64::MAX, f64::MIN), |(l, h), &t| (l.min(t), h.max(t)));
        assert!(hi - lo > 2.0 * w.swing, "{lo}..{hi}");
        assert!(!w.fronts.is_empty());
    }
}
