//! systemd integration: `READY=1` once the daemon runs, `STOPPING=1` on shutdown, and watchdog
//! pings while the batcher makes progress. Outside systemd every call is a no-op.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::reading::now_ms;

/// Progress marker of the batcher: the time a batch started, or 0 while it waits for input.
/// A batch stuck longer than the watchdog period means the daemon is wedged: stop pinging and
/// let systemd restart it.
#[derive(Debug, Default)]
pub struct Liveness {
    busy_since_ms: AtomicI64,
    /// Set when the store stopped committing: nothing makes progress until a restart.
    failed: std::sync::atomic::AtomicBool,
}

impl Liveness {
    pub fn batch_started(&self) {
        self.busy_since_ms.store(now_ms(), Ordering::Relaxed);
    }

    pub fn batch_done(&self) {
        self.busy_since_ms.store(0, Ordering::Relaxed);
    }

    /// Nothing commits any more (the store failed).
    pub fn fail(&self) {
        self.failed.store(true, Ordering::Relaxed);
    }

    /// True unless the store failed or a batch has been running for longer than `limit`.
    pub fn healthy(&self, limit: Duration) -> bool {
        let since = self.busy_since_ms.load(Ordering::Relaxed);
        !self.failed.load(Ordering::Relaxed) && (since == 0 || now_ms() - since < limit.as_millis() as i64)
    }
}

/// Tells systemd the daemon is ready.
pub fn ready() {
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
}

/// Tells systemd the daemon re-reads its configuration (a `READY=1` follows once it runs again).
pub fn reloading() {
    let mut states = vec![sd_notify::NotifyState::Reloading];
    if let Ok(now) = sd_notify::NotifyState::monotonic_usec_now() {
        states.push(now);
    }
    let _ = sd_notify::notify(false, &states);
}

/// Tells systemd the daemon is stopping for good (never for an in-process restart: systemd
/// would then wait for the process to exit and kill it).
pub fn stopping() {
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
}

/// Pings the watchdog at half its period while `liveness` is healthy, until `cancel`.
pub async fn watchdog(liveness: Arc<Liveness>, cancel: CancellationToken) {
    let mut usec = 0;
    if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
        return;
    }
    let period = Duration::from_micros(usec);
    let mut tick = tokio::time::interval(period / 2);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        if liveness.healthy(period) {
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
        } else {
            tracing::error!("nothing commits; withholding the watchdog ping so systemd restarts the daemon");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_store_withholds_the_watchdog_ping() {
        let l = Liveness::default();
        let period = Duration::from_secs(30);
        assert!(l.healthy(period));
        l.batch_started();
        assert!(l.healthy(period), "a batch under way is progress");
        l.batch_done();
        l.fail();
        assert!(!l.healthy(period), "nothing commits any more");
    }
}
