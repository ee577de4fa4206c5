use linfa::traits::{Fit, Predict};
use linfa::Dataset;
use ndarray::{Array1, Array2};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::*;

/// 2,000 points around the origin and 20 far from it; the last 20 rows are
/// the anomalies.
fn data(seed: u64) -> Array2<f64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut x = Array2::zeros((2_020, 3));
    for i in 0..2_020 {
        let spread = if i < 2_000 { 1.0 } else { 8.0 };
        for j in 0..3 {
            let v: f64 = rng.random_range(-1.0..1.0) * spread;
            x[[i, j]] = if i >= 2_000 && v.abs() < 4.0 { v.signum() * 4.0 + v } else { v };
        }
    }
    x
}

fn fit(x: &Array2<f64>, seed: u64) -> IsolationForest {
    let ds = Dataset::new(x.clone(), Array1::<usize>::zeros(x.nrows()));
    IsolationForestParams::new().seed(seed).fit(&ds).unwrap()
}

#[test]
fn anomalies_score_above_ordinary_points() {
    let x = data(1);
    let forest = fit(&x, 7);
    let scores: Array1<f64> = forest.predict(&x);
    assert!(scores.iter().all(|s| *s > 0.0 && *s <= 1.0));
    let normal = scores.slice(ndarray::s![..2_000]).mean().unwrap();
    let odd = scores.slice(ndarray::s![2_000..]).mean().unwrap();
    assert!(normal < 0.5 && odd > 0.6, "normal {normal}, anomalies {odd}");
    // Ranked by score, the anomalies come first: AUC-ROC near 1.
    let mut pairs = 0usize;
    let mut right = 0usize;
    for a in 2_000..2_020 {
        for n in (0..2_000).step_by(7) {
            pairs += 1;
            right += usize::from(scores[a] > scores[n]);
        }
    }
    assert!(right as f64 / pairs as f64 > 0.97, "{right} of {pairs}");
}

#[test]
fn same_seed_same_forest_and_serde_keeps_scores() {
    let x = data(2);
    let (a, b) = (fit(&x, 3), fit(&x, 3));
    assert_eq!(a, b);
    assert_ne!(a, fit(&x, 4));
    let json = serde_json::to_string(&a).unwrap();
    let back: IsolationForest = serde_json::from_str(&json).unwrap();
    for i in [0, 500, 2_010] {
        let row: Vec<f64> = x.row(i).to_vec();
        assert_eq!(back.score_one(&row), a.score_one(&row));
        assert_eq!(a.score_one(&row), a.predict(&x.slice(ndarray::s![i..i + 1, ..]).to_owned())[0]);
    }
}

#[test]
fn missing_values_go_left_and_never_break_scoring() {
    let mut x = data(3);
    for i in (0..2_000).step_by(3) {
        x[[i, 1]] = f64::NAN;
    }
    let forest = fit(&x, 1);
    let s = forest.score_one(&[0.1, f64::NAN, -0.2]);
    assert!(s.is_finite() && s < 0.6, "{s}");
    let all_missing = forest.score_one(&[f64::NAN; 3]);
    assert!(all_missing.is_finite());
}

#[test]
fn bad_hyperparameters_and_data_are_refused() {
    let ds = Dataset::new(Array2::<f64>::zeros((10, 2)), Array1::<usize>::zeros(10));
    let e = IsolationForestParams::new().n_trees(0).fit(&ds).unwrap_err();
    assert!(matches!(e, IForestError::NoTrees), "{e}");
    let e = IsolationForestParams::new().sample_size(1).fit(&ds).unwrap_err();
    assert!(matches!(e, IForestError::SampleSize(1)), "{e}");
    let one = Dataset::new(Array2::<f64>::zeros((1, 2)), Array1::<usize>::zeros(1));
    assert!(matches!(IsolationForestParams::new().fit(&one).unwrap_err(), IForestError::TooFewRows(1)));
    // Constant data fits (every tree is one leaf) and scores every point alike.
    let forest = IsolationForestParams::new().fit(&ds).unwrap();
    assert_eq!(forest.score_one(&[0.0, 0.0]), forest.score_one(&[5.0, 5.0]));
}

#[test]
fn the_flat_layout_scores_exactly_as_walking_the_nodes() {
    let x = data(3);
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    // Shallow and deep trees, and uneven ones (few rows leave leaves above the bottom).
    for sample_size in [2, 3, 17, 256, 2_020] {
        let ds = Dataset::new(x.clone(), Array1::<usize>::zeros(x.nrows()));
        let forest = IsolationForestParams::new().sample_size(sample_size).n_trees(37).seed(5).fit(&ds).unwrap();
        assert!(forest.flat.is_some(), "sample size {sample_size}");
        for _ in 0..2_000 {
            let row: Vec<f64> =
                (0..3).map(|_| if rng.random_bool(0.1) { f64::NAN } else { rng.random_range(-9.0..9.0) }).collect();
            let flat = forest.flat.as_ref().unwrap().path_sum(&row, forest.trees.len());
            assert_eq!(flat.to_bits(), forest.walk_sum(&row).to_bits(), "sample size {sample_size}, row {row:?}");
        }
        // Rows of the training data land exactly on thresholds' neighbours too.
        for r in x.rows().into_iter().take(300) {
            let row = r.to_vec();
            let flat = forest.flat.as_ref().unwrap().path_sum(&row, forest.trees.len());
            assert_eq!(flat.to_bits(), forest.walk_sum(&row).to_bits());
        }
    }
}

#[test]
fn a_forest_whose_trees_do_not_link_up_is_refused() {
    let forest = fit(&data(1), 7);
    let good = serde_json::to_value(&forest).unwrap();
    let back: IsolationForest = serde_json::from_value(good.clone()).unwrap();
    assert_eq!(back, forest);
    assert_eq!(back.score_one(&[0.1, 0.2, 0.3]), forest.score_one(&[0.1, 0.2, 0.3]));

    let first_split = forest.trees[0].nodes.iter().position(|n| n.feature != LEAF).unwrap();
    let damage = |field: &str, value: serde_json::Value| {
        let mut v = good.clone();
        v["trees"][0]["nodes"][first_split][field] = value;
        serde_json::from_value::<IsolationForest>(v).unwrap_err().to_string()
    };
    // A loop back to the root, a link past the end, a feature the forest lacks.
    assert!(damage("right", 0.into()).contains("tree 0: node"), "{}", damage("right", 0.into()));
    assert!(damage("right", 1_000_000.into()).contains("links to nodes"));
    assert!(damage("feature", 3.into()).contains("splits on feature 3 of 3"));
    let mut v = good.clone();
    v["trees"] = serde_json::json!([]);
    assert!(serde_json::from_value::<IsolationForest>(v).unwrap_err().to_string().contains("at least one tree"));
}
