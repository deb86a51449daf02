//! Flatline: a sensor that repeats exactly the same value for too long is probably stuck.

use serde::{Deserialize, Serialize};

use super::{Anomaly, FaultKind, SeriesDetector};

/// Reports a stuck sensor after `min_readings` identical readings spanning at least `min_ms`.
///
/// A series that has never varied (a setpoint, a status code) is not reported: only a series
/// that moved before and then froze.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Flatline {
    min_readings: u32,
    min_ms: i64,
    last: Option<f64>,
    run_start: i64,
    run_len: u32,
    has_varied: bool,
}

impl Flatline {
    pub fn new(min_readings: u32, min_ms: i64) -> Flatline {
        Flatline { min_readings, min_ms, last: None, run_start: 0, run_len: 0, has_varied: false }
    }
}

impl SeriesDetector for Flatline {
    fn observe(&mut self, ts: i64, value: f64) -> Option<Anomaly> {
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
        let stuck_ms = ts - self.run_start;
        (self.has_varied && self.run_len >= self.min_readings && stuck_ms >= self.min_ms)
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
        let mut f = Flatline::new(5, 4000);
        for t in 0..10 {
            assert!(f.observe(t * 1000, t as f64).is_none());
        }
        let hits: Vec<_> = (10..20).filter_map(|t| f.observe(t * 1000, 9.5)).collect();
        assert!(!hits.is_empty());
        assert_eq!(hits[0].kind, FaultKind::Stuck);
        assert_eq!(hits[0].ts, 14_000);
    }
}
