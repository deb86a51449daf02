//! `/metrics` of the real binary as Prometheus sees it: text 0.0.4 by default and OpenMetrics
//! when asked for, both clean for promtool; every labelled family at zero before its first
//! event; the process and build metrics; and every metric the shipped Grafana dashboard and
//! Prometheus alerts use. The promtool checks run when promtool is installed (`scripts/test`
//! installs it) and are skipped with a notice otherwise.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// What Prometheus 2.x sends when it scrapes.
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                                 version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

const ASSET_MODEL: &str = "Bitzer 4FES-5Y";

/// A daemon with the shipped settings, a file sink and one registered asset, scraped before any
/// message arrives.
async fn start_daemon(dir: &Path, broker: &Mosquitto) -> DaemonProcess {
    let tickets = dir.join("tickets.jsonl").display().to_string();
    let extra = format!(
        "[[assets.devices]]\nid = \"comp-1\"\nmodel = \"{ASSET_MODEL}\"\n\
         [[ticket.sinks]]\ntype = \"file\"\nname = \"archive\"\npath = {tickets:?}\n"
    );
    DaemonConfig::shipped(broker.port, dir).extra(&extra).start().await
}

/// `GET /metrics` with an `Accept` header: content type and body.
async fn scrape(daemon: &DaemonProcess, accept: Option<&str>) -> (String, String) {
    let mut request = reqwest::Client::new().get(format!("http://{}/metrics", daemon.admin()));
    if let Some(a) = accept {
        request = request.header(reqwest::header::ACCEPT, a);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()[reqwest::header::CONTENT_TYPE].to_str().unwrap().to_string();
    (content_type, response.text().await.unwrap())
}

/// The sample names of an exposition (`..._bucket`, `..._total`), each once.
fn sample_names(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l[..l.find(['{', ' ']).unwrap_or(l.len())].to_string())
        .collect()
}

/// promtool, or `None` (with a notice) where it is not installed.
fn promtool() -> Option<PathBuf> {
    // `scripts/test` puts it in target/tools/bin when the machine has none of its own.
    let fetched = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tools/bin");
    let path = std::env::var("PATH").unwrap_or_default();
    let dirs = path.split(':').map(PathBuf::from).chain([fetched, "/usr/bin".into(), "/usr/local/bin".into()]);
    let found = dirs.map(|d| d.join("promtool")).find(|p| p.is_file());
    if found.is_none() {
        eprintln!("NOTICE: promtool not found; skipping the promtool checks (scripts/test fetches it from the prometheus package)");
    }
    found
}

/// Runs promtool with `args` (and `stdin`); panics with its output unless it exits 0.
fn promtool_passes(promtool: &Path, args: &[&str], stdin: Option<&str>) -> String {
    use std::io::Write;
    let mut child = Command::new(promtool)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(input);
    let out = child.wait_with_output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool {} exited with {}:\n{text}", args.join(" "), out.status);
    text
}

/// The rules of OpenMetrics 1.0 that Prometheus's own parser leaves unchecked: each family has
/// HELP and TYPE once, its samples carry the suffixes of its type, histograms have a `+Inf`
/// bucket, and the exposition ends with `# EOF`.
fn check_openmetrics(exposition: &str) -> Result<(), String> {
    let body = exposition.strip_suffix("# EOF\n").ok_or("does not end with # EOF")?;
    let mut declared = BTreeSet::new();
    let mut family: Option<(&str, &str)> = None;
    let mut helped = None;
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            helped = rest.split(' ').next();
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').ok_or(format!("bad TYPE line: {line}"))?;
            if helped != Some(name) || !declared.insert(name) {
                return Err(format!("{name}: HELP missing or family declared twice"));
            }
            family = Some((name, kind));
        } else if line.starts_with('#') {
            return Err(format!("unexpected line: {line}"));
        } else {
            let (name, kind) = family.ok_or(format!("sample before any TYPE: {line}"))?;
            let sample = &line[..line.find(['{', ' ']).unwrap_or(line.len())];
            let suffix = sample.strip_prefix(name).ok_or(format!("{sample} is not of family {name}"))?;
            let allowed: &[&str] = match kind {
                "counter" => &["_total", "_created"],
                "gauge" | "unknown" => &[""],
                "histogram" => &["_bucket", "_sum", "_count", "_created"],
                "info" => &["_info"],
                other => return Err(format!("{name}: type {other} not expected here")),
            };
            if !allowed.contains(&suffix) {
                return Err(format!("{sample}: a {kind} sample of {name} cannot end in `{suffix}`"));
            }
        }
    }
    for (name, kind) in body.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.split_once(' ')) {
        if kind == "histogram" && !body.contains(&format!("{name}_bucket{{le=\"+Inf\"")) {
            return Err(format!("{name} has no +Inf bucket"));
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_text_004_by_default_and_openmetrics_on_request_both_clean_for_promtool() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let daemon = start_daemon(dir.path(), &broker).await;

    let (plain_type, plain) = scrape(&daemon, None).await;
    let (text_type, text) = scrape(&daemon, Some("text/plain;version=0.0.4")).await;
    let (om_type, om) = scrape(&daemon, Some(PROMETHEUS_ACCEPT)).await;
    assert_eq!(plain_type, "text/plain; version=0.0.4; charset=utf-8");
    assert_eq!(text_type, plain_type);
    assert!(plain.contains("# TYPE fieldwatch_readings_total counter\n"), "{plain}");
    assert_eq!(om_type, "application/openmetrics-text; version=1.0.0; charset=utf-8");
    assert!(!text.contains("# EOF") && !text.contains("# UNIT"), "{text}");
    assert!(text.contains("# TYPE fieldwatch_readings_total counter\n"), "{text}");
    assert!(om.contains("# TYPE fieldwatch_readings counter\n"), "{om}");
    assert_eq!(sample_names(&text), sample_names(&om), "both formats carry the same series");
    check_openmetrics(&om).unwrap_or_else(|e| panic!("not OpenMetrics: {e}\n{om}"));

    let Some(promtool) = promtool() else { return };
    // `check metrics` lints the 0.0.4 text format (on OpenMetrics it takes every counter's
    // `_total` samples for a family without help): the default response must pass it.
    let lint = promtool_passes(&promtool, &["check", "metrics"], Some(&text));
    assert!(lint.trim().is_empty(), "promtool check metrics complained:\n{lint}");
    // The OpenMetrics response goes through Prometheus's own OpenMetrics parser (backfilling
    // needs a timestamp on each sample: the scrape time is added).
    let now = fieldwatch::reading::now_ms() / 1000;
    let stamped: String =
        om.lines().map(|l| if l.starts_with('#') { format!("{l}\n") } else { format!("{l} {now}\n") }).collect();
    let input = dir.path().join("scrape.om");
    std::fs::write(&input, stamped).unwrap();
    let blocks = dir.path().join("blocks");
    promtool_passes(
        &promtool,
        &["tsdb", "create-blocks-from", "openmetrics", input.to_str().unwrap(), blocks.to_str().unwrap()],
        None,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labelled_families_process_and_build_metrics_are_there_before_any_event() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let daemon = start_daemon(dir.path(), &broker).await;
    let (_, text) = scrape(&daemon, None).await;
    let version = env!("CARGO_PKG_VERSION");
    let zero = [
        "fieldwatch_rejected_messages_total{reason=\"not_json\"} 0".to_string(),
        "fieldwatch_rejected_messages_total{reason=\"too_many_series\"} 0".into(),
        "fieldwatch_fields_ignored_total{reason=\"not_a_number\"} 0".into(),
        "fieldwatch_anomalies_total{fault=\"deviation\"} 0".into(),
        "fieldwatch_incidents_opened_total{priority=\"P4\"} 0".into(),
        "fieldwatch_sla_breaches_total{tier=\"tier1\"} 0".into(),
        "fieldwatch_tickets_suppressed_total{reason=\"maintenance\"} 0".into(),
        "fieldwatch_verdicts_total{verdict=\"wont_fix\"} 0".into(),
        format!("fieldwatch_false_alarms_total{{detector=\"baseline\",asset_model=\"{ASSET_MODEL}\"}} 0"),
        "fieldwatch_false_alarms_total{detector=\"staleness\",asset_model=\"unknown\"} 0".into(),
        "fieldwatch_lead_time_seconds_count{kind=\"predicted\"} 0".into(),
        "fieldwatch_tickets_delivered_total{sink=\"archive\"} 0".into(),
        "fieldwatch_ticket_attempts_failed_total{sink=\"archive\"} 0".into(),
        "fieldwatch_tickets_dead_lettered_total{sink=\"archive\"} 0".into(),
        "fieldwatch_outbox_depth{sink=\"archive\"} 0".into(),
        "fieldwatch_models{kind=\"pca\",trust=\"trusted\"} 0".into(),
        "fieldwatch_model_fits_total{result=\"failed\"} 0".into(),
        format!("fieldwatch_build_info{{version=\"{version}\"}} 1"),
    ];
    for line in &zero {
        assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
    }
    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
    ] {
        let value: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing:\n{text}"));
        assert!(value >= 0.0, "{name} {value}");
    }
    // The start time is the daemon's, not the test's: it is the same in the next scrape.
    let start = |t: &str| t.lines().find(|l| l.starts_with("process_start_time_seconds ")).map(str::to_string);
    assert_eq!(start(&text), start(&scrape(&daemon, None).await.1));
    // No label takes a device's name: a fleet of devices is not a fleet of series.
    assert!(!text.contains("device=\""), "{text}");
}

/// Every `fieldwatch_*` and `process_*` name in a file, at identifier boundaries.
fn referenced_metrics(text: &str) -> BTreeSet<String> {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut names = BTreeSet::new();
    for prefix in ["fieldwatch_", "process_"] {
        for (at, _) in text.match_indices(prefix) {
            if text[..at].chars().next_back().is_some_and(|c| is_ident(c) || c == ':') {
                continue;
            }
            let end = text[at..].find(|c: char| !is_ident(c)).map_or(text.len(), |n| at + n);
            names.insert(text[at..end].to_string());
        }
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_and_the_alerts_use_is_exported() {
    let contrib = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib");
    let dashboard_text = std::fs::read_to_string(contrib.join("grafana/fieldwatch.json")).unwrap();
    let alerts_path = contrib.join("prometheus/alerts.yml");
    let alerts_text = std::fs::read_to_string(&alerts_path).unwrap();

    let dashboard: serde_json::Value = serde_json::from_str(&dashboard_text).unwrap();
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    assert!(variables
        .iter()
        .any(|v| v["type"] == "datasource" && v["name"] == "datasource" && v["query"] == "prometheus"));
    let panels = dashboard["panels"].as_array().unwrap();
    for p in panels.iter().filter(|p| p["type"] != "row") {
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        assert!(!p["targets"].as_array().unwrap().is_empty(), "{}", p["title"]);
    }
    let titles: Vec<&str> = panels.iter().filter_map(|p| p["title"].as_str()).collect();
    for topic in ["Ingest rate", "Ingest lag", "Rejected", "by priority", "Outbox depth", "SLA breaches", "models"] {
        assert!(titles.iter().any(|t| t.contains(topic)), "no panel for {topic}: {titles:?}");
    }

    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let daemon = start_daemon(dir.path(), &broker).await;
    let exported = sample_names(&scrape(&daemon, None).await.1);
    for (file, text) in [("grafana/fieldwatch.json", &dashboard_text), ("prometheus/alerts.yml", &alerts_text)] {
        let used = referenced_metrics(text);
        assert!(used.len() >= 5, "{file}: {used:?}");
        let missing: Vec<_> = used.difference(&exported).collect();
        assert!(missing.is_empty(), "{file} uses metrics the daemon does not export: {missing:?}");
    }

    let Some(promtool) = promtool() else { return };
    let rules = alerts_path.to_str().unwrap();
    let checked = promtool_passes(&promtool, &["check", "rules", rules], None);
    assert!(checked.contains("SUCCESS: 5 rules found"), "{checked}");
    let tests = contrib.join("prometheus/alerts_test.yml");
    promtool_passes(&promtool, &["test", "rules", tests.to_str().unwrap()], None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_disk_gauge_is_what_the_store_takes_on_disk() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let daemon = start_daemon(dir.path(), &broker).await;
    let p = Publisher::connect(broker.port, "pub-disk").await;
    let t0 = base_ts();
    for i in 0..200 {
        p.send("comp-1", t0 + i * 1000, normal(i)).await;
    }
    daemon.wait_metric("fieldwatch_readings_total", 200).await;
    // The gauge is set by the core's tick, once a second: wait until it is set at all, then
    // long enough for two more ticks, so that the value read was set after the readings were
    // stored (a wait, not a measurement: nothing here is timed).
    daemon.wait_metric("fieldwatch_store_disk_bytes", 1).await;
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let gauge = daemon.metric("fieldwatch_store_disk_bytes").await.unwrap();
    let on_disk = dir_bytes(&dir.path().join("db"));
    // sled's segment file and blobs, not its small config and snapshot files; and the store
    // may write (detector state) between the gauge's update and the listing.
    assert!(gauge > 0 && gauge <= on_disk, "gauge {gauge} B, files {on_disk} B");
    assert!(on_disk - gauge < 1024 * 1024, "gauge {gauge} B, files {on_disk} B");
    println!("STORE disk gauge {gauge} B, files under the data dir {on_disk} B");
}
