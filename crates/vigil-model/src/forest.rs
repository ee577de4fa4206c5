//! Isolation forest: an unsupervised anomaly score (labels only evaluate it),
//! grown by `vigil-iforest` over standardised inputs. Missing inputs stay
//! missing: the forest sends them left at every split, in training as in
//! serving.
//!
//! Its field in a model file: `forest`, the trees. Format version
//! [`FOREST_FORMAT_VERSION`].

use linfa::prelude::*;
use linfa::Dataset;
use ndarray::{Array1, Array2};
use serde::{Deserialize, Serialize};
use vigil_iforest::{IsolationForest, IsolationForestParams};

use crate::learner::{FitError, Fitted, Learner, Rows};
use crate::Scaler;

/// The algorithm's name in model files.
pub const NAME: &str = "isolation_forest";
/// The format version of files with an isolation forest.
pub const FOREST_FORMAT_VERSION: u32 = 2;

/// A grown forest over the scaled inputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Forest {
    pub forest: IsolationForest,
}

impl Learner for Forest {
    const NAME: &'static str = NAME;
    const FORMAT_VERSION: u32 = FOREST_FORMAT_VERSION;
    /// Trees, rows drawn to grow each, and the training seed.
    type Params = IsolationForestParams;

    fn check(&self, inputs: usize, scaler: &Scaler, _format_version: u32) -> Result<(), String> {
        if scaler.transforms() {
            return Err(crate::logistic::transforms_need_a_newer_format());
        }
        if self.forest.n_features() != inputs {
            return Err(format!("{inputs} inputs but a forest over {} features", self.forest.n_features()));
        }
        Ok(())
    }

    fn score(&self, scaler: &Scaler, inputs: &[f64]) -> f64 {
        // Scaled like training; a missing input stays missing (the forest
        // sends it left at every split, as in training).
        // On the stack for up to 64 inputs: this runs per event.
        let scaled = |i: usize| (inputs[i] - scaler.mean[i]) / scaler.std[i];
        let n = inputs.len().min(scaler.mean.len());
        let mut stack = [0.0f64; 64];
        match stack.get_mut(..n) {
            Some(x) => {
                x.iter_mut().enumerate().for_each(|(i, v)| *v = scaled(i));
                self.forest.score_one(x)
            }
            None => self.forest.score_one(&(0..n).map(scaled).collect::<Vec<_>>()),
        }
    }

    fn fit(params: &IsolationForestParams, data: &Rows<'_>) -> Result<Fitted<Forest>, FitError> {
        // Unsupervised: every training row once, labels unused.
        let (rows, n_inputs) = (data.rows, data.inputs);
        let Scaler { mean, std, .. } = Scaler::fit(rows, n_inputs, false);
        let mut x = Vec::with_capacity(rows.len() * n_inputs);
        for r in rows {
            x.extend(r.iter().enumerate().map(|(c, v)| (v - mean[c]) / std[c]));
        }
        let x = Array2::from_shape_vec((rows.len(), n_inputs), x).map_err(|e| FitError::Data(e.to_string()))?;
        let dataset = Dataset::new(x, Array1::<usize>::zeros(rows.len()));
        let started = std::time::Instant::now();
        (data.solving)();
        let forest = params.fit(&dataset).map_err(|e| FitError::Solver(e.to_string()))?;
        let checked = forest.params();
        let hyperparameters = serde_json::json!({
            "n_trees": checked.n_trees(),
            "sample_size": checked.sample_size(),
            "seed": checked.seed(),
        });
        Ok(Fitted {
            algorithm: Forest { forest },
            scaler: Scaler::standard(mean, std),
            format_version: FOREST_FORMAT_VERSION,
            library: "vigil-iforest (linfa 0.8 traits)",
            hyperparameters,
            fit_seconds: started.elapsed().as_secs_f64(),
        })
    }
}
