//! Why an open incident changed: what the ticket update says, and what the metrics count.

use super::format_duration;
use crate::incident::Verdict;
use crate::reading::format_ts;

/// Why an incident's ticket is updated, or closed by a person. Its text (`Display`) is the
/// note the technician reads.
#[derive(Debug, Clone, PartialEq)]
pub enum UpdateReason {
    /// The fault came back within the cool-down after it resolved: the same ticket is updated
    /// instead of a new one opened (a ticket deduplicated).
    Recurred {
        /// How long it had been resolved (ms).
        quiet_for_ms: i64,
        /// The incident's reopen count, this recurrence included.
        reopen_count: u32,
    },
    /// Opened and resolved too often: from now on held open for longer.
    Flapping {
        /// How many times it has opened.
        opened_times: u32,
        /// When it first opened (ms).
        since: i64,
        /// How long it must now stay quiet to resolve (ms).
        quiet_for_ms: i64,
    },
    /// Nobody acknowledged it by its respond-by time (ms).
    Escalated { respond_by: Option<i64> },
    /// A technician's verdict, in the words the ticket shows.
    Verdict { verdict: Verdict, words: String },
}

impl std::fmt::Display for UpdateReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpdateReason::Recurred { quiet_for_ms, reopen_count } => {
                write!(f, "Recurred {} after it resolved (reopen #{reopen_count})", format_duration(*quiet_for_ms))
            }
            UpdateReason::Flapping { opened_times, since, quiet_for_ms } => write!(
                f,
                "Flapping: opened {opened_times} times since {}; held open until quiet for {}",
                format_ts(*since),
                format_duration(*quiet_for_ms)
            ),
            UpdateReason::Escalated { respond_by } => write!(
                f,
                "Escalated: not acknowledged by its respond-by time {}",
                respond_by.map(format_ts).unwrap_or_default()
            ),
            UpdateReason::Verdict { words, .. } => f.write_str(words),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_reason_reads_as_the_ticket_note() {
        let recurred = UpdateReason::Recurred { quiet_for_ms: 10_000, reopen_count: 1 };
        assert_eq!(recurred.to_string(), "Recurred 10 s after it resolved (reopen #1)");
        let flapping = UpdateReason::Flapping { opened_times: 3, since: 0, quiet_for_ms: 30_000 };
        assert_eq!(
            flapping.to_string(),
            "Flapping: opened 3 times since 1970-01-01T00:00:00Z; held open until quiet for 30 s"
        );
        let escalated = UpdateReason::Escalated { respond_by: Some(100_000) };
        assert_eq!(escalated.to_string(), "Escalated: not acknowledged by its respond-by time 1970-01-01T00:01:40Z");
        let verdict =
            UpdateReason::Verdict { verdict: Verdict::Confirmed, words: "Technician verdict: confirmed".into() };
        assert_eq!(verdict.to_string(), "Technician verdict: confirmed");
    }
}
