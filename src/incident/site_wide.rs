//! Site-wide changes: when several devices at one site begin to deviate at once, what moved is
//! the site (a weather front, a plant-wide change of load or product, a shared supply), not
//! each device. Their incidents are recorded but open no per-device tickets, and the site gets
//! one notice per change: a warning in the log and a count in
//! `fieldwatch_site_wide_changes_total`. Alertmanager's grouping and inhibition are the model:
//! alerts that share a cause are grouped, and the group's notice stands in for its members.
//!
//! With `notice = "ticket"` the notice is also a ticket: the change's first incident is sent,
//! at the lowest priority, as the site's notice (what moved together, since when, what to
//! check), and resolves with it; the others stay recorded without tickets.
//!
//! A device's *episode* is its run of anomalies of the kinds a change of operating context
//! shows (deviation, drift, pattern, a device model's verdict), from its onset until it has been
//! quiet for `window`. An incident opening is part of a site-wide change when, counting its own
//! device, at least `min_devices` devices of its site, and at least `share` of the devices heard
//! at the site, have episodes whose onsets lie within `window` of its own. A device failing on
//! its own keeps its ticket: a fault starts on one machine, not on a quarter of a site in the
//! same quarter of an hour. A device whose fault began hours before the site moved keeps its
//! ticket too: its onset is not the site's.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::detect::FaultKind;
use crate::settings::{bad, Invalid};
use crate::FastMap;

/// `[incident.site_wide]`: when devices moving together at a site are one change, not many faults.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SiteWideConfig {
    pub enabled: bool,
    /// Devices (the incident's own included) whose anomalies began together, at least ...
    pub min_devices: usize,
    /// ... and at least this share of the devices heard at the site.
    pub share: f64,
    /// Onsets this close together are together; an episode ends after this long without anomaly.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// How a change is made known: `log` (a warning and a count) or `ticket` (also one
    /// low-priority ticket for the site, through the sinks).
    pub notice: SiteNotice,
}

/// How a site-wide change is made known.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SiteNotice {
    /// A warning in the log and `fieldwatch_site_wide_changes_total`.
    #[default]
    Log,
    /// The same, and the change's first incident is sent as one ticket for the site.
    Ticket,
}

impl Default for SiteWideConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            min_devices: 3,
            share: 0.25,
            window: Duration::from_secs(15 * 60),
            notice: SiteNotice::Log,
        }
    }
}

impl SiteWideConfig {
    /// Checks the values, naming the offending key.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.min_devices < 2 {
            return bad("incident.site_wide.min_devices", "must be at least 2 (one device is not a site)");
        }
        if !(self.share > 0.0 && self.share <= 1.0) {
            return bad("incident.site_wide.share", "must be above 0 and at most 1");
        }
        if self.window.is_zero() {
            return bad("incident.site_wide.window", "must be above zero");
        }
        Ok(())
    }
}

/// Whether anomalies of this kind are what a change of a site's operating context shows (and
/// not a stuck sensor, a configured limit or a silent device, which are about the device).
pub fn groupable(kind: FaultKind) -> bool {
    matches!(kind, FaultKind::Deviation | FaultKind::Drift | FaultKind::Pattern | FaultKind::Multivariate)
}

/// One device's current run of groupable anomalies (event time).
#[derive(Debug, Clone)]
struct Episode {
    site: String,
    onset: i64,
    last: i64,
    /// Anomalous readings in it: a blip of one or two is no device moving.
    anomalies: u32,
}

/// An episode counts towards a site-wide change once it has this many anomalous readings: a
/// healthy device's stray anomaly must not make a real fault next to it look site-wide.
const SUSTAINED: u32 = 3;

/// The episodes of every device, and when each site was last noticed.
#[derive(Debug, Default)]
pub struct SiteWide {
    config: SiteWideConfig,
    episodes: FastMap<String, Episode>,
    /// Per site: the onset of the change it was last noticed for.
    noticed: FastMap<String, i64>,
}

/// A site-wide change an incident is part of.
#[derive(Debug, Clone, PartialEq)]
pub struct Together {
    /// Devices whose anomalies began together (the incident's own included).
    pub devices: usize,
    /// Devices heard at the site.
    pub of: usize,
    /// Whether this is the change's first incident: its notice is due.
    pub first: bool,
}

impl SiteWide {
    pub fn new(config: &SiteWideConfig) -> SiteWide {
        SiteWide { config: config.clone(), ..SiteWide::default() }
    }

    /// How a change is made known.
    pub fn notice(&self) -> SiteNotice {
        self.config.notice
    }

    fn window_ms(&self) -> i64 {
        self.config.window.as_millis() as i64
    }

    /// Notes a groupable anomaly of `device` at `site` at event time `ts`.
    pub fn note(&mut self, device: &str, site: &str, ts: i64) {
        if !self.config.enabled {
            return;
        }
        let window = self.window_ms();
        match self.episodes.get_mut(device) {
            Some(e) if e.site == site && ts >= e.last && ts - e.last <= window => {
                e.last = ts;
                e.anomalies = e.anomalies.saturating_add(1);
            }
            Some(e) if e.site == site && ts < e.last => {}
            _ => {
                let e = Episode { site: site.to_string(), onset: ts, last: ts, anomalies: 1 };
                self.episodes.insert(device.to_string(), e);
            }
        }
    }

    /// Whether an incident of `device` at `site`, whose anomalies began at `onset`, is part of a
    /// site-wide change, given the `heard` devices at the site (it included). Records the
    /// change's notice the first time.
    pub fn together(&mut self, device: &str, site: &str, onset: i64, heard: usize) -> Option<Together> {
        if !self.config.enabled {
            return None;
        }
        let window = self.window_ms();
        let others = self
            .episodes
            .iter()
            .filter(|(d, e)| {
                d.as_str() != device && e.site == site && e.anomalies >= SUSTAINED && (e.onset - onset).abs() <= window
            })
            .count();
        let devices = others + 1;
        let heard = heard.max(devices);
        if devices < self.config.min_devices || (devices as f64) < self.config.share * heard as f64 {
            return None;
        }
        let first = self.noticed.get(site).is_none_or(|&at| (onset - at).abs() > window);
        if first {
            self.noticed.insert(site.to_string(), onset);
        }
        Some(Together { devices, of: heard, first })
    }

    /// Forgets a device (it was forgotten).
    pub fn forget(&mut self, device: &str) {
        self.episodes.remove(device);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    #[test]
    fn devices_that_begin_together_are_one_change_and_it_is_noticed_once() {
        let mut s = SiteWide::new(&SiteWideConfig::default());
        for (k, d) in ["a", "b", "c"].iter().enumerate() {
            for i in 0..3 {
                s.note(d, "north", k as i64 * MIN + i * 10_000);
            }
        }
        let first = s.together("a", "north", 0, 10).expect("3 of 10 began within 15 min");
        assert_eq!(first, Together { devices: 3, of: 10, first: true });
        assert!(!s.together("b", "north", MIN, 10).unwrap().first, "one notice per change");
        assert_eq!(s.together("a", "south", 0, 10), None, "another site's devices are not these");
        assert_eq!(s.together("a", "north", 0, 20), None, "3 of 20 is below a quarter of the site");
    }

    #[test]
    fn a_device_failing_alone_or_long_before_keeps_its_ticket() {
        let mut s = SiteWide::new(&SiteWideConfig::default());
        // "a" has been failing for two hours, anomalous all along.
        for t in (0..=120).step_by(1) {
            s.note("a", "north", t * MIN);
        }
        let sustained = |s: &mut SiteWide, d: &str, at: i64| (0..3).for_each(|i| s.note(d, "north", at + i * 10_000));
        sustained(&mut s, "b", 118 * MIN);
        sustained(&mut s, "c", 119 * MIN);
        assert_eq!(s.together("a", "north", 0, 10), None, "its onset is not the site's");
        assert!(s.together("b", "north", 118 * MIN, 10).is_none(), "b and c only: two devices");
        s.note("d", "north", 120 * MIN);
        assert!(s.together("b", "north", 118 * MIN, 10).is_none(), "d's one anomaly is a blip");
        sustained(&mut s, "d", 120 * MIN + 10_000);
        assert!(s.together("b", "north", 118 * MIN, 10).is_some(), "b, c and d began together");
    }

    #[test]
    fn an_episode_ends_after_a_quiet_window() {
        let mut s = SiteWide::new(&SiteWideConfig::default());
        for i in 0..3 {
            s.note("b", "north", i * 10_000);
            s.note("c", "north", i * 10_000);
            s.note("a", "north", i * 10_000);
        }
        s.note("a", "north", 40 * MIN);
        // a's anomaly at 40 min began a new episode, and b and c began long before it.
        assert_eq!(s.together("a", "north", 40 * MIN, 10), None);
    }

    #[test]
    fn bad_values_name_their_key() {
        let c = SiteWideConfig { min_devices: 1, ..SiteWideConfig::default() };
        assert_eq!(c.validate().unwrap_err().key, "incident.site_wide.min_devices");
        let c = SiteWideConfig { share: 0.0, ..SiteWideConfig::default() };
        assert_eq!(c.validate().unwrap_err().key, "incident.site_wide.share");
    }
}
