//! Device models: scoring one vector (the per-message cost in the core) and fitting on a day of
//! 1 Hz history (the trainer's cost per device and kind).

use criterion::{criterion_group, criterion_main, Criterion};
use fieldwatch::config::ModelsConfig;
use fieldwatch::model::{DeviceModel, FeatureSpec, FeatureState, FitParams, ModelKind};
use fieldwatch::sim::{Simulator, METRICS};

/// A day of 1 Hz vectors of one simulated compressor, as raw features.
fn day_of_features() -> (FeatureSpec, Vec<Vec<f64>>) {
    let spec = FeatureSpec::new(METRICS.iter().map(|m| m.name.to_string()).collect());
    let mut sim = Simulator::new(1, Vec::new(), 1);
    let mut state = FeatureState::default();
    let features = (0..86_400).filter_map(|s| state.push(&spec, &sim.values(0, s * 1000))).collect();
    (spec, features)
}

fn models(c: &mut Criterion) {
    let (spec, features) = day_of_features();
    let params = FitParams::of(&ModelsConfig::default());
    let fit = |kind| DeviceModel::fit(kind, "comp-01", spec.clone(), &features, (0, 0), 0, &params);
    for kind in [ModelKind::Pca, ModelKind::Gmm] {
        let Ok(model) = fit(kind) else { panic!("fit {kind:?} failed") };
        let mut i = 0;
        c.bench_function(&format!("score_one_vector_{}", kind.as_str()), |b| {
            b.iter(|| {
                i = (i + 1) % features.len();
                model.score(&features[i])
            })
        });
    }
    let mut g = c.benchmark_group("fit_day_1hz_4_metrics");
    g.sample_size(10);
    for kind in [ModelKind::Pca, ModelKind::Gmm] {
        g.bench_function(kind.as_str(), |b| b.iter(|| fit(kind).map(|m| m.n_samples)));
    }
    g.finish();
}

criterion_group!(benches, models);
criterion_main!(benches);
