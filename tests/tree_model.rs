//! A gradient-boosted tree model where the engine serves it: as champion
//! and as challenger, explained on every decision, swapped while serving, and
//! a damaged file refused while the last good one keeps deciding. No server:
//! the engine on its in-memory store, as `vigil run` and `vigil serve` build it.

use vigil_core::pipeline::ModelConfig;
use vigil_core::{Event, PipelineConfig};
use vigil_engine::{Engine, Options};
use vigil_model::{GbdtParams, TrainParams};
use vigil_offline::TrainConfig;

mod common;

fn logit(p: f64) -> f64 {
    (p / (1.0 - p)).ln()
}

#[tokio::test]
async fn a_tree_model_decides_explains_itself_swaps_and_refuses_a_damaged_file() {
    let root = common::repo();
    let mut config = PipelineConfig::load(&root.join("pipelines/demo.toml")).unwrap();
    let data =
        vigil_gen::GenConfig { events: 6_000, cards: 300, merchants: 40, days: 4, seed: 5, ..Default::default() };
    let train = TrainConfig {
        data: data.clone(),
        params: TrainParams::GradientBoostedTrees(GbdtParams::new().n_trees(40).seed(5)),
        ..TrainConfig::default()
    };
    let report = vigil_offline::train_on_generated(&config.features, &train).unwrap();
    let dir = std::env::temp_dir().join(format!("vigil-tree-model-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let trees = dir.join("trees.json");
    std::fs::write(&trees, report.model.to_file_json()).unwrap();

    // The trees decide; the shipped logistic regression is their challenger.
    config.model =
        Some(ModelConfig { path: trees.clone(), weight: 100.0, challenger: Some(root.join("models/card-fraud.json")) });
    let engine = Engine::in_memory(&config).unwrap();
    let events: Vec<Event> = vigil_gen::generate(&vigil_gen::GenConfig { seed: 6, ..data })
        .into_iter()
        .map(|l| l.event)
        .take(1_500)
        .collect();
    let refs: Vec<&Event> = events.iter().collect();
    let decisions = engine.decide(&refs, Options::online()).await.unwrap();
    let version = decisions[0].model_version.clone().unwrap();
    assert!(version.contains("@"), "{version}");
    let mut explained = 0;
    for d in &decisions {
        assert_eq!(d.model_version.as_deref(), Some(version.as_str()));
        let challenger = d.challenger.as_ref().expect("the challenger is scored on every decision");
        assert!(challenger.model_version.starts_with("card-fraud-logistic@"), "{challenger:?}");
        // Path attributions against the trees' baseline add up to the score's
        // log-odds, to the rounding of the reported parts (four places).
        let (score, baseline) = (d.model_score.unwrap(), d.model_baseline.expect("trees state their baseline"));
        let sum = d.model_factors.iter().map(|f| f.contribution).sum::<f64>() + d.model_factors_rest.unwrap();
        assert!((logit(baseline) + sum - logit(score)).abs() < 1e-3, "{d:?}");
        explained += usize::from(!d.model_factors.is_empty());
    }
    assert!(explained > decisions.len() / 2, "{explained} of {} decisions explained", decisions.len());

    // A damaged tree file is refused; the trees keep deciding.
    let text = std::fs::read_to_string(&trees).unwrap();
    let damaged = dir.join("damaged.json");
    std::fs::write(&damaged, text.replacen("\"right\": [", "\"right\": [7777,", 1)).unwrap();
    assert!(engine.reload_model(&damaged).is_err());
    let after = engine.decide(&refs[..1], Options::online()).await.unwrap();
    assert_eq!(after[0].model_version.as_deref(), Some(version.as_str()));
    // Other trees, swapped in while serving, decide the later events.
    let other =
        TrainConfig { params: TrainParams::GradientBoostedTrees(GbdtParams::new().n_trees(20).seed(9)), ..train };
    let next = dir.join("next.json");
    std::fs::write(&next, vigil_offline::train_on_generated(&config.features, &other).unwrap().model.to_file_json())
        .unwrap();
    let swapped = engine.reload_model(&next).unwrap();
    assert_ne!(swapped, version);
    let later = engine.decide(&refs[1..2], Options::online()).await.unwrap();
    assert_eq!(later[0].model_version.as_deref(), Some(swapped.as_str()));
    std::fs::remove_dir_all(&dir).ok();
}
