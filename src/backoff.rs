//! Retry delays shared by the broker link and the ticket sinks.

use std::time::Duration;

use rand::Rng;

/// Exponential backoff with jitter and no attempt limit, never above `max`.
///
/// Each delay is drawn from the upper half of the exponential step (`d/2 ..= d`, never below
/// `min`), so many gateways that lost the same broker do not reconnect in lockstep, and the
/// configured bounds are real bounds (backon's own jitter adds up to a whole step on top of
/// the maximum).
pub fn backoff(min: Duration, max: Duration) -> impl Iterator<Item = Duration> {
    let max = max.max(min);
    let steps = backon::BackoffBuilder::build(
        backon::ExponentialBuilder::default().with_min_delay(min).with_max_delay(max).without_max_times(),
    );
    steps.map(move |d| {
        let d = d.clamp(min, max);
        let low = (d / 2).max(min);
        let spread = (d - low).as_nanos() as u64;
        let extra = if spread == 0 { 0 } else { rand::thread_rng().gen_range(0..=spread) };
        low + Duration::from_nanos(extra)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_never_exceed_the_maximum() {
        let min = Duration::from_millis(100);
        let max = Duration::from_secs(2);
        let delays: Vec<_> = backoff(min, max).take(200).collect();
        assert!(delays.iter().all(|d| *d <= max && *d >= min), "{delays:?}");
        // Late delays sit in the upper half of the maximum step, and are not all equal.
        let late = &delays[20..];
        assert!(late.iter().all(|d| *d >= max / 2));
        assert!(late.iter().any(|d| *d != late[0]), "no jitter: {late:?}");
    }
}
