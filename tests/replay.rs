//! `replay` end to end: a recorded CSV in, scored rows and incidents out, through the same core
//! as the daemon.

use std::fmt::Write as _;
use std::path::Path;

use fieldwatch::replay::{replay, ReplayOptions};
use fieldwatch::Config;

const ROWS: usize = 3000;
const ANOMALY_AT: usize = 2500;
const MALFORMED_AT: usize = 1000;

/// A noisy daily cycle at 5-minute steps with a burst of vibration at `ANOMALY_AT` and one
/// unreadable value at `MALFORMED_AT`.
fn write_input(path: &Path) {
    let mut state: u64 = 7;
    let mut text = String::from("timestamp,value\n");
    for i in 0..ROWS {
        state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        let noise = (state >> 11) as f64 / (1u64 << 53) as f64 - 0.5;
        let mut v = 20.0 + 5.0 * (i as f64 * std::f64::consts::TAU / 288.0).sin() + 0.5 * noise;
        if (ANOMALY_AT..ANOMALY_AT + 6).contains(&i) {
            v += if i % 2 == 0 { 15.0 } else { -15.0 };
        }
        let ts = chrono::DateTime::from_timestamp(1_388_534_400 + 300 * i as i64, 0).unwrap_or_default();
        let ts = ts.format("%Y-%m-%d %H:%M:%S");
        if i == MALFORMED_AT {
            let _ = writeln!(text, "{ts},n/a");
        } else {
            let _ = writeln!(text, "{ts},{v:.4}");
        }
    }
    std::fs::write(path, text).unwrap();
}

#[test]
fn replay_scores_every_row_and_opens_one_incident_at_the_anomaly() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("pump-7.csv");
    write_input(&input);
    let opts = ReplayOptions {
        train: None,
        input: input.clone(),
        output: dir.path().join("scores.csv"),
        incidents: Some(dir.path().join("incidents.jsonl")),
        device: None,
        config: novelty_config(),
    };
    let report = replay(&opts).unwrap();

    assert_eq!(report.skipped_rows, 1);
    assert_eq!(report.skipped[0].line, MALFORMED_AT as u64 + 2, "header is line 1");
    assert!(report.skipped[0].reason.contains("n/a"), "{:?}", report.skipped);
    assert_eq!(report.rows, ROWS as u64 - 1);

    let text = std::fs::read_to_string(&opts.output).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("timestamp,value,anomaly_score"));
    let scores: Vec<f64> = lines.map(|l| l.rsplit(',').next().unwrap().parse().unwrap()).collect();
    assert_eq!(scores.len(), ROWS - 1, "one output row per readable input row");
    assert!(scores.iter().all(|s| (0.0..=1.0).contains(s)));

    let first_ts = |row: usize| 1_388_534_400_000 + 300_000 * row as i64;
    let opened: Vec<_> = report.incidents.iter().collect();
    assert!(!opened.is_empty(), "the anomaly opened no incident");
    assert!(opened.iter().any(|i| i.fault == "pattern"), "{opened:?}");
    for inc in &opened {
        let at = chrono::DateTime::parse_from_rfc3339(&inc.opened_at).unwrap().timestamp_millis();
        assert!(
            (first_ts(ANOMALY_AT)..=first_ts(ANOMALY_AT + 10)).contains(&at),
            "incident outside the anomaly: {inc:?}"
        );
        assert_eq!(inc.device, "pump-7", "device defaults to the file stem");
    }
    let pattern = opened.iter().filter(|i| i.fault == "pattern").count();
    assert_eq!(pattern, 1, "one pattern incident for one episode: {opened:?}");

    let jsonl = std::fs::read_to_string(opts.incidents.as_ref().unwrap()).unwrap();
    let events: Vec<serde_json::Value> = jsonl.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let opens = events.iter().filter(|e| e["event"] == "open").count();
    assert_eq!(opens, opened.len(), "one open line per incident opened");
    let first = &events[0];
    for field in ["id", "incident_id", "event", "key", "fault", "metric", "opened_at", "timestamp", "summary"] {
        assert!(first.get(field).is_some(), "incident line lacks `{field}`: {first}");
    }
    // Every resolve names its episode's opening and its resolution, in event time.
    for e in events.iter().filter(|e| e["event"] == "resolve") {
        let open = events.iter().find(|o| o["event"] == "open" && o["id"] == e["id"]).expect("its open line");
        assert_eq!(open["opened_at"], e["opened_at"], "{e}");
        assert!(e["resolved_at"].as_str().unwrap() > e["opened_at"].as_str().unwrap(), "{e}");
    }
}

#[test]
fn semicolon_files_with_several_metrics_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("m.csv");
    std::fs::write(&input, "ts;temp;pressure\n1700000000;20.5;3.1\n1700000060;20.6;3.2\n1700000120;x;3.3\n").unwrap();
    let opts = ReplayOptions {
        train: None,
        input,
        output: dir.path().join("out.csv"),
        incidents: None,
        device: Some("comp-1".into()),
        config: novelty_config(),
    };
    let report = replay(&opts).unwrap();
    assert_eq!((report.rows, report.readings, report.skipped_rows), (2, 4, 1));
    let text = std::fs::read_to_string(&opts.output).unwrap();
    assert!(text.starts_with("timestamp,temp,pressure,anomaly_score\n1700000000,20.5,3.1,"), "{text}");
}

/// The default config with the novelty detector on (it is off by default in the daemon).
fn novelty_config() -> Config {
    let mut config = Config::default();
    config.detect.novelty.enabled = true;
    config
}

/// A multi-metric recording: two metrics that follow one load, the second breaking away from
/// the first after `break_at` rows.
fn write_device(path: &Path, rows: usize, break_at: usize) {
    let mut text = String::from("timestamp,load_a,load_b\n");
    let mut state: u64 = 11;
    for i in 0..rows {
        let mut noise = || {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            (state >> 11) as f64 / (1u64 << 53) as f64 - 0.5
        };
        let load = (i as f64 * std::f64::consts::TAU / 90.0).sin();
        let a = 50.0 + 5.0 * load + noise();
        let b = if i < break_at { 20.0 + 2.0 * load } else { 20.0 - 2.0 * load } + 0.4 * noise();
        let _ = writeln!(text, "{},{a:.3},{b:.3}", 1_700_000_000 + 10 * i as i64);
    }
    std::fs::write(path, text).unwrap();
}

#[test]
fn replay_fits_models_causally_and_never_looks_ahead() {
    let dir = tempfile::tempdir().unwrap();
    let full = dir.path().join("full.csv");
    let head = dir.path().join("head.csv");
    write_device(&full, 3000, 2000);
    write_device(&head, 2000, 2000);
    // The model is judged from its first healthy history on, without a day of commissioning.
    let mut config = Config::default();
    config.detect.context.enabled = false;
    let run = |input: &Path, name: &str| {
        let opts = ReplayOptions {
            train: None,
            input: input.to_path_buf(),
            output: dir.path().join(format!("{name}.scores.csv")),
            incidents: Some(dir.path().join(format!("{name}.jsonl"))),
            device: Some("pump".into()),
            config: config.clone(),
        };
        let report = replay(&opts).unwrap();
        (report, std::fs::read_to_string(&opts.output).unwrap())
    };
    let (full_report, full_scores) = run(&full, "full");
    let (head_report, head_scores) = run(&head, "head");
    assert!(head_report.models_fitted >= 1, "a model was fitted during the replay, after its healthy history");
    // The first 2000 rows score the same whether or not the recording goes on: nothing
    // (detectors, fits, incidents) used what came later.
    let full_head: Vec<&str> = full_scores.lines().take(2001).collect();
    let head_lines: Vec<&str> = head_scores.lines().collect();
    assert_eq!(full_head, head_lines);
    // The broken relation after row 2000 is found by the model.
    let multivariate = full_report.incidents.iter().filter(|i| i.fault == "multivariate").count();
    assert!(multivariate >= 1, "{:?}", full_report.incidents);
}
