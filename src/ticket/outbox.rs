//! Outbox delivery: one task per sink drains that sink's queue, oldest first.
//!
//! A command is removed only after the sink confirmed it, so a crash, a restart or a long API
//! outage loses nothing; the per-command idempotency key lets the receiver drop a repeat of a
//! request whose confirmation was lost. Failures back off exponentially with jitter.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{SinkError, TicketCommand, TicketSink};
use crate::metrics::{Metrics, SinkLabel};
use crate::store::Store;

/// Retry timing for one sink.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub min: Duration,
    pub max: Duration,
}

use crate::backoff::backoff;

/// Runs until `cancel`: delivers every command queued for `sink` (by its name) through it.
pub async fn deliver(
    mut sink: Box<dyn TicketSink>,
    store: Arc<Store>,
    wake: Arc<Notify>,
    metrics: Arc<Metrics>,
    retry: RetryPolicy,
    cancel: CancellationToken,
) {
    let name = sink.name().to_string();
    let label = SinkLabel::new(&name);
    let mut delays = backoff(retry.min, retry.max);
    let mut last_count: Option<std::time::Instant> = None;
    loop {
        // Counting the queue is a scan: at most once a second, so draining a backlog stays linear.
        if last_count.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            metrics.outbox_depth.get_or_create(&label).set(store.outbox_len(&name) as i64);
            last_count = Some(std::time::Instant::now());
        }
        let entry = match store.outbox_first(&name) {
            Ok(Some(e)) => e,
            Ok(None) => {
                metrics.outbox_depth.get_or_create(&label).set(0);
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = wake.notified() => continue,
                    // Belt and braces: a missed wake-up costs at most a second.
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
            Err(e) => {
                tracing::error!(sink = %name, error = %e, "cannot read outbox");
                if sleep_or_cancel(retry.max.min(Duration::from_secs(5)), &cancel).await {
                    return;
                }
                continue;
            }
        };
        let cmd: TicketCommand = match serde_json::from_slice(&entry.body) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(sink = %name, error = %e, "corrupt outbox entry moved to dead letters");
                metrics.tickets_dead.get_or_create(&label).inc();
                let _ = store.outbox_dead(&entry, &format!("corrupt: {e}")).await;
                continue;
            }
        };
        let result = tokio::select! {
            _ = cancel.cancelled() => return,
            r = sink.send(&cmd) => r,
        };
        match result {
            Ok(()) => {
                if let Err(e) = store.outbox_done(&entry).await {
                    // It will be sent again after restart; the idempotency key makes that harmless.
                    tracing::error!(sink = %name, error = %e, "delivered but cannot remove from outbox");
                }
                metrics.tickets_delivered.get_or_create(&label).inc();
                tracing::info!(sink = %name, ticket = %cmd.ticket.id, action = ?cmd.action, device = %cmd.ticket.device, fault = %cmd.ticket.fault, "ticket delivered");
                delays = backoff(retry.min, retry.max);
            }
            Err(SinkError::Retry(why)) => {
                metrics.ticket_attempts_failed.get_or_create(&label).inc();
                let delay = delays.next().unwrap_or(retry.max);
                tracing::warn!(sink = %name, ticket = %cmd.ticket.id, error = %why, retry_in = ?delay, "ticket delivery failed, will retry");
                if sleep_or_cancel(delay, &cancel).await {
                    return;
                }
            }
            Err(SinkError::Permanent(why)) => {
                metrics.tickets_dead.get_or_create(&label).inc();
                tracing::error!(sink = %name, ticket = %cmd.ticket.id, error = %why, "sink refused ticket for good; kept in dead letters");
                if let Err(e) = store.outbox_dead(&entry, &why).await {
                    tracing::error!(sink = %name, error = %e, "cannot move ticket to dead letters");
                }
            }
        }
    }
}

/// Sleeps; returns `true` if cancelled meanwhile.
async fn sleep_or_cancel(d: Duration, cancel: &CancellationToken) -> bool {
    tokio::select! {
        _ = cancel.cancelled() => true,
        _ = tokio::time::sleep(d) => false,
    }
}
