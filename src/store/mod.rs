//! Store: the embedded sled database every accepted reading lands in before it is acknowledged.
//!
//! Trees:
//! - `series`: `device \0 metric` → series id (u32 BE); `series_by_id` is the reverse map.
//! - readings (see [`readings`]): `log` (one entry per committed batch), `chunks` (per-series
//!   compressed runs, keyed `series id (BE) ‖ first ts (order-preserving BE)`) and `aggregates`
//!   (per-interval min/max/mean/count kept after retention drops the chunks).
//! - `rejected`: seq (BE) → a JSON [`Rejected`] record, bounded to `rejected_max` entries.
//! - `incidents`: incident key → JSON; `outbox`: `sink \0 seq (BE)` → JSON ticket command;
//!   `dead_letters`: commands a sink refused for good; `held`: commands kept back (shadow
//!   mode, needs review). Incident changes and their outbox entries
//!   are written in one transaction, so a crash can never leave one without the other.
//! - `detector_state`: `device \0 metric` → what the series' detectors learnt, postcard after a
//!   format byte (JSON as earlier versions wrote it still loads).
//! - `context`: device → its context reference (what it learnt while commissioning, and whether
//!   it still is), postcard after the same format byte.
//!
//! Nothing here is durable until [`Store::flush`]: the caller group-commits a batch, flushes once,
//! then acknowledges the batch to the broker.

mod batch_log;
pub mod config;
mod head;
mod readings;
mod retention;

pub use config::StoreConfig;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};

pub use readings::{Aggregate, Chunk, CHUNK_READINGS};
pub use retention::run_retention;

/// Why the store failed. Disk errors are the daemon's to report; they are never the input's fault.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Sled(#[from] sled::Error),
    #[error("stored record is corrupt: {0}")]
    Corrupt(String),
    #[error("cannot encode record: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("cannot encode detector state: {0}")]
    EncodeState(#[from] postcard::Error),
}

impl From<TransactionError<StoreError>> for StoreError {
    fn from(e: TransactionError<StoreError>) -> Self {
        match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => StoreError::Sled(e),
        }
    }
}

/// A message that could not be decoded, kept aside for the operator to inspect.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Rejected {
    pub received_ms: i64,
    pub topic: String,
    pub reason: String,
    /// The payload as text (lossy), or for a binary Sparkplug payload `hex:` and its bytes in
    /// hex; at most [`REJECTED_PAYLOAD_MAX`] bytes (`decode::kept_payload`).
    pub payload: String,
}

/// Bytes of a rejected payload that are kept; enough to see what went wrong.
pub const REJECTED_PAYLOAD_MAX: usize = 4096;

/// Where a ticket command goes.
#[derive(Debug, Clone, Copy)]
pub enum Route<'a> {
    /// To every named sink's outbox queue.
    Sinks(&'a [String]),
    /// Kept aside with a reason, sent nowhere.
    Held(&'a str),
}

/// A ticket command waiting in a sink's outbox.
#[derive(Debug, Clone)]
pub struct OutboxEntry {
    pub key: sled::IVec,
    pub body: Vec<u8>,
}

/// Series ids by device, then metric: two levels, so a lookup by `&str` allocates nothing.
type SeriesCache = crate::FastMap<String, crate::FastMap<String, u32>>;

/// The embedded database, shared by every stage.
pub struct Store {
    db: sled::Db,
    series: sled::Tree,
    series_by_id: sled::Tree,
    readings: readings::Readings,
    rejected: sled::Tree,
    incidents: sled::Tree,
    outbox: sled::Tree,
    dead_letters: sled::Tree,
    held: sled::Tree,
    tuning: sled::Tree,
    /// Per series: what its detectors learnt (see [`Store::put_detector_state`]).
    detector_state: sled::Tree,
    /// Per device: its context reference (see [`Store::put_context`]).
    context: sled::Tree,
    silences: sled::Tree,
    /// Devices the core tracks: device → when it was first heard (wall ms, BE).
    devices: sled::Tree,
    /// Fitted per-device models: `device\0kind` → JSON.
    models: sled::Tree,
    /// Series ids are looked up on every reading; the cache keeps that off the disk.
    series_cache: Mutex<SeriesCache>,
    rejected_len: AtomicUsize,
    rejected_max: usize,
}

/// Big-endian key of one reading: sorts by series, then time.
pub fn reading_key(series: u32, ts: i64) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..4].copy_from_slice(&series.to_be_bytes());
    // Flipping the sign bit makes signed times sort correctly as unsigned bytes.
    k[4..].copy_from_slice(&((ts as u64) ^ (1 << 63)).to_be_bytes());
    k
}

fn decode_reading(key: &[u8], value: &[u8]) -> Result<(i64, f64), StoreError> {
    let ts: [u8; 8] =
        key.get(4..12).and_then(|s| s.try_into().ok()).ok_or_else(|| StoreError::Corrupt("reading key".into()))?;
    let v: [u8; 8] = value.try_into().map_err(|_| StoreError::Corrupt("reading value".into()))?;
    Ok(((u64::from_be_bytes(ts) ^ (1 << 63)) as i64, f64::from_be_bytes(v)))
}

/// The first byte of a detector state in the binary encoding. A state of the fields of before
/// with one more or one less does not read as postcard (it is not self-describing): a change to
/// them needs a new first byte, and a conversion of the old one if it is worth keeping.
const STATE_POSTCARD: u8 = 2;
/// Detector states stored before the flatline learnt its rest level and repeat rate: read in
/// the caller's layout of then and converted.
const STATE_POSTCARD_V1: u8 = 1;
/// The first byte of a context reference in the binary encoding.
const CONTEXT_POSTCARD: u8 = 1;

/// A stored state: postcard after `tag`, postcard of the layout `Old` after `old_tag`, or
/// JSON (an object, as earlier versions stored every state, ~3 times the size); `None` if it
/// does not read.
fn decode_state<T, Old>(v: &[u8], tag: u8, old_tag: Option<u8>) -> Option<T>
where
    T: for<'de> Deserialize<'de>,
    Old: for<'de> Deserialize<'de> + Into<T>,
{
    match v.split_first() {
        Some((&t, rest)) if t == tag => postcard::from_bytes(rest).ok(),
        Some((&t, rest)) if Some(t) == old_tag => postcard::from_bytes::<Old>(rest).ok().map(Into::into),
        Some((b'{', _)) => serde_json::from_slice(v).ok(),
        _ => None,
    }
}

fn outbox_prefix(sink: &str) -> Vec<u8> {
    let mut p = sink.as_bytes().to_vec();
    p.push(0);
    p
}

/// A series id as the `series` and `series_by_id` trees hold it (4 bytes, big-endian).
fn series_id_from(bytes: &[u8]) -> Result<u32, StoreError> {
    Ok(u32::from_be_bytes(bytes.try_into().map_err(|_| StoreError::Corrupt("series id".into()))?))
}

/// Whether sled could not open a database because another handle holds its lock.
pub(crate) fn lock_held(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.to_string().contains("could not acquire lock"))
}

/// Opens a sled database. sled's background flusher may hold the directory lock for a moment
/// after the previous owner in this process was dropped (a restart; sled issues #1234, #1289):
/// this waits for it, up to 5 s, rather than fail.
pub(crate) fn open_waiting(config: &sled::Config) -> Result<sled::Db, sled::Error> {
    let mut attempts = 0;
    loop {
        match config.open() {
            Err(e) if lock_held(&e) && attempts < 50 => {
                attempts += 1;
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            done => return done,
        }
    }
}

impl Store {
    /// Opens (or creates) the database in `dir`.
    pub fn open(dir: &Path, cache_mb: u64, rejected_max: usize) -> Result<Store, StoreError> {
        let db = open_waiting(&sled::Config::new().path(dir).cache_capacity(cache_mb * 1024 * 1024))?;
        Store::from_db(db, rejected_max)
    }

    /// A throw-away database (for `replay` and benchmarks): the same code, nothing kept.
    pub fn temporary() -> Result<Store, StoreError> {
        let db = sled::Config::new().temporary(true).cache_capacity(256 * 1024 * 1024).open()?;
        Store::from_db(db, 1000)
    }

    fn from_db(db: sled::Db, rejected_max: usize) -> Result<Store, StoreError> {
        let rejected = db.open_tree("rejected")?;
        let store = Store {
            series: db.open_tree("series")?,
            series_by_id: db.open_tree("series_by_id")?,
            readings: readings::Readings::open(&db)?,
            rejected_len: AtomicUsize::new(rejected.len()),
            rejected,
            incidents: db.open_tree("incidents")?,
            outbox: db.open_tree("outbox")?,
            dead_letters: db.open_tree("dead_letters")?,
            held: db.open_tree("held")?,
            tuning: db.open_tree("tuning")?,
            detector_state: db.open_tree("detector_state")?,
            context: db.open_tree("context")?,
            silences: db.open_tree("silences")?,
            devices: db.open_tree("devices")?,
            models: db.open_tree("models")?,
            series_cache: Mutex::new(SeriesCache::default()),
            rejected_max,
            db,
        };
        store.migrate_key_per_reading()?;
        Ok(store)
    }

    /// Moves readings of the earlier layout (one key per reading in the `readings` tree) into
    /// chunks, a slice at a time, so an upgraded gateway keeps its history.
    fn migrate_key_per_reading(&self) -> Result<(), StoreError> {
        let old = self.db.open_tree("readings")?;
        if old.is_empty() {
            return Ok(());
        }
        tracing::info!(readings = old.len(), "moving readings into compressed chunks (one-off, after an upgrade)");
        loop {
            let slice: Vec<(sled::IVec, sled::IVec)> = old.iter().take(100_000).collect::<Result<_, sled::Error>>()?;
            if slice.is_empty() {
                break;
            }
            let mut batch = sled::Batch::default();
            for (k, v) in &slice {
                let series = u32::from_be_bytes(
                    k.get(..4)
                        .and_then(|b| b.try_into().ok())
                        .ok_or_else(|| StoreError::Corrupt("reading key".into()))?,
                );
                let (ts, value) = decode_reading(k, v)?;
                self.readings.insert(series, ts, value)?;
                batch.remove(k);
            }
            self.readings.commit(true)?;
            old.apply_batch(batch)?;
            self.db.flush()?;
        }
        self.db.drop_tree("readings")?;
        Ok(())
    }

    /// The compact id of a (device, metric) series, allocated on first sight.
    pub fn series_id(&self, device: &str, metric: &str) -> Result<u32, StoreError> {
        // Looked up by reference: no allocation on the hot path.
        if let Some(id) = self.cache().get(device).and_then(|m| m.get(metric)) {
            return Ok(*id);
        }
        let name = [device.as_bytes(), &[0], metric.as_bytes()].concat();
        let id = match self.series.get(&name)? {
            Some(v) => series_id_from(&v)?,
            None => {
                let id = u32::try_from(self.db.generate_id()? % u64::from(u32::MAX))
                    .map_err(|_| StoreError::Corrupt("series id overflow".into()))?;
                // Reverse entry first: a crash between the two leaves an orphan, never a dangling id.
                self.series_by_id.insert(id.to_be_bytes(), name.as_slice())?;
                match self.series.compare_and_swap(&name, None as Option<&[u8]>, Some(&id.to_be_bytes()))? {
                    Ok(()) => id,
                    Err(cas) => {
                        let cur = cas.current.ok_or_else(|| StoreError::Corrupt("series id".into()))?;
                        series_id_from(&cur)?
                    }
                }
            }
        };
        self.cache().entry(device.to_string()).or_default().insert(metric.to_string(), id);
        Ok(id)
    }

    /// [`Store::series_id`] of every (device, metric) in `names`, pushed onto `out` in order:
    /// for the readings of a message, one lock and one lookup of the device instead of one each
    /// per reading. Series not yet known are created as `series_id` does.
    pub fn series_ids<'a>(
        &self,
        names: impl IntoIterator<Item = (&'a str, &'a str)>,
        out: &mut Vec<u32>,
    ) -> Result<(), StoreError> {
        let mut missing = Vec::new();
        {
            let cache = self.cache();
            let mut by_metric: Option<(&str, Option<&crate::FastMap<String, u32>>)> = None;
            for (device, metric) in names {
                let known = match by_metric {
                    Some((d, map)) if d == device => map,
                    _ => by_metric.insert((device, cache.get(device))).1,
                };
                match known.and_then(|m| m.get(metric)) {
                    Some(&id) => out.push(id),
                    None => {
                        missing.push((out.len(), device, metric));
                        out.push(0);
                    }
                }
            }
        }
        for (at, device, metric) in missing {
            let id = self.series_id(device, metric)?;
            if let Some(slot) = out.get_mut(at) {
                *slot = id;
            }
        }
        Ok(())
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, SeriesCache> {
        // A poisoned cache is still a valid cache: entries are only ever inserted whole.
        self.series_cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The series of one device, as (id, metric) in metric order: a scan of its names only.
    pub fn device_series(&self, device: &str) -> Result<Vec<(u32, String)>, StoreError> {
        let prefix = [device.as_bytes(), &[0]].concat();
        let mut out = Vec::new();
        for kv in self.series.scan_prefix(&prefix) {
            let (k, v) = kv?;
            let id = series_id_from(&v)?;
            out.push((id, String::from_utf8_lossy(&k[prefix.len()..]).into_owned()));
        }
        Ok(out)
    }

    /// The (device, metric) of a series id.
    pub fn series_name(&self, id: u32) -> Result<Option<(String, String)>, StoreError> {
        Ok(self.series_by_id.get(id.to_be_bytes())?.and_then(|v| {
            let s = String::from_utf8_lossy(&v).into_owned();
            s.split_once('\0').map(|(d, m)| (d.to_string(), m.to_string()))
        }))
    }

    /// Stores one reading. Returns `false` when exactly this reading was already stored (a
    /// redelivery), so the caller does not feed it to the detectors twice.
    pub fn insert_reading(&self, series: u32, ts: i64, value: f64) -> Result<bool, StoreError> {
        self.readings.insert(series, ts, value)
    }

    /// Up to `n` most recent readings of a series at or before `until`, oldest first.
    pub fn recent(&self, series: u32, until: i64, n: usize) -> Result<Vec<(i64, f64)>, StoreError> {
        self.readings.recent(series, until, n)
    }

    /// All readings of a series in `[from, to]`, in time order.
    pub fn range(&self, series: u32, from: i64, to: i64) -> Result<Vec<(i64, f64)>, StoreError> {
        self.readings.range(series, from, to)
    }

    /// The downsampled aggregates of a series (kept after retention dropped its readings) with a
    /// start in `[from, to]`.
    pub fn aggregates(&self, series: u32, from: i64, to: i64) -> Result<Vec<Aggregate>, StoreError> {
        self.readings.aggregates(series, from, to)
    }

    /// Readings not yet compacted into chunks (they are in the batch log).
    pub fn head_readings(&self) -> usize {
        self.readings.head_readings()
    }

    /// Every known series: (id, device, metric).
    pub fn all_series(&self) -> Result<Vec<(u32, String, String)>, StoreError> {
        let mut out = Vec::new();
        for kv in self.series_by_id.iter() {
            let (k, v) = kv?;
            let id = series_id_from(&k)?;
            let s = String::from_utf8_lossy(&v).into_owned();
            if let Some((d, m)) = s.split_once('\0') {
                out.push((id, d.to_string(), m.to_string()));
            }
        }
        Ok(out)
    }

    /// Stores a fitted model of a device, replacing the previous one of its kind.
    pub fn put_model<T: Serialize>(&self, device: &str, kind: &str, model: &T) -> Result<(), StoreError> {
        self.models.insert(format!("{device}\0{kind}"), serde_json::to_vec(model)?)?;
        Ok(())
    }

    /// Every stored model; a record that does not parse as `T` (an older format) is skipped
    /// with a warning, so the trainer refits it.
    pub fn models<T: for<'de> Deserialize<'de>>(&self) -> Result<Vec<T>, StoreError> {
        let mut out = Vec::new();
        for kv in self.models.iter() {
            let (k, v) = kv?;
            match serde_json::from_slice(&v) {
                Ok(m) => out.push(m),
                Err(e) => {
                    tracing::warn!(model = %String::from_utf8_lossy(&k).replace('\0', "/"), error = %e, "stored model not loaded; it will be refitted")
                }
            }
        }
        Ok(out)
    }

    /// Number of stored readings (a full scan: for tests and the CLI, not the hot path).
    pub fn reading_count(&self) -> usize {
        self.readings.count().unwrap_or(0)
    }

    /// Keeps a rejected message aside; drops the oldest beyond the configured bound.
    pub fn reject(&self, rec: &Rejected) -> Result<(), StoreError> {
        let seq = self.db.generate_id()?;
        self.rejected.insert(seq.to_be_bytes(), serde_json::to_vec(rec)?)?;
        let len = self.rejected_len.fetch_add(1, Ordering::Relaxed) + 1;
        if len > self.rejected_max && self.rejected.pop_min()?.is_some() {
            self.rejected_len.fetch_sub(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// The most recent rejected messages, newest last.
    pub fn rejected(&self, limit: usize) -> Result<Vec<Rejected>, StoreError> {
        let mut out: Vec<Rejected> = self
            .rejected
            .iter()
            .rev()
            .take(limit)
            .map(|kv| Ok(serde_json::from_slice(&kv?.1)?))
            .collect::<Result<_, StoreError>>()?;
        out.reverse();
        Ok(out)
    }

    /// Writes an incident record and routes its ticket command (if any), atomically: to every
    /// sink's outbox queue, or into the `held` tree (shadow mode, needs review) with the reason.
    pub fn save_incident<T: Serialize, C: Serialize>(
        &self,
        key: &str,
        incident: &T,
        command: Option<(&C, Route<'_>)>,
    ) -> Result<(), StoreError> {
        let record = serde_json::to_vec(incident)?;
        let mut outbox_entries = Vec::new();
        let mut held_entry = None;
        if let Some((cmd, route)) = command {
            let body = serde_json::to_vec(cmd)?;
            match route {
                Route::Sinks(sinks) => {
                    for sink in sinks {
                        let mut k = outbox_prefix(sink);
                        k.extend_from_slice(&self.db.generate_id()?.to_be_bytes());
                        outbox_entries.push((k, body.clone()));
                    }
                }
                Route::Held(reason) => {
                    let rec = serde_json::json!({ "reason": reason, "command": serde_json::from_slice::<serde_json::Value>(&body)? });
                    held_entry = Some((self.db.generate_id()?.to_be_bytes(), serde_json::to_vec(&rec)?));
                }
            }
        }
        (&self.incidents, &self.outbox, &self.held).transaction(|(incidents, outbox, held)| {
            incidents.insert(key.as_bytes(), record.as_slice())?;
            for (k, body) in &outbox_entries {
                outbox.insert(k.as_slice(), body.as_slice())?;
            }
            if let Some((k, v)) = &held_entry {
                held.insert(k, v.as_slice())?;
            }
            Ok::<(), ConflictableTransactionError<StoreError>>(())
        })?;
        Ok(())
    }

    /// Records a series' learned sensitivity factor.
    pub fn set_tuning(&self, device: &str, metric: &str, factor: f64) -> Result<(), StoreError> {
        let key = [device.as_bytes(), &[0], metric.as_bytes()].concat();
        self.tuning.insert(key, &factor.to_be_bytes())?;
        Ok(())
    }

    /// Every learned sensitivity factor: (device, metric, factor).
    pub fn tuning(&self) -> Result<Vec<(String, String, f64)>, StoreError> {
        let mut out = Vec::new();
        for kv in self.tuning.iter() {
            let (k, v) = kv?;
            let name = String::from_utf8_lossy(&k).into_owned();
            let factor: [u8; 8] = v.as_ref().try_into().map_err(|_| StoreError::Corrupt("tuning".into()))?;
            if let Some((d, m)) = name.split_once('\0') {
                out.push((d.to_string(), m.to_string(), f64::from_be_bytes(factor)));
            }
        }
        Ok(out)
    }

    /// Records the detector state of a series (durable with the next flush), in the binary
    /// encoding: [`STATE_POSTCARD`], then the state as postcard. Returns the bytes written (key
    /// and value).
    pub fn put_detector_state<T: Serialize>(&self, device: &str, metric: &str, state: &T) -> Result<usize, StoreError> {
        let key = [device.as_bytes(), &[0], metric.as_bytes()].concat();
        let value = postcard::to_extend(state, vec![STATE_POSTCARD])?;
        let bytes = key.len() + value.len();
        self.detector_state.insert(key, value)?;
        Ok(bytes)
    }

    /// Every stored detector state: (device, metric, state), binary or the JSON of earlier
    /// versions. States that no longer parse (an older format) are skipped: the series
    /// re-learns.
    /// `Old` is the layout states had before [`STATE_POSTCARD`] (converted on reading).
    pub fn detector_states<T, Old>(&self) -> Result<Vec<(String, String, T)>, StoreError>
    where
        T: for<'de> Deserialize<'de>,
        Old: for<'de> Deserialize<'de> + Into<T>,
    {
        let mut out = Vec::new();
        for kv in self.detector_state.iter() {
            let (k, v) = kv?;
            let name = String::from_utf8_lossy(&k).into_owned();
            let state = decode_state::<T, Old>(&v, STATE_POSTCARD, Some(STATE_POSTCARD_V1));
            if let (Some((d, m)), Some(state)) = (name.split_once('\0'), state) {
                out.push((d.to_string(), m.to_string(), state));
            }
        }
        Ok(out)
    }

    /// Adds a silence record under its id.
    pub fn put_silence<T: Serialize>(&self, id: &str, silence: &T) -> Result<(), StoreError> {
        self.silences.insert(id.as_bytes(), serde_json::to_vec(silence)?)?;
        self.db.flush()?;
        Ok(())
    }

    /// Removes a silence; true if it existed.
    pub fn remove_silence(&self, id: &str) -> Result<bool, StoreError> {
        let existed = self.silences.remove(id.as_bytes())?.is_some();
        self.db.flush()?;
        Ok(existed)
    }

    /// Every silence record.
    pub fn silences<T: for<'de> Deserialize<'de>>(&self) -> Result<Vec<T>, StoreError> {
        self.silences.iter().map(|kv| Ok(serde_json::from_slice(&kv?.1)?)).collect()
    }

    /// Ticket commands held back (shadow mode, needs review), oldest first.
    pub fn held(&self) -> Result<Vec<serde_json::Value>, StoreError> {
        self.held.iter().map(|kv| Ok(serde_json::from_slice(&kv?.1)?)).collect()
    }

    /// Every stored incident record.
    pub fn incidents<T: for<'de> Deserialize<'de>>(&self) -> Result<Vec<T>, StoreError> {
        self.incidents_with_prefix("")
    }

    /// The stored incidents whose key starts with `prefix` (keys are `device/metric/fault`, so
    /// `device/` holds a device's incidents, and those of devices whose name continues with `/`).
    pub fn incidents_with_prefix<T: for<'de> Deserialize<'de>>(&self, prefix: &str) -> Result<Vec<T>, StoreError> {
        self.incidents.scan_prefix(prefix.as_bytes()).map(|kv| Ok(serde_json::from_slice(&kv?.1)?)).collect()
    }

    /// The oldest command waiting for `sink`.
    pub fn outbox_first(&self, sink: &str) -> Result<Option<OutboxEntry>, StoreError> {
        Ok(self
            .outbox
            .scan_prefix(outbox_prefix(sink))
            .next()
            .transpose()?
            .map(|(key, body)| OutboxEntry { key, body: body.to_vec() }))
    }

    /// Commands waiting for `sink`.
    pub fn outbox_len(&self, sink: &str) -> usize {
        self.outbox.scan_prefix(outbox_prefix(sink)).count()
    }

    /// Removes a delivered command and makes that durable.
    pub async fn outbox_done(&self, entry: &OutboxEntry) -> Result<(), StoreError> {
        self.outbox.remove(&entry.key)?;
        self.flush().await
    }

    /// Moves a command the sink refused for good aside, with the reason.
    pub async fn outbox_dead(&self, entry: &OutboxEntry, reason: &str) -> Result<(), StoreError> {
        let record = serde_json::json!({
            "reason": reason,
            "command": serde_json::from_slice::<serde_json::Value>(&entry.body)?,
        });
        self.dead_letters.insert(&entry.key, serde_json::to_vec(&record)?)?;
        self.outbox.remove(&entry.key)?;
        self.flush().await
    }

    /// Commands that were refused for good.
    pub fn dead_letters(&self) -> Result<Vec<serde_json::Value>, StoreError> {
        self.dead_letters.iter().map(|kv| Ok(serde_json::from_slice(&kv?.1)?)).collect()
    }

    /// Makes everything written so far durable (group commit).
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.readings.commit(false)?;
        self.db.flush_async().await?;
        Ok(())
    }

    /// Compacts every series' pending readings into chunks and flushes: at shutdown, so the
    /// disk holds compressed chunks only.
    pub fn compact_and_flush(&self) -> Result<(), StoreError> {
        self.readings.commit(true)?;
        self.db.flush()?;
        Ok(())
    }

    /// Records a device's context reference (durable with the next flush). Returns the bytes
    /// written (key and value).
    pub fn put_context<T: Serialize>(&self, device: &str, state: &T) -> Result<usize, StoreError> {
        let value = postcard::to_extend(state, vec![CONTEXT_POSTCARD])?;
        let bytes = device.len() + value.len();
        self.context.insert(device.as_bytes(), value)?;
        Ok(bytes)
    }

    /// Every stored context reference: (device, state). One that no longer parses (an older
    /// format) is skipped: the device commissions again.
    pub fn contexts<T: for<'de> Deserialize<'de>>(&self) -> Result<Vec<(String, T)>, StoreError> {
        let mut out = Vec::new();
        for kv in self.context.iter() {
            let (k, v) = kv?;
            if let Some(state) = decode_state::<T, T>(&v, CONTEXT_POSTCARD, None) {
                out.push((String::from_utf8_lossy(&k).into_owned(), state));
            }
        }
        Ok(out)
    }

    /// How many context references are stored, readable or not.
    pub fn context_records(&self) -> usize {
        self.context.len()
    }

    /// Removes a device's context reference (it was forgotten).
    pub fn remove_context(&self, device: &str) -> Result<(), StoreError> {
        self.context.remove(device.as_bytes())?;
        Ok(())
    }

    /// Removes a series' stored detector state (its device was forgotten).
    pub fn remove_detector_state(&self, device: &str, metric: &str) -> Result<(), StoreError> {
        let mut key = device.as_bytes().to_vec();
        key.push(0);
        key.extend_from_slice(metric.as_bytes());
        self.detector_state.remove(key)?;
        Ok(())
    }

    /// Records when a device was first heard (kept until it is forgotten).
    pub fn note_device(&self, device: &str, first_heard: i64) -> Result<(), StoreError> {
        self.devices.insert(device.as_bytes(), &first_heard.to_be_bytes())?;
        Ok(())
    }

    /// Every tracked device and when it was first heard.
    pub fn devices(&self) -> Result<Vec<(String, i64)>, StoreError> {
        self.devices
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                let t: [u8; 8] = v.as_ref().try_into().map_err(|_| StoreError::Corrupt("device record".into()))?;
                Ok((String::from_utf8_lossy(&k).into_owned(), i64::from_be_bytes(t)))
            })
            .collect()
    }

    /// Forgets a device's record (see [`Store::note_device`]).
    pub fn forget_device(&self, device: &str) -> Result<(), StoreError> {
        self.devices.remove(device.as_bytes())?;
        Ok(())
    }

    /// A number never returned before by this database (ids of silences and the like).
    pub fn next_id(&self) -> Result<u64, StoreError> {
        Ok(self.db.generate_id()?)
    }

    /// A small daemon fact kept across restarts (in the default tree), e.g. that a broker
    /// session was established under a client id.
    pub fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get(key.as_bytes())?.map(|v| v.to_vec()))
    }

    /// Sets a daemon fact; durable with the next flush.
    pub fn set_meta(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.db.insert(key.as_bytes(), value)?;
        Ok(())
    }

    /// Bytes the database's files take on disk: sled's segment file (live data and the space
    /// of dead entries it has yet to reuse; the file shrinks only at its end) and its blobs.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(self.db.size_on_disk()?)
    }

    /// Blocking flush, for synchronous callers (replay, benchmarks).
    pub fn flush_blocking(&self) -> Result<(), StoreError> {
        self.write_batch()?;
        self.sync()
    }

    /// The first half of [`Store::flush_blocking`]: writes the readings of the batch to the log
    /// (and compacts the heads that are due), without waiting for the disk.
    pub fn write_batch(&self) -> Result<(), StoreError> {
        self.readings.commit(false)
    }

    /// The second half: makes everything written so far durable. It may run while the next
    /// batch is being written; that batch is made durable by its own `sync`.
    pub fn sync(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    /// Drops readings older than `cutoff` (event time, ms) a whole chunk at a time, keeping
    /// their `interval` aggregates, and drops aggregates older than `aggregate_cutoff`. Returns
    /// how many readings were removed.
    pub fn prune_before(
        &self,
        cutoff: i64,
        aggregate_cutoff: i64,
        interval: std::time::Duration,
    ) -> Result<usize, StoreError> {
        let interval_ms = (interval.as_millis() as i64).max(1);
        let mut removed = 0;
        for kv in self.series_by_id.iter() {
            let (k, _) = kv?;
            let id = series_id_from(&k)?;
            removed += self.readings.prune(id, cutoff, interval_ms)?;
            self.readings.prune_aggregates(id, aggregate_cutoff)?;
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn keys_sort_by_series_then_time() {
        assert!(reading_key(1, -5) < reading_key(1, 3));
        assert!(reading_key(1, i64::MAX) < reading_key(2, i64::MIN));
        let (ts, v) = decode_reading(&reading_key(7, -42), &1.5f64.to_be_bytes()).unwrap();
        assert_eq!((ts, v), (-42, 1.5));
    }

    #[test]
    fn series_ids_of_a_message_are_the_ids_of_each_series_new_or_known() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 8, 10).unwrap();
        let temp = store.series_id("pump", "temp").unwrap();
        let mut ids = vec![99];
        let names = [("pump", "flow"), ("pump", "temp"), ("fan", "temp"), ("pump", "flow")];
        store.series_ids(names, &mut ids).unwrap();
        // Appended after what was there; new series created, repeats and known ones reused.
        assert_eq!(ids.len(), 5);
        assert_eq!(ids[0], 99);
        assert_eq!(ids[2], temp);
        assert_eq!(ids[1], ids[4]);
        assert_eq!(ids[1], store.series_id("pump", "flow").unwrap());
        assert_eq!(ids[3], store.series_id("fan", "temp").unwrap());
        assert_eq!(BTreeSet::from([ids[1], ids[2], ids[3]]).len(), 3, "three series, three ids");
        // Now all known: the same ids again, from the cache.
        let mut again = Vec::new();
        store.series_ids(names, &mut again).unwrap();
        assert_eq!(again, ids[1..]);
    }

    #[test]
    fn readings_round_trip_and_redelivery_is_a_no_op() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 8, 10).unwrap();
        let id = store.series_id("pump", "temp").unwrap();
        assert_eq!(store.series_id("pump", "temp").unwrap(), id);
        assert_ne!(store.series_id("pump", "flow").unwrap(), id);
        for t in 0..5 {
            assert!(store.insert_reading(id, t * 1000, t as f64).unwrap());
        }
        assert!(!store.insert_reading(id, 2000, 2.0).unwrap());
        assert_eq!(store.recent(id, 3000, 2).unwrap(), vec![(2000, 2.0), (3000, 3.0)]);
        assert_eq!(store.range(id, 1000, 2000).unwrap().len(), 2);
        store.flush_blocking().unwrap();
        drop(store);
        // After a restart (the readings came back from the batch log).
        let store = Store::open(dir.path(), 8, 10).unwrap();
        assert_eq!(store.series_id("pump", "temp").unwrap(), id);
        assert_eq!(store.series_name(id).unwrap(), Some(("pump".into(), "temp".into())));
        assert_eq!(store.reading_count(), 5);
        assert!(!store.insert_reading(id, 4000, 4.0).unwrap(), "still a duplicate");
        store.compact_and_flush().unwrap();
        assert_eq!(store.head_readings(), 0);
        // Retention drops whole chunks only: this one still has a reading after 2000.
        let day = std::time::Duration::from_secs(86_400);
        assert_eq!(store.prune_before(2000, i64::MIN, day).unwrap(), 0);
        assert_eq!(store.prune_before(5000, i64::MIN, day).unwrap(), 5);
        assert!(store.range(id, 0, 10_000).unwrap().is_empty());
        let aggs = store.aggregates(id, i64::MIN, i64::MAX).unwrap();
        assert_eq!(aggs.len(), 1);
        assert_eq!((aggs[0].min, aggs[0].max, aggs[0].count), (0.0, 4.0, 5));
    }

    #[test]
    fn rejected_is_bounded_and_keeps_the_newest() {
        let store = Store::temporary().unwrap();
        let store = Store { rejected_max: 3, ..store };
        for i in 0..5 {
            store
                .reject(&Rejected { received_ms: i, topic: "t".into(), reason: "r".into(), payload: "p".into() })
                .unwrap();
        }
        let kept = store.rejected(10).unwrap();
        assert_eq!(kept.iter().map(|r| r.received_ms).collect::<Vec<_>>(), vec![2, 3, 4]);
    }

    #[test]
    fn incident_and_outbox_are_written_together() {
        let store = Store::temporary().unwrap();
        let sinks = vec!["a".to_string(), "b".to_string()];
        let cmd = serde_json::json!({"cmd": 1});
        store.save_incident("k", &serde_json::json!({"x": 1}), Some((&cmd, Route::Sinks(&sinks)))).unwrap();
        store.save_incident("k2", &serde_json::json!({"x": 2}), Some((&cmd, Route::Held("shadow")))).unwrap();
        assert_eq!(store.held().unwrap()[0]["reason"], "shadow");
        assert_eq!(store.incidents::<serde_json::Value>().unwrap().len(), 2);
        assert_eq!(store.outbox_len("a"), 1);
        assert_eq!(store.outbox_len("b"), 1);
        let first = store.outbox_first("a").unwrap().unwrap();
        futures_lite_block_on(store.outbox_done(&first)).unwrap();
        assert_eq!(store.outbox_len("a"), 0);
        assert_eq!(store.outbox_len("b"), 1);
    }

    /// A series' state as the JSON of earlier versions stored it: commissioning, 50 readings in.
    const JSON_STATE: &str = r#"{"baseline":{"warmup":60,"alpha":0.0023078234729766445,"threshold":5.0,"min_relative_spread":0.002,"n":50,"mean":12.461199999999998,"var":0.044070560000000175,"last_score":0.0},"flatline":{"min_readings":30,"min_ms":300000,"last":12.75,"run_start":1700000490000,"run_len":1,"has_varied":true},"drift":{"lambda":0.1,"margin":2.0,"reference_readings":360,"reference_for_ms":3600000,"first_ts":1700000000000,"adapt_alpha":0.000034656758468698534,"min_relative_spread":0.002,"commissioning":[12.82,12.94,12.43,12.48,12.66,12.75,12.7,12.62,12.64,12.5,12.7,12.54,12.6,12.43,12.46,12.19,12.45,12.16,12.14,12.38,12.41,11.95,12.27,12.21,12.31,12.14,12.16,12.27,12.52,12.46,12.23,12.25,12.31,12.35,12.49,12.29,12.3,12.52,12.34,12.32,12.56,12.59,12.47,12.61,12.72,12.64,12.65,12.57,12.81,12.75],"excursions":{"count":0,"origin":0.0,"level":0.0,"weight":0.0,"min":0.0,"max":0.0,"upper":[],"lower":[]},"n":50,"sum":623.06,"sum_sq":7766.278799999999,"reference":null,"widening":1.0,"ewma":0.0,"last_score":0.0}}"#;

    /// The same state in the binary encoding, as stored under [`STATE_POSTCARD_V1`] (hex).
    const BINARY_STATE_V1: &str = "01013c008dec4adbe7623f0000000000001440fca9f1d24d62603f3294d4096822ec28403c33d59b6a90a63f0000000000000000011ec0cf24010000000000802940a088e7fef9620101019a9999999999b93f0000000000000040e80280bab7030180a0abfef96200c056278d2b023ffca9f1d24d62603f6170636f210300850c040106310000b247e17a14ae47f80b100058250000000000003c4000e0ffffffffffffff2f00d731ac76842e87c5db721784cd30b2ca64e5028034a44905949b713c24944d34ca9d4a3d204dd82c1a7d56e8cfbcf7fffdff00000000000000000000000000000000000000000000000000000000000000000000000000000000000000003214ae47e17a7883401fd26f5f4756be4000000000000000f03f00000000000000000000000000000000";

    /// The same state in the binary encoding, as stored under [`STATE_POSTCARD`] (hex).
    const BINARY_STATE: &str = "02013c008dec4adbe7623f0000000000001440fca9f1d24d62603f3294d4096822ec28403c33d59b6a90a63f0000000000000000011ec0cf24010000000000802940a088e7fef962010100000000000000000000019a9999999999b93f0000000000000040e80280bab7030180a0abfef96200c056278d2b023ffca9f1d24d62603f6170636f210300850c040106310000b247e17a14ae47f80b100058250000000000003c4000e0ffffffffffffff2f00d731ac76842e87c5db721784cd30b2ca64e5028034a44905949b713c24944d34ca9d4a3d204dd82c1a7d56e8cfbcf7fffdff00000000000000000000000000000000000000000000000000000000000000000000000000000000000000003214ae47e17a7883401fd26f5f4756be4000000000000000f03f00000000000000000000000000000000";

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn detector_state_is_stored_binary_and_json_of_earlier_versions_still_loads() {
        use crate::detect::{SeriesState, SeriesStateV1};
        let store = Store::temporary().unwrap();
        let old: SeriesState = serde_json::from_str(JSON_STATE).unwrap();
        store.detector_state.insert(b"comp-1\0current", JSON_STATE.as_bytes()).unwrap();
        store.put_detector_state("comp-2", "current", &old).unwrap();
        let loaded: Vec<(String, String, SeriesState)> = store.detector_states::<_, SeriesStateV1>().unwrap();
        assert_eq!(loaded.len(), 2);
        for (device, metric, state) in &loaded {
            assert_eq!((metric.as_str(), state), ("current", &old), "{device}: bit for bit");
        }
        let json = serde_json::to_string(&loaded[0].2).unwrap();
        assert_eq!(serde_json::from_str::<SeriesState>(&json).unwrap(), old, "the JSON round trips");
        let binary = store.detector_state.get(b"comp-2\0current").unwrap().unwrap();
        assert!(binary.len() * 3 < JSON_STATE.len(), "{} bytes, JSON {}", binary.len(), JSON_STATE.len());
        // What this version stores must load in the next: a change to the state's fields that
        // breaks this needs a new first byte (see STATE_POSTCARD).
        assert_eq!(hex(&binary), BINARY_STATE);
        // A state stored in the layout of before the flatline learnt its rest level reads too.
        let v1: Vec<u8> = (0..BINARY_STATE_V1.len() / 2)
            .map(|i| u8::from_str_radix(&BINARY_STATE_V1[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        store.detector_state.insert(b"comp-5\0current", v1).unwrap();
        let loaded = store.detector_states::<SeriesState, SeriesStateV1>().unwrap();
        assert_eq!(loaded.iter().find(|l| l.0 == "comp-5").map(|l| &l.2), Some(&old), "converted bit for bit");
        // Unreadable records are skipped: the series re-learns.
        store.detector_state.insert(b"comp-3\0current", &[STATE_POSTCARD, 7, 7][..]).unwrap();
        store.detector_state.insert(b"comp-4\0current", &b"[1]"[..]).unwrap();
        assert_eq!(store.detector_states::<SeriesState, SeriesStateV1>().unwrap().len(), 3);
    }

    fn futures_lite_block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
    }
}
