//! Single-event model scoring: `cargo bench --bench model`.
//!
//! Trains every algorithm on 40,000 generated events with the demo pipeline's
//! features (the same code as `vigil train`), then times one event's score, the
//! call the engine makes per decision, on inputs taken from real rows.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use vigil_core::PipelineConfig;
use vigil_engine::InputMap;
use vigil_model::Model;
use vigil_model::{Algorithm, GbdtParams, IsolationForestParams, TrainParams};
use vigil_offline::TrainConfig;

fn benches(c: &mut Criterion) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = PipelineConfig::load(&root.join("pipelines/demo.toml")).unwrap();
    let data = vigil_gen::GenConfig { events: 40_000, seed: 3, ..vigil_gen::GenConfig::default() };
    // Inputs of real events: the amount, then every feature that is a model input (NaN when missing).
    let items = vigil_gen::generate(&data);
    let events: Vec<&vigil_core::Event> = items.iter().map(|l| &l.event).collect();
    let features = vigil_offline::features_over_history(&config.features, &events, &[]).unwrap();
    let inputs = InputMap::all(&config.features);
    let rows: Vec<Vec<f64>> = events.iter().zip(&features).map(|(e, f)| inputs.row(e, f)).collect();

    let mut g = c.benchmark_group("model_score_one");
    // The forest seeded as the data, as when the generator's seed was its own.
    let algorithms = [
        ("Logistic", TrainParams::Logistic(Default::default())),
        ("IsolationForest", TrainParams::IsolationForest(IsolationForestParams::new().seed(data.seed))),
        ("GradientBoostedTrees", TrainParams::GradientBoostedTrees(GbdtParams::new())),
    ];
    for (algorithm, params) in algorithms {
        let train = TrainConfig { data: data.clone(), params, ..TrainConfig::default() };
        let model = vigil_offline::train_on_generated(&config.features, &train).unwrap().model;
        let mut i = 0;
        g.bench_function(format!("{algorithm}_{}_inputs", rows[0].len()), |b| {
            b.iter(|| {
                i = (i + 1) % rows.len();
                black_box(model.score(black_box(&rows[i])))
            })
        });
        // The score with its explanation, as a decision asks for it.
        let mut i = 0;
        g.bench_function(format!("{algorithm}_explained"), |b| {
            b.iter(|| {
                i = (i + 1) % rows.len();
                let mut total = 0.0;
                let score = model.explain(black_box(&rows[i]), &mut |_, c| total += c);
                black_box((score, total))
            })
        });
        // The forest walked node by node (its reference path), on the same
        // scaled inputs: what the flat layout is measured against.
        if let Algorithm::IsolationForest(vigil_model::forest::Forest { forest }) = &model.body().algorithm {
            let s = &model.body().scaler;
            let scaled: Vec<Vec<f64>> =
                rows.iter().map(|r| r.iter().enumerate().map(|(c, v)| (v - s.mean[c]) / s.std[c]).collect()).collect();
            let mut i = 0;
            g.bench_function(format!("{algorithm}_walking_nodes_scaled_inputs"), |b| {
                b.iter(|| {
                    i = (i + 1) % scaled.len();
                    black_box(forest.score_one_walking(black_box(&scaled[i])))
                })
            });
            g.bench_function(format!("{algorithm}_flat_scaled_inputs"), |b| {
                b.iter(|| {
                    i = (i + 1) % scaled.len();
                    black_box(forest.score_one(black_box(&scaled[i])))
                })
            });
        }
    }
    g.finish();
}

criterion_group!(model, benches);
criterion_main!(model);
