//! Ad-hoc silences: "no tickets for this device (or site) for the next two hours", set by an
//! operator through the admin API or `fieldwatch silence`, expiring by themselves.

use serde::{Deserialize, Serialize};

/// One silence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Silence {
    pub id: String,
    pub device: Option<String>,
    pub site: Option<String>,
    /// Wall-clock ms when it was set.
    pub created_at: i64,
    /// Wall-clock ms when it ends.
    pub until: i64,
    pub reason: String,
}

impl Silence {
    /// Whether it silences `device` at `site` at wall-clock time `now`.
    pub fn covers(&self, device: &str, site: Option<&str>, now: i64) -> bool {
        if now >= self.until {
            return false;
        }
        match (&self.device, &self.site) {
            (Some(d), _) => d == device,
            (None, Some(s)) => site == Some(s.as_str()),
            (None, None) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silence_targets_device_or_site_until_it_expires() {
        let s = Silence {
            id: "s1".into(),
            device: None,
            site: Some("north".into()),
            created_at: 0,
            until: 1000,
            reason: "crane lift".into(),
        };
        assert!(s.covers("any", Some("north"), 999));
        assert!(!s.covers("any", Some("south"), 10));
        assert!(!s.covers("any", Some("north"), 1000), "expired");
    }
}
