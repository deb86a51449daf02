//! An incident transition becomes a stored incident and a ticket command: enriched (evidence,
//! respond-by time, suppression, forecast, checks), counted, routed, and written in one
//! transaction.

use std::sync::Arc;

use super::checks::SENSOR_READINGS;
use super::{Core, ACTUAL, DEDUP, FLAPPING, PREDICTED};
use crate::assets::AssetInfo;
use crate::detect::{time_to_limit, FaultKind, Forecast, Limit};
use crate::incident::{Incident, SiteNotice, Transition, UpdateReason};
use crate::metrics::{KindLabel, ReasonLabel, TierLabel};
use crate::store::{Route, Store, StoreError};
use crate::suppress::Suppression;
use crate::ticket::content::{self, TicketContext};
use crate::ticket::{Action, TicketCommand};

/// Readings a trend is fitted on.
const TREND_READINGS: usize = 120;
/// Without a configured limit, a forecast aims at the healthy range widened this many times
/// about its middle: a level the series never came near while healthy.
const ENVELOPE_WIDENING: f64 = 3.0;
/// Readings read beyond those a ticket shows: the ones that came in after the incident's last
/// anomaly (before an escalation, say), so that one read serves the whole transition.
const LATER_READINGS: usize = 120;

impl Core {
    /// Enriches an incident transition, decides where its ticket goes, and writes both in one
    /// transaction. Returns the transition with the incident as stored.
    pub(super) fn persist(&mut self, mut t: Transition) -> Result<Transition, StoreError> {
        let action = match &t {
            Transition::Opened(_) => Action::Open,
            Transition::Updated(..) => Action::Update,
            Transition::Resolved(_) | Transition::Closed(..) => Action::Resolve,
        };
        let (inc, why) = t.parts_mut();
        let mut asset = self.registry.lookup(&inc.device);
        if inc.site_notice.is_some() {
            // A site's notice (set when it opened, see `opening`) stays at the lowest priority.
            self.registry.lowest_priority(&mut asset);
        }
        let site = inc.site.clone().or_else(|| self.registry.site(&inc.device).map(str::to_string));
        let recent = self.recent_readings(inc)?;
        match action {
            Action::Open => self.opening(inc, &mut asset, site.as_deref(), &recent)?,
            Action::Update => self.updating(inc, &asset, why),
            Action::Resolve => {
                self.metrics.incidents_resolved.inc();
            }
        }
        let forecast = self.forecast(inc, action, &recent)?;
        let ctx = TicketContext {
            unit: self.units.get(&inc.metric).map(String::as_str),
            runbook: self.registry.runbook(&inc.metric, inc.fault),
            checks: self.checks(inc, &recent.until(i64::MAX, SENSOR_READINGS)?, site.as_deref()),
            note: why.map(UpdateReason::to_string),
            predicted_failure_at: forecast.map(|f| f.at),
            forecast,
            needs_review: inc.suppressed == Some(Suppression::NeedsReview),
            asset,
        };
        let cmd = content::command(inc, action, &ctx);
        inc.timeline.push(timeline_entry(inc, action, &cmd, (self.clock)()));
        let route = route(&self.sinks, inc, &cmd);
        tracing::info!(
            incident = %inc.id, device = %inc.device, fault = %cmd.ticket.fault, action = ?cmd.action,
            priority = cmd.ticket.priority.as_str(), suppressed = ?inc.suppressed,
            summary = %cmd.ticket.summary, note = ?cmd.ticket.note, "incident {}", action.as_str()
        );
        self.incidents.store_open(inc);
        self.store.save_incident(&inc.key, &*inc, route.map(|r| (&cmd, r)))?;
        Ok(t)
    }

    /// The latest readings of the series the ticket shows, read once for its evidence, its
    /// forecast and its checks.
    fn recent_readings(&self, inc: &Incident) -> Result<RecentReadings, StoreError> {
        let metrics = self.devices.metrics(&inc.device);
        let metric = match inc.fault {
            // A sensor-health incident shows the device's last readings of any metric.
            FaultKind::Silent => metrics.and_then(|m| m.iter().next()),
            // A model incident shows the readings of the metric that contributed most.
            FaultKind::Multivariate => inc.peak.contributors.first().or_else(|| metrics.and_then(|m| m.iter().next())),
            _ => Some(&inc.metric),
        };
        let series = metric.map(|m| self.store.series_id(&inc.device, m)).transpose()?;
        let shown = self.evidence_readings.max(TREND_READINGS).max(SENSOR_READINGS);
        RecentReadings::read(&self.store, series, shown + LATER_READINGS)
    }

    /// An incident opening: its evidence, respond-by time and suppression; counted once.
    fn opening(
        &mut self,
        inc: &mut Incident,
        asset: &mut AssetInfo,
        site: Option<&str>,
        recent: &RecentReadings,
    ) -> Result<(), StoreError> {
        inc.recent = recent.until(inc.opened_at, self.evidence_readings)?;
        let now = (self.clock)();
        inc.suppressed = self.suppressor.on_open(inc, site, now);
        if let (None, Some(site)) = (&inc.suppressed, site) {
            inc.suppressed = self.site_wide(inc, site);
        }
        if inc.site_notice.is_some() {
            // The site's notice, not a device's fault: at the lowest priority.
            self.registry.lowest_priority(asset);
        }
        // People respond from when the ticket is raised (wall clock), also for back-filled or
        // replayed readings whose event time lies in the past.
        let raised = now.max(inc.opened_at);
        inc.respond_by = Some(raised + asset.respond_within.as_millis() as i64);
        if let Some(s) = &inc.suppressed {
            self.count_suppressed(s.label());
        }
        // An incident opened before (held back by planned work) is not counted twice.
        if inc.timeline.is_empty() {
            self.observe_actual_lead_time(inc);
            self.opened_uncommitted.push(asset.priority);
            let detect_s = ((inc.opened_at - inc.first_seen).max(0) as f64) / 1000.0;
            self.metrics.time_to_detect_seconds.observe(detect_s);
        }
        Ok(())
    }

    /// Whether the incident is part of a change of its whole site (see `incident::site_wide`):
    /// then it opens no ticket of its own, and the change's first incident gives the site's notice.
    fn site_wide(&mut self, inc: &mut Incident, site: &str) -> Option<Suppression> {
        if !crate::incident::groupable(inc.fault) {
            return None;
        }
        let heard = self.devices.at_site(site, &inc.device).count() + 1;
        let together = self.site_wide.together(&inc.device, site, inc.first_seen, heard)?;
        if together.first {
            self.metrics.site_wide_changes.inc();
            tracing::warn!(
                site, devices = together.devices, of = together.of, since = inc.first_seen,
                "{} of {} devices at {site} began to deviate together: a change of the site's operating context (weather, a plant-wide change of load), not a fault of each; their incidents are recorded and open no tickets",
                together.devices, together.of
            );
        }
        let reason = format!("{} of {} devices at {site} began to deviate together", together.devices, together.of);
        if together.first && self.site_wide.notice() == SiteNotice::Ticket {
            // This incident's ticket is the site's notice.
            inc.site_notice = Some(reason);
            return None;
        }
        Some(Suppression::SiteWide { reason })
    }

    /// An update of an open ticket: numbered, and counted by why it is sent.
    fn updating(&mut self, inc: &mut Incident, asset: &AssetInfo, why: Option<&UpdateReason>) {
        inc.updates += 1;
        self.metrics.incidents_updated.inc();
        match why {
            Some(UpdateReason::Recurred { .. }) => self.count_suppressed(DEDUP),
            Some(UpdateReason::Flapping { .. }) => self.count_suppressed(FLAPPING),
            Some(UpdateReason::Escalated { .. }) => {
                self.metrics.incidents_escalated.get_or_create(&TierLabel { tier: asset.tier.as_str().into() }).inc();
            }
            Some(UpdateReason::Verdict { .. }) | None => {}
        }
    }

    /// Counts a ticket that was not sent, or an update that stood in for a new one.
    fn count_suppressed(&self, reason: &str) {
        self.metrics.tickets_suppressed.get_or_create(&ReasonLabel { reason: reason.into() }).inc();
    }

    /// When a level or stuck fault that opens or goes on will cross its limit at its recent
    /// rate, if it is heading for one; an opening counts the lead time it predicts.
    fn forecast(
        &self,
        inc: &Incident,
        action: Action,
        recent: &RecentReadings,
    ) -> Result<Option<Forecast>, StoreError> {
        let heading = matches!(inc.fault, FaultKind::Deviation | FaultKind::Drift | FaultKind::Stuck);
        if action == Action::Resolve || !heading {
            return Ok(None);
        }
        let Some(limit) = self.limit_ahead(inc) else { return Ok(None) };
        let configured = self.detectors.limit(&inc.device, &inc.metric).is_some();
        let points = recent.until(inc.last_anomaly_at.max(inc.opened_at), TREND_READINGS)?;
        let forecast = time_to_limit(&points, limit).map(|f| Forecast { configured, ..f });
        if let (Action::Open, Some(f)) = (action, forecast) {
            self.observe_lead_time(PREDICTED, inc.opened_at, f.at);
        }
        Ok(forecast)
    }

    /// The limit a series is heading for: its configured one or, without one, the learned
    /// healthy envelope, the healthy range widened [`ENVELOPE_WIDENING`] times on each side.
    fn limit_ahead(&self, inc: &Incident) -> Option<Limit> {
        self.detectors.limit(&inc.device, &inc.metric).or_else(|| {
            self.detectors.reference(&inc.device, &inc.metric).map(|r| {
                let half = (r.max - r.min).max(r.spread) / 2.0 * ENVELOPE_WIDENING;
                let mid = (r.max + r.min) / 2.0;
                Limit { min: Some(mid - half), max: Some(mid + half) }
            })
        })
    }

    /// A limit crossing on a series whose deviation incident opened earlier: the actual lead
    /// time the early ticket gave.
    fn observe_actual_lead_time(&self, inc: &Incident) {
        if !matches!(inc.fault, FaultKind::AboveLimit | FaultKind::BelowLimit) {
            return;
        }
        let early = Incident::key_for(&inc.device, &inc.metric, FaultKind::Deviation);
        if let Some(dev) = self.incidents.open_incidents().find(|i| i.key == early) {
            self.observe_lead_time(ACTUAL, dev.opened_at, inc.opened_at);
        }
    }

    /// Counts the lead time from a ticket (`from`, ms) to the limit crossing it warned of.
    fn observe_lead_time(&self, kind: &str, from: i64, crossing: i64) {
        let seconds = ((crossing - from).max(0) as f64) / 1000.0;
        self.metrics.lead_time_seconds.get_or_create(&KindLabel { kind: kind.into() }).observe(seconds);
    }
}

/// What the incident's timeline records of a command at wall-clock time `now`: when, and what.
fn timeline_entry(inc: &Incident, action: Action, cmd: &TicketCommand, now: i64) -> (i64, String) {
    let event = match (action, &cmd.ticket.note) {
        (Action::Open, _) => format!("opened ({}): {}", cmd.ticket.priority.as_str(), cmd.ticket.summary),
        (_, Some(note)) => note.clone(),
        (_, None) => action.as_str().to_string(),
    };
    let at = if action == Action::Open { inc.opened_at } else { now.max(inc.last_anomaly_at) };
    (at, event)
}

/// Where a ticket goes: to every sink, kept in the `held` tree with a reason, or nowhere
/// (`None`).
fn route<'s>(sinks: &'s [String], inc: &Incident, cmd: &TicketCommand) -> Option<Route<'s>> {
    match &inc.suppressed {
        None => match content::validate(&cmd.ticket) {
            Ok(()) => Some(Route::Sinks(sinks)),
            Err(why) => {
                tracing::error!(error = %why, "ticket failed validation; held back (this is a bug)");
                Some(Route::Held("invalid"))
            }
        },
        Some(s) => s.held_as().map(Route::Held),
    }
}

/// The latest readings of one series (oldest first), read once per transition.
struct RecentReadings {
    store: Arc<Store>,
    series: Option<u32>,
    points: Vec<(i64, f64)>,
    /// Every stored reading of the series is in `points`.
    complete: bool,
}

impl RecentReadings {
    /// The last `n` readings of `series` (none without a series).
    fn read(store: &Arc<Store>, series: Option<u32>, n: usize) -> Result<RecentReadings, StoreError> {
        let points = match series {
            Some(s) => store.recent(s, i64::MAX, n)?,
            None => Vec::new(),
        };
        Ok(RecentReadings { store: store.clone(), series, complete: points.len() < n, points })
    }

    /// The last `n` readings at or before `until`, oldest first: what `Store::recent` returns.
    fn until(&self, until: i64, n: usize) -> Result<Vec<(i64, f64)>, StoreError> {
        let end = self.points.partition_point(|p| p.0 <= until);
        match self.series {
            // More than `LATER_READINGS` came in after `until`: the older ones are read now.
            Some(series) if end < n && !self.complete => self.store.recent(series, until, n),
            _ => Ok(self.points[end.saturating_sub(n)..end].to_vec()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_read_gives_what_a_read_per_window_gave() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path(), 8, 10).unwrap());
        let series = store.series_id("comp-1", "temp").unwrap();
        for ts in 0..400 {
            store.insert_reading(series, ts * 1000, ts as f64).unwrap();
        }
        let recent = RecentReadings::read(&store, Some(series), 50).unwrap();
        // Within what was read, beyond it (read again), and past the newest reading.
        for (until, n) in [(399_000, 10), (380_000, 20), (390_500, 45), (100_000, 30), (i64::MAX, 10), (5_000, 10)] {
            assert_eq!(recent.until(until, n).unwrap(), store.recent(series, until, n).unwrap(), "{until} {n}");
        }
        let all = RecentReadings::read(&store, Some(series), 1000).unwrap();
        assert!(all.complete);
        assert_eq!(all.until(5_000, 10).unwrap(), store.recent(series, 5_000, 10).unwrap());
        let none = RecentReadings::read(&store, None, 50).unwrap();
        assert!(none.until(i64::MAX, 10).unwrap().is_empty());
    }
}
