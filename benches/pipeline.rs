//! The processing core without a broker: decode, the detector bank, and decode → store →
//! detect → incidents → outbox for whole batches, in readings per second.
//!
//! Run with `cargo bench --bench pipeline` (about a minute). The end-to-end figures through a
//! real broker are in `benches/e2e.rs`.

use std::sync::Arc;
use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use fieldwatch::config::{Config, DecodeConfig, DetectConfig};
use fieldwatch::core::{metric_labels, Core};
use fieldwatch::decode::Decoder;
use fieldwatch::detect::DetectorBank;
use fieldwatch::metrics::Metrics;
use fieldwatch::reading::{Message, Reading};
use fieldwatch::sim::{Simulator, METRICS};
use fieldwatch::store::Store;

const DEVICES: usize = 20;
/// One event-time step: every device reports once.
const STEP_MS: i64 = 1000;
/// A day ago: far enough back that a long run never reaches "now".
fn t0() -> i64 {
    fieldwatch::reading::now_ms() / 1000 * 1000 - 86_400_000
}

/// Messages of `steps` consecutive seconds for every device, starting at `from`.
fn messages(sim: &mut Simulator, from: i64, steps: i64) -> Vec<Message> {
    let mut out = Vec::with_capacity(steps as usize * sim.devices.len());
    for s in 0..steps {
        let ts = from + s * STEP_MS;
        for d in 0..sim.devices.len() {
            out.push(Message { topic: sim.topic(d), payload: sim.payload(d, ts).into(), received_ms: ts });
        }
    }
    out
}

fn decode(c: &mut Criterion) {
    let mut sim = Simulator::new(DEVICES, Vec::new(), 7);
    let msgs = messages(&mut sim, t0(), 50);
    let decoder = Decoder::new(&DecodeConfig::default());
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements((msgs.len() * METRICS.len()) as u64));
    g.bench_function("json_4_metrics", |b| {
        b.iter(|| {
            for m in &msgs {
                black_box(decoder.decode(black_box(m)).ok());
            }
        })
    });
    g.finish();
}

fn detect(c: &mut Criterion) {
    let mut sim = Simulator::new(DEVICES, Simulator::demo_faults(t0() + 600_000), 7);
    let decoder = Decoder::new(&DecodeConfig::default());
    let readings: Vec<Reading> =
        messages(&mut sim, t0(), 1000).iter().flat_map(|m| decoder.decode(m).unwrap_or_default()).collect();
    let mut bank = DetectorBank::new(&DetectConfig::default());
    // Past warm-up, as in steady operation.
    for r in &readings {
        bank.observe(&r.device, &r.metric, r.ts, r.value);
    }
    let chunk = DEVICES * METRICS.len() * 25;
    let mut offset = 1000 * STEP_MS;
    let mut g = c.benchmark_group("detect");
    g.throughput(Throughput::Elements(chunk as u64));
    g.bench_function("bank_observe", |b| {
        let mut at = 0;
        b.iter(|| {
            for r in &readings[at..at + chunk] {
                black_box(bank.observe(&r.device, &r.metric, r.ts + offset, r.value));
            }
            at += chunk;
            if at + chunk > readings.len() {
                at = 0;
                offset += 1000 * STEP_MS;
            }
        })
    });
    g.finish();
}

/// The simulator feeding a core, and the event time it has reached.
struct Feed {
    sim: Simulator,
    next_ts: i64,
}

impl Feed {
    /// The next batch of `n` messages (new event times, so nothing is a duplicate).
    fn batch(&mut self, n: usize) -> Vec<Message> {
        let steps = (n / DEVICES) as i64;
        let m = messages(&mut self.sim, self.next_ts, steps);
        self.next_ts += steps * STEP_MS;
        m
    }
}

/// A core on `store`, past warm-up, and the feed that continues where warm-up stopped.
fn warmed_core(store: Store) -> (Core, Arc<Store>, Feed) {
    let t0 = t0();
    let store = Arc::new(store);
    let mut core =
        Core::new(Config::default().core(), store.clone(), Arc::new(Metrics::new(&metric_labels()))).unwrap();
    // Faults start after warm-up so the incident and outbox path runs too.
    let mut sim = Simulator::new(DEVICES, Simulator::demo_faults(t0 + 120_000), 7);
    core.process_messages(&messages(&mut sim, t0, 100)).unwrap();
    let feed = Feed { sim, next_ts: t0 + 100 * STEP_MS };
    (core, store, feed)
}

fn core(c: &mut Criterion) {
    let mut g = c.benchmark_group("core");
    // 512 messages is the daemon's default batch_max.
    let batch = 520;
    g.throughput(Throughput::Elements((batch * METRICS.len()) as u64));

    let (mut core, _, mut feed) = warmed_core(Store::temporary().unwrap());
    g.bench_function("process_batch_no_flush", |b| {
        b.iter_batched(|| feed.batch(batch), |m| core.process_messages(&m).unwrap(), BatchSize::PerIteration)
    });

    // Group commit as the daemon does it, on a real directory (the temporary store above lives
    // in /dev/shm, where a flush costs nothing).
    for batch in [60, 520] {
        let dir = tempfile::tempdir().unwrap();
        let (mut core, store, mut feed) = warmed_core(Store::open(dir.path(), 64, 1000).unwrap());
        g.throughput(Throughput::Elements((batch * METRICS.len()) as u64));
        g.bench_function(format!("process_and_flush_{batch}_msgs_on_disk"), |b| {
            b.iter_batched(
                || feed.batch(batch),
                |m| {
                    core.process_messages(&m).unwrap();
                    store.flush_blocking().unwrap();
                },
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
}

fn config() -> Criterion {
    Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4)).sample_size(30)
}

criterion_group! {
    name = benches;
    config = config();
    targets = decode, detect, core
}
criterion_main!(benches);
