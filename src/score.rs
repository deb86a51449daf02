//! The anomaly score every detector and device model reports: 0..1, with the alarm at 0.5, so
//! one incident policy serves all of them.

/// Maps a deviation measured in thresholds to a 0..1 score: 0.5 at the threshold, ~0.94 at twice it.
pub fn calibrate(excess_ratio: f64) -> f64 {
    1.0 - 0.5f64.powf(excess_ratio * excess_ratio)
}
