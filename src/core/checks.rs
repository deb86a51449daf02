//! The checks a ticket reports as done: is the sensor alive, are the device's other metrics
//! normal, do other devices at the site show the same? A technician should not have to ask.

use super::{join, Core, CORRELATION_MS};
use crate::detect::FaultKind;
use crate::incident::Incident;
use crate::reading::format_ts;
use crate::ticket::Check;

/// The latest readings of the incident's series that the sensor check looks at.
pub(super) const SENSOR_READINGS: usize = 10;

impl Core {
    /// What the daemon checked, so the technician need not: the sensor (from `recent`, its
    /// series' last [`SENSOR_READINGS`] readings), the device's other metrics, and the other
    /// devices at the site.
    pub(super) fn checks(&self, inc: &Incident, recent: &[(i64, f64)], site: Option<&str>) -> Vec<Check> {
        let mut checks = Vec::new();
        let sensor = match (recent.first(), recent.last()) {
            _ if inc.fault == FaultKind::Silent => Check {
                check: "sensor alive".into(),
                result: "anomalous".into(),
                detail: format!("no message from {} since {}", inc.device, format_ts(inc.first_seen)),
            },
            _ if inc.fault == FaultKind::Stuck => Check {
                check: "sensor alive".into(),
                result: "anomalous".into(),
                detail: format!("{} repeats the same value: the sensor itself is the suspect", inc.metric),
            },
            (Some(first), Some(last)) => Check {
                check: "sensor alive".into(),
                result: "ok".into(),
                detail: format!(
                    "{} readings between {} and {}; the sensor reports and its values vary",
                    recent.len(),
                    format_ts(first.0),
                    format_ts(last.0)
                ),
            },
            _ => Check { check: "sensor alive".into(), result: "unknown".into(), detail: "no readings stored".into() },
        };
        checks.push(sensor);

        let others: Vec<&String> = self
            .devices
            .metrics(&inc.device)
            .map(|m| m.iter().filter(|m| **m != inc.metric).collect())
            .unwrap_or_default();
        let near = |m: &String| {
            self.devices.last_anomaly(&inc.device, m).is_some_and(|t| (t - inc.last_anomaly_at).abs() <= CORRELATION_MS)
        };
        let (abnormal, normal): (Vec<&String>, Vec<&String>) = others.iter().partition(|m| near(m));
        checks.push(match (abnormal.is_empty(), normal.is_empty()) {
            (true, true) => Check {
                check: "other metrics of the device".into(),
                result: "unknown".into(),
                detail: "the device reports no other metric".into(),
            },
            (true, false) => Check {
                check: "other metrics of the device".into(),
                result: "ok".into(),
                detail: format!("{} normal", join(&normal)),
            },
            (false, _) => Check {
                check: "other metrics of the device".into(),
                result: "anomalous".into(),
                detail: format!("{} also abnormal at the same time: a device-level fault is likely", join(&abnormal)),
            },
        });

        let peers: Vec<&String> = match site {
            Some(site) => self.devices.at_site(site, &inc.device).collect(),
            None => Vec::new(),
        };
        let mut affected: Vec<&String> = peers
            .iter()
            .copied()
            .filter(|d| self.incidents.open_incidents().any(|i| &i.device == *d && i.suppressed.is_none()))
            .collect();
        affected.sort();
        checks.push(match (site, peers.is_empty(), affected.is_empty()) {
            (None, _, _) | (_, true, _) => Check {
                check: "other devices at the site".into(),
                result: "unknown".into(),
                detail: "no other device of this site reports to this gateway".into(),
            },
            (Some(site), false, true) => Check {
                check: "other devices at the site".into(),
                result: "ok".into(),
                detail: format!("{} other devices at {site} report normally", peers.len()),
            },
            (Some(site), false, false) => Check {
                check: "other devices at the site".into(),
                result: "anomalous".into(),
                detail: format!(
                    "{} of {} other devices at {site} also have open incidents ({}): a site-wide cause such as power, supply or ambient is possible",
                    affected.len(),
                    peers.len(),
                    join(&affected)
                ),
            },
        });
        checks
    }
}
