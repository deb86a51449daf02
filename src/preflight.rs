//! `fieldwatch check-config`: what a valid config can still get wrong on this machine — files
//! it names that are missing or unreadable, secrets not set, no ticket sink, subscriptions that
//! can never match the topic pattern. Errors fail the check; warnings are printed.

use std::path::Path;

use crate::config::{Config, SecretRef};
use crate::ticket::SinkConfig;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The daemon would fail to start or to deliver.
    Error,
    /// Probably a mistake; the daemon runs.
    Warning,
}

/// One thing found, with the config key it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub severity: Severity,
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let level = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{level}: {}: {}", self.key, self.message)
    }
}

/// Checks `config` against this machine. Paths are checked as the daemon opens them (relative
/// ones from the working directory, which is `/` under systemd).
pub fn check(config: &Config) -> Vec<Finding> {
    let mut out = Vec::new();
    let error = |key: String, message: String| Finding { severity: Severity::Error, key, message };
    let warning = |key: String, message: String| Finding { severity: Severity::Warning, key, message };
    let mut file = |key: String, path: &Path| {
        if let Err(e) = std::fs::File::open(path) {
            out.push(error(key, format!("cannot read {}: {e}", path.display())));
        }
    };
    let mut secrets: Vec<(String, &SecretRef)> = Vec::new();
    if let Some(p) = &config.mqtt.password {
        secrets.push(("mqtt.password".into(), p));
    }
    if let Some(t) = &config.admin.token {
        secrets.push(("admin.token".into(), t));
    }
    if let Some(tls) = &config.mqtt.tls {
        file("mqtt.tls.ca_file".into(), &tls.ca_file);
        if let Some(c) = &tls.client_cert_file {
            file("mqtt.tls.client_cert_file".into(), c);
        }
        if let Some(k) = &tls.client_key_file {
            file("mqtt.tls.client_key_file".into(), k);
        }
    }
    for (i, sink) in config.ticket.sinks.iter().enumerate() {
        let key = format!("ticket.sinks[{i}]");
        match sink {
            SinkConfig::Webhook(c) => secrets.extend(c.token.iter().map(|t| (format!("{key}.token"), t))),
            SinkConfig::ServiceNow(c) => secrets.push((format!("{key}.password"), &c.password)),
            SinkConfig::Jira(c) => secrets.push((format!("{key}.api_token"), &c.api_token)),
            SinkConfig::PagerDuty(c) => secrets.push((format!("{key}.routing_key"), &c.routing_key)),
            SinkConfig::File(c) => {
                let dir = c.path.parent().map(Path::to_path_buf).unwrap_or_default();
                if !dir.as_os_str().is_empty() && !dir.is_dir() {
                    // systemd's StateDirectory= may create it only when the service starts.
                    out.push(warning(
                        format!("{key}.path"),
                        format!("directory {} does not exist (yet)", dir.display()),
                    ));
                }
            }
        }
    }
    for (key, secret) in secrets {
        if let Some(path) = &secret.file {
            match std::fs::read_to_string(path) {
                Ok(s) if s.trim().is_empty() => {
                    out.push(error(format!("{key}.file"), format!("{} is empty", path.display())))
                }
                Ok(_) => {}
                Err(e) => out.push(error(format!("{key}.file"), format!("cannot read {}: {e}", path.display()))),
            }
        } else if let Some(var) = &secret.env {
            if std::env::var_os(var).is_some_and(|v| v.is_empty()) {
                out.push(error(format!("{key}.env"), format!("`{var}` is set but empty")));
            } else if std::env::var_os(var).is_none() {
                out.push(warning(
                    format!("{key}.env"),
                    format!("`{var}` is not set here; it must be set in the daemon's environment"),
                ));
            }
        }
    }
    if config.ticket.sinks.is_empty() {
        out.push(warning(
            "ticket.sinks".into(),
            "no sink is configured: incidents are recorded but no ticket is sent anywhere".into(),
        ));
    }
    if config.decode.device_field.is_none() {
        if let Some(pattern) = &config.decode.topic_pattern {
            for (i, filter) in config.mqtt.topics.iter().enumerate() {
                let sparkplug = config.decode.sparkplug.is_some() && filter.starts_with("spBv1.0/");
                if !sparkplug && !can_match(filter, pattern) {
                    out.push(warning(
                        format!("mqtt.topics[{i}]"),
                        format!("`{filter}` can never match decode.topic_pattern `{pattern}`: every message on it would be rejected (no_device)"),
                    ));
                }
            }
        }
    }
    out
}

/// True when some topic matches both the subscription `filter` (with `+` and `#`) and the
/// decode `pattern` (literal levels and `{placeholder}`/`+` levels of one level each).
pub fn can_match(filter: &str, pattern: &str) -> bool {
    // A shared subscription `$share/<group>/<filter>` matches what its filter matches.
    let filter = match filter.strip_prefix("$share/").and_then(|rest| rest.split_once('/')) {
        Some((_group, inner)) => inner,
        None => filter,
    };
    let f: Vec<&str> = filter.split('/').collect();
    let p: Vec<&str> = pattern.split('/').collect();
    let placeholder = |s: &str| s == "+" || (s.starts_with('{') && s.ends_with('}'));
    for (i, level) in f.iter().enumerate() {
        if *level == "#" {
            // `#` also matches the parent level itself.
            return p.len() >= i;
        }
        let Some(pl) = p.get(i) else { return false };
        if !(*level == "+" || placeholder(pl) || level == pl) {
            return false;
        }
    }
    f.len() == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_matched_against_the_pattern() {
        let p = "plant/{site}/{device}/telemetry";
        for ok in
            ["plant/+/+/telemetry", "plant/#", "#", "plant/north/+/telemetry", "+/+/pump-1/+", "$share/fw/plant/#"]
        {
            assert!(can_match(ok, p), "{ok}");
        }
        for never in ["plant/+/telemetry", "factory/#", "plant/+/+/status", "plant/+/+/telemetry/x"] {
            assert!(!can_match(never, p), "{never}");
        }
    }

    #[test]
    fn missing_files_and_no_sink_are_reported_with_their_keys() {
        let text = r#"
            [mqtt]
            username = "fw"
            password = { file = "no-such-password" }
            topics = ["factory/#"]
            [mqtt.tls]
            ca_file = "/no/such/ca.pem"
        "#;
        let config = Config::parse(text, Path::new("x.toml")).unwrap();
        let found = check(&config);
        let keys: Vec<(&str, Severity)> = found.iter().map(|f| (f.key.as_str(), f.severity)).collect();
        assert!(keys.contains(&("mqtt.password.file", Severity::Error)), "{found:?}");
        assert!(keys.contains(&("mqtt.tls.ca_file", Severity::Error)), "{found:?}");
        assert!(keys.contains(&("ticket.sinks", Severity::Warning)), "{found:?}");
        assert!(keys.contains(&("mqtt.topics[0]", Severity::Warning)), "{found:?}");
    }

    #[test]
    fn a_sparkplug_filter_is_no_mismatch_once_sparkplug_is_decoded() {
        let topics = "[mqtt]\ntopics = [\"plant/+/+/telemetry\", \"spBv1.0/#\"]\n";
        let warned = |text: &str| {
            let config = Config::parse(text, Path::new("x.toml")).unwrap();
            check(&config).iter().any(|f| f.key == "mqtt.topics[1]")
        };
        assert!(warned(topics), "without [decode.sparkplug] its messages would all be rejected");
        assert!(!warned(&format!("{topics}[decode.sparkplug]\n")));
    }
}
