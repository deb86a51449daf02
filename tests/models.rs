//! Learned device models through the real core and a sled store on disk: persistence, the
//! multivariate fault on simulated compressors, and fitting that never holds up ingest.

mod common;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use fieldwatch::config::Config;
use fieldwatch::core::{metric_labels, Core};
use fieldwatch::detect::FaultKind;
use fieldwatch::incident::Transition;
use fieldwatch::metrics::Metrics;
use fieldwatch::model::trainer::{self, TrainerStatus};
use fieldwatch::model::{DeviceModel, FeatureState};
use fieldwatch::reading::Message;
use fieldwatch::sim::{FaultShape, PlannedFault, Simulator};
use fieldwatch::store::Store;

const T0: i64 = 1_700_000_000_000;

fn config() -> Config {
    // The models are judged from their first hour of history: no day of commissioning.
    let text = "[detect.models]\nenabled = true\nkinds = [\"pca\", \"gmm\"]\nwindow = \"1d\"\n[incident]\nstale_after = \"0s\"\n\
                [detect.context]\nenabled = false\n[detect.drift]\nreference_for = \"1h\"\n";
    Config::parse(text, Path::new("test.toml")).unwrap()
}

fn open(dir: &Path) -> Arc<Store> {
    Arc::new(Store::open(dir, 64, 100).unwrap())
}

/// One message per device per second over `[from_s, to_s)`, through the core.
fn feed(core: &mut Core, sim: &mut Simulator, from_s: i64, to_s: i64) -> Vec<Transition> {
    let mut out = Vec::new();
    for s in from_s..to_s {
        let ts = T0 + s * 1000;
        let msgs: Vec<Message> = (0..sim.devices.len())
            .map(|d| Message { topic: sim.topic(d), payload: sim.payload(d, ts).into(), received_ms: ts })
            .collect();
        out.extend(core.process_messages(&msgs).unwrap().transitions);
    }
    out
}

fn fit_all(store: &Store, sim: &Simulator, config: &Config) -> Vec<DeviceModel> {
    sim.devices.iter().flat_map(|d| trainer::fit_device(store, d, &config.detect.models, T0).unwrap()).collect()
}

#[test]
fn fitted_models_survive_a_restart_and_score_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let config = config();
    let mut sim = Simulator::new(1, Vec::new(), 3);
    let fitted = {
        let store = open(dir.path());
        let mut core = Core::new(config.core(), store.clone(), Arc::new(Metrics::new(&metric_labels()))).unwrap();
        feed(&mut core, &mut sim, 0, 1500);
        let fitted = fit_all(&store, &sim, &config);
        store.flush_blocking().unwrap();
        fitted
    };
    assert_eq!(fitted.len(), 2);
    let store = open(dir.path());
    let mut loaded: Vec<DeviceModel> = store.models().unwrap();
    loaded.sort_by_key(|m| m.kind);
    let summary = |m: &DeviceModel| (m.device.clone(), m.kind, m.spec.clone(), m.n_samples, m.window_from, m.window_to);
    assert_eq!(loaded.iter().map(summary).collect::<Vec<_>>(), fitted.iter().map(summary).collect::<Vec<_>>());
    let core = Core::new(config.core(), store.clone(), Arc::new(Metrics::new(&metric_labels()))).unwrap();
    assert_eq!(core.models_installed(), 2, "the core reloads fitted models at start");
    let mut state = FeatureState::default();
    let spec = &fitted[0].spec;
    for s in 0..30 {
        let v = sim.values(0, T0 + (2000 + s) * 1000);
        if let Some(f) = state.push(spec, &v) {
            for (a, b) in fitted.iter().zip(&loaded) {
                // JSON keeps f64 to within the last bit, not bit for bit.
                let (x, y) = (a.score(&f), b.score(&f));
                assert!((x.raw - y.raw).abs() <= 1e-9 * x.raw.abs().max(1.0), "{x:?} vs {y:?}");
                assert!((x.score - y.score).abs() <= 1e-9, "{x:?} vs {y:?}");
                assert_eq!(x.contributors, y.contributors);
            }
        }
    }
}

#[test]
fn broken_relation_between_metrics_opens_a_multivariate_incident_and_healthy_devices_stay_quiet() {
    let dir = tempfile::tempdir().unwrap();
    let config = config();
    let store = open(dir.path());
    // comp-03's discharge temperature starts to fall as its current rises, each inside its range.
    let fault_at = 5400;
    let faults = vec![PlannedFault {
        device: 2,
        metric: 0,
        shape: FaultShape::Relation,
        start_ms: T0 + fault_at * 1000,
        end_ms: None,
    }];
    let mut sim = Simulator::new(4, faults, 11);
    let mut core = Core::new(config.core(), store.clone(), Arc::new(Metrics::new(&metric_labels()))).unwrap();
    let before = feed(&mut core, &mut sim, 0, 3600);
    assert!(before.is_empty(), "healthy history opens nothing: {before:?}");
    for m in fit_all(&store, &sim, &config) {
        assert!(m.validation.held_out_alarm_rate < 0.01, "{} {:?}: {:?}", m.device, m.kind, m.validation);
        core.install_model(m);
    }
    let after = feed(&mut core, &mut sim, 3600, fault_at + 3600);
    let opened: Vec<_> = after
        .iter()
        .filter_map(|t| match t {
            Transition::Opened(i) => Some(i),
            _ => None,
        })
        .collect();
    for inc in &opened {
        assert_eq!(inc.device, "comp-03", "a healthy device opened an incident: {inc:?}");
        assert!(inc.first_seen >= T0 + fault_at * 1000, "comp-03 alarmed before its fault: {inc:?}");
    }
    let inc = opened
        .iter()
        .find(|i| i.fault == FaultKind::Multivariate)
        .unwrap_or_else(|| panic!("no multivariate incident: {opened:?}"));
    assert_eq!(inc.key, "comp-03/device/multivariate");
    let (_, summary) = fieldwatch::incident::describe(inc, None);
    assert!(summary.contains("comp-03 behaves unlike its normal operation"), "{summary}");
    assert!(summary.contains("discharge_temp"), "{summary}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_keep_being_stored_while_a_model_is_fitted() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config();
    config.detect.models.max_training_vectors = 1_000_000;
    let store = open(dir.path());
    // A large history for one device, written straight to the store.
    let mut big = Simulator::new(1, Vec::new(), 5);
    let names: Vec<u32> =
        fieldwatch::sim::METRICS.iter().map(|m| store.series_id("comp-01", m.name).unwrap()).collect();
    for s in 0..12_000 {
        let ts = T0 + s * 1000;
        for (series, v) in names.iter().zip(big.values(0, ts)) {
            store.insert_reading(*series, ts, v).unwrap();
        }
    }
    let mut core = Core::new(config.core(), store.clone(), Arc::new(Metrics::new(&metric_labels()))).unwrap();
    let status = Arc::new(TrainerStatus::default());
    let (fit_store, fit_config, fit_status) = (store.clone(), config.detect.models.clone(), status.clone());
    let fit = tokio::spawn(async move {
        let worker = fieldwatch::worker::Worker::start("fit").unwrap();
        trainer::fit_in_background(&worker, fit_store, "comp-01".into(), fit_config, fit_status).await
    });
    while !status.fitting.load(Ordering::SeqCst) {
        tokio::task::yield_now().await;
    }
    // Another device keeps reporting; count the batches stored from start to end of the fit.
    let mut live = Simulator::new(2, Vec::new(), 6);
    let mut stored_during_fit = 0;
    let mut s = 0;
    let live_series = store.series_id("comp-02", "current").unwrap();
    while status.fitting.load(Ordering::SeqCst) {
        let ts = T0 + s * 1000;
        let msg = Message { topic: live.topic(1), payload: live.payload(1, ts).into(), received_ms: ts };
        let outcome = core.process_messages(&[msg]).unwrap();
        store.flush().await.unwrap();
        let newest = store.recent(live_series, i64::MAX, 1).unwrap();
        if status.fitting.load(Ordering::SeqCst) && outcome.stored == 4 && newest.last().map(|r| r.0) == Some(ts) {
            stored_during_fit += 1;
        }
        s += 1;
        tokio::task::yield_now().await;
    }
    let models = fit.await.unwrap().unwrap();
    assert_eq!(models.len(), 2);
    assert!(models[0].n_samples > 9_000, "{}", models[0].n_samples);
    assert!(stored_during_fit >= 10, "only {stored_during_fit} batches were stored during the fit");
}

#[tokio::test]
async fn models_api_lists_fitted_models_and_accepts_train_requests() {
    let dir = tempfile::tempdir().unwrap();
    let config = config();
    let store = open(dir.path());
    let mut sim = Simulator::new(1, Vec::new(), 9);
    let mut core = Core::new(config.core(), store.clone(), Arc::new(Metrics::new(&metric_labels()))).unwrap();
    feed(&mut core, &mut sim, 0, 1200);
    fit_all(&store, &sim, &config);
    let (feedback, _rx) = tokio::sync::mpsc::channel(1);
    let state = fieldwatch::admin::AdminState {
        metrics: Arc::new(Metrics::new(&metric_labels())),
        health: Default::default(),
        token: None,
        store: store.clone(),
        silences: core.silences(),
        feedback,
        train: Some(core.train_requests()),
        commissions: config.detect.context.enabled,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cancel = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(fieldwatch::admin::serve(listener, state, cancel.clone()));
    let list = fieldwatch::client::AdminClient::new(&addr.to_string()).unwrap().models().await.unwrap();
    assert_eq!(list.len(), 2);
    assert!(list.iter().all(|m| m.device == "comp-01" && m.samples > 800), "{list:?}");
    let resp =
        reqwest::Client::new().post(format!("http://{addr}/api/models/train?device=comp-01")).send().await.unwrap();
    assert_eq!(resp.status(), reqwest::StatusCode::ACCEPTED);
    cancel.cancel();
    server.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_trains_on_request_through_the_admin_api_while_it_ingests() {
    let broker = common::Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let extra = "[detect.models]\nenabled = true\nkinds = [\"pca\", \"gmm\"]\nmin_training_vectors = 100\n";
    let mut config = common::test_config_with(broker.port, dir.path(), Vec::new(), extra);
    config.admin.listen = "127.0.0.1:0".into();
    let daemon = fieldwatch::Daemon::start(config).await.unwrap();
    let m = daemon.metrics().clone();
    common::wait_until("connected", || m.mqtt_connected.get() == 1).await;
    let p = common::Publisher::connect(broker.port, "pub-models").await;
    let mut sim = Simulator::new(1, Vec::new(), 4);
    let t0 = common::base_ts();
    for i in 0..400 {
        p.raw(&sim.topic(0), sim.payload(0, t0 + i * 1000)).await;
    }
    let store = daemon.store().clone();
    common::wait_until("history stored", || store.reading_count() >= 1600).await;
    let addr = daemon.admin_addr().unwrap();
    let resp = reqwest::Client::new().post(format!("http://{addr}/api/models/train")).send().await.unwrap();
    assert_eq!(resp.status(), reqwest::StatusCode::ACCEPTED);
    common::wait_until("models fitted", || store.models::<DeviceModel>().map(|l| l.len()).unwrap_or(0) == 2).await;
    // Ingest goes on after (and during) the fit.
    p.raw(&sim.topic(0), sim.payload(0, t0 + 400_000)).await;
    common::wait_until("a reading after the fit is stored", || store.reading_count() >= 1604).await;
    daemon.shutdown().await;
}
