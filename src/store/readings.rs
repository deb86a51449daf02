//! Readings: an append-only batch log in sled, compacted into compressed per-series chunks.
//!
//! The write path stays as durable as one key per reading was, at a fraction of the sled work:
//! every reading of a batch goes into one `log` entry (`seq` → its readings, see [`LogBatch`]),
//! written just before the batch's flush, so a reading is on disk before it is acknowledged.
//! In memory each series keeps a *head*: its readings not yet in a chunk. A head that holds
//! [`CHUNK_READINGS`] readings, or is older than [`HEAD_MAX_AGE_MS`], is compacted: its readings
//! are compressed with pco (timestamps as i64, values as f64) into a chunk keyed
//! `series ‖ first ts`, merged with the series' last chunk while that is small, and then the log
//! entries no head needs any more are removed. A crash between the log write and the
//! compaction, or in the middle of one, loses and doubles nothing: at open the log is read back
//! into the heads, skipping readings already in a chunk.
//!
//! Chunks of one series never overlap in time: a late reading (older than the series' last
//! chunk) is merged into the chunk that covers it when its head is compacted. So "is this
//! reading already stored?" — the redelivery check — looks at the head and at one chunk.
//!
//! Retention drops whole chunks whose readings are all older than the cut-off, after folding
//! them into per-interval aggregates (min, max, mean, count) that are kept longer.

use std::collections::HashMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, Transactional};

use super::batch_log::LogBatch;
use super::head::HeadPoints;
use super::StoreError;

/// Readings per chunk (a chunk of a slow series may be smaller; it grows at later compactions).
pub const CHUNK_READINGS: usize = 128;
/// Bytes of a compacted head's buffer kept for the readings to come (about 20 noisy readings).
const HEAD_BYTES_KEPT: usize = 192;
/// Series whose heads one write of a compaction turns into chunks.
const COMPACT_GROUP: usize = 256;
/// A head older than this (wall time since its first reading) is compacted even if small, so
/// the log never holds more than this much of a slow series.
pub const HEAD_MAX_AGE_MS: i64 = 10 * 60 * 1000;

/// Key of a chunk: series, then its first timestamp (order-preserving).
fn chunk_key(series: u32, first_ts: i64) -> [u8; 12] {
    super::reading_key(series, first_ts)
}

fn key_ts(key: &[u8]) -> Result<i64, StoreError> {
    let ts: [u8; 8] =
        key.get(4..12).and_then(|s| s.try_into().ok()).ok_or_else(|| StoreError::Corrupt("chunk key".into()))?;
    Ok((u64::from_be_bytes(ts) ^ (1 << 63)) as i64)
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(what.into())
}

/// pco's compression level for chunks (its default is 8; see [`Chunk::encode`]).
const CHUNK_COMPRESSION_LEVEL: usize = 4;

/// The order of consecutive differences (0 to 4) that leaves a chunk's values the least
/// spread (mean absolute deviation): 0 for noise around a level, 1 for a random walk, a ramp
/// or a counter, higher for smooth curves without noise. pco's own search (`DeltaSpec::Auto`)
/// also tries look-back and orders up to 7, and took three quarters of a chunk's value
/// compression time (128 readings: 16-26 µs against 4-7 µs). On noise, walks, ramps,
/// counters, quantized and constant values the sizes are the same or within 2 %; on a noiseless sine
/// pco's search finds a higher order (342 against 525 bytes), which sensor readings never are.
pub(super) fn delta_order(values: &[f64]) -> usize {
    fn spread(v: &[f64]) -> f64 {
        let mean = v.iter().sum::<f64>() / v.len().max(1) as f64;
        v.iter().map(|x| (x - mean).abs()).sum::<f64>() / v.len().max(1) as f64
    }
    let (mut best, mut best_spread) = (0, spread(values));
    // Differences taken in place, from the end: after pass `order`, `diffs[order..]` holds
    // the differences of that order.
    let mut diffs = values.to_vec();
    // Too few differences say nothing: one or none has no spread at all.
    let max_order = MAX_DELTA_ORDER.min(values.len().saturating_sub(MIN_DIFFERENCES));
    for order in 1..=max_order {
        for i in (order..diffs.len()).rev() {
            diffs[i] -= diffs[i - 1];
        }
        let s = spread(diffs.get(order..).unwrap_or_default());
        // A higher order only when it clearly pays: each order costs a few bytes of state,
        // and noise grows with every difference taken.
        if s < best_spread * 0.5 {
            (best, best_spread) = (order, s);
        }
    }
    best
}

/// The highest order [`delta_order`] tries: a smooth curve without noise.
const MAX_DELTA_ORDER: usize = 4;
/// [`delta_order`] tries an order only when it leaves at least this many differences.
const MIN_DIFFERENCES: usize = 8;

/// pco's configuration for a column of `values` (as f64; the column itself may be integers):
/// compression level `level` and the delta order [`delta_order`] picks.
pub(super) fn pco_config(level: usize, values: &[f64]) -> pco::ChunkConfig {
    pco::ChunkConfig::default()
        .with_compression_level(level)
        .with_delta_spec(pco::DeltaSpec::TryConsecutive(delta_order(values)))
}

/// A compressed run of one series' readings, sorted by time, no duplicates.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    pub ts: Vec<i64>,
    pub values: Vec<f64>,
}

impl Chunk {
    fn first(&self) -> i64 {
        self.ts.first().copied().unwrap_or(i64::MIN)
    }

    fn last(&self) -> i64 {
        self.ts.last().copied().unwrap_or(i64::MIN)
    }

    /// `count (u32) ‖ last ts (i64) ‖ len of the ts block (u32) ‖ pco(ts) ‖ pco(values)`.
    pub fn encode(&self) -> Result<Vec<u8>, StoreError> {
        // A chunk is small (128 readings), and pco's fixed cost per column dominates: for
        // 128 simulated readings, 125 µs with the defaults. Timestamps come at a cadence, so
        // plain deltas (one bin when it is steady); values with the order `delta_order` picks;
        // neither with pco's search over delta encodings; and compression level 4 instead of
        // 8, for the same size on noisy and on smooth values.
        let ts_cfg = pco::ChunkConfig::default()
            .with_compression_level(CHUNK_COMPRESSION_LEVEL)
            .with_delta_spec(pco::DeltaSpec::TryConsecutive(1));
        let vs_cfg = pco_config(CHUNK_COMPRESSION_LEVEL, &self.values);
        let ts = pco::standalone::simple_compress(&self.ts, &ts_cfg).map_err(|e| corrupt(&format!("compress: {e}")))?;
        let vs =
            pco::standalone::simple_compress(&self.values, &vs_cfg).map_err(|e| corrupt(&format!("compress: {e}")))?;
        let mut out = Vec::with_capacity(16 + ts.len() + vs.len());
        out.extend_from_slice(&(self.ts.len() as u32).to_be_bytes());
        out.extend_from_slice(&self.last().to_be_bytes());
        out.extend_from_slice(&(ts.len() as u32).to_be_bytes());
        out.extend_from_slice(&ts);
        out.extend_from_slice(&vs);
        Ok(out)
    }

    /// The count and last timestamp, without decompressing.
    fn header(bytes: &[u8]) -> Result<(usize, i64), StoreError> {
        let count =
            u32::from_be_bytes(bytes.get(0..4).and_then(|b| b.try_into().ok()).ok_or_else(|| corrupt("chunk"))?);
        let last =
            i64::from_be_bytes(bytes.get(4..12).and_then(|b| b.try_into().ok()).ok_or_else(|| corrupt("chunk"))?);
        Ok((count as usize, last))
    }

    pub fn decode(bytes: &[u8]) -> Result<Chunk, StoreError> {
        let (count, _) = Chunk::header(bytes)?;
        let ts_len =
            u32::from_be_bytes(bytes.get(12..16).and_then(|b| b.try_into().ok()).ok_or_else(|| corrupt("chunk"))?)
                as usize;
        let ts_bytes = bytes.get(16..16 + ts_len).ok_or_else(|| corrupt("chunk"))?;
        let vs_bytes = bytes.get(16 + ts_len..).ok_or_else(|| corrupt("chunk"))?;
        let ts: Vec<i64> = pco::standalone::simple_decompress(ts_bytes).map_err(|e| corrupt(&format!("chunk: {e}")))?;
        let values: Vec<f64> =
            pco::standalone::simple_decompress(vs_bytes).map_err(|e| corrupt(&format!("chunk: {e}")))?;
        if ts.len() != count || values.len() != count {
            return Err(corrupt("chunk length"));
        }
        Ok(Chunk { ts, values })
    }

    /// Adds readings (any order), keeping time order; a timestamp already present keeps its value.
    fn merge(&mut self, points: &[(i64, f64)]) {
        let mut all: Vec<(i64, f64)> = self.ts.iter().copied().zip(self.values.iter().copied()).collect();
        all.extend_from_slice(points);
        all.sort_by_key(|p| p.0);
        all.dedup_by_key(|p| p.0);
        self.ts = all.iter().map(|p| p.0).collect();
        self.values = all.iter().map(|p| p.1).collect();
    }
}

/// Min, max, mean and count of one series over one downsampling interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Aggregate {
    /// Start of the interval (ms).
    pub start: i64,
    pub min: f64,
    pub max: f64,
    pub mean: f64,
    pub count: u64,
}

impl Aggregate {
    fn encode(&self) -> [u8; 32] {
        let mut b = [0u8; 32];
        b[0..8].copy_from_slice(&self.min.to_be_bytes());
        b[8..16].copy_from_slice(&self.max.to_be_bytes());
        b[16..24].copy_from_slice(&self.mean.to_be_bytes());
        b[24..32].copy_from_slice(&self.count.to_be_bytes());
        b
    }

    fn decode(start: i64, b: &[u8]) -> Result<Aggregate, StoreError> {
        let f = |i: usize| -> Result<[u8; 8], StoreError> {
            b.get(i..i + 8).and_then(|s| s.try_into().ok()).ok_or_else(|| corrupt("aggregate"))
        };
        Ok(Aggregate {
            start,
            min: f64::from_be_bytes(f(0)?),
            max: f64::from_be_bytes(f(8)?),
            mean: f64::from_be_bytes(f(16)?),
            count: u64::from_be_bytes(f(24)?),
        })
    }

    fn add(&mut self, other: &Aggregate) {
        let n = self.count + other.count;
        if n > 0 {
            self.mean = (self.mean * self.count as f64 + other.mean * other.count as f64) / n as f64;
        }
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.count = n;
    }
}

/// One series' readings not yet in a chunk.
#[derive(Debug)]
struct Head {
    points: HeadPoints,
    /// The oldest log entry holding one of `points`.
    first_seq: u64,
    /// Wall-clock ms of the first of `points` (for [`HEAD_MAX_AGE_MS`]).
    since_ms: i64,
    /// Latest timestamp in the series' chunks (`i64::MIN`: none).
    chunked_until: i64,
}

#[derive(Debug, Default)]
struct State {
    heads: crate::FastMap<u32, Head>,
    /// Readings of the batch being built, written to the log by [`Readings::commit`].
    pending: LogBatch,
    next_seq: u64,
}

/// The readings part of the store.
pub(super) struct Readings {
    log: sled::Tree,
    chunks: sled::Tree,
    aggregates: sled::Tree,
    state: Mutex<State>,
}

impl Readings {
    /// Opens the trees and reads the log back into the heads.
    pub(super) fn open(db: &sled::Db) -> Result<Readings, StoreError> {
        let r = Readings {
            log: db.open_tree("log")?,
            chunks: db.open_tree("chunks")?,
            aggregates: db.open_tree("aggregates")?,
            state: Mutex::new(State::default()),
        };
        let now = crate::reading::now_ms();
        let mut st = r.lock();
        for kv in r.log.iter() {
            let (k, v) = kv?;
            let (seq, batch) = LogBatch::decode(&k, &v)?;
            st.next_seq = seq + 1;
            for (series, ts, value) in batch.iter() {
                r.insert_locked(&mut st, series, ts, value, seq, || now)?;
            }
        }
        drop(st);
        Ok(r)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock still guards consistent data: every change is made whole under it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a reading; `false` when exactly this reading (series and time) is already stored.
    pub(super) fn insert(&self, series: u32, ts: i64, value: f64) -> Result<bool, StoreError> {
        let mut st = self.lock();
        let seq = st.next_seq;
        let new = self.insert_locked(&mut st, series, ts, value, seq, crate::reading::now_ms)?;
        if new {
            st.pending.push(series, ts, value);
        }
        Ok(new)
    }

    fn insert_locked(
        &self,
        st: &mut State,
        series: u32,
        ts: i64,
        value: f64,
        seq: u64,
        now: impl Fn() -> i64,
    ) -> Result<bool, StoreError> {
        // `now` is read only when a head starts (the clock is not free, and this runs for
        // every reading).
        let head = match st.heads.entry(series) {
            hashbrown::hash_map::Entry::Occupied(e) => e.into_mut(),
            hashbrown::hash_map::Entry::Vacant(e) => {
                let chunked_until = self.chunked_until(series)?;
                e.insert(Head { points: HeadPoints::default(), first_seq: seq, since_ms: now(), chunked_until })
            }
        };
        if head.points.contains(ts) {
            return Ok(false);
        }
        if ts <= head.chunked_until && self.in_chunks(series, ts)? {
            return Ok(false);
        }
        if head.points.is_empty() {
            head.first_seq = seq;
            head.since_ms = now();
        }
        head.points.push(ts, value);
        Ok(true)
    }

    /// The latest timestamp in a series' chunks.
    fn chunked_until(&self, series: u32) -> Result<i64, StoreError> {
        match self.chunks.scan_prefix(series.to_be_bytes()).next_back() {
            Some(kv) => Ok(Chunk::header(&kv?.1)?.1),
            None => Ok(i64::MIN),
        }
    }

    /// The chunk that covers `ts` (the one starting at or before it), as key and bytes.
    fn covering(&self, series: u32, ts: i64) -> Result<Option<(sled::IVec, sled::IVec)>, StoreError> {
        Ok(self.chunks.range(chunk_key(series, i64::MIN)..=chunk_key(series, ts)).next_back().transpose()?)
    }

    fn in_chunks(&self, series: u32, ts: i64) -> Result<bool, StoreError> {
        match self.covering(series, ts)? {
            Some((_, v)) if Chunk::header(&v)?.1 >= ts => Ok(Chunk::decode(&v)?.ts.binary_search(&ts).is_ok()),
            _ => Ok(false),
        }
    }

    /// Writes the pending batch to the log (before the flush that makes it durable), then
    /// compacts the heads that are due (`all`: every non-empty head, at shutdown).
    pub(super) fn commit(&self, all: bool) -> Result<(), StoreError> {
        let mut st = self.lock();
        if !st.pending.is_empty() {
            let seq = st.next_seq;
            let (key, entry) = st.pending.encode(seq)?;
            self.log.insert(key, entry)?;
            st.pending.clear();
            st.next_seq += 1;
        }
        let now = crate::reading::now_ms();
        let due: Vec<u32> = st
            .heads
            .iter()
            .filter(|(_, h)| {
                !h.points.is_empty() && (all || h.points.len() >= CHUNK_READINGS || now - h.since_ms >= HEAD_MAX_AGE_MS)
            })
            .map(|(s, _)| *s)
            .collect();
        if due.is_empty() {
            return Ok(());
        }
        self.compact(&mut st, &due)
    }

    /// Turns the heads of `due` into chunks, [`COMPACT_GROUP`] series (in key order) per
    /// write, then drops the log entries no head needs any more. A crash in between loses and
    /// doubles nothing: the log is read back at open, and readings already in a chunk are
    /// skipped. Writing a fleet's heads in groups bounds what one write holds in memory (devices
    /// that report at one rate fill all their heads in step).
    fn compact(&self, st: &mut State, due: &[u32]) -> Result<(), StoreError> {
        let mut due = due.to_vec();
        due.sort_unstable();
        // What the log must keep: entries from the oldest head that stays.
        let keep_from = st
            .heads
            .iter()
            .filter(|(s, h)| !h.points.is_empty() && due.binary_search(s).is_err())
            .map(|(_, h)| h.first_seq)
            .min()
            .unwrap_or(st.next_seq);
        for group in due.chunks(COMPACT_GROUP) {
            let writes = self.chunk_writes(st, group)?;
            let mut batch = sled::Batch::default();
            for (k, v) in writes {
                match v {
                    Some(v) => batch.insert(k, v),
                    None => batch.remove(k),
                }
            }
            self.chunks.apply_batch(batch)?;
            for series in group {
                if let Some(head) = st.heads.get_mut(series) {
                    let newest = head.points.max_ts().unwrap_or(i64::MIN);
                    head.chunked_until = head.chunked_until.max(newest);
                    head.points.clear(HEAD_BYTES_KEPT);
                }
            }
        }
        let mut trim = sled::Batch::default();
        for k in self.log.range(..keep_from.to_be_bytes()).keys() {
            trim.remove(k?);
        }
        self.log.apply_batch(trim)?;
        Ok(())
    }

    /// The chunk writes (`None`: remove) that take in the heads of `series`.
    #[allow(clippy::type_complexity)]
    fn chunk_writes(&self, st: &State, series_list: &[u32]) -> Result<Vec<(Vec<u8>, Option<Vec<u8>>)>, StoreError> {
        let mut writes: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
        for series in series_list {
            let Some(head) = st.heads.get(series) else { continue };
            let mut points: Vec<(i64, f64)> = head.points.iter().collect();
            points.sort_by_key(|p| p.0);
            let chunked_until = head.chunked_until;
            // Late readings go into the chunks that cover them, so chunks never overlap.
            let split = points.partition_point(|p| p.0 <= chunked_until);
            let (late, fresh) = points.split_at(split);
            let mut late_by_chunk: Vec<(sled::IVec, Vec<(i64, f64)>)> = Vec::new();
            // Late readings of a series whose chunks retention has dropped have no chunk to go
            // into: they start new chunks like fresh ones.
            let mut orphans: Vec<(i64, f64)> = Vec::new();
            for p in late {
                let key = match self.covering(*series, p.0)? {
                    Some((k, _)) => k,
                    None => match self.chunks.scan_prefix(series.to_be_bytes()).next() {
                        Some(kv) => kv?.0,
                        None => {
                            orphans.push(*p);
                            continue;
                        }
                    },
                };
                match late_by_chunk.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, v)) => v.push(*p),
                    None => late_by_chunk.push((key, vec![*p])),
                }
            }
            for (key, extra) in late_by_chunk {
                let Some(bytes) = self.chunks.get(&key)? else { continue };
                let mut chunk = Chunk::decode(&bytes)?;
                chunk.merge(&extra);
                let new_key = chunk_key(*series, chunk.first());
                if new_key.as_slice() != key.as_ref() {
                    writes.push((key.to_vec(), None));
                }
                writes.push((new_key.to_vec(), Some(chunk.encode()?)));
            }
            // Fresh readings extend the last chunk while it is small, then start new ones.
            let mut fresh: Vec<(i64, f64)> = orphans.into_iter().chain(fresh.iter().copied()).collect();
            if fresh.is_empty() {
                continue;
            }
            if let Some(kv) = self.chunks.scan_prefix(series.to_be_bytes()).next_back() {
                let (key, bytes) = kv?;
                let (count, _) = Chunk::header(&bytes)?;
                if count < CHUNK_READINGS && !writes.iter().any(|(k, _)| k.as_slice() == key.as_ref()) {
                    let last = Chunk::decode(&bytes)?;
                    let mut all: Vec<(i64, f64)> = last.ts.into_iter().zip(last.values).collect();
                    all.extend(fresh);
                    fresh = all;
                    writes.push((key.to_vec(), None));
                }
            }
            for part in fresh.chunks(CHUNK_READINGS) {
                let chunk =
                    Chunk { ts: part.iter().map(|p| p.0).collect(), values: part.iter().map(|p| p.1).collect() };
                let key = chunk_key(*series, chunk.first()).to_vec();
                writes.retain(|(k, _)| *k != key);
                writes.push((key, Some(chunk.encode()?)));
            }
        }
        Ok(writes)
    }

    /// Up to `n` most recent readings of a series at or before `until`, oldest first.
    pub(super) fn recent(&self, series: u32, until: i64, n: usize) -> Result<Vec<(i64, f64)>, StoreError> {
        let mut out: Vec<(i64, f64)> = {
            let st = self.lock();
            st.heads.get(&series).map(|h| h.points.iter().filter(|p| p.0 <= until).collect()).unwrap_or_default()
        };
        out.sort_by_key(|p| p.0);
        let mut older: Vec<(i64, f64)> = Vec::new();
        if out.len() < n {
            for kv in self.chunks.range(chunk_key(series, i64::MIN)..=chunk_key(series, until)).rev() {
                let c = Chunk::decode(&kv?.1)?;
                let mut part: Vec<(i64, f64)> = c.ts.into_iter().zip(c.values).filter(|p| p.0 <= until).collect();
                part.extend(older);
                older = part;
                if older.len() + out.len() >= n {
                    break;
                }
            }
        }
        // The head was read first (see `range`): a compaction in between shows a reading twice.
        older.extend(out);
        older.sort_by_key(|p| p.0);
        older.dedup_by_key(|p| p.0);
        let skip = older.len().saturating_sub(n);
        Ok(older.split_off(skip))
    }

    /// All readings of a series in `[from, to]`, in time order.
    ///
    /// The head is read before the chunks: a compaction in between (it writes the chunks before
    /// it empties the head, both under the lock) then shows a reading twice, never not at all,
    /// and the duplicates are dropped.
    pub(super) fn range(&self, series: u32, from: i64, to: i64) -> Result<Vec<(i64, f64)>, StoreError> {
        if from > to {
            return Ok(Vec::new());
        }
        let mut out: Vec<(i64, f64)> = {
            let st = self.lock();
            st.heads
                .get(&series)
                .map(|h| h.points.iter().filter(|p| p.0 >= from && p.0 <= to).collect())
                .unwrap_or_default()
        };
        // The chunk that starts before `from` may reach into the range.
        let start = self.covering(series, from)?.map(|(k, _)| key_ts(&k)).transpose()?.unwrap_or(from);
        for kv in self.chunks.range(chunk_key(series, start)..=chunk_key(series, to)) {
            let c = Chunk::decode(&kv?.1)?;
            out.extend(c.ts.into_iter().zip(c.values).filter(|p| p.0 >= from && p.0 <= to));
        }
        out.sort_by_key(|p| p.0);
        out.dedup_by_key(|p| p.0);
        Ok(out)
    }

    /// Number of stored readings (reads every chunk header: tests and tools, not the hot path).
    pub(super) fn count(&self) -> Result<usize, StoreError> {
        // Under the lock: no compaction moves readings between the two while they are counted.
        let st = self.lock();
        let mut n = st.heads.values().map(|h| h.points.len()).sum::<usize>();
        for kv in self.chunks.iter() {
            n += Chunk::header(&kv?.1)?.0;
        }
        Ok(n)
    }

    /// Readings waiting in heads (not yet in a chunk).
    pub(super) fn head_readings(&self) -> usize {
        self.lock().heads.values().map(|h| h.points.len()).sum()
    }

    /// Drops the chunks of `series` whose readings are all older than `cutoff`, folding them
    /// into `interval_ms` aggregates first; returns how many readings went.
    pub(super) fn prune(&self, series: u32, cutoff: i64, interval_ms: i64) -> Result<usize, StoreError> {
        let mut removed = 0;
        let mut folded: HashMap<i64, Aggregate> = HashMap::new();
        let mut keys = Vec::new();
        for kv in self.chunks.scan_prefix(series.to_be_bytes()) {
            let (k, v) = kv?;
            let (count, last) = Chunk::header(&v)?;
            if last >= cutoff {
                break;
            }
            let c = Chunk::decode(&v)?;
            for (ts, value) in c.ts.iter().zip(&c.values) {
                let start = ts.div_euclid(interval_ms) * interval_ms;
                let one = Aggregate { start, min: *value, max: *value, mean: *value, count: 1 };
                folded.entry(start).and_modify(|a| a.add(&one)).or_insert(one);
            }
            removed += count;
            keys.push(k);
        }
        if keys.is_empty() {
            return Ok(0);
        }
        let mut rows = Vec::with_capacity(folded.len());
        for (start, mut a) in folded {
            let key = chunk_key(series, start);
            if let Some(old) = self.aggregates.get(key)? {
                a.add(&Aggregate::decode(start, &old)?);
            }
            rows.push((key, a.encode()));
        }
        (&self.chunks, &self.aggregates)
            .transaction(|(chunks, aggregates)| {
                for k in &keys {
                    chunks.remove(k)?;
                }
                for (k, v) in &rows {
                    aggregates.insert(k.as_slice(), v.as_slice())?;
                }
                Ok::<(), ConflictableTransactionError<StoreError>>(())
            })
            .map_err(StoreError::from)?;
        Ok(removed)
    }

    /// Drops aggregates of `series` older than `cutoff`.
    pub(super) fn prune_aggregates(&self, series: u32, cutoff: i64) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for k in self.aggregates.range(chunk_key(series, i64::MIN)..chunk_key(series, cutoff)).keys() {
            batch.remove(k?);
        }
        self.aggregates.apply_batch(batch)?;
        Ok(())
    }

    /// Aggregates of a series with a start in `[from, to]`, in time order.
    pub(super) fn aggregates(&self, series: u32, from: i64, to: i64) -> Result<Vec<Aggregate>, StoreError> {
        self.aggregates
            .range(chunk_key(series, from)..=chunk_key(series, to))
            .map(|kv| {
                let (k, v) = kv?;
                Aggregate::decode(key_ts(&k)?, &v)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> sled::Db {
        sled::Config::new().temporary(true).open().unwrap()
    }

    #[test]
    fn chunks_round_trip_and_compress() {
        let ts: Vec<i64> = (0..128).map(|i| 1_700_000_000_000 + i * 10_000).collect();
        let values: Vec<f64> = (0..128).map(|i| 70.0 + (i as f64 * 0.7).sin()).collect();
        let c = Chunk { ts, values };
        let bytes = c.encode().unwrap();
        assert_eq!(Chunk::decode(&bytes).unwrap(), c);
        assert!(bytes.len() < 128 * 16 / 2, "{} bytes for 128 readings", bytes.len());
        // Steady timestamps take almost nothing; jittered ones (a device's clock, the network)
        // still compress well.
        let steady = bytes.len();
        let jittered = Chunk { ts: c.ts.iter().enumerate().map(|(i, t)| t + (i as i64 * 7919) % 250).collect(), ..c };
        let bytes = jittered.encode().unwrap();
        assert_eq!(Chunk::decode(&bytes).unwrap(), jittered);
        assert!(bytes.len() < steady + 128 + 32, "{} bytes with jitter, {steady} without", bytes.len());
    }

    #[test]
    fn the_delta_order_suits_the_shape_and_compresses_as_well_as_pcos_search() {
        // A fixed pseudo-random sequence: noise of ±0.5.
        let mut seed = 12345u64;
        let mut noise = move || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 11) as f64 / (1u64 << 53) as f64) - 0.5
        };
        let level: Vec<f64> = (0..128).map(|_| 70.0 + noise()).collect();
        let mut at = 0.0;
        let walk: Vec<f64> = (0..128).map(|_| (at += noise(), at).1).collect();
        let counter: Vec<f64> = (0..128).map(|i| (1_000_000 + i * 37) as f64).collect();
        let quantized: Vec<f64> = (0..128).map(|_| ((70.0 + noise()) * 10.0).round() / 10.0).collect();
        let cfg = pco::ChunkConfig::default().with_compression_level(CHUNK_COMPRESSION_LEVEL);
        for (name, values, order) in
            [("level", level, 0), ("walk", walk, 1), ("counter", counter, 1), ("quantized", quantized, 0)]
        {
            assert_eq!(delta_order(&values), order, "{name}");
            let ours = pco::standalone::simple_compress(&values, &pco_config(CHUNK_COMPRESSION_LEVEL, &values));
            let ours = ours.unwrap().len();
            let searched = pco::standalone::simple_compress(&values, &cfg).unwrap().len();
            // Within 2 % (a walk: 967 against 956 bytes).
            assert!(ours * 50 <= searched * 51, "{name}: {ours} bytes, pco's search {searched}");
        }
        assert_eq!(delta_order(&[3.5; 128]), 0, "constant");
        assert_eq!(delta_order(&[]), 0, "empty");
        // A short chunk (cut by age, or at shutdown): too few differences to judge by, though
        // the last one left would have no spread at all.
        assert_eq!(delta_order(&[1.0, 5.0, 2.0, 7.0]), 0, "short");
        assert_eq!(delta_order(&(0..9).map(f64::from).collect::<Vec<_>>()), 1, "a short ramp");
    }

    #[test]
    fn compaction_keeps_every_reading_once_and_redeliveries_stay_duplicates() {
        let db = db();
        let r = Readings::open(&db).unwrap();
        for i in 0..300 {
            assert!(r.insert(7, i * 1000, i as f64).unwrap());
        }
        r.commit(false).unwrap();
        assert!(r.head_readings() < CHUNK_READINGS, "full heads were compacted");
        // Redelivered after compaction: still a duplicate, from a chunk or from the head.
        for i in [0, 5, 127, 128, 299] {
            assert!(!r.insert(7, i * 1000, i as f64).unwrap(), "reading {i}");
        }
        r.commit(true).unwrap();
        assert_eq!(r.head_readings(), 0);
        assert_eq!(r.count().unwrap(), 300);
        let all = r.range(7, i64::MIN, i64::MAX).unwrap();
        assert_eq!(all.len(), 300);
        assert!(all.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(r.recent(7, 150_000, 3).unwrap(), vec![(148_000, 148.0), (149_000, 149.0), (150_000, 150.0)]);
        assert_eq!(r.range(7, 10_500, 12_000).unwrap(), vec![(11_000, 11.0), (12_000, 12.0)]);
    }

    #[test]
    fn a_redelivered_reading_behind_a_late_one_is_still_a_duplicate() {
        let db = db();
        let r = Readings::open(&db).unwrap();
        assert!(r.insert(3, 10_000, 1.0).unwrap());
        assert!(r.insert(3, 5_000, 0.5).unwrap(), "a late reading is new");
        // The head's last reading is older than this one; it is still held.
        assert!(!r.insert(3, 10_000, 1.0).unwrap());
        assert!(!r.insert(3, 5_000, 0.5).unwrap());
        r.commit(true).unwrap();
        assert_eq!(r.range(3, i64::MIN, i64::MAX).unwrap(), vec![(5_000, 0.5), (10_000, 1.0)]);
    }

    #[test]
    fn a_reader_never_misses_readings_a_compaction_is_moving() {
        let db = db();
        let r = std::sync::Arc::new(Readings::open(&db).unwrap());
        let writer = {
            let r = r.clone();
            std::thread::spawn(move || {
                for i in 0..4000 {
                    r.insert(2, i * 1000, i as f64).unwrap();
                    if i % 37 == 0 {
                        r.commit(false).unwrap();
                    }
                }
                r.commit(true).unwrap();
            })
        };
        let mut last = 0;
        while !writer.is_finished() {
            let seen = r.range(2, i64::MIN, i64::MAX).unwrap();
            assert!(seen.len() >= last, "readings vanished: {} after {last}", seen.len());
            assert!(seen.windows(2).all(|w| w[0].0 < w[1].0), "sorted, no duplicates");
            last = seen.len();
        }
        writer.join().unwrap();
        assert_eq!(r.range(2, i64::MIN, i64::MAX).unwrap().len(), 4000);
    }

    #[test]
    fn a_late_reading_after_retention_dropped_every_chunk_is_kept() {
        let db = db();
        let r = Readings::open(&db).unwrap();
        for i in 0..CHUNK_READINGS as i64 {
            r.insert(5, i * 1000, 1.0).unwrap();
        }
        r.commit(true).unwrap();
        assert_eq!(r.prune(5, i64::MAX, 60_000).unwrap(), CHUNK_READINGS);
        // Older than the newest reading ever chunked, but no chunk is left to merge it into.
        assert!(r.insert(5, 10_500, 2.0).unwrap());
        r.commit(true).unwrap();
        assert_eq!(r.range(5, i64::MIN, i64::MAX).unwrap(), vec![(10_500, 2.0)]);
    }

    #[test]
    fn a_late_reading_is_merged_into_the_chunk_that_covers_it() {
        let db = db();
        let r = Readings::open(&db).unwrap();
        for i in (0..200).filter(|i| i % 2 == 0) {
            r.insert(1, i * 1000, 1.0).unwrap();
        }
        r.commit(true).unwrap();
        assert!(r.insert(1, 51_000, 2.0).unwrap(), "a new reading inside a chunk's span");
        r.commit(true).unwrap();
        assert!(!r.insert(1, 51_000, 2.0).unwrap());
        assert_eq!(r.range(1, 50_000, 52_000).unwrap(), vec![(50_000, 1.0), (51_000, 2.0), (52_000, 1.0)]);
        assert_eq!(r.count().unwrap(), 101);
    }

    #[test]
    fn the_log_is_read_back_after_a_crash_before_compaction() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = super::super::open_waiting(&sled::Config::new().path(dir.path())).unwrap();
            let r = Readings::open(&db).unwrap();
            for i in 0..50 {
                r.insert(3, i * 1000, i as f64).unwrap();
            }
            r.commit(false).unwrap(); // in the log, not compacted
            db.flush().unwrap();
        }
        let db = super::super::open_waiting(&sled::Config::new().path(dir.path())).unwrap();
        let r = Readings::open(&db).unwrap();
        assert_eq!(r.count().unwrap(), 50);
        assert!(!r.insert(3, 10_000, 10.0).unwrap(), "a redelivery after the restart is a duplicate");
        assert!(r.insert(3, 50_000, 50.0).unwrap());
    }

    #[test]
    fn a_crash_between_chunk_write_and_log_trim_doubles_nothing() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = super::super::open_waiting(&sled::Config::new().path(dir.path())).unwrap();
            let r = Readings::open(&db).unwrap();
            for i in 0..CHUNK_READINGS as i64 {
                r.insert(4, i * 1000, i as f64).unwrap();
            }
            r.commit(false).unwrap();
            // Simulate the crash: the log entry is back although its readings are in a chunk.
            let log = db.open_tree("log").unwrap();
            assert!(log.is_empty(), "compaction trimmed the log");
            let mut rec = Vec::new();
            for i in 0..CHUNK_READINGS as i64 {
                rec.extend_from_slice(&4u32.to_be_bytes());
                rec.extend_from_slice(&(i * 1000).to_be_bytes());
                rec.extend_from_slice(&(i as f64).to_be_bytes());
            }
            log.insert(0u64.to_be_bytes(), rec).unwrap();
            db.flush().unwrap();
        }
        let db = super::super::open_waiting(&sled::Config::new().path(dir.path())).unwrap();
        let r = Readings::open(&db).unwrap();
        assert_eq!(r.count().unwrap(), CHUNK_READINGS, "nothing doubled");
        assert_eq!(r.head_readings(), 0);
    }

    #[test]
    fn retention_drops_whole_chunks_and_keeps_their_aggregates() {
        let db = db();
        let r = Readings::open(&db).unwrap();
        // 600 readings, one a second, values 0..600.
        for i in 0..600 {
            r.insert(9, i * 1000, i as f64).unwrap();
        }
        r.commit(true).unwrap();
        let removed = r.prune(9, 300_000, 60_000).unwrap();
        assert!(removed > 0 && removed <= 300, "{removed}");
        assert_eq!(removed % CHUNK_READINGS, 0, "whole chunks only");
        let left = r.range(9, i64::MIN, i64::MAX).unwrap();
        assert_eq!(left.len(), 600 - removed);
        let aggs = r.aggregates(9, i64::MIN, i64::MAX).unwrap();
        let covered: u64 = aggs.iter().map(|a| a.count).sum();
        assert_eq!(covered as usize, removed);
        let first = aggs[0];
        assert_eq!((first.start, first.min, first.max, first.count), (0, 0.0, 59.0, 60));
        assert!((first.mean - 29.5).abs() < 1e-9);
        r.prune_aggregates(9, 60_000).unwrap();
        assert_eq!(r.aggregates(9, i64::MIN, i64::MAX).unwrap().len(), aggs.len() - 1);
    }
}
