//! Configured limits: the hard minimum and maximum an operator knows for a metric.

use super::config::LimitConfig;
use super::{Anomaly, FaultKind, SeriesDetector};

/// The min/max of one series.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limit {
    pub min: Option<f64>,
    pub max: Option<f64>,
}

impl SeriesDetector for Limit {
    fn observe(&mut self, ts: i64, value: f64) -> Option<Anomaly> {
        let (kind, bound) = match (self.min, self.max) {
            (_, Some(max)) if value > max => (FaultKind::AboveLimit, max),
            (Some(min), _) if value < min => (FaultKind::BelowLimit, min),
            _ => return None,
        };
        Some(Anomaly::new(kind, "limit", ts, value, 1.0).with_bound(bound))
    }
}

/// All configured limits; a device-specific limit wins over a metric-wide one.
#[derive(Debug, Clone, Default)]
pub struct LimitTable {
    entries: Vec<LimitConfig>,
}

impl LimitTable {
    pub fn new(entries: &[LimitConfig]) -> LimitTable {
        LimitTable { entries: entries.to_vec() }
    }

    /// The limit that applies to a series, if any.
    pub fn lookup(&self, device: &str, metric: &str) -> Option<Limit> {
        let matching = |dev_specific: bool| {
            self.entries.iter().find(|l| {
                l.metric == metric
                    && (l.device.as_deref() == Some(device)) == dev_specific
                    && (dev_specific || l.device.is_none())
            })
        };
        matching(true).or_else(|| matching(false)).map(|l| Limit { min: l.min, max: l.max })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_limit_wins_and_crossings_are_reported() {
        let table = LimitTable::new(&[
            LimitConfig { metric: "t".into(), device: None, min: Some(0.0), max: Some(100.0) },
            LimitConfig { metric: "t".into(), device: Some("d2".into()), min: None, max: Some(50.0) },
        ]);
        let mut d1 = table.lookup("d1", "t").unwrap();
        let mut d2 = table.lookup("d2", "t").unwrap();
        assert!(table.lookup("d1", "other").is_none());
        assert!(d1.observe(0, 60.0).is_none());
        assert_eq!(d2.observe(0, 60.0).unwrap().kind, FaultKind::AboveLimit);
        assert_eq!(d1.observe(0, -1.0).unwrap().kind, FaultKind::BelowLimit);
    }
}
