//! A ticket as headed sections of plain lines, for ticket systems whose body is free text
//! (ServiceNow's `description`) or a document built from paragraphs (Jira's ADF).

use super::Ticket;
use crate::incident::num;

/// One headed block of the ticket body.
#[derive(Debug, Clone, PartialEq)]
pub struct Section {
    pub heading: &'static str,
    /// Never empty: a section without content is left out.
    pub lines: Vec<String>,
}

/// The technician's view of a ticket, most important first.
pub fn sections(t: &Ticket) -> Vec<Section> {
    let what = if t.what_happened.is_empty() { &t.summary } else { &t.what_happened };
    [
        section("What happened", vec![what.clone()]),
        section("Equipment", equipment(t)),
        section("Evidence", evidence(t)),
        section("Priority", priority(t)),
        section(
            "Checks done",
            t.checks_done.iter().map(|c| format!("{}: {} ({})", c.check, c.result, c.detail)).collect(),
        ),
        section("Next steps", t.next_steps.iter().enumerate().map(|(i, s)| format!("{}. {s}", i + 1)).collect()),
        section("Runbook", t.runbook_link.iter().cloned().collect()),
        section("Ticket", vec![format!("{} (fieldwatch, {}), fault {}", t.id, t.origin, t.fault)]),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The sections as text: a heading line, its lines, a blank line between sections.
pub fn plain_text(sections: &[Section]) -> String {
    sections.iter().map(|s| format!("{}:\n{}", s.heading, s.lines.join("\n"))).collect::<Vec<_>>().join("\n\n")
}

/// The text of an Update or Resolve: the note the incident policy wrote, else the summary.
pub fn note_or_summary(t: &Ticket) -> &str {
    t.note.as_deref().filter(|n| !n.is_empty()).unwrap_or(&t.summary)
}

fn section(heading: &'static str, lines: Vec<String>) -> Option<Section> {
    let lines: Vec<String> = lines.into_iter().filter(|l| !l.trim().is_empty()).collect();
    (!lines.is_empty()).then_some(Section { heading, lines })
}

fn equipment(t: &Ticket) -> Vec<String> {
    let mut lines = vec![match &t.site {
        Some(site) => format!("Device {} at site {site}, metric {}", t.device, t.metric),
        None => format!("Device {}, metric {}", t.device, t.metric),
    }];
    if let Some(a) = &t.asset {
        let mut line = format!("Asset {}", a.id);
        if let Some(model) = &a.model {
            line.push_str(&format!(", model {model}"));
        }
        if let Some(location) = &a.location {
            line.push_str(&format!(", {location}"));
        }
        line.push_str(&format!(", criticality {}", a.criticality));
        if a.safety_critical {
            line.push_str(", SAFETY-CRITICAL");
        }
        lines.push(line);
        if !a.contacts.is_empty() {
            lines.push(format!("On-site contacts: {}", a.contacts.join(", ")));
        }
    }
    if let Some(c) = &t.customer {
        lines.push(format!("Customer {} ({}, {})", c.name, c.id, c.tier));
    }
    lines
}

fn evidence(t: &Ticket) -> Vec<String> {
    let e = &t.evidence;
    let unit = e.unit.as_deref().map(|u| format!(" {u}")).unwrap_or_default();
    let mut peak = format!("Peak value {}{unit}", num(e.value));
    if let Some(b) = e.baseline {
        peak.push_str(&format!(", baseline {}{unit}", num(b)));
    }
    if let Some(s) = e.spread {
        peak.push_str(&format!(" ± {}", num(s)));
    }
    if let Some(z) = e.z {
        peak.push_str(&format!(", {:.1}σ", z));
    }
    if let Some(l) = e.limit {
        peak.push_str(&format!(", limit {}{unit}", num(l)));
    }
    let mut lines = vec![
        peak,
        format!(
            "Detector {}, score {}, {} since {}",
            e.detector,
            num(e.score),
            match e.anomalous_readings {
                1 => "1 anomalous reading".to_string(),
                n => format!("{n} anomalous readings"),
            },
            t.first_seen
        ),
    ];
    if !e.recent.is_empty() {
        let recent: Vec<String> = e.recent.iter().map(|r| format!("{} {}", r.ts, num(r.value))).collect();
        lines.push(format!("Recent readings: {}", recent.join(", ")));
    }
    lines
}

fn priority(t: &Ticket) -> Vec<String> {
    let mut lines =
        vec![format!("{}, respond by {}, confidence {}", t.priority.as_str(), t.respond_by, num(t.confidence))];
    if let Some(at) = &t.predicted_failure_at {
        lines.push(format!("Predicted to reach the level named above at {at}, at its current rate"));
    }
    if t.flapping {
        lines.push("Flapping: opened and resolved repeatedly, held open".into());
    }
    if t.needs_review {
        lines.push("Low confidence: review before dispatching a technician".into());
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ticket::tests::sample_ticket;

    #[test]
    fn sections_read_in_order_and_skip_empty_ones() {
        let mut t = sample_ticket();
        t.runbook_link = None;
        let s = sections(&t);
        let headings: Vec<_> = s.iter().map(|s| s.heading).collect();
        assert_eq!(
            headings,
            ["What happened", "Equipment", "Evidence", "Priority", "Checks done", "Next steps", "Ticket"]
        );
        let text = plain_text(&s);
        assert!(text.starts_with("What happened:\ndischarge_temp rose to 97.1 °C"), "{text}");
        assert!(text.contains("Peak value 97.1 °C, baseline 70.02 °C ± 0.4, 67.8σ"), "{text}");
        assert!(text.contains("Next steps:\n1. Check the condenser fan\n2. "), "{text}");
        assert!(text.contains("sensor alive: ok (reported 12 readings in the last minute)"), "{text}");
    }
}
