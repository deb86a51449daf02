//! What the daemon knows about its own health, shared by the stages that find problems and the
//! endpoints that report them (`/readyz`), and kept across in-process restarts.

use std::sync::Mutex;

/// Problems that make the daemon not ready, by cause.
#[derive(Debug, Default)]
pub struct Health {
    store_error: Mutex<Option<String>>,
}

impl Health {
    /// Records why the store cannot commit (e.g. "flush: No space left on device").
    pub fn set_store_error(&self, reason: String) {
        if let Ok(mut e) = self.store_error.lock() {
            *e = Some(reason);
        }
    }

    /// The store commits again.
    pub fn clear_store_error(&self) {
        if let Ok(mut e) = self.store_error.lock() {
            *e = None;
        }
    }

    /// Why the store cannot commit, if it cannot.
    pub fn store_error(&self) -> Option<String> {
        self.store_error.lock().ok().and_then(|e| e.clone())
    }
}
