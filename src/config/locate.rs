//! Finds the line of a key path (`ticket.sinks[1].url`) in config text, so that errors about
//! values (not only about syntax) point an operator at the line to fix.

use std::ops::Range;

use toml_edit::{ArrayOfTables, ImDocument, InlineTable, Item, Table, Value};

/// The 1-based line where `key` is written in `text`; for a key left at its default, the line
/// of the nearest enclosing table or entry that is written. `None` when nothing of the path is
/// in the text (or the text does not parse).
pub fn line_of(text: &str, key: &str) -> Option<usize> {
    let doc = ImDocument::parse(text).ok()?;
    let mut node = Node::Table(doc.as_table());
    let mut found: Option<Range<usize>> = None;
    for segment in segments(key) {
        let Some((span, next)) = node.step(&segment) else { break };
        found = span.or(found);
        node = next;
    }
    let start = found?.start.min(text.len());
    Some(text[..start].matches('\n').count() + 1)
}

/// Where the walk down a key path stands.
enum Node<'a> {
    Table(&'a Table),
    Inline(&'a InlineTable),
    Tables(&'a ArrayOfTables),
    Array(&'a toml_edit::Array),
    Leaf,
}

impl<'a> Node<'a> {
    fn of_item(item: &'a Item) -> Node<'a> {
        match item {
            Item::Table(t) => Node::Table(t),
            Item::ArrayOfTables(a) => Node::Tables(a),
            Item::Value(v) => Node::of_value(v),
            Item::None => Node::Leaf,
        }
    }

    fn of_value(value: &'a Value) -> Node<'a> {
        match value {
            Value::InlineTable(t) => Node::Inline(t),
            Value::Array(a) => Node::Array(a),
            _ => Node::Leaf,
        }
    }

    /// One step down: the span to point at, and the node there.
    fn step(&self, segment: &Segment<'_>) -> Option<(Option<Range<usize>>, Node<'a>)> {
        match (self, segment) {
            (Node::Table(t), Segment::Key(k)) => t.get_key_value(k).map(|(key, v)| (key.span(), Node::of_item(v))),
            (Node::Inline(t), Segment::Key(k)) => t.get_key_value(k).map(|(key, v)| (key.span(), Node::of_item(v))),
            (Node::Tables(a), Segment::Index(i)) => a.get(*i).map(|t| (t.span(), Node::Table(t))),
            (Node::Array(a), Segment::Index(i)) => a.get(*i).map(|v| (v.span(), Node::of_value(v))),
            _ => None,
        }
    }
}

enum Segment<'a> {
    Key(&'a str),
    Index(usize),
}

/// `a.b[2].c` → a, b, [2], c.
fn segments(key: &str) -> Vec<Segment<'_>> {
    let mut out = Vec::new();
    for part in key.split('.') {
        let (name, rest) = part.split_once('[').unwrap_or((part, ""));
        if !name.is_empty() {
            out.push(Segment::Key(name));
        }
        out.extend(rest.split('[').filter_map(|i| i.trim_end_matches(']').parse().ok()).map(Segment::Index));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::line_of;

    const TEXT: &str = "[mqtt]\nhost = \"a\"\ntopics = [\n  \"x/#\",\n  \"y/#\",\n]\n\n[[ticket.sinks]]\ntype = \"file\"\n\n[[ticket.sinks]]\ntype = \"webhook\"\nurl = \"ftp://x\"\ntoken = { file = \"\" }\n";

    #[test]
    fn finds_keys_entries_and_the_nearest_written_parent() {
        assert_eq!(line_of(TEXT, "mqtt.host"), Some(2));
        assert_eq!(line_of(TEXT, "mqtt.topics[1]"), Some(5));
        assert_eq!(line_of(TEXT, "ticket.sinks[1].url"), Some(13));
        assert_eq!(line_of(TEXT, "ticket.sinks[1].token.file"), Some(14));
        // Not written: the enclosing entry, then the enclosing table.
        assert_eq!(line_of(TEXT, "ticket.sinks[1].timeout"), Some(11));
        assert_eq!(line_of(TEXT, "mqtt.keep_alive"), Some(1));
        assert_eq!(line_of(TEXT, "store.retention"), None);
    }
}
