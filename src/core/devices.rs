//! What the core keeps about each device it tracks: its site and series, when it was heard
//! from, how often it reports, and when each of its series last saw an anomaly. The core bounds
//! it (`decode.max_devices`, `decode.max_series`) and forgets a device after
//! `decode.forget_after`.

use std::collections::{BTreeSet, HashMap};

use crate::FastMap;

/// The bookkeeping of every tracked device.
#[derive(Debug, Default)]
pub(super) struct Devices {
    /// Per device: the metrics it reports (its series), for the limits, the models and the
    /// checks in a ticket.
    metrics: FastMap<String, BTreeSet<String>>,
    /// Series (device × metric) tracked now: the sum over `metrics`, kept for the limit.
    series: usize,
    /// Per device: its site, for the site check and sensor-health incidents.
    site: FastMap<String, Option<String>>,
    /// Event time of each series' last anomalous reading (do other metrics move with it?).
    last_anomaly: FastMap<(String, String), i64>,
    /// Wall-clock receive time of each device's last message (for sensor health).
    last_heard: FastMap<String, i64>,
    /// Wall-clock receive time of each device's first message since it was last forgotten.
    first_heard: FastMap<String, i64>,
    /// Per device: event time of its last message and its usual interval (ms).
    cadence: FastMap<String, (i64, f64)>,
    /// Devices in the order they were first heard, while they may have sent one message only:
    /// the first to go when the table is full (see [`Devices::evictable`]).
    newcomers: std::collections::VecDeque<String>,
}

impl Devices {
    /// What survives a restart: the series with stored detector state and the devices with
    /// their first-heard time. Each is taken as heard from at `now`, so one that never comes
    /// back is reported silent, then forgotten.
    pub fn restore(
        series: impl IntoIterator<Item = (String, String)>,
        first_heard: HashMap<String, i64>,
        now: i64,
    ) -> Devices {
        let mut metrics: FastMap<String, BTreeSet<String>> = FastMap::default();
        for (device, metric) in series {
            metrics.entry(device).or_default().insert(metric);
        }
        let last_heard = metrics.keys().chain(first_heard.keys()).map(|d| (d.clone(), now)).collect();
        let series = metrics.values().map(BTreeSet::len).sum();
        let first_heard = first_heard.into_iter().collect();
        // Until they report twice, restored devices may go first when the table is full.
        let newcomers = metrics.keys().cloned().collect();
        Devices { metrics, series, last_heard, first_heard, newcomers, ..Devices::default() }
    }

    /// Devices tracked now.
    pub fn len(&self) -> usize {
        self.metrics.len()
    }

    /// Series tracked now.
    pub fn series(&self) -> usize {
        self.series
    }

    /// The metrics a device reports; `None` for a device not tracked.
    pub fn metrics(&self, device: &str) -> Option<&BTreeSet<String>> {
        self.metrics.get(device)
    }

    /// Whether the device has reported this metric.
    pub fn reports(&self, device: &str, metric: &str) -> bool {
        self.metrics.get(device).is_some_and(|m| m.contains(metric))
    }

    /// The site of a device heard from since the start.
    pub fn site(&self, device: &str) -> Option<&str> {
        self.site.get(device).and_then(Option::as_deref)
    }

    /// The other devices heard from at `site`.
    pub fn at_site<'a>(&'a self, site: &'a str, except: &'a str) -> impl Iterator<Item = &'a String> + 'a {
        self.site.iter().filter(move |(d, s)| s.as_deref() == Some(site) && *d != except).map(|(d, _)| d)
    }

    /// Event time of the series' last anomalous reading.
    pub fn last_anomaly(&self, device: &str, metric: &str) -> Option<i64> {
        self.last_anomaly.get(&(device.to_string(), metric.to_string())).copied()
    }

    /// Notes the new stored readings of one message of `device`, as (metric, event time,
    /// anomalous); `site` gives the device's site the first time it is seen. One lookup of the
    /// device for the message; a known device and metric allocate nothing unless the reading is
    /// anomalous (the key of its last anomaly).
    pub fn note_readings<'a>(
        &mut self,
        device: &str,
        readings: impl IntoIterator<Item = (&'a str, i64, bool)>,
        site: impl FnOnce() -> Option<String>,
    ) {
        let mut readings = readings.into_iter().peekable();
        if readings.peek().is_none() {
            return;
        }
        if !self.site.contains_key(device) {
            self.site.insert(device.to_string(), site());
        }
        let known = self.metrics.entry_ref(device).or_default();
        for (metric, ts, anomalous) in readings {
            if anomalous {
                self.last_anomaly.insert((device.to_string(), metric.to_string()), ts);
            }
            if !known.contains(metric) {
                known.insert(metric.to_string());
                self.series += 1;
            }
        }
    }

    /// Notes that a device was heard from at wall-clock time `received`; true the first time
    /// since it was last forgotten.
    pub fn heard(&mut self, device: &str, received: i64) -> bool {
        // Runs for every message: a known device's time is updated in place, not re-keyed.
        match self.last_heard.get_mut(device) {
            Some(t) => *t = received,
            None => {
                self.last_heard.insert(device.to_string(), received);
            }
        }
        if self.first_heard.contains_key(device) {
            return false;
        }
        self.first_heard.insert(device.to_string(), received);
        self.newcomers.push_back(device.to_string());
        true
    }

    /// The device that has been tracked longest while it sent one message only, never came
    /// back (a stranger, a typo, a flood of junk ids), and is not `kept`; `None` when there is
    /// none. Devices restored at start count as heard once until they report twice.
    pub fn evictable(&mut self, kept: impl Fn(&str) -> bool) -> Option<String> {
        let once = |d: &Devices, id: &str| d.metrics.contains_key(id) && d.cadence.get(id).is_none_or(|c| c.1 == 0.0);
        while let Some(id) = self.newcomers.pop_front() {
            if once(self, &id) && !kept(&id) {
                return Some(id);
            }
        }
        None
    }

    /// Wall-clock receive time of each device's last message.
    pub fn last_heard(&self) -> impl Iterator<Item = (&String, i64)> {
        self.last_heard.iter().map(|(d, &t)| (d, t))
    }

    /// Wall-clock receive time of the device's first message since it was last forgotten.
    pub fn first_heard(&self, device: &str) -> Option<i64> {
        self.first_heard.get(device).copied()
    }

    /// Learns a device's reporting cadence from the event times of its messages (an EWMA of
    /// the interval between them).
    pub fn note_cadence(&mut self, device: &str, ts: i64) {
        match self.cadence.get_mut(device) {
            Some((last, interval)) => {
                let gap = (ts - *last) as f64;
                if gap > 0.0 {
                    *interval = if *interval > 0.0 { *interval + 0.1 * (gap - *interval) } else { gap };
                    *last = ts;
                }
            }
            None => {
                self.cadence.insert(device.to_string(), (ts, 0.0));
            }
        }
    }

    /// The device's usual interval between messages (ms; 0 until it is known).
    pub fn interval(&self, device: &str) -> f64 {
        self.cadence.get(device).map(|(_, i)| *i).unwrap_or(0.0)
    }

    /// Forgets a device; returns the metrics it reported.
    pub fn forget(&mut self, device: &str) -> BTreeSet<String> {
        self.last_heard.remove(device);
        self.first_heard.remove(device);
        self.cadence.remove(device);
        self.site.remove(device);
        let metrics = self.metrics.remove(device).unwrap_or_default();
        self.series = self.series.saturating_sub(metrics.len());
        for m in &metrics {
            self.last_anomaly.remove(&(device.to_string(), m.clone()));
        }
        metrics
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_are_counted_once_and_forgotten_with_their_device() {
        let mut d = Devices::restore([("a".to_string(), "temp".to_string())], HashMap::new(), 0);
        d.note_readings("a", [("temp", 1, false), ("current", 1, true)], || None);
        d.note_readings("b", [("temp", 1, false)], || Some("north".into()));
        d.note_readings("b", [("temp", 2, false)], || Some("south".into()));
        assert_eq!((d.len(), d.series()), (2, 3));
        assert_eq!(d.last_anomaly("a", "current"), Some(1));
        assert_eq!(d.at_site("north", "a").collect::<Vec<_>>(), ["b"]);
        assert_eq!(d.forget("a").len(), 2);
        assert_eq!((d.len(), d.series(), d.last_anomaly("a", "current")), (1, 1, None));
    }

    #[test]
    fn the_device_that_sent_one_message_longest_ago_goes_first_and_a_returning_one_stays() {
        let mut d = Devices::default();
        for (i, id) in ["junk-1", "real", "junk-2", "registered"].iter().enumerate() {
            d.heard(id, i as i64);
            d.note_cadence(id, i as i64 * 10_000);
            d.note_readings(id, [("m", i as i64 * 10_000, false)], || None);
        }
        d.note_cadence("real", 100_000); // it came back
        let kept = |id: &str| id == "registered";
        assert_eq!(d.evictable(kept).as_deref(), Some("junk-1"));
        d.forget("junk-1");
        assert_eq!(d.evictable(kept).as_deref(), Some("junk-2"), "the returning device stays");
        d.forget("junk-2");
        assert_eq!(d.evictable(kept), None, "the registered one is kept");
    }

    #[test]
    fn cadence_is_the_smoothed_interval_between_messages() {
        let mut d = Devices::default();
        d.note_cadence("a", 0);
        assert_eq!(d.interval("a"), 0.0);
        d.note_cadence("a", 10_000);
        d.note_cadence("a", 20_000);
        assert_eq!(d.interval("a"), 10_000.0);
        d.note_cadence("a", 15_000); // out of order: ignored
        assert_eq!(d.interval("a"), 10_000.0);
    }
}
