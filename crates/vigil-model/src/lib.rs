//! Vigil's model stage, beside the rules: turns an event's numeric inputs (its
//! amount and declared features) into a score in [0, 1].
//!
//! A model file is self-describing JSON: format version, algorithm, the input
//! names in order, the preprocessing (standardisation) applied in training, the
//! parameters, a summary of training, and a SHA-256 checksum over all of it.
//!
//! Two algorithms: `logistic_regression` (a supervised fraud probability, format
//! version 1, or 3 when its inputs are compressed and flagged when missing; see
//! [`Scaler`]) and `isolation_forest` (an unsupervised anomaly score, format
//! version 2, whose `forest` holds the trees).
//! [`load`] refuses a file that is corrupt, of an unknown format, or whose inputs
//! the pipeline cannot provide.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The format this build reads and writes.
pub const FORMAT: &str = "vigil-model";
pub const FORMAT_VERSION: u32 = 1;
/// The format version of files with an isolation forest.
pub const FOREST_FORMAT_VERSION: u32 = 2;
/// The format version of logistic regressions whose scaler compresses inputs
/// (`log`) or adds missing-value indicators; older builds refuse these files
/// rather than score them without the transforms.
pub const PREPROCESSED_FORMAT_VERSION: u32 = 3;
/// The newest format version this build reads.
pub const LATEST_FORMAT_VERSION: u32 = PREPROCESSED_FORMAT_VERSION;

pub use vigil_iforest::IsolationForest;

/// Algorithm names as model files write them.
pub const LOGISTIC: &str = "logistic_regression";
pub const ISOLATION_FOREST: &str = "isolation_forest";

/// Scores one event from its inputs.
pub trait Model: Send + Sync {
    /// Input names, in the order [`Model::score`] expects them.
    fn inputs(&self) -> &[String];
    /// Probability-like risk in [0, 1]. A `NaN` input means "missing".
    fn score(&self, inputs: &[f64]) -> f64;
    /// Identifies the trained artifact (name and checksum prefix).
    fn version(&self) -> &str;
    /// Calls `visit(input index, contribution)` for each input's part in the
    /// score, for the models that can say (no allocation: this runs per event).
    fn contributions(&self, _inputs: &[f64], _visit: &mut dyn FnMut(usize, f64)) {}
}

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read model {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("model {}: not a model file: {message}", path.display())]
    Malformed { path: PathBuf, message: String },
    #[error("model {}: checksum mismatch (file says {stated}, content hashes to {actual}); the file is corrupt or was edited", path.display())]
    Checksum { path: PathBuf, stated: String, actual: String },
    #[error("model {}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
}

/// The preprocessing training applied, which serving applies again.
///
/// The model's columns are the inputs, in order, then one missing-value
/// indicator (1 when the input is missing, else 0) per input listed in
/// `missing_indicators`. Each input is first compressed with the signed
/// logarithm `sign(x) · ln(1 + |x|)` when `log` says so (counts and amounts are
/// heavy-tailed), then every column is standardised with `mean` and `std`; a
/// missing input's own column takes its mean (it adds nothing), its indicator
/// says it was missing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scaler {
    /// Per column.
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
    /// Per input, whether it is compressed first; empty when none is.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub log: Vec<bool>,
    /// Inputs (ascending indices) that have an indicator column.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing_indicators: Vec<usize>,
}

/// `sign(x) · ln(1 + |x|)`: the logarithm's compression, defined for every
/// number and equal to `ln(1 + x)` for the non-negative ones.
pub fn signed_log(x: f64) -> f64 {
    x.signum() * x.abs().ln_1p()
}

impl Scaler {
    /// Plain standardisation of `mean.len()` inputs.
    pub fn standard(mean: Vec<f64>, std: Vec<f64>) -> Scaler {
        Scaler { mean, std, log: Vec::new(), missing_indicators: Vec::new() }
    }

    /// Fits the preprocessing on training rows of `n` inputs (`NaN` is
    /// missing). With `compress`, inputs that are never negative are
    /// compressed and inputs that are ever missing get an indicator; without,
    /// inputs are only standardised. Deviations are over present values; a
    /// constant column keeps a deviation of 1.
    pub fn fit(rows: &[Vec<f64>], n: usize, compress: bool) -> Scaler {
        let present = |c: usize| rows.iter().map(move |r| r[c]).filter(|v| v.is_finite());
        let log: Vec<bool> = if compress {
            (0..n).map(|c| present(c).next().is_some() && present(c).all(|v| v >= 0.0)).collect()
        } else {
            Vec::new()
        };
        let log = if log.iter().any(|l| *l) { log } else { Vec::new() };
        let missing_indicators: Vec<usize> =
            if compress { (0..n).filter(|&c| rows.iter().any(|r| !r[c].is_finite())).collect() } else { Vec::new() };
        let mut scaler = Scaler { mean: Vec::new(), std: Vec::new(), log, missing_indicators };
        let deviation = |var: f64| if var.sqrt() > 1e-9 { var.sqrt() } else { 1.0 };
        for c in 0..n {
            let vals: Vec<f64> = present(c).map(|v| scaler.transform(c, v)).collect();
            let m = if vals.is_empty() { 0.0 } else { vals.iter().sum::<f64>() / vals.len() as f64 };
            let var = if vals.is_empty() {
                0.0
            } else {
                vals.iter().map(|v| (v - m).powi(2)).sum::<f64>() / vals.len() as f64
            };
            scaler.mean.push(m);
            scaler.std.push(deviation(var));
        }
        for k in 0..scaler.missing_indicators.len() {
            let c = scaler.missing_indicators[k];
            let p = rows.iter().filter(|r| !r[c].is_finite()).count() as f64 / rows.len().max(1) as f64;
            scaler.mean.push(p);
            scaler.std.push(deviation(p * (1.0 - p)));
        }
        scaler
    }

    /// The model's standardised columns for one row of `n` inputs, into `out`
    /// (cleared first): what training fits and serving scores.
    pub fn columns_of(&self, inputs: &[f64], n: usize, out: &mut Vec<f64>) {
        out.clear();
        out.resize(self.columns(n), 0.0);
        self.each(inputs, n, |i, own, flag| {
            out[i] = own;
            if let Some((c, v)) = flag {
                out[c] = v;
            }
        });
    }

    /// Whether inputs are transformed beyond standardisation.
    pub fn transforms(&self) -> bool {
        !self.log.is_empty() || !self.missing_indicators.is_empty()
    }

    /// Columns the model sees: the inputs, then the indicators.
    pub fn columns(&self, inputs: usize) -> usize {
        inputs + self.missing_indicators.len()
    }

    /// Input `i`'s value before standardisation (compressed when `log` says).
    pub fn transform(&self, i: usize, x: f64) -> f64 {
        if self.log.get(i).copied().unwrap_or(false) {
            signed_log(x)
        } else {
            x
        }
    }

    /// Calls `visit(input, its own column's standardised value, its indicator
    /// column and that column's standardised value)` for every input, in
    /// order. A missing input's own value is 0 (it takes the mean). No
    /// allocation: this runs per event.
    fn each(&self, inputs: &[f64], n: usize, mut visit: impl FnMut(usize, f64, Option<(usize, f64)>)) {
        let mut next = self.missing_indicators.iter().enumerate().peekable();
        for i in 0..n {
            let x = inputs.get(i).copied().unwrap_or(f64::NAN);
            let present = x.is_finite();
            let own = if present { (self.transform(i, x) - self.mean[i]) / self.std[i] } else { 0.0 };
            let flag = match next.peek() {
                Some(&(k, &j)) if j == i => {
                    next.next();
                    let c = n + k;
                    Some((c, (if present { 0.0 } else { 1.0 } - self.mean[c]) / self.std[c]))
                }
                _ => None,
            };
            visit(i, own, flag);
        }
    }

    /// Checks the shape against `n` inputs.
    fn check(&self, n: usize) -> Result<(), String> {
        let columns = self.columns(n);
        if self.mean.len() != columns || self.std.len() != columns {
            return Err(format!(
                "{n} inputs and {} indicators but {} means and {} deviations",
                self.missing_indicators.len(),
                self.mean.len(),
                self.std.len()
            ));
        }
        if !self.log.is_empty() && self.log.len() != n {
            return Err(format!("{n} inputs but {} `log` flags", self.log.len()));
        }
        if self.missing_indicators.windows(2).any(|w| w[0] >= w[1]) || self.missing_indicators.iter().any(|&i| i >= n) {
            return Err(format!("missing_indicators must be ascending input indices below {n}"));
        }
        Ok(())
    }
}

/// The content of a model file, less its checksum.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelBody {
    pub format: String,
    pub format_version: u32,
    pub name: String,
    pub algorithm: String,
    pub inputs: Vec<String>,
    pub scaler: Scaler,
    /// Logistic regression: one weight per column (see [`Scaler`]), and the intercept.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub weights: Vec<f64>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub intercept: f64,
    /// Isolation forest: the trees, over the scaled inputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forest: Option<IsolationForest>,
    /// Free-form training summary (data range, metrics, hyperparameters).
    #[serde(default)]
    pub training: serde_json::Value,
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelFile {
    #[serde(flatten)]
    body: ModelBody,
    checksum: String,
}

fn checksum(body: &ModelBody) -> String {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// A trained model over standardised inputs: a logistic regression or an
/// isolation forest, as its file says.
#[derive(Debug, Clone)]
pub struct TrainedModel {
    body: ModelBody,
    version: String,
}

impl TrainedModel {
    pub fn new(body: ModelBody) -> Result<TrainedModel, String> {
        let n = body.inputs.len();
        if n == 0 {
            return Err("the model has no inputs".into());
        }
        body.scaler.check(n)?;
        let columns = body.scaler.columns(n);
        if body.scaler.transforms() && (body.algorithm != LOGISTIC || body.format_version < PREPROCESSED_FORMAT_VERSION)
        {
            return Err(format!(
                "input compression and missing-value indicators need a {LOGISTIC} of format version {PREPROCESSED_FORMAT_VERSION}"
            ));
        }
        match (body.algorithm.as_str(), &body.forest) {
            (LOGISTIC, None) if body.weights.len() == columns => {}
            (LOGISTIC, None) => return Err(format!("{columns} columns but {} weights", body.weights.len())),
            (ISOLATION_FOREST, Some(f)) if f.n_features() == n && body.weights.is_empty() => {}
            (ISOLATION_FOREST, Some(f)) => {
                return Err(format!("{n} inputs but a forest over {} features (and no weights)", f.n_features()))
            }
            (ISOLATION_FOREST, None) => return Err("an isolation forest without its `forest`".into()),
            (LOGISTIC, Some(_)) => return Err("a logistic regression with a `forest`".into()),
            (other, _) => return Err(format!("unknown algorithm `{other}` (known: {LOGISTIC}, {ISOLATION_FOREST})")),
        }
        let finite = body.weights.iter().chain(&body.scaler.mean).chain(&body.scaler.std).all(|x| x.is_finite());
        if !finite || !body.intercept.is_finite() {
            return Err("parameters must be finite numbers".into());
        }
        if body.scaler.std.iter().any(|s| *s <= 0.0) {
            return Err("scaler deviations must be positive".into());
        }
        let sum = checksum(&body);
        let version = format!("{}@{}", body.name, &sum[..12]);
        Ok(TrainedModel { body, version })
    }

    pub fn body(&self) -> &ModelBody {
        &self.body
    }

    /// Serialises with its checksum, as [`load`] reads it.
    pub fn to_file_json(&self) -> String {
        let file = ModelFile { body: self.body.clone(), checksum: checksum(&self.body) };
        serde_json::to_string_pretty(&file).unwrap_or_default()
    }
}

impl Model for TrainedModel {
    fn inputs(&self) -> &[String] {
        &self.body.inputs
    }

    fn score(&self, inputs: &[f64]) -> f64 {
        let s = &self.body.scaler;
        if let Some(forest) = &self.body.forest {
            // Scaled like training; a missing input stays missing (the forest
            // sends it left at every split, as in training).
            // On the stack for up to 64 inputs: this runs per event.
            let scaled = |i: usize| (inputs[i] - s.mean[i]) / s.std[i];
            let n = inputs.len().min(s.mean.len());
            let mut stack = [0.0f64; 64];
            return match stack.get_mut(..n) {
                Some(x) => {
                    x.iter_mut().enumerate().for_each(|(i, v)| *v = scaled(i));
                    forest.score_one(x)
                }
                None => forest.score_one(&(0..n).map(scaled).collect::<Vec<_>>()),
            };
        }
        let (w, n) = (&self.body.weights, self.body.inputs.len());
        let mut z = self.body.intercept;
        // A missing input's own column takes the training mean: it adds nothing.
        s.each(inputs, n, |i, own, flag| {
            z += w[i] * own + flag.map_or(0.0, |(c, v)| w[c] * v);
        });
        1.0 / (1.0 + (-z).exp())
    }

    fn version(&self) -> &str {
        &self.version
    }

    /// For a logistic regression, weight times standardised value: the log-odds
    /// each input adds against the training average, its missing-value
    /// indicator included (so a missing input may add some). A forest says
    /// nothing.
    fn contributions(&self, inputs: &[f64], visit: &mut dyn FnMut(usize, f64)) {
        let (s, w, n) = (&self.body.scaler, &self.body.weights, self.body.inputs.len());
        if w.is_empty() {
            return;
        }
        s.each(inputs, n, |i, own, flag| {
            let c = w[i] * own + flag.map_or(0.0, |(c, v)| w[c] * v);
            if c != 0.0 {
                visit(i, c);
            }
        });
    }
}

/// Loads and checks a model file. `available` lists the inputs the pipeline can
/// provide; a model that needs anything else is refused.
pub fn load(path: &Path, available: &[&str]) -> Result<TrainedModel, ModelError> {
    load_checked(path, Some(available))
}

/// Loads and checks a model file whatever inputs it takes (for models trained
/// on a table of numeric columns rather than on a pipeline's features).
pub fn load_any(path: &Path) -> Result<TrainedModel, ModelError> {
    load_checked(path, None)
}

fn load_checked(path: &Path, available: Option<&[&str]>) -> Result<TrainedModel, ModelError> {
    let text = std::fs::read(path).map_err(|source| ModelError::Io { path: path.to_path_buf(), source })?;
    let file: ModelFile = serde_json::from_slice(&text)
        .map_err(|e| ModelError::Malformed { path: path.to_path_buf(), message: e.to_string() })?;
    let actual = checksum(&file.body);
    if actual != file.checksum {
        return Err(ModelError::Checksum { path: path.to_path_buf(), stated: file.checksum, actual });
    }
    let invalid = |message: String| ModelError::Invalid { path: path.to_path_buf(), message };
    if file.body.format != FORMAT || !(1..=LATEST_FORMAT_VERSION).contains(&file.body.format_version) {
        return Err(invalid(format!(
            "format {} v{} is not {FORMAT} v1 to v{LATEST_FORMAT_VERSION}",
            file.body.format, file.body.format_version
        )));
    }
    let missing: Vec<&str> = match available {
        Some(available) => file.body.inputs.iter().map(String::as_str).filter(|i| !available.contains(i)).collect(),
        None => Vec::new(),
    };
    if !missing.is_empty() {
        return Err(invalid(format!("needs inputs the pipeline does not declare: {}", missing.join(", "))));
    }
    TrainedModel::new(file.body).map_err(invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body() -> ModelBody {
        ModelBody {
            format: FORMAT.into(),
            format_version: FORMAT_VERSION,
            name: "test".into(),
            algorithm: "logistic_regression".into(),
            inputs: vec!["amount".into(), "card_count_10m".into()],
            scaler: Scaler::standard(vec![50.0, 1.0], vec![25.0, 1.0]),
            weights: vec![1.0, 2.0],
            intercept: -3.0,
            forest: None,
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
        b.weights = vec![0.1 + 0.2, 1.277_870_411_015_307e-7];
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
        b.weights.pop();
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
        b.weights = vec![1.5, -0.5, 2.0];
        b.intercept = -1.0;
        let m = TrainedModel::new(b.clone()).unwrap();
        for inputs in [[9.0, f64::NAN], [0.0, 1.0], [f64::NAN, -2.0], [5000.0, 3.0]] {
            scaler.columns_of(&inputs, 2, &mut cols);
            let z = -1.0 + cols.iter().zip(&b.weights).map(|(x, w)| x * w).sum::<f64>();
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
        short.weights.pop();
        assert!(TrainedModel::new(short).unwrap_err().contains("3 columns but 2 weights"));
        // Without compression, fitting is plain standardisation.
        assert!(!Scaler::fit(&rows, 2, false).transforms());
    }
}

#[cfg(test)]
mod forest_tests {
    use linfa::traits::Fit;
    use linfa::Dataset;
    use ndarray::{Array1, Array2};
    use vigil_iforest::IsolationForestParams;

    use super::*;

    #[test]
    fn an_isolation_forest_file_round_trips_and_scores_outliers_higher() {
        // Inputs in their own units; the file's scaler brings them to training scale.
        let rows: Vec<f64> = (0..400).flat_map(|i| [50.0 + (i % 20) as f64, (i % 3) as f64]).collect();
        let mean = vec![59.5, 1.0];
        let std = vec![5.8, 0.8];
        let scaled = Array2::from_shape_fn((400, 2), |(r, c)| (rows[r * 2 + c] - mean[c]) / std[c]);
        let forest =
            IsolationForestParams::new().seed(1).fit(&Dataset::new(scaled, Array1::<usize>::zeros(400))).unwrap();
        let body = ModelBody {
            format: FORMAT.into(),
            format_version: FOREST_FORMAT_VERSION,
            name: "anomaly".into(),
            algorithm: ISOLATION_FOREST.into(),
            inputs: vec!["amount".into(), "card_count_10m".into()],
            scaler: Scaler::standard(mean, std),
            weights: Vec::new(),
            intercept: 0.0,
            forest: Some(forest),
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
}
