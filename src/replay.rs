//! Replay: feed a CSV file of recorded telemetry through the same core as `run`, for backtests
//! and benchmarks.
//!
//! The input has a header, a timestamp column (the one named `timestamp`, `time` or `ts`, else the
//! first) and one or more numeric columns, each a metric of one device. Comma and semicolon
//! separators are both recognised. Timestamps may be RFC 3339, naive `YYYY-MM-DD HH:MM:SS[.f]`
//! (taken as UTC, as in the Numenta Anomaly Benchmark) or epoch seconds or milliseconds.
//!
//! Each row is one message of one device and goes through [`Core`] exactly as a message of
//! `run` does (every series' detectors, then the device's models, then the incident policy), in
//! file order, with event time taken from the file; nothing looks ahead, so the scores are what
//! the daemon would have said live. The output repeats each row with its `anomaly_score`: the
//! highest calibrated score (0..1) of any detector or model for the row. A row that cannot be
//! read is reported with its file and line, counted and skipped.
//!
//! Device models: with `--train FILE` (a known-good recording) the detectors first learn their
//! healthy references from it and the models are fitted on it. Without it, models are fitted
//! causally in event time, as the live trainer would: once the device has
//! `min_training_vectors` of healthy history, then every `refit_every`, each time on the history
//! stored up to that row.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDateTime};
use serde::Serialize;

use crate::config::Config;
use crate::core::{BatchOutcome, Core};
use crate::incident::{describe, Transition};
use crate::metrics::Metrics;
use crate::reading::{format_ts, Reading};
use crate::store::{Store, StoreError};

/// Why a replay could not run (a bad row is not an error: it is skipped and reported).
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Csv {
        path: PathBuf,
        #[source]
        source: csv::Error,
    },
    #[error("{0}: the header names no metric column besides the timestamp")]
    NoMetrics(PathBuf),
    #[error("cannot encode an incident: {0}")]
    Encode(#[from] serde_json::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What to replay and where the results go.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    pub input: PathBuf,
    /// The scored CSV: `timestamp,<metric columns>,anomaly_score`.
    pub output: PathBuf,
    /// One JSON line per incident event (open, update, resolve), when set.
    pub incidents: Option<PathBuf>,
    /// A recording of known-good operation (same columns) to learn from before the replay.
    pub train: Option<PathBuf>,
    /// The device the metrics belong to; the input's file stem when absent.
    pub device: Option<String>,
    /// Detection and incident settings; ticket sinks are ignored.
    pub config: Config,
}

/// A row that was skipped, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedRow {
    /// 1-based line number in the input file.
    pub line: u64,
    pub reason: String,
}

/// What a replay did.
#[derive(Debug, Default)]
pub struct ReplayReport {
    /// Rows scored and written to the output.
    pub rows: u64,
    /// Readings fed to the core (rows × metrics, minus empty cells).
    pub readings: u64,
    /// Readings with a (series, timestamp) already seen: stored once, scored once, written as 0.
    pub duplicates: u64,
    /// Rows that could not be read; the first [`SKIPPED_KEPT`] are listed in `skipped`.
    pub skipped_rows: u64,
    pub skipped: Vec<SkippedRow>,
    /// Rows of the training recording learned from.
    pub trained_rows: u64,
    /// Device models fitted (on the training recording, or causally during the replay).
    pub models_fitted: u64,
    /// Incidents opened, in order.
    pub incidents: Vec<OpenedIncident>,
    pub elapsed: Duration,
}

/// Skipped rows listed in a report; further ones are only counted.
pub const SKIPPED_KEPT: usize = 100;

/// One incident opened during a replay.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct OpenedIncident {
    pub id: String,
    pub key: String,
    pub fault: String,
    pub device: String,
    pub metric: String,
    /// Event time of the reading that opened it, RFC 3339.
    pub opened_at: String,
    /// The same time as written in the input file.
    pub timestamp: String,
    pub summary: String,
}

/// One line of the incidents file: an incident event in event time. Each open-to-resolve
/// episode of an incident has its own `id` (`<incident>.<episode>`), so a recurrence that
/// updates the same ticket is still scored as the two alarms it was.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct IncidentEvent<'a> {
    pub id: String,
    pub incident_id: &'a str,
    /// `open`, `reopen`, `update` or `resolve`.
    pub event: &'static str,
    pub key: &'a str,
    pub fault: &'static str,
    pub device: &'a str,
    pub metric: &'a str,
    /// When the episode opened, RFC 3339 event time.
    pub opened_at: String,
    /// When it resolved (resolve events only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolved_at: Option<String>,
    /// The input row's own timestamp.
    pub timestamp: &'a str,
    pub summary: String,
}

/// One parsed row: its timestamp as written and in ms, and a value (or none) per metric.
struct Row<'a> {
    ts_col: usize,
    raw_ts: &'a str,
    ts: i64,
    values: &'a [Option<f64>],
    record: &'a csv::StringRecord,
}

/// An open CSV recording: its reader, timestamp column and metric columns.
struct Recording {
    path: PathBuf,
    reader: csv::Reader<File>,
    ts_col: usize,
    metrics: Vec<(usize, String)>,
}

impl Recording {
    fn open(input: &Path) -> Result<Recording, ReplayError> {
        let csv_err = |source| ReplayError::Csv { path: input.to_path_buf(), source };
        let delimiter =
            sniff_delimiter(input).map_err(|source| ReplayError::Io { path: input.to_path_buf(), source })?;
        let mut reader = csv::ReaderBuilder::new()
            .delimiter(delimiter)
            .flexible(true)
            .trim(csv::Trim::All)
            .from_path(input)
            .map_err(csv_err)?;
        let header = reader.headers().map_err(csv_err)?.clone();
        let ts_col = header
            .iter()
            .position(|h| ["timestamp", "time", "ts"].contains(&h.to_ascii_lowercase().as_str()))
            .unwrap_or(0);
        let metrics: Vec<(usize, String)> =
            header.iter().enumerate().filter(|(i, _)| *i != ts_col).map(|(i, h)| (i, h.to_string())).collect();
        if metrics.is_empty() {
            return Err(ReplayError::NoMetrics(input.to_path_buf()));
        }
        Ok(Recording { path: input.to_path_buf(), reader, ts_col, metrics })
    }

    fn names(&self) -> Vec<String> {
        self.metrics.iter().map(|(_, m)| m.clone()).collect()
    }

    /// Calls `each` for every readable row; rows that cannot be read are reported with their
    /// line and skipped.
    fn for_each(
        mut self,
        report: &mut ReplayReport,
        mut each: impl FnMut(Row<'_>) -> Result<(), ReplayError>,
    ) -> Result<(), ReplayError> {
        let input = self.path.as_path();
        let mut record = csv::StringRecord::new();
        let mut values: Vec<Option<f64>> = Vec::with_capacity(self.metrics.len());
        loop {
            match self.reader.read_record(&mut record) {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => {
                    // A row the CSV reader itself cannot take (e.g. invalid UTF-8): skip it.
                    let line = e.position().map(|p| p.line()).unwrap_or(0);
                    skip(report, input, line, e.to_string());
                    continue;
                }
            }
            let line = record.position().map(|p| p.line()).unwrap_or(0);
            if record.iter().all(str::is_empty) {
                continue;
            }
            let raw_ts = record.get(self.ts_col).unwrap_or("");
            let Some(ts) = parse_timestamp(raw_ts) else {
                skip(report, input, line, format!("`{raw_ts}` is not a timestamp"));
                continue;
            };
            values.clear();
            let mut bad = None;
            for (col, name) in &self.metrics {
                let cell = record.get(*col).unwrap_or("");
                if cell.is_empty() {
                    values.push(None);
                    continue;
                }
                match cell.parse::<f64>() {
                    Ok(v) if v.is_finite() => values.push(Some(v)),
                    _ => {
                        bad = Some(format!("column `{name}`: `{cell}` is not a number"));
                        break;
                    }
                }
            }
            if let Some(reason) = bad {
                skip(report, input, line, reason);
                continue;
            }
            each(Row { ts_col: self.ts_col, raw_ts, ts, values: &values, record: &record })?;
        }
        Ok(())
    }
}

fn readings_of(device: &str, metrics: &[String], row: &Row<'_>) -> Vec<Reading> {
    metrics
        .iter()
        .zip(row.values)
        .filter_map(|(metric, v)| {
            v.map(|value| Reading { device: device.to_string(), site: None, metric: metric.clone(), ts: row.ts, value })
        })
        .collect()
}

/// Replays one file (see the module docs).
pub fn replay(opts: &ReplayOptions) -> Result<ReplayReport, ReplayError> {
    let started = Instant::now();
    let input = &opts.input;
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ReplayError::Io { path, source }
    };
    let device = match &opts.device {
        Some(d) => d.clone(),
        None => input.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "device".into()),
    };

    let mut config = opts.config.clone();
    config.ticket.sinks.clear();
    let units = config.decode.units.clone();
    let store = Arc::new(Store::temporary()?);
    let mut core = Core::new(config.core(), store.clone(), Arc::new(Metrics::new(&crate::core::metric_labels())))?;
    let mut report = ReplayReport::default();

    if let Some(train) = &opts.train {
        // The recording is known to be healthy: the detectors learn their references from it,
        // and the device models are fitted on it (in a store of its own, since recordings may
        // share timestamps with the replay).
        let train_store = Store::temporary()?;
        let mut last_ts = 0;
        let mut trained = 0;
        let recording = Recording::open(train)?;
        let metrics = recording.names();
        recording.for_each(&mut report, |row| {
            let readings = readings_of(&device, &metrics, &row);
            for r in &readings {
                let series = train_store.series_id(&r.device, &r.metric)?;
                train_store.insert_reading(series, r.ts, r.value)?;
            }
            core.learn_readings(&readings);
            last_ts = row.ts;
            trained += 1;
            Ok(())
        })?;
        report.trained_rows = trained;
        core.end_learning();
        if config.detect.models.enabled {
            match crate::model::trainer::fit_device(&train_store, &device, &config.detect.models, last_ts) {
                Ok(models) => {
                    for m in models {
                        report.models_fitted += 1;
                        core.install_model(m);
                    }
                }
                Err(e) => tracing::warn!(train = %train.display(), error = %e, "no device model from the recording"),
            }
        }
        // The device's models come from the recording; causal refits on the replayed data
        // would learn from data nobody vouched for.
        let _ = core.train_requests().take();
    }
    let fit_causally = opts.train.is_none() && config.detect.models.enabled;

    let mut out = csv::WriterBuilder::new()
        .from_writer(BufWriter::new(File::create(&opts.output).map_err(io_err(&opts.output))?));
    let mut incidents_out = match &opts.incidents {
        Some(p) => Some(BufWriter::new(File::create(p).map_err(io_err(p))?)),
        None => None,
    };
    let incidents_path = opts.incidents.clone().unwrap_or_default();
    // Episode id -> when it opened (event time), for the resolve line.
    let mut episodes: std::collections::HashMap<String, i64> = std::collections::HashMap::new();
    let recording = Recording::open(input)?;
    let metrics = recording.names();
    let output = opts.output.clone();
    let mut head: Vec<&str> = vec!["timestamp"];
    head.extend(metrics.iter().map(String::as_str));
    head.push("anomaly_score");
    out.write_record(&head).map_err(|source| ReplayError::Csv { path: output.clone(), source })?;
    let mut rows = 0u64;
    let mut readings_n = 0u64;
    let mut duplicates = 0u64;
    let mut fitted = 0u64;
    let mut opened: Vec<OpenedIncident> = Vec::new();
    recording.for_each(&mut report, |row| {
        let readings = readings_of(&device, &metrics, &row);
        readings_n += readings.len() as u64;
        let mut outcome = BatchOutcome::default();
        let score = core.process_readings(&readings, row.ts, &mut outcome)?;
        if score.is_none() {
            duplicates += readings.len() as u64;
        }
        for t in &outcome.transitions {
            let inc = t.incident();
            let (_, summary) = describe(inc, units.get(&inc.metric).map(String::as_str));
            let episode = format!("{}.{}", inc.id, inc.reopen_count);
            let (event, resolved_at) = match t {
                Transition::Opened(_) => ("open", None),
                Transition::Updated(_, crate::incident::UpdateReason::Recurred { .. }) => ("reopen", None),
                Transition::Updated(..) => ("update", None),
                Transition::Resolved(i) | Transition::Closed(i, _) => ("resolve", i.resolved_at),
            };
            let opened_at = match event {
                "open" => *episodes.entry(episode.clone()).or_insert(inc.opened_at),
                "reopen" => *episodes.entry(episode.clone()).or_insert(row.ts),
                _ => episodes.get(&episode).copied().unwrap_or(inc.opened_at),
            };
            if event == "open" {
                opened.push(OpenedIncident {
                    id: inc.id.clone(),
                    key: inc.key.clone(),
                    fault: inc.fault.as_str().to_string(),
                    device: inc.device.clone(),
                    metric: inc.metric.clone(),
                    opened_at: format_ts(inc.opened_at),
                    timestamp: row.raw_ts.to_string(),
                    summary: summary.clone(),
                });
            }
            if let Some(w) = incidents_out.as_mut() {
                let line = IncidentEvent {
                    id: episode,
                    incident_id: &inc.id,
                    event,
                    key: &inc.key,
                    fault: inc.fault.as_str(),
                    device: &inc.device,
                    metric: &inc.metric,
                    opened_at: format_ts(opened_at),
                    resolved_at: resolved_at.map(format_ts),
                    timestamp: row.raw_ts,
                    summary,
                };
                serde_json::to_writer(&mut *w, &line)?;
                w.write_all(b"\n").map_err(io_err(&incidents_path))?;
            }
        }
        if fit_causally {
            fitted += core.fit_pending(row.ts) as u64;
        }
        let mut cells: Vec<String> = Vec::with_capacity(metrics.len() + 2);
        cells.push(row.raw_ts.to_string());
        cells.extend(row.record.iter().enumerate().filter(|(i, _)| *i != row.ts_col).map(|(_, c)| c.to_string()));
        cells.push(score.unwrap_or(0.0).clamp(0.0, 1.0).to_string());
        out.write_record(&cells).map_err(|source| ReplayError::Csv { path: output.clone(), source })?;
        rows += 1;
        Ok(())
    })?;
    report.rows = rows;
    report.readings = readings_n;
    report.duplicates = duplicates;
    report.models_fitted += fitted;
    report.incidents = opened;
    out.flush().map_err(io_err(&opts.output))?;
    if let (Some(w), Some(p)) = (incidents_out.as_mut(), &opts.incidents) {
        w.flush().map_err(io_err(p))?;
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

fn skip(report: &mut ReplayReport, file: &Path, line: u64, reason: String) {
    tracing::warn!("{}:{line}: row skipped: {reason}", file.display());
    report.skipped_rows += 1;
    if report.skipped.len() < SKIPPED_KEPT {
        report.skipped.push(SkippedRow { line, reason });
    }
}

/// `;` when the header line has more semicolons than commas, else `,`.
fn sniff_delimiter(path: &Path) -> std::io::Result<u8> {
    use std::io::BufRead;
    let mut first = String::new();
    std::io::BufReader::new(File::open(path)?).read_line(&mut first)?;
    let semis = first.matches(';').count();
    Ok(if semis > first.matches(',').count() { b';' } else { b',' })
}

/// Parses an event time to ms since the epoch: RFC 3339, naive date-time (UTC) or epoch
/// seconds (below 10^11) / milliseconds.
pub fn parse_timestamp(s: &str) -> Option<i64> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.timestamp_millis());
    }
    for fmt in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, fmt) {
            return Some(t.and_utc().timestamp_millis());
        }
    }
    let n: f64 = s.parse().ok()?;
    if !n.is_finite() || n < 0.0 {
        return None;
    }
    let ms = if n < 1e11 { n * 1000.0 } else { n };
    (ms < 1e16).then_some(ms.round() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_in_every_accepted_form() {
        let nab = parse_timestamp("2013-12-02 21:15:00");
        assert_eq!(nab, Some(1_386_018_900_000));
        assert_eq!(parse_timestamp("2013-12-02T21:15:00Z"), nab);
        assert_eq!(parse_timestamp("2013-12-02T22:15:00+01:00"), nab);
        assert_eq!(parse_timestamp("1386018900"), nab);
        assert_eq!(parse_timestamp("1386018900000"), nab);
        assert_eq!(parse_timestamp("yesterday"), None);
        assert_eq!(parse_timestamp("-5"), None);
    }
}
