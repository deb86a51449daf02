//! `[incident]`: when anomalies become incidents, and when they end.

use std::time::Duration;

use serde::Deserialize;

use crate::settings::{bad, Invalid};

/// When anomalies become incidents.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct IncidentConfig {
    /// Consecutive anomalous readings before an incident opens ...
    pub debounce_readings: u32,
    /// ... or this long of continuous anomaly, whichever comes first.
    #[serde(with = "humantime_serde")]
    pub debounce_for: Duration,
    /// Slow faults (drift from the healthy reference, device behaviour) must also persist
    /// this long: they develop over hours, and the wait lets a change of operating point be
    /// recognised before it is ticketed.
    #[serde(with = "humantime_serde")]
    pub slow_debounce_for: Duration,
    /// An open incident resolves after this long without anomaly.
    #[serde(with = "humantime_serde")]
    pub quiet_period: Duration,
    /// Readings kept as evidence in a ticket.
    pub evidence_readings: usize,
    /// A fault that recurs this soon after its incident resolved updates the same ticket
    /// instead of opening a new one.
    #[serde(with = "humantime_serde")]
    pub cool_down: Duration,
    /// An incident that reopens this many times is marked flapping and held open ...
    pub flap_reopens: u32,
    /// ... until it has been quiet this many quiet periods.
    pub flap_hold_factor: u32,
    /// Below this confidence (0..1) a ticket goes to review instead of dispatch.
    pub min_confidence: f64,
    /// A device that sends nothing this long (while the broker link is up) opens a
    /// sensor-health incident. Zero disables it.
    #[serde(with = "humantime_serde")]
    pub stale_after: Duration,
    /// Only an established device opens a sensor-health incident when it goes silent: one in
    /// the asset registry, or one that has reported for at least this long. A burst of one-shot
    /// device ids (a misconfigured publisher) then opens no tickets.
    #[serde(with = "humantime_serde")]
    pub establish_after: Duration,
    /// `[incident.site_wide]`: devices at a site moving together are one change, not many faults.
    pub site_wide: super::SiteWideConfig,
}

impl Default for IncidentConfig {
    fn default() -> Self {
        Self {
            debounce_readings: 3,
            debounce_for: Duration::from_secs(120),
            slow_debounce_for: Duration::from_secs(300),
            quiet_period: Duration::from_secs(600),
            evidence_readings: 10,
            cool_down: Duration::from_secs(3600),
            flap_reopens: 3,
            flap_hold_factor: 3,
            min_confidence: 0.55,
            stale_after: Duration::from_secs(900),
            establish_after: Duration::from_secs(3600),
            site_wide: super::SiteWideConfig::default(),
        }
    }
}

impl IncidentConfig {
    /// Checks what types alone cannot; names the offending key.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.debounce_readings == 0 {
            return bad("incident.debounce_readings", "must be at least 1");
        }
        if self.quiet_period.is_zero() {
            return bad("incident.quiet_period", "must be above zero");
        }
        if !(0.0..=1.0).contains(&self.min_confidence) {
            return bad("incident.min_confidence", "must be between 0 and 1");
        }
        if self.flap_reopens < 2 {
            return bad("incident.flap_reopens", "must be at least 2");
        }
        if self.flap_hold_factor == 0 {
            return bad("incident.flap_hold_factor", "must be at least 1");
        }
        self.site_wide.validate()
    }
}
