//! Plain words for technicians: what happened, in one sentence a person would write.

use super::{Incident, IncidentState};
use crate::detect::FaultKind;

/// Formats a duration in ms as `45 s`, `6 min`, `2 h 5 min` or `3 d 4 h`.
pub fn format_duration(ms: i64) -> String {
    let s = (ms.max(0) + 500) / 1000;
    match s {
        0..=89 => format!("{s} s"),
        90..=5399 => format!("{} min", (s + 30) / 60),
        5400..=172_799 => {
            let m = (s + 30) / 60;
            format!("{} h {} min", m / 60, m % 60)
        }
        _ => format!("{} d {} h", s / 86_400, (s % 86_400) / 3600),
    }
}

/// A reading as a technician would write it: at most two decimals, no trailing zeros.
/// `a`, `a and b`, `a, b and c`.
fn join_words(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

/// A number as a person writes it: whole above 1,000, at most two decimals above 1, two
/// significant digits below 1 (a rate of 0.0012 bar/h is not 0), no trailing zeros, never `-0`.
pub(crate) fn num(v: f64) -> String {
    let decimals = match v.abs() {
        a if a >= 1000.0 => 0,
        a if !(1e-6..1.0).contains(&a) => 2,
        a => (1 - a.log10().floor() as i32).clamp(2, 7) as usize,
    };
    let s = format!("{v:.decimals$}");
    let s = if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.') } else { &s };
    if s == "-0" {
        "0".to_string()
    } else {
        s.to_string()
    }
}

/// The pattern sentence: how unusual the reading was, and against what.
fn pattern_summary(inc: &Incident, u: &dyn Fn(f64) -> String) -> String {
    let p = &inc.peak;
    let m = &inc.metric;
    let history = match p.history {
        Some(1) => "its last reading".to_string(),
        Some(n) if n > 0 => format!("the last {n} readings"),
        _ => "its recent history".to_string(),
    };
    let (lo, hi) = match (p.expected, p.spread) {
        (Some(mid), Some(half)) => (mid - half, mid + half),
        _ => (p.value, p.value),
    };
    let range = format!("{}–{}", num(lo), u(hi));
    match p.bound {
        Some(prob) if prob < 1e-3 => format!(
            "{m} shows a pattern not seen in {history} (p {}); value {} against a recent range of {range}",
            if prob < 1e-12 { "< 1e-12".to_string() } else { format!("= {prob:.0e}") },
            u(p.value)
        ),
        _ if p.value > hi || p.value < lo => {
            format!("{m} reached {}, outside everything seen recently (range {range})", u(p.value))
        }
        _ => format!(
            "{m} shifted its level by {:.1} standard deviations; value {} against a recent range of {range}",
            p.z.unwrap_or(0.0).abs(),
            u(p.value)
        ),
    }
}

/// A short title and a one-sentence summary of an incident.
pub fn describe(inc: &Incident, unit: Option<&str>) -> (String, String) {
    let u = |v: f64| match unit {
        Some(unit) if !unit.is_empty() => format!("{} {unit}", num(v)),
        _ => num(v),
    };
    let p = &inc.peak;
    let lasting = format_duration(inc.last_anomaly_at.max(inc.opened_at) - inc.first_seen);
    let m = &inc.metric;
    let (title, mut summary) = match inc.fault {
        FaultKind::Deviation => {
            let z = p.z.unwrap_or(0.0);
            let (verb, side) = if z >= 0.0 { ("rose to", "above") } else { ("fell to", "below") };
            let base = p.expected.map(u).unwrap_or_else(|| "?".into());
            (
                format!("{}: {m} {side} normal", inc.device),
                format!("{m} {verb} {}, {:.1}σ {side} its baseline of {base}, for {lasting}", u(p.value), z.abs()),
            )
        }
        FaultKind::Drift if p.detector == "context" => {
            let (side, more) =
                if p.value >= p.expected.unwrap_or(p.value) { ("above", "high") } else { ("below", "low") };
            let expected = p.expected.map(u).unwrap_or_else(|| "?".into());
            let by = p.expected.map(|e| u((p.value - e).abs())).unwrap_or_else(|| "?".into());
            let metrics: Vec<String> = p.contributors.iter().filter(|c| *c != "time of day").cloned().collect();
            let day = p.contributors.iter().any(|c| c == "time of day");
            let from = match (metrics.is_empty(), day) {
                (true, true) => "the time of day".to_string(),
                (true, false) => "its usual behaviour".to_string(),
                (false, true) => format!("its {} and the time of day", join_words(&metrics)),
                (false, false) => format!("its {}", join_words(&metrics)),
            };
            (
                format!("{}: {m} {more} for its operating conditions", inc.device),
                format!(
                    "{m} is {by} {side} what this device shows at these operating conditions (expected {expected} \
                     from {from}; seen {}), for {lasting}",
                    u(p.value)
                ),
            )
        }
        FaultKind::Drift => {
            let z = p.z.unwrap_or(0.0);
            let (verb, side) = if z >= 0.0 { ("climbed", "above") } else { ("fallen", "below") };
            let healthy = p.expected.map(u).unwrap_or_else(|| "?".into());
            let by = p.expected.map(|e| u((p.value - e).abs())).unwrap_or_else(|| "?".into());
            (
                format!("{}: {m} drifting {side} its healthy level", inc.device),
                format!(
                    "{m} has {verb} to {}, {by} {side} its healthy level of {healthy}, and has stayed away for {lasting}",
                    u(p.value)
                ),
            )
        }
        FaultKind::Stuck => (
            format!("{}: {m} sensor stuck", inc.device),
            format!(
                "{m} has reported exactly {} for {}; the sensor or its transmitter looks stuck",
                u(p.value),
                format_duration((p.bound.unwrap_or(0.0) * 1000.0) as i64)
            ),
        ),
        FaultKind::Silent if p.detector == super::OFFLINE_DETECTOR => (
            format!("{}: edge node offline", inc.device),
            format!(
                "edge node offline since {}: {} sent its death certificate (Sparkplug NDEATH or DDEATH) \
                 and has not been born again; a connection or power problem, not an equipment fault",
                crate::reading::format_ts(inc.first_seen),
                inc.device
            ),
        ),
        FaultKind::Silent => (
            format!("{}: no telemetry", inc.device),
            format!(
                "{} has sent no telemetry for {} (last message at {}) while the broker link is up",
                inc.device,
                format_duration((p.value * 1000.0) as i64),
                crate::reading::format_ts(inc.first_seen)
            ),
        ),
        FaultKind::AboveLimit | FaultKind::BelowLimit => {
            let side = if inc.fault == FaultKind::AboveLimit { "above its maximum" } else { "below its minimum" };
            (
                format!("{}: {m} {side}", inc.device),
                format!("{m} reached {}, {side} of {}, for {lasting}", u(p.value), p.bound.map(u).unwrap_or_default()),
            )
        }
        FaultKind::Pattern => (format!("{}: {m} {}", inc.device, inc.fault.label()), pattern_summary(inc, &u)),
        FaultKind::Multivariate => {
            let level = crate::model::DeviceModel::describe_level(&p.detector, p.value, p.expected.unwrap_or(0.0));
            let most = if p.contributors.is_empty() {
                String::new()
            } else {
                format!("; most unusual: {}", p.contributors.join(", "))
            };
            (
                format!("{}: {}", inc.device, inc.fault.label()),
                format!("{} behaves unlike its normal operation ({level}){most}, for {lasting}", inc.device),
            )
        }
    };
    if let (IncidentState::Resolved, Some(at), FaultKind::Silent | FaultKind::Multivariate) =
        (inc.state, inc.resolved_at, inc.fault)
    {
        let again = if inc.fault == FaultKind::Silent { "reports again" } else { "behaves normally again" };
        summary = format!("Resolved: {} {again} since {}. Was: {summary}", inc.device, crate::reading::format_ts(at));
    } else if let (IncidentState::Resolved, Some(at)) = (inc.state, inc.resolved_at) {
        summary =
            format!("Resolved: {m} has been normal for {}. Was: {summary}", format_duration(at - inc.last_anomaly_at));
    }
    (title, summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::Anomaly;
    use crate::incident::Subject;

    #[test]
    fn numbers_read_as_a_person_writes_them() {
        let cases = [
            (25.110000000000003, "25.11"),
            (71.4, "71.4"),
            (2700.4, "2700"),
            (0.0012, "0.0012"),
            (0.25, "0.25"),
            (-0.001, "-0.001"),
            (-0.0000001, "0"),
            (0.0, "0"),
            (3.0, "3"),
        ];
        for (v, text) in cases {
            assert_eq!(num(v), text, "{v}");
        }
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(format_duration(45_000), "45 s");
        assert_eq!(format_duration(6 * 60_000), "6 min");
        assert_eq!(format_duration(125 * 60_000), "2 h 5 min");
        assert_eq!(format_duration(3 * 86_400_000 + 4 * 3_600_000), "3 d 4 h");
    }

    #[test]
    fn deviation_summary_names_value_baseline_and_duration() {
        let peak = Anomaly::new(FaultKind::Deviation, "baseline", 360_000, 97.14, 0.9).with_level(71.4, 4.9, 5.2);
        let subject = Subject { device: "comp-3".into(), site: None, metric: "discharge_temp".into() };
        let inc = Incident::new(subject, 0, 360_000, peak, 6);
        let (title, summary) = describe(&inc, Some("°C"));
        assert_eq!(title, "comp-3: discharge_temp above normal");
        assert_eq!(summary, "discharge_temp rose to 97.14 °C, 5.2σ above its baseline of 71.4 °C, for 6 min");
    }

    #[test]
    fn a_relation_fault_says_what_was_expected_from_what() {
        let mut peak = Anomaly::new(FaultKind::Drift, "context", 1_200_000, 14.3, 0.9).with_level(11.2, 0.2, 15.5);
        peak.contributors = vec!["load".into(), "discharge_pressure".into(), "time of day".into()];
        let subject = Subject { device: "comp-7".into(), site: None, metric: "current".into() };
        let inc = Incident::new(subject, 0, 1_200_000, peak, 6);
        let (title, summary) = describe(&inc, Some("A"));
        assert_eq!(title, "comp-7: current high for its operating conditions");
        assert_eq!(
            summary,
            "current is 3.1 A above what this device shows at these operating conditions (expected 11.2 A \
             from its load and discharge_pressure and the time of day; seen 14.3 A), for 20 min"
        );
    }

    #[test]
    fn a_falling_drift_has_fallen() {
        let peak = Anomaly::new(FaultKind::Drift, "drift", 600_000, 26.78, 0.9).with_level(31.0, 0.5, -8.4);
        let subject = Subject { device: "comp-2".into(), site: None, metric: "discharge_temp".into() };
        let (_, summary) = describe(&Incident::new(subject, 0, 600_000, peak, 6), Some("°C"));
        assert!(summary.starts_with("discharge_temp has fallen to 26.78 °C, 4.22 °C below"), "{summary}");
    }

    #[test]
    fn pattern_summary_names_probability_history_and_range() {
        let peak = Anomaly::new(FaultKind::Pattern, "novelty", 0, 4.1, 0.8)
            .with_level(2.1, 0.2, 1.0)
            .with_bound(3e-5)
            .with_history(2000);
        let subject = Subject { device: "pump-1".into(), site: None, metric: "vibration".into() };
        let inc = Incident::new(subject, 0, 0, peak, 1);
        let (title, summary) = describe(&inc, Some("mm/s"));
        assert_eq!(title, "pump-1: vibration unusual pattern");
        assert_eq!(
            summary,
            "vibration shows a pattern not seen in the last 2000 readings (p = 3e-5); \
             value 4.1 mm/s against a recent range of 1.9–2.3 mm/s"
        );
    }
}
