//! Ticket content: everything a technician needs, built from an incident and what the daemon
//! knows around it, and checked before it leaves. A ticket missing a required field is a bug.

use super::{Action, Check, Evidence, EvidenceReading, Ticket, TicketCommand};
use crate::assets::{AssetInfo, RunbookConfig};
use crate::detect::FaultKind;
use crate::incident::{describe, Incident, IncidentState};
use crate::reading::format_ts;

/// What the daemon knows around an incident, gathered by the core.
#[derive(Debug, Clone)]
pub struct TicketContext<'a> {
    pub unit: Option<&'a str>,
    pub asset: AssetInfo,
    pub runbook: Option<&'a RunbookConfig>,
    pub checks: Vec<Check>,
    /// What this command changes (update note, escalation, closing note).
    pub note: Option<String>,
    pub predicted_failure_at: Option<i64>,
    /// The trend behind `predicted_failure_at`, said in words in `what_happened`.
    pub forecast: Option<crate::detect::Forecast>,
    pub needs_review: bool,
}

/// Generic steps when no runbook matches: never leave a technician without a next step.
fn default_steps(inc: &Incident) -> Vec<String> {
    let m = &inc.metric;
    match inc.fault {
        FaultKind::Silent => vec![
            format!("Check power and network at {} (its gateway link, switch or cellular modem)", inc.device),
            "Check whether the controller or its telemetry transmitter has restarted or hung".into(),
            "If the equipment itself is down, treat it as an outage at the customer's site".into(),
        ],
        FaultKind::Multivariate => vec![
            format!("Inspect {} as a whole: its metrics no longer move together as in normal operation", inc.device),
            "Check the metrics named in the summary first (load, refrigerant charge, valves, sensors)".into(),
            "Record what you found with the feedback command so the model learns".into(),
        ],
        FaultKind::Stuck => vec![
            format!("Check the {m} sensor and its wiring or transmitter on site"),
            "Compare with a handheld reading; replace the sensor if it does not respond".into(),
        ],
        _ => vec![
            format!("Inspect the asset for the cause of the {m} change (load, ambient, blockage, wear)"),
            format!("Compare {m} with a handheld reading to rule out the sensor"),
            "Record what you found with the feedback command so the detector learns".into(),
        ],
    }
}

/// The title and summary of a site's notice (see `incident::site_wide`): what moved together
/// and since when, said as a change of the site, with the device it was first seen on.
fn site_notice(inc: &Incident, change: &str) -> (String, String) {
    let site = inc.site.as_deref().unwrap_or("the site");
    (
        format!("{site}: devices changed together (site-wide change)"),
        format!(
            "{change} since {}, first {} ({} {}): a change of the whole site's operating context, such as the weather, a plant-wide change of load or product, or a shared supply, rather than a fault of each device. Their incidents are recorded and open no tickets of their own; this notice stands for them",
            format_ts(inc.first_seen),
            inc.device,
            inc.metric,
            inc.fault.as_str()
        ),
    )
}

/// What to do about a site's notice.
fn site_steps(inc: &Incident) -> Vec<String> {
    let site = inc.site.as_deref().unwrap_or("the site");
    vec![
        format!("Confirm what changed at {site} at that time: weather, production plan or set points, a shared utility (power, cooling water, supply pressure)"),
        "If nothing explains it, check what the devices share before inspecting each one".into(),
        "List the grouped incidents with `fieldwatch incidents`; a device whose fault begins on its own still opens its own ticket".into(),
    ]
}

/// The command for an incident change.
pub fn command(inc: &Incident, action: Action, ctx: &TicketContext) -> TicketCommand {
    // A unit configured empty is no unit.
    let unit = ctx.unit.filter(|u| !u.trim().is_empty());
    let (title, summary) = match &inc.site_notice {
        Some(change) => site_notice(inc, change),
        None => describe(inc, unit),
    };
    let p = &inc.peak;
    // Every command of an incident's life has its own key: updates are numbered, and each
    // resolve is numbered by the reopen it ends (a receiver that honours the key must not take
    // the resolve after a recurrence for a retry of the first one).
    let idempotency_key = match action {
        Action::Update => format!("{}:update:{}", inc.idempotency_key, inc.updates),
        Action::Resolve => format!("{}:resolve:{}", inc.idempotency_key, inc.reopen_count),
        a => format!("{}:{}", inc.idempotency_key, a.as_str()),
    };
    let respond_by = inc.respond_by.unwrap_or(inc.opened_at + ctx.asset.respond_within.as_millis() as i64);
    let (next_steps, runbook_link) = match ctx.runbook {
        _ if inc.site_notice.is_some() => (site_steps(inc), None),
        Some(r) => (r.steps.clone(), r.link.clone()),
        None => (default_steps(inc), None),
    };
    let note = match (&ctx.note, inc.state) {
        (Some(n), _) => Some(n.clone()),
        (None, IncidentState::Resolved) => Some(summary.clone()),
        _ => None,
    };
    TicketCommand {
        action,
        idempotency_key,
        ticket: Ticket {
            id: inc.id.clone(),
            idempotency_key: inc.idempotency_key.clone(),
            device: inc.device.clone(),
            site: inc.site.clone(),
            metric: inc.metric.clone(),
            fault: format!("{}.{}", inc.metric, inc.fault.as_str()),
            fault_kind: inc.fault,
            title,
            summary: summary.clone(),
            evidence: Evidence {
                value: p.value,
                unit: unit.map(str::to_string),
                baseline: p.expected,
                spread: p.spread,
                z: p.z,
                score: p.score,
                detector: p.detector.clone(),
                limit: matches!(inc.fault, FaultKind::AboveLimit | FaultKind::BelowLimit).then_some(p.bound).flatten(),
                anomalous_readings: inc.anomalous_readings,
                recent: inc.recent.iter().map(|&(ts, value)| EvidenceReading { ts: format_ts(ts), value }).collect(),
            },
            first_seen: format_ts(inc.first_seen),
            opened_at: format_ts(inc.opened_at),
            state: inc.state,
            resolved_at: inc.resolved_at.map(format_ts),
            priority: ctx.asset.priority,
            respond_by: format_ts(respond_by),
            origin: "proactive".into(),
            confidence: (p.score * 100.0).round() / 100.0,
            customer: ctx.asset.customer.clone(),
            asset: Some(ctx.asset.asset.clone()),
            what_happened: match ctx.forecast {
                Some(f) => {
                    let unit = unit.map(|u| format!(" {u}")).unwrap_or_default();
                    let rate = crate::incident::num(f.per_hour.abs());
                    let sign = if f.per_hour < 0.0 { "-" } else { "+" };
                    let target = if f.configured {
                        format!("its configured limit of {}{unit}", crate::incident::num(f.limit))
                    } else {
                        format!(
                            "{}{unit}, three times its healthy range away from its healthy middle",
                            crate::incident::num(f.limit)
                        )
                    };
                    format!(
                        "{summary}. At this rate ({sign}{rate}{unit}/h) it reaches {target} in ~{}",
                        crate::incident::format_duration(f.at - inc.last_anomaly_at.max(inc.opened_at))
                    )
                }
                None => summary,
            },
            checks_done: ctx.checks.clone(),
            next_steps,
            runbook_link,
            predicted_failure_at: ctx.predicted_failure_at.map(format_ts),
            flapping: inc.flapping,
            needs_review: ctx.needs_review,
            acknowledged: inc.acknowledged,
            note,
        },
    }
}

/// Checks that a ticket carries everything a technician needs; names the first missing field.
pub fn validate(t: &Ticket) -> Result<(), String> {
    let missing = |field: &str| Err(format!("ticket {}: `{field}` is missing", t.id));
    if t.id.is_empty() {
        return missing("id");
    }
    if t.idempotency_key.is_empty() {
        return missing("idempotency_key");
    }
    if t.device.is_empty() {
        return missing("device");
    }
    if t.what_happened.is_empty() || t.summary.is_empty() || t.title.is_empty() {
        return missing("what_happened");
    }
    if t.respond_by.is_empty() || chrono::DateTime::parse_from_rfc3339(&t.respond_by).is_err() {
        return missing("respond_by");
    }
    if t.origin != "proactive" {
        return missing("origin");
    }
    if t.next_steps.is_empty() {
        return missing("next_steps");
    }
    if t.checks_done.is_empty() {
        return missing("checks_done");
    }
    if t.asset.is_none() {
        return missing("asset");
    }
    if !(0.0..=1.0).contains(&t.confidence) {
        return missing("confidence");
    }
    // A silent device's evidence is the silence: an edge node whose death certificate came
    // before any reading of its own has none to show.
    if t.evidence.recent.is_empty() && t.state == IncidentState::Open && t.fault_kind != FaultKind::Silent {
        return missing("evidence.recent");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ticket's context with nothing around the incident but its unit and asset.
    fn plain_context(unit: Option<&str>, asset: AssetInfo) -> TicketContext<'_> {
        TicketContext {
            unit,
            asset,
            runbook: None,
            checks: Vec::new(),
            note: None,
            predicted_failure_at: None,
            forecast: None,
            needs_review: false,
        }
    }

    #[test]
    fn every_command_of_an_incident_has_its_own_key() {
        let peak = crate::detect::Anomaly {
            contributors: Vec::new(),
            kind: crate::detect::FaultKind::Deviation,
            detector: "baseline".into(),
            ts: 1_000,
            value: 99.0,
            score: 0.9,
            expected: Some(70.0),
            spread: Some(0.5),
            z: Some(10.0),
            bound: None,
            history: None,
            abrupt: false,
        };
        let subject = crate::incident::Subject { device: "comp-1".into(), site: None, metric: "temp".into() };
        let mut inc = Incident::new(subject, 1_000, 4_000, peak, 3);
        let asset = crate::assets::Registry::new(&Default::default(), None, &Default::default()).lookup(&inc.device);
        let ctx = plain_context(None, asset);
        let mut keys = std::collections::HashSet::new();
        assert!(keys.insert(command(&inc, Action::Open, &ctx).idempotency_key));
        assert!(keys.insert(command(&inc, Action::Resolve, &ctx).idempotency_key));
        // It recurs, is updated and resolves again: new keys each time.
        inc.reopen_count += 1;
        inc.updates += 1;
        assert!(keys.insert(command(&inc, Action::Update, &ctx).idempotency_key));
        assert!(keys.insert(command(&inc, Action::Resolve, &ctx).idempotency_key), "{keys:?}");
        // The same command again (a retry) has the same key.
        assert!(!keys.insert(command(&inc, Action::Resolve, &ctx).idempotency_key));
    }

    #[test]
    fn a_site_notice_reads_as_the_sites_change_with_what_to_check() {
        let peak = crate::detect::Anomaly::new(FaultKind::Drift, "context", 1_000, 52.0, 0.9);
        let subject = crate::incident::Subject {
            device: "comp-3".into(),
            site: Some("north".into()),
            metric: "discharge_temp".into(),
        };
        let mut inc = Incident::new(subject, 1_000, 4_000, peak, 3);
        inc.site_notice = Some("4 of 10 devices at north began to deviate together".into());
        let registry = crate::assets::Registry::new(&Default::default(), None, &Default::default());
        let mut asset = registry.lookup(&inc.device);
        registry.lowest_priority(&mut asset);
        let ctx = plain_context(Some("°C"), asset);
        let t = command(&inc, Action::Open, &ctx).ticket;
        assert_eq!(t.title, "north: devices changed together (site-wide change)");
        assert!(t.summary.starts_with("4 of 10 devices at north began to deviate together since "), "{}", t.summary);
        assert!(
            t.summary.contains("first comp-3 (discharge_temp drift)")
                && t.summary.contains("rather than a fault of each")
        );
        assert!(t.next_steps[0].starts_with("Confirm what changed at north"), "{:?}", t.next_steps);
        assert_eq!(t.priority, crate::assets::Priority::P4);
    }

    #[test]
    fn a_complete_ticket_passes_and_each_missing_field_is_named() {
        let good = crate::ticket::tests::sample_ticket();
        validate(&good).unwrap();
        type Break = Box<dyn Fn(&mut Ticket)>;
        let cases: Vec<(&str, Break)> = vec![
            ("what_happened", Box::new(|t: &mut Ticket| t.what_happened.clear())),
            ("respond_by", Box::new(|t: &mut Ticket| t.respond_by = "soon".into())),
            ("next_steps", Box::new(|t: &mut Ticket| t.next_steps.clear())),
            ("checks_done", Box::new(|t: &mut Ticket| t.checks_done.clear())),
            ("asset", Box::new(|t: &mut Ticket| t.asset = None)),
            ("origin", Box::new(|t: &mut Ticket| t.origin = "customer".into())),
            ("confidence", Box::new(|t: &mut Ticket| t.confidence = 1.5)),
            ("evidence.recent", Box::new(|t: &mut Ticket| t.evidence.recent.clear())),
        ];
        for (field, break_it) in cases {
            let mut t = good.clone();
            break_it(&mut t);
            let err = validate(&t).unwrap_err();
            assert!(err.contains(&format!("`{field}`")), "{field}: {err}");
        }
    }

    /// Every template, with any values a detector may report: the words a technician reads
    /// are grammatical and the numbers are written as a person would write them.
    mod wording {
        use super::*;
        use crate::detect::{Anomaly, Forecast};
        use crate::incident::Subject;
        use proptest::prelude::*;

        /// (kind, detector) of every template: the context's drift reads differently.
        const TEMPLATES: [(FaultKind, &str); 11] = [
            (FaultKind::Deviation, "baseline"),
            (FaultKind::Drift, "drift"),
            (FaultKind::Drift, "context"),
            (FaultKind::Stuck, "flatline"),
            (FaultKind::AboveLimit, "limit"),
            (FaultKind::BelowLimit, "limit"),
            (FaultKind::Pattern, "novelty"),
            (FaultKind::Pattern, "likelihood"),
            (FaultKind::Silent, "staleness"),
            (FaultKind::Multivariate, "pca"),
            (FaultKind::Multivariate, "gmm"),
        ];

        fn value() -> impl Strategy<Value = f64> {
            prop_oneof![-1e6..1e6f64, -1.0..1.0f64, (-1e-4..1e-4f64), Just(0.0), Just(25.110000000000003)]
        }

        /// Ungrammatical or careless forms a template once produced or could produce.
        const WRONG: [&str; 10] = [
            "has fell",
            "has rose",
            "has climb ",
            " 1 readings",
            "the last 1 readings",
            "its limit",
            "NaN",
            "inf",
            "  ",
            " ,",
        ];

        /// A number written with more decimals than a person would write: more than two above
        /// 1, more than two significant digits below 1 (timestamps, whose fractions are
        /// milliseconds, are taken out first).
        fn long_decimal(text: &str) -> Option<String> {
            let words = text.split(|c: char| c.is_whitespace() || c == ',' || c == '(' || c == ')');
            words
                .filter(|w| !w.contains('T') || !w.contains(':'))
                .find(|w| {
                    w.split_once('.').is_some_and(|(int, frac)| {
                        let digits: String = frac.chars().take_while(char::is_ascii_digit).collect();
                        let significant = if int.trim_start_matches(['-', '+', '~']).trim_start_matches('0').is_empty()
                        {
                            digits.trim_start_matches('0').len()
                        } else {
                            digits.len()
                        };
                        int.chars().last().is_some_and(|c| c.is_ascii_digit()) && significant > 2
                    })
                })
                .map(str::to_string)
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]
            #[test]
            fn every_template_reads_right(
                template in 0..TEMPLATES.len(),
                value in value(),
                expected in value(),
                spread in 0.0..1e3f64,
                z in -50.0..50.0f64,
                bound in value(),
                history in prop::option::of(0u64..500),
                contributors in prop::collection::vec(prop::sample::select(vec!["current", "flow", "time of day", "suction_pressure"]), 0..4),
                unit in prop::option::of(prop::sample::select(vec!["°C", "A", "mm/s", "bar", ""])),
                anomalous in 1u64..400,
                lasting in 0i64..400_000_000,
                resolved in any::<bool>(),
                forecast in prop::option::of((value(), 0.001..1e4f64, any::<bool>())),
            ) {
                let (kind, detector) = TEMPLATES[template];
                let mut peak = Anomaly::new(kind, detector, 1_000 + lasting, value, 0.9);
                if !matches!(kind, FaultKind::Stuck | FaultKind::Silent | FaultKind::AboveLimit | FaultKind::BelowLimit) {
                    peak = peak.with_level(expected, spread, z);
                }
                if matches!(kind, FaultKind::Stuck | FaultKind::AboveLimit | FaultKind::BelowLimit | FaultKind::Pattern) {
                    peak = peak.with_bound(bound.abs());
                }
                peak.history = history;
                let mut names: Vec<String> = contributors.iter().map(|c| c.to_string()).collect();
                names.dedup();
                peak.contributors = names;
                let subject = Subject { device: "comp-1".into(), site: Some("north".into()), metric: "discharge_temp".into() };
                let mut inc = Incident::new(subject, 1_000, 1_000 + lasting, peak, anomalous);
                if resolved {
                    inc.state = IncidentState::Resolved;
                    inc.resolved_at = Some(inc.last_anomaly_at + 600_000);
                }
                let asset = crate::assets::Registry::new(&Default::default(), None, &Default::default()).lookup(&inc.device);
                let forecast = forecast.map(|(limit, per_hour, configured)| Forecast { at: inc.opened_at + 7_200_000, limit, per_hour, configured });
                let ctx = TicketContext {
                    unit,
                    asset,
                    runbook: None,
                    checks: Vec::new(),
                    note: None,
                    predicted_failure_at: forecast.map(|f| f.at),
                    forecast,
                    needs_review: false,
                };
                let action = if resolved { Action::Resolve } else { Action::Open };
                let cmd = command(&inc, action, &ctx);
                let text = format!(
                    "{}\n{}\n{}\n{}",
                    cmd.ticket.title,
                    cmd.ticket.summary,
                    crate::ticket::render::plain_text(&crate::ticket::render::sections(&cmd.ticket)),
                    cmd.ticket.note.clone().unwrap_or_default()
                );
                for wrong in WRONG {
                    prop_assert!(!text.contains(wrong), "{wrong:?} in:\n{text}");
                }
                prop_assert!(long_decimal(&text).is_none(), "{:?} in:\n{text}", long_decimal(&text));
                prop_assert!(!text.contains(" ?"), "a placeholder in:\n{text}");
            }
        }
    }
}
