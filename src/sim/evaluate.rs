//! Judges detection on a [`Fleet`] scenario the way the field-service team would: every message
//! of every device goes through the real [`Core`] (store, detectors, models fitted when a live
//! trainer would fit them, incident policy, maintenance windows) in event time, and the tickets
//! that would have been raised are compared with when each device failed.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use super::fleet::{Fleet, PERIOD_MS};
use crate::config::Config;
use crate::core::{BatchOutcome, Core};
use crate::incident::Transition;
use crate::metrics::Metrics;
use crate::reading::Message;
use crate::store::{Store, StoreError};
use crate::suppress::MaintenanceWindow;

/// One failing device's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct FailureOutcome {
    pub device: String,
    pub fault: &'static str,
    pub start_ms: i64,
    pub fail_ms: i64,
    /// The first ticket raised for the device at or after the fault started.
    pub first_ticket_ms: Option<i64>,
    /// What that ticket was about (`metric/fault`).
    pub first_ticket: Option<String>,
}

impl FailureOutcome {
    /// Ticketed before the equipment failed.
    pub fn caught(&self) -> bool {
        self.first_ticket_ms.is_some_and(|t| t <= self.fail_ms)
    }

    /// How long before the failure the ticket came (ms), when it came before.
    pub fn lead_ms(&self) -> Option<i64> {
        self.first_ticket_ms.filter(|&t| t <= self.fail_ms).map(|t| self.fail_ms - t)
    }
}

/// What a run of the scenario gave.
#[derive(Debug, Clone, Serialize)]
pub struct FleetReport {
    pub devices: usize,
    pub hours: f64,
    pub failures: Vec<FailureOutcome>,
    /// Tickets that were not about a developing fault: on healthy devices, or on failing ones
    /// before their fault started. `(device, metric/fault, opened at)`.
    pub false_tickets: Vec<(String, String, i64)>,
    /// "No telemetry" tickets of devices in or just after a communication gap: right about
    /// the link, counted apart. `(device, metric/fault, opened at)`.
    pub connectivity_tickets: Vec<(String, String, i64)>,
    /// Device-hours of healthy operation (for the false-ticket rate).
    pub healthy_device_hours: f64,
    /// Incidents held back by planned work.
    pub suppressed: usize,
    /// Incidents grouped into a change of their whole site (no ticket of their own).
    pub grouped: usize,
}

impl FleetReport {
    pub fn caught(&self) -> usize {
        self.failures.iter().filter(|f| f.caught()).count()
    }

    /// The median lead time (ms) of the failures ticketed before they happened.
    pub fn median_lead_ms(&self) -> Option<i64> {
        let mut leads: Vec<i64> = self.failures.iter().filter_map(FailureOutcome::lead_ms).collect();
        leads.sort_unstable();
        leads.get(leads.len() / 2).copied()
    }

    /// False tickets per 100 healthy device-hours.
    pub fn false_per_100h(&self) -> f64 {
        self.false_tickets.len() as f64 * 100.0 / self.healthy_device_hours.max(1e-9)
    }

    /// A table for people.
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        for f in &self.failures {
            let lead = match (f.lead_ms(), f.first_ticket_ms) {
                (Some(l), _) => format!("ticketed {:.0} min before failure", l as f64 / 60_000.0),
                (None, Some(t)) => format!("ticketed {:.0} min AFTER failure", (t - f.fail_ms) as f64 / 60_000.0),
                (None, None) => "never ticketed".to_string(),
            };
            let on = f.first_ticket.as_deref().unwrap_or("-");
            let dev = (f.first_ticket_ms.unwrap_or(f.start_ms) - f.start_ms) as f64 / 60_000.0;
            let _ = writeln!(s, "{:<8} {:<15} {lead:<38} {dev:>5.0} min into the fault  ({on})", f.device, f.fault);
        }
        for (d, what, at) in &self.false_tickets {
            let _ = writeln!(s, "false ticket: {d} {what} at +{:.1} h", *at as f64 / 3_600_000.0);
        }
        let _ = writeln!(
            s,
            "caught before failure: {} of {} (median lead {:.0} min) | false tickets: {} ({:.2} per 100 healthy device-hours) | link tickets during gaps: {} | held back by planned work: {} | grouped as site-wide changes: {}",
            self.caught(),
            self.failures.len(),
            self.median_lead_ms().unwrap_or(0) as f64 / 60_000.0,
            self.false_tickets.len(),
            self.false_per_100h(),
            self.connectivity_tickets.len(),
            self.suppressed,
            self.grouped
        );
        s
    }
}

/// Runs `fleet` through a core with `config`'s detection and incident settings (ticket sinks
/// are ignored; the scenario's maintenance windows are added).
pub fn run(fleet: &mut Fleet, config: &Config) -> Result<FleetReport, StoreError> {
    let mut config = config.clone();
    config.ticket.sinks.clear();
    for &(device, from, to) in &fleet.maintenance {
        config.maintenance.windows.push(MaintenanceWindow {
            site: None,
            device: Some(fleet.devices[device].id.clone()),
            start: chrono::DateTime::from_timestamp_millis(from),
            end: chrono::DateTime::from_timestamp_millis(to),
            daily_from: None,
            daily_to: None,
            days: Vec::new(),
            reason: "pump test".into(),
        });
    }
    let store = Arc::new(Store::temporary()?);
    let mut core = Core::new(config.core(), store, Arc::new(Metrics::new(&crate::core::metric_labels())))?;
    let mut tickets: BTreeMap<String, Vec<(i64, String)>> = BTreeMap::new();
    let (mut suppressed, mut grouped) = (0, 0);
    let mut note = |t: &Transition, tickets: &mut BTreeMap<String, Vec<(i64, String)>>| {
        if let Transition::Opened(inc) = t {
            match &inc.suppressed {
                None => {
                    let what = format!("{}/{}", inc.metric, inc.fault.as_str());
                    tickets.entry(inc.device.clone()).or_default().push((inc.opened_at, what));
                }
                Some(s) if s.label() == crate::incident::SITE_WIDE => grouped += 1,
                Some(_) => suppressed += 1,
            }
        }
    };
    let mut ts = fleet.start_ms;
    let mut next_tick = ts;
    while ts < fleet.end_ms {
        let reporting: Vec<usize> = (0..fleet.devices.len()).filter(|&d| fleet.reports(d, ts)).collect();
        let msgs: Vec<Message> = reporting
            .into_iter()
            .map(|d| Message { topic: fleet.topic(d), payload: fleet.payload(d, ts).into(), received_ms: ts })
            .collect();
        let outcome: BatchOutcome = core.process_messages(&msgs)?;
        for t in &outcome.transitions {
            note(t, &mut tickets);
        }
        if ts >= next_tick {
            for t in core.tick(ts, Some(fleet.start_ms))? {
                note(&t, &mut tickets);
            }
            next_tick = ts + 60_000;
        }
        core.fit_pending(ts);
        ts += PERIOD_MS;
    }
    let hours = (fleet.end_ms - fleet.start_ms) as f64 / 3_600_000.0;
    let mut failures = Vec::new();
    // Tickets of healthy devices, and of failing ones before their fault began: (device, at, what).
    let mut not_about_a_fault = Vec::new();
    let mut healthy_ms = 0i64;
    for (d, dev) in fleet.devices.iter().enumerate() {
        let fault = fleet.faults.iter().find(|f| f.device == d);
        let list = tickets.get(&dev.id).cloned().unwrap_or_default();
        match fault {
            Some(f) => {
                healthy_ms += f.start_ms - fleet.start_ms;
                let first = list.iter().find(|(t, _)| *t >= f.start_ms);
                failures.push(FailureOutcome {
                    device: dev.id.clone(),
                    fault: f.kind.label(),
                    start_ms: f.start_ms,
                    fail_ms: f.fail_ms,
                    first_ticket_ms: first.map(|x| x.0),
                    first_ticket: first.map(|x| x.1.clone()),
                });
                not_about_a_fault.extend(list.iter().filter(|(t, _)| *t < f.start_ms).map(|(t, w)| (d, *t, w.clone())));
            }
            None => {
                if std::env::var_os("FW_DEBUG_FLEET").is_some() && !list.is_empty() {
                    let sp: Vec<String> = dev
                        .set_points
                        .iter()
                        .map(|(t, l)| format!("+{:.1}h:{l:.2}", (t - fleet.start_ms) as f64 / 3.6e6))
                        .collect();
                    eprintln!("{} set points {}", dev.id, sp.join(" "));
                }
                healthy_ms += fleet.end_ms - fleet.start_ms;
                not_about_a_fault.extend(list.iter().map(|(t, w)| (d, *t, w.clone())));
            }
        }
    }
    // A "no telemetry" ticket in or just after a communication gap is right about the link.
    let (connectivity, false_ones): (Vec<_>, Vec<_>) =
        not_about_a_fault.into_iter().partition(|(d, t, what)| what.ends_with("/silent") && fleet.was_silent(*d, *t));
    let listed = |v: Vec<(usize, i64, String)>| -> Vec<(String, String, i64)> {
        v.into_iter().map(|(d, t, what)| (fleet.devices[d].id.clone(), what, t - fleet.start_ms)).collect()
    };
    let (connectivity_tickets, false_tickets) = (listed(connectivity), listed(false_ones));
    Ok(FleetReport {
        devices: fleet.devices.len(),
        hours,
        failures,
        false_tickets,
        connectivity_tickets,
        healthy_device_hours: healthy_ms as f64 / 3_600_000.0,
        suppressed,
        grouped,
    })
}
