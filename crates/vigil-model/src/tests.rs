use std::path::{Path, PathBuf};

use linfa::traits::Fit;
use linfa::Dataset;
use ndarray::{Array1, Array2};
use vigil_iforest::IsolationForestParams;

use super::*;
use crate::forest::Forest;
use crate::logistic::Logistic;

/// The logistic regression of a body.
fn logistic(body: &mut ModelBody) -> &mut Logistic {
    match &mut body.algorithm {
        Algorithm::Logistic(l) => l,
        other => panic!("not a logistic regression: {other:?}"),
    }
}
fn body() -> ModelBody {
    ModelBody {
        format: FORMAT.into(),
        format_version: FORMAT_VERSION,
        name: "test".into(),
        inputs: vec!["amount".into(), "card_count_10m".into()],
        scaler: Scaler::standard(vec![50.0, 1.0], vec![25.0, 1.0]),
        algorithm: Algorithm::Logistic(Logistic { weights: vec![1.0, 2.0], intercept: -3.0 }),
        training: serde_json::Value::Null,
    }
}

fn write(dir: &Path, text: &str) -> PathBuf {
    // Tests run in parallel: every file gets a name of its own.
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let p = dir.join(format!("vigil-model-test-{}-{n}.json", std::process::id()));
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn scores_and_round_trips() {
    let m = TrainedModel::new(body()).unwrap();
    let dir = std::env::temp_dir();
    let p = write(&dir, &m.to_file_json());
    let loaded = load(&p, &["amount", "card_count_10m"]).unwrap();
    assert_eq!(loaded.version(), m.version());
    let at_mean = loaded.score(&[50.0, 1.0]);
    assert!((at_mean - 1.0 / (1.0 + 3f64.exp())).abs() < 1e-12);
    assert!(loaded.score(&[500.0, 6.0]) > 0.99);
    assert_eq!(loaded.score(&[f64::NAN, 1.0]), at_mean);
    // Contributions are the log-odds each input adds: they and the
    // intercept give back the score.
    let mut c = Vec::new();
    loaded.contributions(&[100.0, f64::NAN], &mut |i, v| c.push((i, v)));
    assert_eq!(c, vec![(0, 2.0)]);
    let z: f64 = -3.0 + c.iter().map(|(_, v)| v).sum::<f64>();
    assert!((loaded.score(&[100.0, f64::NAN]) - 1.0 / (1.0 + (-z).exp())).abs() < 1e-12);
}

#[test]
fn awkward_floats_survive_the_checksum() {
    let mut b = body();
    logistic(&mut b).weights = vec![0.1 + 0.2, 1.277_870_411_015_307e-7];
    b.scaler.mean = vec![62.349_895_439_443_09, 1.0 / 3.0];
    b.training = serde_json::json!({"auc": 0.994_050_369_663_224_7});
    let m = TrainedModel::new(b).unwrap();
    let p = write(&std::env::temp_dir(), &m.to_file_json());
    assert_eq!(load(&p, &["amount", "card_count_10m"]).unwrap().version(), m.version());
}

#[test]
fn refuses_corrupt_or_mismatched_files() {
    let m = TrainedModel::new(body()).unwrap();
    let dir = std::env::temp_dir();
    let tampered = m.to_file_json().replace("\"intercept\": -3.0", "\"intercept\": 3.0");
    let p = write(&dir, &tampered);
    assert!(matches!(load(&p, &["amount", "card_count_10m"]), Err(ModelError::Checksum { .. })));
    let p = write(&dir, &m.to_file_json());
    let err = load(&p, &["amount"]).unwrap_err().to_string();
    assert!(err.contains("card_count_10m"), "{err}");
    let p = write(&dir, "{\"nope\": 1}");
    assert!(matches!(load(&p, &[]), Err(ModelError::Malformed { .. })));
    let mut b = body();
    logistic(&mut b).weights.pop();
    assert!(TrainedModel::new(b).is_err());
}

#[test]
fn compressed_inputs_and_missing_indicators_score_as_fitted() {
    // Input 0 never negative (compressed), input 1 sometimes missing (flagged).
    let rows = vec![vec![0.0, 1.0], vec![9.0, f64::NAN], vec![99.0, -2.0], vec![999.0, f64::NAN]];
    let scaler = Scaler::fit(&rows, 2, true);
    assert_eq!((scaler.log.clone(), scaler.missing_indicators.clone()), (vec![true, false], vec![1]));
    assert_eq!(scaler.columns(2), 3);
    // Column 0 over ln(1 + x) = 0, ln 10, ln 100, ln 1000; column 1 over the
    // present -2 and 1; the indicator over 0, 1, 0, 1.
    let ln10 = 10f64.ln();
    assert!((scaler.mean[0] - 1.5 * ln10).abs() < 1e-12 && (scaler.mean[1] + 0.5).abs() < 1e-12);
    assert_eq!((scaler.mean[2], scaler.std[2]), (0.5, 0.5));
    let mut cols = Vec::new();
    scaler.columns_of(&[9.0, f64::NAN], 2, &mut cols);
    assert!((cols[0] - (ln10 - 1.5 * ln10) / scaler.std[0]).abs() < 1e-12);
    assert_eq!(&cols[1..], &[0.0, 1.0]);
    // Negative values, never seen in training, are compressed symmetrically.
    assert_eq!(signed_log(-9.0), -signed_log(9.0));

    let mut b = body();
    b.format_version = PREPROCESSED_FORMAT_VERSION;
    b.scaler = scaler.clone();
    let weights = vec![1.5, -0.5, 2.0];
    *logistic(&mut b) = Logistic { weights: weights.clone(), intercept: -1.0 };
    let m = TrainedModel::new(b.clone()).unwrap();
    for inputs in [[9.0, f64::NAN], [0.0, 1.0], [f64::NAN, -2.0], [5000.0, 3.0]] {
        scaler.columns_of(&inputs, 2, &mut cols);
        let z = -1.0 + cols.iter().zip(&weights).map(|(x, w)| x * w).sum::<f64>();
        assert!((m.score(&inputs) - 1.0 / (1.0 + (-z).exp())).abs() < 1e-12, "{inputs:?}");
        // Contributions, the indicator's part given to its input, add up to the log-odds.
        let mut sum = -1.0;
        m.contributions(&inputs, &mut |i, v| {
            assert!(i < 2);
            sum += v;
        });
        assert!((sum - z).abs() < 1e-12, "{inputs:?}");
    }
    // Round trip through a file; an older format version with these transforms is refused.
    let p = write(&std::env::temp_dir(), &m.to_file_json());
    let loaded = load(&p, &["amount", "card_count_10m"]).unwrap();
    assert_eq!(loaded.score(&[9.0, f64::NAN]), m.score(&[9.0, f64::NAN]));
    let mut old = b.clone();
    old.format_version = FORMAT_VERSION;
    assert!(TrainedModel::new(old).unwrap_err().contains("format version 3"));
    let mut short = b;
    logistic(&mut short).weights.pop();
    assert!(TrainedModel::new(short).unwrap_err().contains("3 columns but 2 weights"));
    // Without compression, fitting is plain standardisation.
    assert!(!Scaler::fit(&rows, 2, false).transforms());
}
#[test]
fn an_isolation_forest_file_round_trips_and_scores_outliers_higher() {
    // Inputs in their own units; the file's scaler brings them to training scale.
    let rows: Vec<f64> = (0..400).flat_map(|i| [50.0 + (i % 20) as f64, (i % 3) as f64]).collect();
    let mean = vec![59.5, 1.0];
    let std = vec![5.8, 0.8];
    let scaled = Array2::from_shape_fn((400, 2), |(r, c)| (rows[r * 2 + c] - mean[c]) / std[c]);
    let forest = IsolationForestParams::new().seed(1).fit(&Dataset::new(scaled, Array1::<usize>::zeros(400))).unwrap();
    let body = ModelBody {
        format: FORMAT.into(),
        format_version: FOREST_FORMAT_VERSION,
        name: "anomaly".into(),
        inputs: vec!["amount".into(), "card_count_10m".into()],
        scaler: Scaler::standard(mean, std),
        algorithm: Algorithm::IsolationForest(Forest { forest }),
        training: serde_json::Value::Null,
    };
    let m = TrainedModel::new(body.clone()).unwrap();
    let p = std::env::temp_dir().join(format!("vigil-forest-{}.json", std::process::id()));
    std::fs::write(&p, m.to_file_json()).unwrap();
    let loaded = load(&p, &["amount", "card_count_10m"]).unwrap();
    std::fs::remove_file(&p).ok();
    assert_eq!(loaded.version(), m.version());
    let (usual, odd) = (loaded.score(&[60.0, 1.0]), loaded.score(&[900.0, 9.0]));
    assert!(odd > usual && odd > 0.6, "usual {usual}, odd {odd}");
    assert!(loaded.score(&[f64::NAN, 1.0]).is_finite());
    // A forest over the wrong number of inputs is refused.
    let mut b = body;
    b.inputs.push("extra".into());
    b.scaler.mean.push(0.0);
    b.scaler.std.push(1.0);
    assert!(TrainedModel::new(b).unwrap_err().contains("forest over 2"));
}

/// The shipped files and files written before algorithms became modules load
/// with their checksums, and write back to the very same bytes.
#[test]
fn shipped_and_earlier_files_read_and_write_back_unchanged() {
    let shipped = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models");
    let mut files = vec![shipped.join("card-fraud.json"), shipped.join("card-fraud-gbdt.json")];
    files.extend(
        std::env::var_os("VIGIL_MODEL_FILES")
            .map(|v| std::env::split_paths(&v).collect::<Vec<_>>())
            .unwrap_or_default(),
    );
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let model = load_any(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(model.to_file_json(), text.trim_end(), "{}", path.display());
    }
}

/// Boosted trees through the registry: fitted on rows, written, read back to
/// the same scores, explained against their baseline to the score's margin.
#[test]
fn gradient_boosted_trees_fit_round_trip_and_explain_their_scores() {
    // Fraud when input 0 is large or input 1 is missing.
    let rows: Vec<Vec<f64>> = (0..3000)
        .map(|i| {
            let a = f64::from((i * 37) % 100);
            let b = if i % 23 == 0 { f64::NAN } else { f64::from((i * 11) % 50) };
            vec![a, b]
        })
        .collect();
    let labels: Vec<bool> = rows.iter().map(|r| r[0] > 85.0 || r[1].is_nan()).collect();
    let params =
        TrainParams::GradientBoostedTrees(GbdtParams::new().n_trees(40).learning_rate(0.2).min_data_in_leaf(5));
    assert_eq!(params.algorithm(), GRADIENT_BOOSTED_TREES);
    let solving = || {};
    let fitted = params.fit(&Rows { rows: &rows, labels: &labels, inputs: 2, solving: &solving }).unwrap();
    assert_eq!(fitted.format_version, GBDT_FORMAT_VERSION);
    let body = ModelBody {
        format: FORMAT.into(),
        format_version: fitted.format_version,
        name: "trees".into(),
        inputs: vec!["amount".into(), "card_count_10m".into()],
        scaler: fitted.scaler,
        algorithm: fitted.algorithm,
        training: serde_json::Value::Null,
    };
    let m = TrainedModel::new(body.clone()).unwrap();
    let p = write(&std::env::temp_dir(), &m.to_file_json());
    let loaded = load(&p, &["amount", "card_count_10m"]).unwrap();
    assert_eq!(loaded.version(), m.version());
    let logit = |p: f64| (p / (1.0 - p)).ln();
    let baseline = loaded.baseline().unwrap();
    for r in rows.iter().step_by(97) {
        assert_eq!(loaded.score(r).to_bits(), m.score(r).to_bits());
        let mut sum = logit(baseline);
        loaded.contributions(r, &mut |i, c| {
            assert!(i < 2);
            sum += c;
        });
        assert!((sum - logit(loaded.score(r))).abs() < 1e-6, "{r:?}");
    }
    let (hi, missing, lo) = (loaded.score(&[95.0, 10.0]), loaded.score(&[10.0, f64::NAN]), loaded.score(&[10.0, 10.0]));
    assert!(hi > 0.9 && missing > 0.9 && lo < 0.1, "{hi} {missing} {lo}");
    // Trees read raw inputs: a scaler that would standardise them is refused.
    let mut scaled = body;
    scaled.scaler.std[0] = 2.0;
    assert!(TrainedModel::new(scaled).unwrap_err().contains("identity"));
}
