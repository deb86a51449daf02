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

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;
    use tokio::sync::mpsc;
    use tokio::task::JoinHandle;
    use tokio::time::Instant;

    use super::*;
    use crate::store::Route;
    use crate::ticket::tests::sample_ticket;
    use crate::ticket::{Action, SendFuture};

    const SINK: &str = "scripted";

    /// A sink that answers each attempt from a script (then `Ok`) and reports every attempt: when
    /// (in the test's paused time) and for which command.
    struct ScriptedSink {
        answers: VecDeque<Result<(), SinkError>>,
        attempts: mpsc::UnboundedSender<(Instant, String)>,
    }

    impl TicketSink for ScriptedSink {
        fn name(&self) -> &str {
            SINK
        }

        fn send<'a>(&'a mut self, cmd: &'a TicketCommand) -> SendFuture<'a> {
            let _ = self.attempts.send((Instant::now(), cmd.idempotency_key.clone()));
            let answer = self.answers.pop_front().unwrap_or(Ok(()));
            Box::pin(async move { answer })
        }
    }

    /// `deliver` on a real store, with a scripted sink and the commands `keys` in its queue.
    struct Delivery {
        store: Arc<Store>,
        metrics: Arc<Metrics>,
        attempts: mpsc::UnboundedReceiver<(Instant, String)>,
        cancel: CancellationToken,
        task: JoinHandle<()>,
        _dir: tempfile::TempDir,
    }

    impl Delivery {
        fn start(keys: &[&str], answers: Vec<Result<(), SinkError>>, retry: RetryPolicy) -> Delivery {
            let dir = tempfile::tempdir().unwrap();
            let store = Arc::new(Store::open(dir.path(), 8, 10).unwrap());
            let sinks = [SINK.to_string()];
            for key in keys {
                let cmd =
                    TicketCommand { action: Action::Open, idempotency_key: key.to_string(), ticket: sample_ticket() };
                store.save_incident(key, &serde_json::json!({}), Some((&cmd, Route::Sinks(&sinks)))).unwrap();
            }
            let (tx, attempts) = mpsc::unbounded_channel();
            let sink = Box::new(ScriptedSink { answers: answers.into(), attempts: tx });
            let metrics = Arc::new(Metrics::new(&crate::metrics::Labels::default()));
            let cancel = CancellationToken::new();
            let task = tokio::spawn(deliver(
                sink,
                store.clone(),
                Arc::new(Notify::new()),
                metrics.clone(),
                retry,
                cancel.clone(),
            ));
            Delivery { store, metrics, attempts, cancel, task, _dir: dir }
        }

        /// Waits for `n` attempts, then stops `deliver`. It waits on the sink's reports, not on a
        /// timer: while sled flushes on its own thread the runtime is idle, and paused time would
        /// jump to any timer the test held.
        async fn attempts(mut self, n: usize) -> (Vec<(Instant, String)>, Arc<Store>, Arc<Metrics>) {
            let mut seen = Vec::new();
            while seen.len() < n {
                seen.push(self.attempts.recv().await.expect("deliver is running"));
            }
            self.cancel.cancel();
            self.task.await.unwrap();
            assert!(self.attempts.try_recv().is_err(), "no attempt after the last expected one");
            (seen, self.store, self.metrics)
        }
    }

    fn retry(why: &str) -> Result<(), SinkError> {
        Err(SinkError::Retry(why.into()))
    }

    /// The scripted sink's count in a counter family.
    fn count(family: &Family<SinkLabel, Counter>) -> u64 {
        family.get_or_create(&SinkLabel::new(SINK)).get()
    }

    #[tokio::test(start_paused = true)]
    async fn failed_attempts_back_off_within_retry_limits_until_the_sink_accepts() {
        let (min, max) = (Duration::from_secs(1), Duration::from_secs(4));
        let mut answers: Vec<_> = (0..5).map(|_| retry("HTTP 503")).collect();
        answers.extend([Ok(()), retry("timeout"), Ok(())]);
        let delivery = Delivery::start(&["a:open", "b:open"], answers, RetryPolicy { min, max });
        let (attempts, store, metrics) = delivery.attempts(8).await;

        let keys: Vec<&str> = attempts.iter().map(|(_, k)| k.as_str()).collect();
        assert_eq!(keys, [["a:open"; 6].as_slice(), &["b:open"; 2]].concat(), "in order, each until accepted");
        let gaps: Vec<Duration> = attempts.windows(2).map(|w| w[1].0 - w[0].0).collect();
        // Each delay is in the upper half of its exponential step, and no step exceeds
        // `retry_max`; the next command goes at once, and its first retry starts over at
        // `retry_min`. (The timer wheel rounds a deadline up to the next millisecond.)
        let secs = Duration::from_secs;
        let steps = [secs(1), secs(2), secs(4), secs(4), secs(4), Duration::ZERO, secs(1)];
        for (i, (gap, step)) in gaps.iter().zip(steps).enumerate() {
            assert!(
                *gap >= step / 2 && *gap <= step + Duration::from_millis(1),
                "gap {i}: {gap:?} for a step of {step:?}"
            );
        }
        let elapsed = attempts[7].0 - attempts[0].0;
        assert!(elapsed >= secs(8) && elapsed <= secs(16) + Duration::from_millis(7), "{elapsed:?}");

        assert_eq!(store.outbox_len(SINK), 0);
        assert!(store.dead_letters().unwrap().is_empty());
        assert_eq!(count(&metrics.tickets_delivered), 2);
        assert_eq!(count(&metrics.ticket_attempts_failed), 6);
    }

    #[tokio::test(start_paused = true)]
    async fn a_permanent_refusal_goes_to_dead_letters_and_the_next_command_follows_at_once() {
        let refusal = Err(SinkError::Permanent("HTTP 400 Bad Request: Invalid category".into()));
        let retry = RetryPolicy { min: Duration::from_secs(1), max: Duration::from_secs(300) };
        let delivery = Delivery::start(&["a:open", "b:open"], vec![refusal, Ok(())], retry);
        let (attempts, store, metrics) = delivery.attempts(2).await;

        let keys: Vec<&str> = attempts.iter().map(|(_, k)| k.as_str()).collect();
        assert_eq!(keys, ["a:open", "b:open"], "refused once, not retried");
        assert_eq!(attempts[1].0, attempts[0].0, "no backoff after a refusal");
        let dead = store.dead_letters().unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0]["command"]["idempotency_key"], "a:open");
        assert!(dead[0]["reason"].as_str().unwrap().contains("Invalid category"), "{}", dead[0]);
        assert_eq!(store.outbox_len(SINK), 0);
        assert_eq!(count(&metrics.tickets_dead), 1);
        assert_eq!(count(&metrics.tickets_delivered), 1);
        assert_eq!(count(&metrics.ticket_attempts_failed), 0);
    }
}
