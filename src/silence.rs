//! Ad-hoc silences: "no tickets for this device (or site) for the next two hours", set by an
//! operator through the admin API or `fieldwatch silence`, expiring by themselves.
//!
//! [`Silences`] keeps them in memory over the store's `silences` tree: the admin API adds and
//! removes through it, and the core asks it about every incident that opens and, on every
//! tick, about every incident held back, without reading the store.

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError, RwLock};

use serde::{Deserialize, Serialize};

use crate::store::{Store, StoreError};

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

/// Every silence, stored and in memory; shared by the admin API (which sets them) and the core
/// (which obeys them).
pub struct Silences {
    store: Arc<Store>,
    /// The stored silences by id, in the store's order, expired ones included (the store keeps
    /// them too; an expired silence covers nothing).
    by_id: RwLock<BTreeMap<String, Silence>>,
}

impl Silences {
    /// Reads the stored silences.
    pub fn load(store: Arc<Store>) -> Result<Silences, StoreError> {
        let by_id = store.silences::<Silence>()?.into_iter().map(|s| (s.id.clone(), s)).collect();
        Ok(Silences { store, by_id: RwLock::new(by_id) })
    }

    /// Stores a silence; it covers from now on.
    pub fn add(&self, silence: Silence) -> Result<(), StoreError> {
        self.store.put_silence(&silence.id, &silence)?;
        self.by_id.write().unwrap_or_else(PoisonError::into_inner).insert(silence.id.clone(), silence);
        Ok(())
    }

    /// Removes a silence; true if it existed.
    pub fn remove(&self, id: &str) -> Result<bool, StoreError> {
        let existed = self.store.remove_silence(id)?;
        self.by_id.write().unwrap_or_else(PoisonError::into_inner).remove(id);
        Ok(existed)
    }

    /// The silences not yet expired at wall-clock time `now`.
    pub fn active(&self, now: i64) -> Vec<Silence> {
        self.by_id.read().unwrap_or_else(PoisonError::into_inner).values().filter(|s| s.until > now).cloned().collect()
    }

    /// The reason of the first silence that covers `device` at `site` at wall-clock time `now`.
    pub fn covering(&self, device: &str, site: Option<&str>, now: i64) -> Option<String> {
        let by_id = self.by_id.read().unwrap_or_else(PoisonError::into_inner);
        by_id.values().find(|s| s.covers(device, site, now)).map(|s| s.reason.clone())
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

    fn silence(id: &str, device: &str, until: i64) -> Silence {
        Silence { id: id.into(), device: Some(device.into()), site: None, created_at: 0, until, reason: id.into() }
    }

    #[test]
    fn silences_are_kept_in_memory_and_in_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path(), 8, 10).unwrap());
        let silences = Silences::load(store.clone()).unwrap();
        silences.add(silence("s1", "comp-1", 1000)).unwrap();
        silences.add(silence("s2", "comp-2", 10)).unwrap();
        assert_eq!(silences.covering("comp-1", None, 500).as_deref(), Some("s1"));
        assert_eq!(silences.active(500).len(), 1, "s2 has expired");
        let reloaded = Silences::load(store.clone()).unwrap();
        assert_eq!(reloaded.covering("comp-1", None, 500).as_deref(), Some("s1"), "loaded from the store");
        assert!(silences.remove("s1").unwrap());
        assert!(!silences.remove("s1").unwrap(), "already gone");
        assert_eq!(silences.covering("comp-1", None, 500), None);
        assert!(Silences::load(store).unwrap().active(0).iter().all(|s| s.id != "s1"), "removed from the store");
    }
}
