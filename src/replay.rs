//! Replay: feed a CSV file of recorded telemetry through the same core as `run`, for backtests
//! and benchmarks.
//!
//! The input has a header, a timestamp column (the one named `timestamp`, `time` or `ts`, else the
//! first) and one or more numeric columns, each a metric of one device. Comma and semicolon
//! separators are both recognised. Timestamps may be RFC 3339, naive `YYYY-MM-DD HH:MM:SS[.f]`
//! (taken as UTC, as in the Numenta Anomaly Benchmark) or epoch seconds or milliseconds.
//!
//! Rows go through [`Core`] one reading at a time, in file order, with event time taken from the
//! file; nothing looks ahead, so the scores are exactly what the daemon would have said live. The
//! output repeats each row with its `anomaly_score`: the highest calibrated score (0..1) of any
//! detector for any metric of the row. A row that cannot be read is reported with its file and
//! line, counted and skipped.

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
    /// One JSON line per incident opened, when set.
    pub incidents: Option<PathBuf>,
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
    /// Incidents opened, in order.
    pub incidents: Vec<OpenedIncident>,
    pub elapsed: Duration,
}

/// Skipped rows listed in a report; further ones are only counted.
pub const SKIPPED_KEPT: usize = 100;

/// One incident opened during a replay, as written to the incidents file.
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

/// Replays one file (see the module docs).
pub fn replay(opts: &ReplayOptions) -> Result<ReplayReport, ReplayError> {
    let started = Instant::now();
    let input = &opts.input;
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ReplayError::Io { path, source }
    };
    let csv_err = |source| ReplayError::Csv { path: input.clone(), source };
    let delimiter = sniff_delimiter(input).map_err(io_err(input))?;
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_path(input)
        .map_err(csv_err)?;
    let header = reader.headers().map_err(csv_err)?.clone();
    let ts_col =
        header.iter().position(|h| ["timestamp", "time", "ts"].contains(&h.to_ascii_lowercase().as_str())).unwrap_or(0);
    let metrics: Vec<(usize, String)> =
        header.iter().enumerate().filter(|(i, _)| *i != ts_col).map(|(i, h)| (i, h.to_string())).collect();
    if metrics.is_empty() {
        return Err(ReplayError::NoMetrics(input.clone()));
    }
    let device = match &opts.device {
        Some(d) => d.clone(),
        None => input.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "device".into()),
    };

    let mut config = opts.config.clone();
    config.ticket.sinks.clear();
    let units = config.decode.units.clone();
    let mut core = Core::new(&config, Arc::new(Store::temporary()?), Arc::new(Metrics::new()))?;

    let mut out = csv::WriterBuilder::new()
        .from_writer(BufWriter::new(File::create(&opts.output).map_err(io_err(&opts.output))?));
    let mut head: Vec<&str> = vec!["timestamp"];
    head.extend(metrics.iter().map(|(_, m)| m.as_str()));
    head.push("anomaly_score");
    out.write_record(&head).map_err(|source| ReplayError::Csv { path: opts.output.clone(), source })?;
    let mut incidents_out = match &opts.incidents {
        Some(p) => Some(BufWriter::new(File::create(p).map_err(io_err(p))?)),
        None => None,
    };

    let mut report = ReplayReport::default();
    let mut record = csv::StringRecord::new();
    let mut values: Vec<Option<f64>> = Vec::with_capacity(metrics.len());
    loop {
        match reader.read_record(&mut record) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => {
                // A row the CSV reader itself cannot take (e.g. invalid UTF-8): skip it.
                let line = e.position().map(|p| p.line()).unwrap_or(0);
                skip(&mut report, input, line, e.to_string());
                continue;
            }
        }
        let line = record.position().map(|p| p.line()).unwrap_or(0);
        if record.iter().all(str::is_empty) {
            continue;
        }
        let raw_ts = record.get(ts_col).unwrap_or("");
        let Some(ts) = parse_timestamp(raw_ts) else {
            skip(&mut report, input, line, format!("`{raw_ts}` is not a timestamp"));
            continue;
        };
        values.clear();
        let mut bad = None;
        for (col, name) in &metrics {
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
            skip(&mut report, input, line, reason);
            continue;
        }
        let mut row_score = 0.0f64;
        let mut outcome = BatchOutcome::default();
        for ((_, metric), value) in metrics.iter().zip(&values) {
            let Some(value) = *value else { continue };
            let reading = Reading { device: device.clone(), site: None, metric: metric.clone(), ts, value };
            report.readings += 1;
            match core.process_reading(&reading, &mut outcome)? {
                Some(score) => row_score = row_score.max(score),
                None => report.duplicates += 1,
            }
        }
        for t in outcome.transitions {
            let Transition::Opened(inc) = t else { continue };
            let (_, summary) = describe(&inc, units.get(&inc.metric).map(String::as_str));
            let opened = OpenedIncident {
                id: inc.id,
                key: inc.key,
                fault: inc.fault.as_str().to_string(),
                device: inc.device,
                metric: inc.metric,
                opened_at: format_ts(inc.opened_at),
                timestamp: raw_ts.to_string(),
                summary,
            };
            if let Some(w) = incidents_out.as_mut() {
                serde_json::to_writer(&mut *w, &opened)?;
                w.write_all(b"\n").map_err(io_err(opts.incidents.as_deref().unwrap_or(Path::new(""))))?;
            }
            report.incidents.push(opened);
        }
        let mut row: Vec<String> = Vec::with_capacity(metrics.len() + 2);
        row.push(raw_ts.to_string());
        row.extend(metrics.iter().map(|(col, _)| record.get(*col).unwrap_or("").to_string()));
        row.push(row_score.clamp(0.0, 1.0).to_string());
        out.write_record(&row).map_err(|source| ReplayError::Csv { path: opts.output.clone(), source })?;
        report.rows += 1;
    }
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
