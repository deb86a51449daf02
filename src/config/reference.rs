//! The reference configuration: `config/fieldwatch.toml`, printed by
//! `fieldwatch print-default-config`.
//!
//! It is written by hand (its comments are for operators) and held to the code by the tests
//! below: its values are the defaults of the config types (one deliberate exception: it ships
//! a local file sink, so a fresh install writes its tickets somewhere visible), and every
//! field of every config type is in it, set or as a commented-out example. A field added to
//! a config struct without a line here fails the build's tests.
//!
//! Conventions the tests rely on: an optional setting is shown commented out as `# key = value`
//! (or `# [table]`, `# [[array]]`); the commented-out lines uncommented together form a valid
//! configuration. A second way of writing the same key is shown as `# or: key = value`.

/// The text of `config/fieldwatch.toml`.
pub const REFERENCE: &str = include_str!("../../config/fieldwatch.toml");

/// The reference with its commented-out settings uncommented: every option set.
pub fn uncommented(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        match line.strip_prefix("# ") {
            Some(rest) if is_setting(rest) => out.push_str(rest),
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// Whether a comment's text is a setting (`key = …`, `[table]`, `[[array]]`) rather than prose.
fn is_setting(text: &str) -> bool {
    if text.starts_with('[') {
        return text.trim_end().ends_with(']') && !text.contains(' ');
    }
    text.contains(" = ") && text.parse::<toml::Table>().is_ok()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    use serde_json::Value;

    use super::*;
    use crate::config::Config;

    /// Every key path in a JSON tree: `a.b`, `list[].c`; entries of a list of tagged tables
    /// (sinks) as `list[<type>].c`, so each kind's fields are checked on their own.
    fn paths(v: &Value, prefix: &str, out: &mut BTreeSet<String>) {
        match v {
            Value::Object(map) => {
                for (k, child) in map {
                    let p = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    out.insert(p.clone());
                    paths(child, &p, out);
                }
            }
            Value::Array(items) => {
                for item in items {
                    let tag = item.get("type").and_then(Value::as_str).unwrap_or("");
                    paths(item, &format!("{prefix}[{tag}]"), out);
                }
            }
            _ => {}
        }
    }

    fn parse(text: &str) -> Config {
        Config::parse(text, Path::new("config/fieldwatch.toml")).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn the_reference_shows_the_defaults() {
        let mut shipped = serde_json::to_value(parse(REFERENCE)).unwrap();
        let mut defaults = serde_json::to_value(Config::default()).unwrap();
        // The one deliberate difference: a local file sink.
        let sinks = shipped["ticket"]["sinks"].take();
        assert_eq!(sinks.as_array().map(Vec::len), Some(1), "one shipped sink: {sinks}");
        assert_eq!(sinks[0]["type"], "file");
        defaults["ticket"]["sinks"].take();
        let (mut a, mut b) = (BTreeSet::new(), BTreeSet::new());
        paths(&shipped, "", &mut a);
        paths(&defaults, "", &mut b);
        for key in a.union(&b) {
            let pick = |v: &Value| key.split('.').try_fold(v.clone(), |v, k| v.get(k).cloned());
            assert_eq!(pick(&shipped), pick(&defaults), "config/fieldwatch.toml shows `{key}` other than its default");
        }
        assert_eq!(shipped, defaults);
    }

    #[test]
    fn the_reference_names_every_option_and_its_examples_are_valid() {
        let full_text = uncommented(REFERENCE);
        let full = parse(&full_text);
        let written: toml::Value = toml::from_str(&full_text).unwrap();
        let mut in_file = BTreeSet::new();
        paths(&serde_json::to_value(&written).unwrap(), "", &mut in_file);
        let mut fields = BTreeSet::new();
        paths(&serde_json::to_value(&full).unwrap(), "", &mut fields);
        let missing: Vec<_> = fields.difference(&in_file).collect();
        assert!(missing.is_empty(), "config/fieldwatch.toml does not show these options: {missing:?}");
        // Each kind of sink has its example.
        let kinds: BTreeSet<_> = full.ticket.sinks.iter().map(|s| s.kind()).collect();
        assert_eq!(kinds, BTreeSet::from(["file", "jira", "pagerduty", "servicenow", "webhook"]));
    }

    #[test]
    fn only_settings_are_uncommented() {
        assert!(is_setting("username = \"fieldwatch\""));
        assert!(is_setting("[[ticket.sinks]]"));
        assert!(!is_setting("Two daemons must never share one id."));
        assert!(!is_setting("or: password = { env = \"X\" }"));
        assert!(!is_setting("[modes] decides what happens"));
    }
}
