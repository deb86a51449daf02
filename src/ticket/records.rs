//! Which remote record belongs to which incident, for the ticketing APIs that ignore an
//! `Idempotency-Key` (ServiceNow, Jira).
//!
//! Such a sink writes the incident's key into the record it creates and looks the record up by
//! it before acting: an Open that finds its record does nothing more (it is a retry after a lost
//! create response), and Update and Resolve find their record after a restart. The ids of
//! records created or found since start are kept here to save the lookup; the lookup stays the
//! source of truth, so forgetting them (past [`KNOWN_MAX`], or at a restart) only costs lookups.

use std::collections::HashMap;
use std::future::Future;

use super::SinkError;

/// Remembered records beyond this are forgotten (and looked up again when needed).
pub const KNOWN_MAX: usize = 1024;

/// Incident key → id of its remote record (a ServiceNow sys_id, a Jira issue key), for records
/// created or found since start.
#[derive(Debug, Default)]
pub struct RemoteRecords {
    ids: HashMap<String, String>,
}

impl RemoteRecords {
    /// The id of `key`'s record: the remembered one, or else what `lookup` finds (remembered
    /// from then on). `lookup` is only awaited when no id is remembered.
    pub async fn find(
        &mut self,
        key: &str,
        lookup: impl Future<Output = Result<Option<String>, SinkError>>,
    ) -> Result<Option<String>, SinkError> {
        if let Some(id) = self.ids.get(key) {
            return Ok(Some(id.clone()));
        }
        let found = lookup.await?;
        self.remember(key, found.clone());
        Ok(found)
    }

    /// Creates `key`'s record unless `lookup` finds one, so a retried Open never opens a second
    /// record. `create` returns the new record's id if the response showed it; without one the
    /// next command looks the record up.
    pub async fn open(
        &mut self,
        key: &str,
        lookup: impl Future<Output = Result<Option<String>, SinkError>>,
        create: impl Future<Output = Result<Option<String>, SinkError>>,
    ) -> Result<(), SinkError> {
        if self.find(key, lookup).await?.is_none() {
            let id = create.await?;
            self.remember(key, id);
        }
        Ok(())
    }

    /// Forgets `key`'s record: its incident is resolved.
    pub fn forget(&mut self, key: &str) {
        self.ids.remove(key);
    }

    fn remember(&mut self, key: &str, id: Option<String>) {
        if let Some(id) = id {
            if self.ids.len() >= KNOWN_MAX {
                self.ids.clear();
            }
            self.ids.insert(key.to_string(), id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn found(id: &str) -> Result<Option<String>, SinkError> {
        Ok(Some(id.to_string()))
    }

    async fn none() -> Result<Option<String>, SinkError> {
        Ok(None)
    }

    async fn unreachable() -> Result<Option<String>, SinkError> {
        panic!("a remembered record is not looked up or created");
    }

    #[tokio::test]
    async fn a_found_record_is_remembered_and_not_looked_up_again() {
        let mut records = RemoteRecords::default();
        assert_eq!(records.find("k", none()).await.unwrap(), None);
        assert_eq!(records.find("k", found("SYS1")).await.unwrap().as_deref(), Some("SYS1"));
        assert_eq!(records.find("k", unreachable()).await.unwrap().as_deref(), Some("SYS1"));
        records.forget("k");
        assert_eq!(records.find("k", none()).await.unwrap(), None);
    }

    #[tokio::test]
    async fn open_creates_only_what_the_lookup_does_not_find() {
        let mut records = RemoteRecords::default();
        records.open("a", found("FS-1"), unreachable()).await.unwrap();
        records.open("b", none(), found("FS-2")).await.unwrap();
        records.open("b", unreachable(), unreachable()).await.unwrap();
        assert_eq!(records.find("b", unreachable()).await.unwrap().as_deref(), Some("FS-2"));
        // A create whose response showed no id leaves the record to be looked up.
        records.open("c", none(), none()).await.unwrap();
        assert_eq!(records.find("c", found("FS-3")).await.unwrap().as_deref(), Some("FS-3"));
        let failed = records.open("d", none(), async { Err(SinkError::Retry("503".into())) }).await;
        assert!(matches!(failed, Err(SinkError::Retry(_))));
    }

    #[tokio::test]
    async fn memory_is_bounded() {
        let mut records = RemoteRecords::default();
        for i in 0..KNOWN_MAX + 10 {
            records.find(&i.to_string(), found("x")).await.unwrap();
        }
        assert!(records.ids.len() <= KNOWN_MAX);
        assert_eq!(records.find("0", none()).await.unwrap(), None, "forgotten, looked up again");
    }
}
