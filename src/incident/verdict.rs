//! What a technician found: the verdict that closes the loop on an incident.

use serde::{Deserialize, Serialize};

/// What the technician found. Stored with the incident as its snake-case name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum Verdict {
    /// A real fault: acknowledged, work is under way.
    Confirmed,
    /// Nothing was wrong: resolve, and make the detector less sensitive to this.
    FalseAlarm,
    /// The fault was real and is fixed: resolve.
    Fixed,
    /// Known and accepted: resolve, and never reopen automatically.
    WontFix,
}

impl Verdict {
    /// Every verdict.
    pub const ALL: [Verdict; 4] = [Verdict::Confirmed, Verdict::FalseAlarm, Verdict::Fixed, Verdict::WontFix];

    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Confirmed => "confirmed",
            Verdict::FalseAlarm => "false_alarm",
            Verdict::Fixed => "fixed",
            Verdict::WontFix => "wont_fix",
        }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verdict_is_stored_as_its_name() {
        for v in Verdict::ALL {
            let json = serde_json::to_string(&v).unwrap();
            assert_eq!(json, format!("\"{}\"", v.as_str()));
            assert_eq!(serde_json::from_str::<Verdict>(&json).unwrap(), v);
        }
    }
}
