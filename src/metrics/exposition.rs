//! The two text formats a Prometheus scraper reads, and which one a request gets.
//!
//! prometheus-client encodes OpenMetrics 1.0.0 only. Prometheus text format 0.0.4 is what every
//! scraper and `promtool check metrics` read, so it is the default, rewritten from the
//! OpenMetrics text here; a scraper that asks for OpenMetrics (Prometheus does, first) gets it
//! as encoded. The formats differ in a few places only: a counter family is named without
//! `_total` in OpenMetrics and with it in 0.0.4 (its samples carry `_total` in both); `info` and
//! `unknown` families are gauges and `untyped` in 0.0.4; `# UNIT`, `# EOF`, `_created` samples
//! and exemplars exist only in OpenMetrics; timestamps are seconds there and milliseconds here.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::Write;

/// How `/metrics` is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text format 0.0.4: the default.
    Text,
    /// OpenMetrics 1.0.0, for a scraper that asks for `application/openmetrics-text`.
    OpenMetrics,
}

impl Format {
    /// The format an `Accept` header prefers: the supported media range with the highest
    /// quality, the first one on a tie; 0.0.4 when nothing supported is acceptable.
    pub fn negotiate(accept: Option<&str>) -> Format {
        let mut best = (Format::Text, 0.0);
        for range in accept.unwrap_or("").split(',') {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let format = match media.as_str() {
                "application/openmetrics-text" => Format::OpenMetrics,
                "text/plain" | "text/*" | "*/*" => Format::Text,
                _ => continue,
            };
            let mut quality = Some(1.0);
            for param in parts {
                if let Some((key, value)) = param.split_once('=') {
                    if key.trim().eq_ignore_ascii_case("q") {
                        quality = value.trim().parse::<f64>().ok().filter(|q| (0.0..=1.0).contains(q));
                    }
                }
            }
            match quality {
                Some(q) if q > best.1 => best = (format, q),
                _ => {}
            }
        }
        best.0
    }

    /// The `Content-Type` of a response in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// Rewrites an OpenMetrics exposition (as prometheus-client writes it: `# HELP` before
/// `# TYPE`, each family's samples together) in Prometheus text format 0.0.4.
pub fn text_from_openmetrics(openmetrics: &str) -> String {
    let types: HashMap<&str, &str> =
        openmetrics.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.split_once(' ')).collect();
    let mut out = String::with_capacity(openmetrics.len() + openmetrics.len() / 16);
    let mut family: Option<(&str, &str)> = None;
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            let kind = types.get(name).copied().unwrap_or("unknown");
            let _ = writeln!(out, "# HELP {} {}", text_name(name, kind), text_help(help));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            family = Some((name, kind));
            let _ = writeln!(out, "# TYPE {} {}", text_name(name, kind), text_type(kind));
        } else if line.starts_with('#') || line.trim().is_empty() {
            // `# UNIT` and `# EOF` have no counterpart in 0.0.4.
        } else if let Some(sample) = text_sample(line, family) {
            out.push_str(&sample);
            out.push('\n');
        }
    }
    out
}

/// A family's name in 0.0.4: the name its samples carry.
fn text_name(name: &str, kind: &str) -> String {
    match kind {
        "counter" => format!("{name}_total"),
        "info" => format!("{name}_info"),
        _ => name.to_string(),
    }
}

fn text_type(kind: &str) -> &'static str {
    match kind {
        "counter" => "counter",
        "gauge" | "info" | "stateset" => "gauge",
        "histogram" => "histogram",
        "summary" => "summary",
        _ => "untyped",
    }
}

/// Help text escaped for 0.0.4, which knows `\\` and `\n` only (OpenMetrics also `\"`).
fn text_help(help: &str) -> Cow<'_, str> {
    if !help.contains('\\') {
        return Cow::Borrowed(help);
    }
    let mut out = String::with_capacity(help.len());
    let mut chars = help.chars();
    while let Some(c) = chars.next() {
        match (c, chars.clone().next()) {
            ('\\', Some('\\')) | ('\\', Some('n')) => {
                out.push('\\');
                out.extend(chars.next());
            }
            ('\\', Some('"')) => out.extend(chars.next()),
            // A lone backslash stands for itself.
            ('\\', _) => out.push_str("\\\\"),
            (c, _) => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// One sample line in 0.0.4, or `None` for a sample 0.0.4 has no place for (`_created`).
fn text_sample<'a>(line: &'a str, family: Option<(&str, &str)>) -> Option<Cow<'a, str>> {
    let name_end = line.find(['{', ' ']).unwrap_or(line.len());
    if let Some((name, kind)) = family {
        let created = line[..name_end].strip_prefix(name) == Some("_created");
        if created && matches!(kind, "counter" | "histogram" | "summary" | "gaugehistogram") {
            return None;
        }
    }
    let series_end =
        if line[name_end..].starts_with('{') { name_end + label_set_len(&line[name_end..])? } else { name_end };
    // What follows the series: the value, maybe a timestamp, maybe ` # ` and an exemplar.
    let rest = &line[series_end..];
    let mut fields = rest.split('#').next().unwrap_or(rest).split_whitespace();
    let value = fields.next()?;
    let Some(seconds) = fields.next() else {
        return Some(if rest.contains('#') {
            Cow::Owned(format!("{} {value}", &line[..series_end]))
        } else {
            Cow::Borrowed(line)
        });
    };
    let millis = (seconds.parse::<f64>().ok()? * 1000.0).round() as i64;
    Some(Cow::Owned(format!("{} {value} {millis}", &line[..series_end])))
}

/// The length of the `{...}` label set at the start of `s`, quotes and escapes respected.
fn label_set_len(s: &str) -> Option<usize> {
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '}' if !quoted => return Some(i + 1),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                                     version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

    #[test]
    fn text_004_is_the_default_and_openmetrics_is_served_to_who_asks() {
        assert_eq!(Format::negotiate(None), Format::Text);
        assert_eq!(Format::negotiate(Some("")), Format::Text);
        assert_eq!(Format::negotiate(Some("*/*")), Format::Text);
        assert_eq!(Format::negotiate(Some("text/plain;version=0.0.4")), Format::Text);
        assert_eq!(Format::negotiate(Some("application/json")), Format::Text);
        assert_eq!(Format::negotiate(Some(PROMETHEUS_ACCEPT)), Format::OpenMetrics);
        assert_eq!(Format::negotiate(Some("application/openmetrics-text; version=1.0.0")), Format::OpenMetrics);
        assert_eq!(Format::negotiate(Some("Application/OpenMetrics-Text")), Format::OpenMetrics);
    }

    #[test]
    fn the_higher_quality_wins_and_q_zero_is_refused() {
        assert_eq!(Format::negotiate(Some("text/plain, application/openmetrics-text;q=0.5")), Format::Text);
        assert_eq!(
            Format::negotiate(Some("text/plain;q=0.2, application/openmetrics-text;q=0.5")),
            Format::OpenMetrics
        );
        assert_eq!(Format::negotiate(Some("application/openmetrics-text;q=0")), Format::Text);
        // On a tie the first listed wins.
        assert_eq!(Format::negotiate(Some("application/openmetrics-text, text/plain")), Format::OpenMetrics);
        assert_eq!(Format::negotiate(Some("text/plain, application/openmetrics-text")), Format::Text);
    }

    #[test]
    fn counters_are_named_with_total_and_openmetrics_only_lines_are_dropped() {
        let om = "# HELP fw_messages MQTT messages received.\n\
                  # TYPE fw_messages counter\n\
                  fw_messages_total 3\n\
                  fw_messages_created 1700000000.5\n\
                  # HELP fw_lag_seconds Lag.\n\
                  # TYPE fw_lag_seconds gauge\n\
                  # UNIT fw_lag_seconds seconds\n\
                  fw_lag_seconds 0.25\n\
                  # EOF\n";
        assert_eq!(
            text_from_openmetrics(om),
            "# HELP fw_messages_total MQTT messages received.\n\
             # TYPE fw_messages_total counter\n\
             fw_messages_total 3\n\
             # HELP fw_lag_seconds Lag.\n\
             # TYPE fw_lag_seconds gauge\n\
             fw_lag_seconds 0.25\n"
        );
    }

    #[test]
    fn histograms_keep_their_samples_and_info_becomes_a_gauge() {
        let om = "# HELP fw_commit_seconds Commit.\n\
                  # TYPE fw_commit_seconds histogram\n\
                  fw_commit_seconds_sum{sink=\"a\"} 0.5\n\
                  fw_commit_seconds_count{sink=\"a\"} 2\n\
                  fw_commit_seconds_bucket{le=\"1.0\",sink=\"a\"} 2\n\
                  fw_commit_seconds_bucket{le=\"+Inf\",sink=\"a\"} 2\n\
                  # HELP fw_build Build.\n\
                  # TYPE fw_build info\n\
                  fw_build_info{version=\"1.2.3\"} 1\n\
                  # HELP fw_other Whatever.\n\
                  # TYPE fw_other unknown\n\
                  fw_other 7\n";
        let text = text_from_openmetrics(om);
        assert!(text.contains("# TYPE fw_commit_seconds histogram\nfw_commit_seconds_sum{sink=\"a\"} 0.5\n"), "{text}");
        assert!(text.contains("fw_commit_seconds_bucket{le=\"+Inf\",sink=\"a\"} 2\n"), "{text}");
        assert!(text
            .contains("# HELP fw_build_info Build.\n# TYPE fw_build_info gauge\nfw_build_info{version=\"1.2.3\"} 1\n"));
        assert!(text.contains("# TYPE fw_other untyped\nfw_other 7\n"), "{text}");
    }

    #[test]
    fn exemplars_are_dropped_and_timestamps_become_milliseconds() {
        let om = "# HELP c C.\n\
                  # TYPE c counter\n\
                  c_total{a=\"x # {y} \\\" z\"} 4 # {trace=\"1\"} 1.0 1700000000.0\n\
                  c_total{a=\"w\"} 5 1700000000.25\n";
        assert_eq!(
            text_from_openmetrics(om),
            "# HELP c_total C.\n# TYPE c_total counter\nc_total{a=\"x # {y} \\\" z\"} 4\nc_total{a=\"w\"} 5 1700000000250\n"
        );
    }

    #[test]
    fn help_text_keeps_its_meaning_under_the_004_escapes() {
        assert_eq!(text_help("plain"), "plain");
        assert_eq!(text_help(r#"a \"quoted\" word, a \\ and a \n"#), r#"a "quoted" word, a \\ and a \n"#);
        assert_eq!(text_help(r"C:\dir"), r"C:\\dir");
    }
}
