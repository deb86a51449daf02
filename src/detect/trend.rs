//! Trend: for a slow drift, when will the metric cross its configured limit at this rate?

use super::Limit;

/// A forecast of a limit crossing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Forecast {
    /// Event time (ms) at which the fitted line crosses the limit.
    pub at: i64,
    /// The limit it crosses.
    pub limit: f64,
    /// Rate of change, per hour.
    pub per_hour: f64,
    /// Whether the limit is one somebody configured (`[[detect.limits]]`), not one derived from
    /// the healthy range: a ticket calls only a configured one "its limit".
    pub configured: bool,
}

/// Crossings further out than this are not forecast: the fit says nothing that far ahead.
const HORIZON_MS: i64 = 30 * 24 * 3600 * 1000;

/// Least-squares line through `points` (time ms, value), extrapolated to the limit the values
/// move towards. `None` without at least 5 points, a clear slope, or a crossing ahead.
pub fn time_to_limit(points: &[(i64, f64)], limit: Limit) -> Option<Forecast> {
    if points.len() < 5 {
        return None;
    }
    let n = points.len() as f64;
    let t0 = points[0].0;
    let (mut st, mut sv, mut stt, mut stv) = (0.0, 0.0, 0.0, 0.0);
    for &(t, v) in points {
        let t = (t - t0) as f64;
        st += t;
        sv += v;
        stt += t * t;
        stv += t * v;
    }
    let denom = n * stt - st * st;
    if denom <= 0.0 {
        return None;
    }
    let slope = (n * stv - st * sv) / denom; // per ms
    let intercept = (sv - slope * st) / n;
    let (last_t, _) = *points.last()?;
    let now_fit = intercept + slope * (last_t - t0) as f64;
    let target = match (limit.max, limit.min) {
        (Some(max), _) if slope > 0.0 && now_fit < max => max,
        (_, Some(min)) if slope < 0.0 && now_fit > min => min,
        _ => return None,
    };
    let eta = ((target - now_fit) / slope).round() as i64;
    (eta > 0 && eta <= HORIZON_MS).then(|| Forecast {
        at: last_t + eta,
        limit: target,
        per_hour: slope * 3_600_000.0,
        configured: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_steady_rise_crosses_the_max_when_the_line_says() {
        // 0.5 units per minute from 10, limit 20: 20 minutes after the start.
        let pts: Vec<_> = (0..10).map(|m| (m * 60_000, 10.0 + 0.5 * m as f64)).collect();
        let f = time_to_limit(&pts, Limit { min: None, max: Some(20.0) }).unwrap();
        assert_eq!(f.at, 20 * 60_000);
        assert!((f.per_hour - 30.0).abs() < 1e-9);
    }

    #[test]
    fn no_forecast_away_from_the_limit_or_when_flat() {
        let falling: Vec<_> = (0..10).map(|m| (m * 60_000, 10.0 - m as f64)).collect();
        assert!(time_to_limit(&falling, Limit { min: None, max: Some(20.0) }).is_none());
        let flat: Vec<_> = (0..10).map(|m| (m * 60_000, 10.0)).collect();
        assert!(time_to_limit(&flat, Limit { min: Some(0.0), max: Some(20.0) }).is_none());
        assert!(time_to_limit(&falling, Limit { min: Some(0.0), max: None }).is_some());
    }
}
