//! The daemon: wires the stages together and shuts them down in order.
//!
//! ```text
//! mqtt ingest ──(bounded mpsc)──► batcher: core + flush + ack ──► outbox ──► one task per sink
//!                                   side tasks: retention · admin HTTP · model trainer
//!                                   (admin feedback, trainer ──Control──► batcher)
//! ```
//! On shutdown the source stops first; the batcher stores and acknowledges what it holds; the
//! sinks stop between deliveries (the outbox keeps the rest). Nothing in flight is lost.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{AdminState, FeedbackRequest};
use crate::config::Config;
use crate::core::{Core, Uncommitted};
use crate::health::Health;
use crate::ingest::mqtt::{self, Ack, Client, Inbound};
use crate::ingest::LinkState;
use crate::metrics::Metrics;
use crate::model::trainer::{self, TrainerStatus};
use crate::model::DeviceModel;
use crate::store::{run_retention, Store, StoreError};
use crate::systemd::{self, Liveness};
use crate::ticket::outbox::{deliver, RetryPolicy};
use crate::ticket::{SinkBuildError, SinkConfig};
use crate::worker::{Job, Worker};

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot open the database in {dir}: {source}")]
    Store { dir: std::path::PathBuf, source: StoreError },
    #[error("database: {0}")]
    Database(#[from] StoreError),
    #[error("{0}")]
    Sink(#[from] SinkBuildError),
    #[error("{0}")]
    Ingest(#[from] mqtt::IngestError),
    #[error("admin.listen {addr}: {source}")]
    Admin { addr: String, source: std::io::Error },
    #[error("admin.token: {0}")]
    AdminToken(crate::settings::SecretError),
    #[error("cannot start a thread: {0}")]
    Thread(std::io::Error),
}

/// A request from outside the batch path that the core must handle itself (it owns incident
/// state and the models it scores with): handed over here from the admin API and the trainer,
/// received by the batcher between batches.
pub enum Control {
    /// A technician's feedback from the admin API.
    Feedback(FeedbackRequest),
    /// The trainer fitted (and stored) a device model: the core scores with it from now on.
    ModelFitted(Box<DeviceModel>),
}

/// What outlives one run of the pipeline: counters stay monotonic and health stays known across
/// the in-process restarts of a config reload or a store recovery.
#[derive(Clone)]
pub struct Shared {
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
}

impl Default for Shared {
    fn default() -> Self {
        Shared { metrics: Arc::new(Metrics::new(&crate::core::metric_labels())), health: Arc::default() }
    }
}

/// A running daemon. Dropping it does not stop it: call [`Daemon::shutdown`].
pub struct Daemon {
    cancel: CancellationToken,
    /// Cancelled when the store stopped committing: the daemon must be restarted to go on.
    failed: CancellationToken,
    tracker: TaskTracker,
    metrics: Arc<Metrics>,
    link: Arc<LinkState>,
    store: Arc<Store>,
    admin_addr: Option<SocketAddr>,
}

impl Daemon {
    /// Opens the store, builds every stage and starts them.
    pub async fn start(config: Config) -> Result<Daemon, DaemonError> {
        Daemon::start_with(config, Shared::default()).await
    }

    /// [`Daemon::start`] with counters and health that outlive this run.
    pub async fn start_with(config: Config, shared: Shared) -> Result<Daemon, DaemonError> {
        let Shared { metrics, health } = shared;
        let dir = config.daemon.data_dir.clone();
        let (cache_mb, rejected_max) = (config.store.cache_mb, config.store.rejected_max);
        let open_dir = dir.clone();
        let opened = tokio::task::spawn_blocking(move || Store::open(&open_dir, cache_mb, rejected_max))
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        let store = Arc::new(opened.map_err(|source| DaemonError::Store { dir: dir.clone(), source })?);
        // A store that cannot commit (a full disk) must not look like a running daemon.
        store
            .set_meta("started_at", &crate::reading::now_ms().to_be_bytes())
            .and_then(|_| store.flush_blocking())
            .map_err(|source| {
                metrics.store_errors.inc();
                health.set_store_error(format!("cannot commit to {}: {source}", dir.display()));
                DaemonError::Store { dir: dir.clone(), source }
            })?;
        health.clear_store_error();
        let sinks = config.ticket.sinks.iter().map(SinkConfig::build).collect::<Result<Vec<_>, SinkBuildError>>()?;
        let core = Core::new(config.core(), store.clone(), metrics.clone())?;
        metrics.start_sinks_at_zero(sinks.iter().map(|sink| sink.name()));
        let batch_max = config.store.batch_max;
        let request_capacity = (4 * batch_max).max(4 * usize::from(config.mqtt.receive_window())).max(1024);
        // Everything that can fail is done before the first task is spawned.
        let (client, connection) = mqtt::connect(&config.mqtt, request_capacity)?;
        let open = core.open_incidents().len();
        let models = &config.detect.models;
        let train = models.enabled.then(|| core.train_requests());
        let trainer_status = Arc::new(TrainerStatus::default());

        let cancel = CancellationToken::new();
        let failed = CancellationToken::new();
        let tracker = TaskTracker::new();
        let wake = Arc::new(Notify::new());
        let retry = RetryPolicy { min: config.ticket.retry_min, max: config.ticket.retry_max };

        let (control_tx, control_rx) = mpsc::channel(16);
        let admin_addr = if config.admin.listen.is_empty() {
            None
        } else {
            let listener = tokio::net::TcpListener::bind(&config.admin.listen)
                .await
                .map_err(|source| DaemonError::Admin { addr: config.admin.listen.clone(), source })?;
            let addr = listener.local_addr().ok();
            let token = match &config.admin.token {
                Some(t) => {
                    let token = t.resolve().map_err(DaemonError::AdminToken)?;
                    if token.trim().is_empty() {
                        return Err(DaemonError::AdminToken(crate::settings::SecretError::Empty));
                    }
                    Some(Arc::from(token))
                }
                None => None,
            };
            // The admin API knows nothing of the batcher: its feedback is handed over here.
            let (feedback_tx, feedback_rx) = mpsc::channel(16);
            tracker.spawn(forward(feedback_rx, control_tx.clone(), Control::Feedback));
            let state = AdminState {
                token,
                metrics: metrics.clone(),
                health: health.clone(),
                store: store.clone(),
                silences: core.silences(),
                feedback: feedback_tx,
                train: train.clone(),
                commissions: config.detect.context.enabled,
            };
            tracker.spawn(crate::admin::serve(listener, state, cancel.clone()));
            addr
        };

        for sink in sinks {
            tracker.spawn(deliver(sink, store.clone(), wake.clone(), metrics.clone(), retry, cancel.clone()));
        }
        tracker.spawn(run_retention(store.clone(), config.store.clone(), metrics.clone(), cancel.clone()));

        if let Some(requests) = train {
            // The trainer knows nothing of the core: its models are handed over here.
            let (fitted_tx, fitted_rx) = mpsc::channel(4);
            tracker.spawn(forward(fitted_rx, control_tx.clone(), Control::ModelFitted));
            tracker.spawn(trainer::run(
                store.clone(),
                models.clone(),
                requests,
                trainer_status.clone(),
                fitted_tx,
                metrics.clone(),
                cancel.clone(),
            ));
        }
        drop(control_tx);

        let (tx, rx) = mpsc::channel(2 * batch_max);
        let drained = CancellationToken::new();
        let link = Arc::new(LinkState::default());
        tracker.spawn(mqtt::run(
            client.clone(),
            connection,
            config.mqtt.clone(),
            core.decoder(),
            tx,
            store.clone(),
            metrics.clone(),
            link.clone(),
            cancel.clone(),
            drained.clone(),
        ));
        let liveness = Arc::new(Liveness::default());
        tracker.spawn(systemd::watchdog(liveness.clone(), cancel.clone()));
        let stage = Batcher {
            core_thread: Worker::start("fieldwatch-core").map_err(DaemonError::Thread)?,
            flush_thread: Worker::start("fieldwatch-flush").map_err(DaemonError::Thread)?,
            client,
            unacked: VecDeque::new(),
            store: store.clone(),
            wake,
            metrics: metrics.clone(),
            link: link.clone(),
            health,
            liveness,
            failed: failed.clone(),
            config: config.clone(),
        };
        tracker.spawn(stage.run(core, rx, control_rx, drained));
        tracker.close();
        systemd::ready();
        tracing::info!(data_dir = %dir.display(), open_incidents = open, admin = ?admin_addr, "fieldwatch started");
        Ok(Daemon { cancel, failed, tracker, metrics, link, store, admin_addr })
    }

    /// The broker link's state, as the source last saw it.
    pub fn link(&self) -> &LinkState {
        &self.link
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The bound address of the admin HTTP server, if enabled.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// A token that stops the daemon when cancelled.
    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// A token cancelled when the store stopped committing; the daemon then has to be shut down
    /// and started again (the supervisor of `fieldwatch run` does).
    pub fn failed_token(&self) -> CancellationToken {
        self.failed.clone()
    }

    /// Stops every stage in order and waits for them; flushes the store. Tells systemd the
    /// service is stopping.
    pub async fn shutdown(self) {
        systemd::stopping();
        self.stop().await;
    }

    /// [`Daemon::shutdown`] for an in-process restart: systemd is not told the service stops.
    pub async fn stop(self) {
        self.cancel.cancel();
        self.tracker.wait().await;
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || store.compact_and_flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "final flush failed"),
            Err(e) => tracing::error!(error = %e, "final flush panicked"),
        }
        tracing::info!("fieldwatch stopped");
    }

    /// Runs until `signal` completes, then shuts down.
    pub async fn run_until(self, signal: impl std::future::Future<Output = ()>) {
        tokio::select! {
            _ = signal => {}
            _ = self.cancel.cancelled() => {}
        }
        self.shutdown().await;
    }
}

/// How often acknowledgements that found the client's request queue full are tried again.
const ACK_RETRY: Duration = Duration::from_millis(2);

/// Hands what a component sends on its own channel to the batcher as a [`Control`], so the
/// component needs to know nothing of the batcher. Ends when either side is gone.
async fn forward<T>(mut from: mpsc::Receiver<T>, to: mpsc::Sender<Control>, wrap: fn(T) -> Control) {
    while let Some(item) = from.recv().await {
        if to.send(wrap(item)).await.is_err() {
            break;
        }
    }
}

/// How long, at shutdown, the batcher keeps trying to hand over its last acknowledgements.
const ACK_DRAIN: Duration = Duration::from_secs(2);

/// A batch written to the store whose flush is still running (while the core takes on the next
/// batch): what waits for it to be durable.
struct Flushing {
    done: Job<Result<(), StoreError>>,
    acks: Vec<Ack>,
    uncommitted: Uncommitted,
    /// Whether it queued ticket commands (the sinks are woken once it is durable).
    transitions: bool,
    started: Instant,
}

/// The group-commit stage and what it needs besides its input.
struct Batcher {
    /// Where the core runs: off tokio's workers, always on the same thread.
    core_thread: Worker,
    /// Where the flushes run, beside the core.
    flush_thread: Worker,
    client: Client,
    /// Stored messages whose acknowledgement did not fit in the client's request queue yet.
    /// They are retried, never dropped: the broker counts them against our in-flight window
    /// and redelivers them only after a reconnect, so a dropped acknowledgement would stall
    /// ingestion for as long as the connection stays up. Waiting for room instead would
    /// deadlock, since the event loop that empties the queue may itself be waiting for us.
    unacked: VecDeque<Ack>,
    store: Arc<Store>,
    /// Wakes the sink tasks when a batch queued ticket commands.
    wake: Arc<Notify>,
    metrics: Arc<Metrics>,
    /// Whether the broker link is up, for the staleness check.
    link: Arc<LinkState>,
    health: Arc<Health>,
    liveness: Arc<Liveness>,
    /// Cancelled when the store fails; the batcher then stops taking messages.
    failed: CancellationToken,
    config: Config,
}

impl Batcher {
    /// Group commit: collect up to `batch_max` messages (waiting at most `batch_linger` after
    /// the first), run them through the core, flush, then acknowledge them to the broker. A
    /// batch is flushed while the core takes on the next one, and the next one is flushed only
    /// after it: acknowledgements still go out in order, each after its batch is durable.
    /// Ends when the source closes the channel, after the last batch; then cancels `drained`.
    async fn run(
        mut self,
        mut core: Core,
        mut rx: mpsc::Receiver<Inbound>,
        mut control: mpsc::Receiver<Control>,
        drained: CancellationToken,
    ) {
        let batch_max = self.config.store.batch_max;
        let linger = self.config.store.batch_linger;
        let mut batch: Vec<Inbound> = Vec::with_capacity(batch_max);
        let mut clock = tokio::time::interval(std::time::Duration::from_secs(1));
        clock.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut flushing: Option<Flushing> = None;
        loop {
            let acks_waiting = !self.unacked.is_empty();
            let first = tokio::select! {
                m = rx.recv() => match m {
                    Some(m) => m,
                    None => break,
                },
                // Nothing new came in: the batch in flight is acknowledged as soon as it is durable.
                done = async {
                    match flushing.as_mut() {
                        Some(f) => (&mut f.done).await,
                        None => std::future::pending().await,
                    }
                }, if flushing.is_some() => {
                    if let Some(f) = flushing.take() {
                        self.flushed(f, done);
                    }
                    if self.failed.is_cancelled() {
                        break;
                    }
                    continue;
                }
                _ = clock.tick() => {
                    core = self.tick(core).await;
                    if self.failed.is_cancelled() {
                        break;
                    }
                    continue;
                }
                Some(c) = control.recv() => {
                    self.control(&mut core, c).await;
                    continue;
                }
                _ = tokio::time::sleep(ACK_RETRY), if acks_waiting => {
                    self.send_acks();
                    continue;
                }
            };
            batch.push(first);
            let deadline = tokio::time::Instant::now() + linger;
            while batch.len() < batch_max {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(m)) => batch.push(m),
                    _ => break,
                }
            }
            self.liveness.batch_started();
            core = self.commit(core, &mut batch, &mut flushing).await;
            self.liveness.batch_done();
            if self.failed.is_cancelled() {
                break;
            }
        }
        self.finish_flush(&mut flushing).await;
        // The healthy references are kept for the next start. The heads are compacted first:
        // the space of the log entries that frees is reused by the state written next, where
        // the other order leaves it as a hole in sled's file, which only shrinks at its end.
        let store = self.store.clone();
        let (_, result) = run_core(&self.core_thread, core, move |core| {
            store.compact_and_flush().map_err(|e| ("cannot compact the readings", e))?;
            core.save_detector_state().map_err(|e| ("cannot store the detector state", e))?;
            store.flush_blocking().map_err(|e| ("cannot flush the detector state", e))
        })
        .await;
        if let Err((what, e)) = result {
            tracing::error!(error = %e, "{what}");
        }
        // The source keeps polling its event loop until `drained`, so these can still go out.
        let give_up = tokio::time::Instant::now() + ACK_DRAIN;
        while !self.unacked.is_empty() && tokio::time::Instant::now() < give_up {
            self.send_acks();
            tokio::time::sleep(ACK_RETRY).await;
        }
        drained.cancel();
    }

    /// A request from the admin API, applied and made durable before the reply.
    async fn control(&self, core: &mut Core, c: Control) {
        match c {
            Control::Feedback(FeedbackRequest { id, feedback, reply }) => {
                let mut result = core.feedback(&id, &feedback, crate::reading::now_ms());
                if result.is_ok() {
                    match self.store.flush().await {
                        Ok(()) => {
                            core.committed();
                            self.wake.notify_waiters()
                        }
                        Err(e) => {
                            self.store_failed("flush", &e);
                            result = Err(e.into());
                        }
                    }
                }
                let _ = reply.send(result);
            }
            Control::ModelFitted(model) => core.install_model(*model),
        }
    }

    /// Time-driven incident changes (escalations, silent devices) and the periodic detector
    /// state save, made durable like a batch, off the async runtime.
    async fn tick(&self, core: Core) -> Core {
        let since = self.link.up_since();
        let store = self.store.clone();
        let (core, result) = run_core(&self.core_thread, core, move |core| {
            let transitions = core.tick(crate::reading::now_ms(), since).map_err(|e| ("store", e))?;
            if !transitions.is_empty() {
                store.flush_blocking().map_err(|e| ("flush", e))?;
                core.committed();
            }
            Ok(!transitions.is_empty())
        })
        .await;
        match result {
            Ok(true) => self.wake.notify_waiters(),
            Ok(false) => {}
            Err((what, e)) => self.store_failed(what, &e),
        }
        core
    }

    /// The store cannot commit (sled refuses every write after an I/O error such as a full
    /// disk). Nothing of the batch is acknowledged, so the broker redelivers it; the daemon stops
    /// taking messages, reports not ready with the reason and withholds the watchdog ping, and
    /// is restarted (by the supervisor, or by systemd) until the store commits again.
    fn store_failed(&self, what: &str, e: &StoreError) {
        self.metrics.store_errors.inc();
        self.health.set_store_error(format!("{what}: {e}"));
        self.liveness.fail();
        self.failed.cancel();
        tracing::error!(error = %e, "cannot commit to the store; batch not acknowledged, the broker will redeliver it");
    }

    /// Hands queued acknowledgements to the client, oldest first, until its queue is full.
    fn send_acks(&mut self) {
        while let Some(&ack) = self.unacked.front() {
            if let Err(e) = self.client.try_ack(ack) {
                tracing::trace!(error = %e, waiting = self.unacked.len(), "ack queue full; retrying shortly");
                return;
            }
            tracing::trace!(?ack, "acknowledged");
            self.unacked.pop_front();
        }
        // A burst may have grown the queue; do not keep its memory for good.
        if self.unacked.capacity() > 4096 {
            self.unacked.shrink_to(1024);
        }
    }

    /// Runs a batch through the core and writes it to the store (on a blocking thread: sled
    /// and the detectors must not hold up the runtime that polls the broker), then starts its
    /// flush, which runs while the next batch is processed. The flush of the batch before is
    /// awaited first, and that batch acknowledged: flushes never overlap, and a batch is
    /// acknowledged only once a flush that began after it was written has completed.
    async fn commit(&mut self, core: Core, batch: &mut Vec<Inbound>, flushing: &mut Option<Flushing>) -> Core {
        let started = Instant::now();
        let (messages, acks): (Vec<_>, Vec<_>) = batch.drain(..).map(|i| (i.message, i.ack)).unzip();
        let store = self.store.clone();
        let (mut core, result) = run_core(&self.core_thread, core, move |core| {
            let outcome = core.process_decoded(messages).map_err(|e| ("store", e))?;
            store.write_batch().map_err(|e| ("store", e))?;
            Ok(outcome)
        })
        .await;
        self.finish_flush(flushing).await;
        let outcome = match result {
            Ok(o) => o,
            Err((what, e)) => {
                self.store_failed(what, &e);
                return core;
            }
        };
        if self.failed.is_cancelled() {
            return core; // the batch before could not be flushed: this one is not acknowledged
        }
        if let Some(newest) = outcome.newest_ts {
            let lag_ms = (crate::reading::now_ms() - newest).max(0);
            self.metrics.ingest_lag_seconds.set(lag_ms as f64 / 1000.0);
        }
        let store = self.store.clone();
        *flushing = Some(Flushing {
            done: self.flush_thread.spawn(move || store.sync()),
            acks: acks.into_iter().flatten().collect(),
            uncommitted: core.take_uncommitted(),
            transitions: !outcome.transitions.is_empty(),
            started,
        });
        core
    }

    /// Waits for the batch in flight, if any, to be flushed, and settles it (see `flushed`).
    async fn finish_flush(&mut self, flushing: &mut Option<Flushing>) {
        if let Some(mut f) = flushing.take() {
            let done = (&mut f.done).await;
            self.flushed(f, done);
        }
    }

    /// A batch's flush ended: counts what it made durable, wakes the sinks when it queued
    /// ticket commands, and acknowledges its messages; or fails the store.
    fn flushed(&mut self, f: Flushing, done: Result<(), StoreError>) {
        if let Err(e) = done {
            return self.store_failed("flush", &e);
        }
        f.uncommitted.count();
        self.metrics.batch_commit_seconds.observe(f.started.elapsed().as_secs_f64());
        if f.transitions {
            self.wake.notify_waiters();
        }
        self.unacked.extend(f.acks);
        self.send_acks();
    }
}

/// Sets mimalloc's options for a gateway, unless their `MIMALLOC_*` variables say otherwise:
/// memory freed is handed back to the system at once (`purge_delay` 0: its default holds it for
/// a second, which during a backlog kept 10-15 MiB more resident at 1,000 devices), arenas are
/// committed as they are used rather than up front, and no empty page is kept per size class
/// (`page_full_retain` 0). `fieldwatch` runs on mimalloc (the global allocator of the binary,
/// `main.rs`); call this first, before threads start.
pub fn tune_allocator() {
    // The option numbers of mimalloc.h (v3, as libmimalloc-sys 0.1.49 bundles it; its Rust
    // bindings name only some of them).
    const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
    const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    const PAGE_FULL_RETAIN: libmimalloc_sys::mi_option_t = 36;
    for (option, variable) in [
        (ARENA_EAGER_COMMIT, "MIMALLOC_ARENA_EAGER_COMMIT"),
        (PURGE_DELAY, "MIMALLOC_PURGE_DELAY"),
        (PAGE_FULL_RETAIN, "MIMALLOC_PAGE_FULL_RETAIN"),
    ] {
        if std::env::var_os(variable).is_none() {
            // SAFETY: sets an option of the allocator; no memory is touched.
            unsafe { libmimalloc_sys::mi_option_set(option, 0) };
        }
    }
}

/// What a step of the core says went wrong: the operation ("store", "flush") and the error.
type StepError = (&'static str, StoreError);

/// Runs `step` on the core on `worker`'s thread and hands the core back with its result.
async fn run_core<T: Send + 'static>(
    worker: &Worker,
    mut core: Core,
    step: impl FnOnce(&mut Core) -> Result<T, StepError> + Send + 'static,
) -> (Core, Result<T, StepError>) {
    worker
        .spawn(move || {
            let r = step(&mut core);
            (core, r)
        })
        .await
}
