use linfa::param_guard::ParamGuard;
use linfa::traits::Fit;
use linfa::Dataset;
use ndarray::{Array1, Array2};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::*;

/// Rows of three inputs: fraud when x0 is large and x1 small, or when x2 is
/// missing; x2 otherwise noise. About a fifth are frauds.
fn data(n: usize, seed: u64) -> (Array2<f64>, Array1<bool>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut x = Array2::zeros((n, 3));
    let mut y = Array1::from_elem(n, false);
    for i in 0..n {
        let (a, b): (f64, f64) = (rng.random(), rng.random());
        let c = if rng.random_bool(0.05) { f64::NAN } else { rng.random() };
        x[[i, 0]] = a;
        x[[i, 1]] = b;
        x[[i, 2]] = c;
        let noise = rng.random_bool(0.03);
        y[i] = ((a > 0.7 && b < 0.4) || c.is_nan()) != noise;
    }
    (x, y)
}

fn auc(scores: &[f64], labels: &[bool]) -> f64 {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let (mut rank_sum, mut pos) = (0.0, 0.0);
    for (rank, &i) in order.iter().enumerate() {
        if labels[i] {
            rank_sum += rank as f64 + 1.0;
            pos += 1.0;
        }
    }
    let neg = scores.len() as f64 - pos;
    (rank_sum - pos * (pos + 1.0) / 2.0) / (pos * neg)
}

fn fit(params: GbdtParams, x: Array2<f64>, y: Array1<bool>) -> GradientBoostedTrees {
    params.fit(&Dataset::new(x, y)).unwrap()
}

#[test]
fn every_bad_parameter_is_refused() {
    let cases = [
        GbdtParams::new().n_trees(0),
        GbdtParams::new().learning_rate(0.0),
        GbdtParams::new().learning_rate(1.5),
        GbdtParams::new().max_leaves(1),
        GbdtParams::new().min_child_weight(-1.0),
        GbdtParams::new().min_data_in_leaf(0),
        GbdtParams::new().lambda(f64::NAN),
        GbdtParams::new().row_subsample(0.0),
        GbdtParams::new().col_subsample(1.5),
        GbdtParams::new().max_bins(300),
        GbdtParams::new().max_bins(2),
        GbdtParams::new().scale_pos_weight(0.0),
        GbdtParams::new().validation_share(0.5),
    ];
    for p in cases {
        assert!(p.clone().check().is_err(), "{p:?}");
    }
    assert!(GbdtParams::new().check().is_ok());
}

#[test]
fn learns_the_rule_and_the_missing_direction_and_generalises() {
    let (x, y) = data(6000, 1);
    let (xt, yt) = data(3000, 2);
    let model = fit(GbdtParams::new().n_trees(100), x, y);
    let scores: Vec<f64> = xt.rows().into_iter().map(|r| model.score_one(r.as_slice().unwrap())).collect();
    // With 3% of the labels flipped, a perfect model's AUC is about 0.93.
    let a = auc(&scores, yt.as_slice().unwrap());
    assert!(a > 0.9, "held-out AUC {a}");
    // A missing x2 is fraud: learned as a direction for missing values.
    assert!(model.score_one(&[0.1, 0.9, f64::NAN]) > 0.8);
    assert!(model.score_one(&[0.1, 0.9, 0.5]) < 0.2);
}

#[test]
fn the_same_seed_gives_the_same_model_and_subsampling_stays_seeded() {
    let (x, y) = data(3000, 3);
    let p = GbdtParams::new().n_trees(30).row_subsample(0.7).col_subsample(0.67).seed(9);
    let a = fit(p.clone(), x.clone(), y.clone());
    let b = fit(p.clone(), x.clone(), y.clone());
    assert_eq!(serde_json::to_string(&a).unwrap(), serde_json::to_string(&b).unwrap());
    let c = fit(p.seed(10), x, y);
    assert_ne!(serde_json::to_string(&a).unwrap(), serde_json::to_string(&c).unwrap());
}

#[test]
fn weights_move_the_scores() {
    let (x, y) = data(4000, 4);
    let plain = fit(GbdtParams::new().n_trees(40), x.clone(), y.clone());
    let heavy = fit(GbdtParams::new().n_trees(40).scale_pos_weight(10.0), x.clone(), y.clone());
    let mean = |m: &GradientBoostedTrees| {
        x.rows().into_iter().map(|r| m.score_one(r.as_slice().unwrap())).sum::<f64>() / x.nrows() as f64
    };
    assert!(mean(&heavy) > mean(&plain) + 0.1, "{} {}", mean(&heavy), mean(&plain));
    // Sample weights through linfa count as copies would.
    let w = Array1::from_iter(y.iter().map(|f| if *f { 10.0f32 } else { 1.0 }));
    let weighted = GbdtParams::new().n_trees(40).fit(&Dataset::new(x.clone(), y.clone()).with_weights(w)).unwrap();
    assert!((mean(&weighted) - mean(&heavy)).abs() < 1e-9, "the same weights either way");
}

#[test]
fn early_stopping_keeps_the_best_round_on_the_newest_rows() {
    // Labels of pure noise: the validation loss stops improving early.
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let x = Array2::from_shape_fn((4000, 3), |_| rng.random::<f64>());
    let y = Array1::from_shape_fn(4000, |_| rng.random_bool(0.3));
    let model = fit(GbdtParams::new().n_trees(300).early_stopping_rounds(20), x.clone(), y.clone());
    assert!(
        model.n_trees() < 100 && model.rounds() == model.n_trees() + 20,
        "{} of {}",
        model.n_trees(),
        model.rounds()
    );
    let all = fit(GbdtParams::new().n_trees(50).early_stopping_rounds(0), x, y);
    assert_eq!((all.n_trees(), all.rounds()), (50, 50));
}

#[test]
fn attributions_add_up_to_the_margin_from_the_baseline() {
    let (x, y) = data(3000, 6);
    let model = fit(GbdtParams::new().n_trees(60), x.clone(), y);
    for row in x.rows().into_iter().take(200) {
        let r = row.as_slice().unwrap();
        let mut parts = [0.0; 3];
        model.contributions(r, &mut parts);
        let total = model.baseline_margin() + parts.iter().sum::<f64>();
        assert!((total - model.margin(r)).abs() < 1e-9, "{total} against {}", model.margin(r));
        // Walked in lockstep, they are the one-tree-at-a-time attributions.
        let mut one_by_one = [0.0; 3];
        for &s in &model.starts {
            tree::attribute(&model.nodes[s..], r, &mut |f, c| one_by_one[f] += c);
        }
        for (a, b) in parts.iter().zip(one_by_one) {
            assert!((a - b).abs() < 1e-12, "{parts:?} against {one_by_one:?}");
        }
        // Both in one walk: the same attributions, the very same score.
        let mut again = [0.0; 3];
        let score = model.explain(r, &mut again);
        assert_eq!((score.to_bits(), again), (model.score_one(r).to_bits(), parts));
    }
    assert!(model.explain(&[0.1], &mut [0.0; 3]).is_nan(), "a short row");
    // The inputs that decide carry the weight: x2 (missing) for this row.
    let mut parts = [0.0; 3];
    model.contributions(&[0.1, 0.9, f64::NAN], &mut parts);
    assert!(parts[2] > parts[0].abs() && parts[2] > parts[1].abs(), "{parts:?}");
}

#[test]
fn a_model_round_trips_and_a_damaged_one_is_refused() {
    let (x, y) = data(2000, 7);
    let model = fit(GbdtParams::new().n_trees(20), x.clone(), y);
    let text = serde_json::to_string(&model).unwrap();
    let back: GradientBoostedTrees = serde_json::from_str(&text).unwrap();
    for row in x.rows().into_iter().take(100) {
        let r = row.as_slice().unwrap();
        assert_eq!(back.score_one(r).to_bits(), model.score_one(r).to_bits());
    }
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["trees"][0]["right"][0] = serde_json::json!(0);
    assert!(serde_json::from_value::<GradientBoostedTrees>(v).is_err(), "a right child before its split");
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["trees"][1]["feature"][0] = serde_json::json!(7);
    let err = serde_json::from_value::<GradientBoostedTrees>(v).unwrap_err().to_string();
    assert!(err.contains("tree 1: node 0"), "{err}");
}

#[test]
fn one_class_and_too_little_data_are_refused() {
    let x = Array2::from_shape_fn((50, 2), |(i, j)| (i + j) as f64);
    assert!(matches!(
        GbdtParams::new().fit(&Dataset::new(x.clone(), Array1::from_elem(50, false))),
        Err(GbdtError::OneClass)
    ));
    let one = Array2::zeros((1, 2));
    assert!(matches!(
        GbdtParams::new().fit(&Dataset::new(one, Array1::from_elem(1, true))),
        Err(GbdtError::TooFewRows(1))
    ));
}

#[test]
fn trees_walked_in_lockstep_reach_the_leaves_each_tree_reaches_alone() {
    // 61 trees: groups of eight and a part group; missing values both ways;
    // deep trees beside shallow ones.
    let (x, y) = data(4000, 8);
    let model = fit(GbdtParams::new().n_trees(61).max_leaves(40).early_stopping_rounds(0), x.clone(), y);
    assert_eq!(model.n_trees(), 61);
    let mut rows: Vec<Vec<f64>> = x.rows().into_iter().take(500).map(|r| r.to_vec()).collect();
    rows.push(vec![f64::NAN; 3]);
    rows.push(vec![f64::INFINITY, f64::NEG_INFINITY, 0.5]);
    for r in &rows {
        let mut alone = model.base_margin;
        for &s in &model.starts {
            alone += tree::leaf(&model.nodes[s..], r).value;
        }
        // The same sum in the same order: the same bits.
        assert_eq!(model.margin(r).to_bits(), alone.to_bits(), "{r:?}");
    }
}
