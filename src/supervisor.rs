//! `fieldwatch run`: keeps one [`Daemon`] running until SIGTERM/SIGINT, restarting it in-process
//! when the config is reloaded (SIGHUP) or when its store stopped committing.
//!
//! systemd hears `RELOADING=1` then `READY=1` around a reload, and `STOPPING=1` only at the
//! final stop. A reloaded config that cannot start (a token file gone, a bad sink) falls back to
//! the previous one.
//!
//! A restart is the ordinary shutdown (stop taking messages, store and acknowledge what is in
//! hand, keep the broker session) followed by a start with the new config, so a reload applies
//! every setting — detection, incidents, assets, maintenance, sinks, log level, even the broker
//! — and loses nothing: anything unacknowledged is redelivered by the broker. It takes about as
//! long as a clean stop (well under a second with an idle outbox).
//!
//! A store that cannot commit (a full disk: sled refuses every write after one I/O error) is
//! reopened with backoff until it commits again. Meanwhile `/readyz` answers 503 with the
//! reason, `/metrics` stays up, and no watchdog ping is sent, so systemd restarts the process
//! if the disk stays full longer than `WatchdogSec`.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use crate::backoff::backoff;
use crate::config::Config;
use crate::daemon::{Daemon, DaemonError, Shared};

/// Applies a new log filter (`daemon.log_level`); `main` owns the subscriber.
pub use crate::logging::SetLogLevel;

/// How quickly a failed store is tried again, at first and at most.
const STORE_RETRY_MIN: Duration = Duration::from_secs(1);
const STORE_RETRY_MAX: Duration = Duration::from_secs(30);

/// Runs the daemon from the config at `path` until `stop` completes.
pub async fn supervise(
    path: PathBuf,
    mut config: Config,
    set_log_level: SetLogLevel,
    stop: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    let shared = Shared::default();
    let mut reload = ReloadSignal::new();
    let mut store_retry = backoff(STORE_RETRY_MIN, STORE_RETRY_MAX);
    // The config that last ran: a reloaded one that cannot start falls back to it.
    let mut last_good: Option<Config> = None;
    tokio::pin!(stop);
    loop {
        let daemon = match Daemon::start_with(config.clone(), shared.clone()).await {
            Ok(d) => d,
            Err(e @ DaemonError::Store { .. }) => {
                let delay = store_retry.next().unwrap_or(STORE_RETRY_MAX);
                tracing::error!(error = %e, retry_in = ?delay, "the store cannot commit; trying again");
                if wait_degraded(&config, &shared, delay, &mut stop).await {
                    crate::systemd::stopping();
                    return Ok(());
                }
                continue;
            }
            Err(e) => match last_good.take() {
                Some(previous) => {
                    tracing::error!(error = %e, "the reloaded configuration cannot start; going back to the previous one");
                    set_log_level(&previous.daemon.log_level);
                    config = previous;
                    continue;
                }
                None => return Err(e),
            },
        };
        last_good = None;
        let started = std::time::Instant::now();
        let failed = daemon.failed_token();
        loop {
            tokio::select! {
                _ = &mut stop => {
                    daemon.shutdown().await;
                    return Ok(());
                }
                _ = failed.cancelled() => {
                    daemon.stop().await;
                    // A store that failed again soon after a restart waits before the next one.
                    if started.elapsed() >= STORE_RETRY_MAX {
                        store_retry = backoff(STORE_RETRY_MIN, STORE_RETRY_MAX);
                    }
                    let delay = store_retry.next().unwrap_or(STORE_RETRY_MAX);
                    tracing::error!(retry_in = ?delay, "the store stopped committing; restarting the pipeline");
                    if wait_degraded(&config, &shared, delay, &mut stop).await {
                        crate::systemd::stopping();
                        return Ok(());
                    }
                    break;
                }
                _ = reload.recv() => {
                    match Config::load(&path) {
                        Ok(new) => {
                            tracing::info!(config = %path.display(), "SIGHUP: configuration re-read; restarting the pipeline with it");
                            crate::systemd::reloading();
                            set_log_level(&new.daemon.log_level);
                            last_good = Some(std::mem::replace(&mut config, new));
                            daemon.stop().await;
                            break;
                        }
                        Err(e) => tracing::error!(error = %e, "SIGHUP: the new configuration is invalid; keeping the running one"),
                    }
                }
            }
        }
    }
}

/// Serves the degraded admin endpoints for `delay` (or until `stop`); true when stopped.
async fn wait_degraded(
    config: &Config,
    shared: &Shared,
    delay: Duration,
    stop: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
) -> bool {
    let cancel = tokio_util::sync::CancellationToken::new();
    let server = if config.admin.listen.is_empty() {
        None
    } else {
        match tokio::net::TcpListener::bind(&config.admin.listen).await {
            Ok(listener) => {
                let router = crate::admin::degraded_router(shared.metrics.clone(), shared.health.clone());
                let c = cancel.clone();
                Some(tokio::spawn(async move {
                    crate::admin::serve_router(listener, router, c).await;
                }))
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot serve /readyz while the store is down");
                None
            }
        }
    };
    let stopped = tokio::select! {
        _ = stop.as_mut() => true,
        _ = tokio::time::sleep(delay) => false,
    };
    cancel.cancel();
    if let Some(s) = server {
        let _ = s.await;
    }
    stopped
}

/// SIGHUP, registered at once so that a HUP that arrives while the daemon starts is a reload,
/// not the default action (which would end the process).
struct ReloadSignal {
    #[cfg(unix)]
    hup: Option<tokio::signal::unix::Signal>,
}

impl ReloadSignal {
    fn new() -> ReloadSignal {
        #[cfg(unix)]
        {
            let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                .inspect_err(|e| tracing::warn!(error = %e, "cannot handle SIGHUP; reloads need a restart"))
                .ok();
            ReloadSignal { hup }
        }
        #[cfg(not(unix))]
        ReloadSignal {}
    }

    async fn recv(&mut self) {
        #[cfg(unix)]
        if let Some(h) = &mut self.hup {
            if h.recv().await.is_some() {
                return;
            }
        }
        std::future::pending::<()>().await
    }
}
