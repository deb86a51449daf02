//! Why an incident's ticket does not go out (decided by the suppressor in `suppress`), as the
//! incident records it.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why no ticket is sent for an incident. Stored with the incident as the text it shows
/// (`maintenance: <reason>`, `silence: <reason>`, `observe`, `shadow`, `needs_review`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Suppression {
    /// A `[maintenance]` window covers the device at the incident's opening.
    Maintenance { reason: String },
    /// An operator silenced the device or its site.
    Silence { reason: String },
    /// The site is in `observe` mode: logged and counted only.
    Observe,
    /// The site is in `shadow` mode: the ticket is recorded, not sent.
    Shadow,
    /// The peak score is below `incident.min_confidence`: the ticket waits for a person.
    NeedsReview,
    /// The device began to deviate together with others at its site: a change of the site's
    /// operating context, noticed once for the site (see `site_wide.rs`).
    SiteWide { reason: String },
}

/// The labels of [`Suppression`], as counted in `fieldwatch_tickets_suppressed_total`.
pub const MAINTENANCE: &str = "maintenance";
pub const SILENCE: &str = "silence";
pub const OBSERVE: &str = "observe";
pub const SHADOW: &str = "shadow";
pub const NEEDS_REVIEW: &str = "needs_review";
pub const SITE_WIDE: &str = "site_wide";

impl Suppression {
    /// What it is counted as: the kind without its reason.
    pub fn label(&self) -> &'static str {
        match self {
            Suppression::Maintenance { .. } => MAINTENANCE,
            Suppression::Silence { .. } => SILENCE,
            Suppression::Observe => OBSERVE,
            Suppression::Shadow => SHADOW,
            Suppression::NeedsReview => NEEDS_REVIEW,
            Suppression::SiteWide { .. } => SITE_WIDE,
        }
    }

    /// Planned work: its ticket opens if the fault outlasts the work.
    pub fn is_planned_work(&self) -> bool {
        matches!(self, Suppression::Maintenance { .. } | Suppression::Silence { .. })
    }

    /// The reason its ticket is kept under in the `held` tree; `None`: it is kept nowhere.
    pub fn held_as(&self) -> Option<&'static str> {
        matches!(self, Suppression::Shadow | Suppression::NeedsReview).then(|| self.label())
    }
}

impl std::fmt::Display for Suppression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Suppression::Maintenance { reason }
            | Suppression::Silence { reason }
            | Suppression::SiteWide { reason } => {
                write!(f, "{}: {reason}", self.label())
            }
            _ => f.write_str(self.label()),
        }
    }
}

impl std::str::FromStr for Suppression {
    type Err = String;

    /// Reads the stored text back; every form ever stored is accepted.
    fn from_str(s: &str) -> Result<Suppression, String> {
        Ok(match s.split_once(": ") {
            Some((MAINTENANCE, reason)) => Suppression::Maintenance { reason: reason.to_string() },
            Some((SILENCE, reason)) => Suppression::Silence { reason: reason.to_string() },
            Some((SITE_WIDE, reason)) => Suppression::SiteWide { reason: reason.to_string() },
            _ if s == OBSERVE => Suppression::Observe,
            _ if s == SHADOW => Suppression::Shadow,
            _ if s == NEEDS_REVIEW => Suppression::NeedsReview,
            _ => return Err(format!("unknown suppression {s:?}")),
        })
    }
}

impl Serialize for Suppression {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Suppression {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Suppression, D::Error> {
        String::deserialize(deserializer)?.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_suppression_is_stored_as_the_text_it_always_had() {
        let cases = [
            (Suppression::Maintenance { reason: "compressor overhaul".into() }, "maintenance: compressor overhaul"),
            (Suppression::Silence { reason: "crane lift: north yard".into() }, "silence: crane lift: north yard"),
            (Suppression::Silence { reason: String::new() }, "silence: "),
            (Suppression::Observe, "observe"),
            (Suppression::Shadow, "shadow"),
            (Suppression::NeedsReview, "needs_review"),
            (
                Suppression::SiteWide { reason: "4 of 10 devices at north began together".into() },
                "site_wide: 4 of 10 devices at north began together",
            ),
        ];
        for (s, text) in cases {
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, serde_json::to_string(text).unwrap());
            assert_eq!(serde_json::from_str::<Suppression>(&json).unwrap(), s, "{text}");
        }
        assert!(serde_json::from_str::<Suppression>("\"paused\"").is_err());
    }

    #[test]
    fn only_shadow_and_review_keep_their_ticket_and_only_planned_work_ends() {
        let maintenance = Suppression::Maintenance { reason: "r".into() };
        assert_eq!(maintenance.held_as(), None);
        assert!(maintenance.is_planned_work());
        assert_eq!(Suppression::Shadow.held_as(), Some("shadow"));
        assert_eq!(Suppression::NeedsReview.held_as(), Some("needs_review"));
        assert_eq!(Suppression::Observe.held_as(), None);
        assert!(!Suppression::Observe.is_planned_work());
    }
}
