//! Vigil's model stage, beside the rules: turns an event's numeric inputs (its
//! amount and declared features) into a score in [0, 1].
//!
//! A model file is self-describing JSON: format version, algorithm, the input
//! names in order, the preprocessing (standardisation) applied in training, the
//! parameters, a summary of training, and a SHA-256 checksum over all of it.
//!
//! Two algorithms: `logistic_regression` (a supervised fraud probability, format
//! version 1) and `isolation_forest` (an unsupervised anomaly score, format
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

/// Standardisation applied to each input before the linear part.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scaler {
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
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
    /// Logistic regression: one weight per input, and the intercept.
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
        if body.scaler.mean.len() != n || body.scaler.std.len() != n {
            return Err(format!(
                "{n} inputs but {} means and {} deviations",
                body.scaler.mean.len(),
                body.scaler.std.len()
            ));
        }
        match (body.algorithm.as_str(), &body.forest) {
            (LOGISTIC, None) if body.weights.len() == n => {}
            (LOGISTIC, None) => return Err(format!("{n} inputs but {} weights", body.weights.len())),
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
        let mut z = self.body.intercept;
        for (i, x) in inputs.iter().enumerate().take(self.body.weights.len()) {
            // A missing input takes the training mean: it contributes nothing.
            if x.is_finite() {
                z += self.body.weights[i] * (x - s.mean[i]) / s.std[i];
            }
        }
        1.0 / (1.0 + (-z).exp())
    }

    fn version(&self) -> &str {
        &self.version
    }

    /// For a logistic regression, weight times standardised value: the log-odds
    /// each input adds (a missing input adds none). A forest says nothing.
    fn contributions(&self, inputs: &[f64], visit: &mut dyn FnMut(usize, f64)) {
        let s = &self.body.scaler;
        for (i, (w, x)) in self.body.weights.iter().zip(inputs).enumerate() {
            if x.is_finite() {
                visit(i, w * (x - s.mean[i]) / s.std[i]);
            }
        }
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
    if file.body.format != FORMAT || !(1..=FOREST_FORMAT_VERSION).contains(&file.body.format_version) {
        return Err(invalid(format!(
            "format {} v{} is not {FORMAT} v1 to v{FOREST_FORMAT_VERSION}",
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
            scaler: Scaler { mean: vec![50.0, 1.0], std: vec![25.0, 1.0] },
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
            scaler: Scaler { mean, std },
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
