//! Gradient-boosted trees (`vigil-gbdt`): a supervised fraud probability from
//! boosted regression trees on the raw inputs (trees need no scaling: the
//! file's scaler is the identity), explained by path attributions against the
//! model's baseline.
//!
//! Its field in a model file: `model`, the trees. Format version
//! [`GBDT_FORMAT_VERSION`].

use linfa::prelude::*;
use linfa::Dataset;
use ndarray::{Array1, Array2};
use serde::{Deserialize, Serialize};
use vigil_gbdt::{GbdtParams, GradientBoostedTrees};

use crate::learner::{FitError, Fitted, Learner, Rows};
use crate::Scaler;

/// The algorithm's name in model files.
pub const NAME: &str = "gradient_boosted_trees";
/// The format version of files with gradient-boosted trees.
pub const GBDT_FORMAT_VERSION: u32 = 4;
/// Inputs whose attributions are gathered on the stack (this runs per event).
const STACK_INPUTS: usize = 64;

/// Fitted trees over the raw inputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gbdt {
    pub model: GradientBoostedTrees,
}

impl Learner for Gbdt {
    const NAME: &'static str = NAME;
    const FORMAT_VERSION: u32 = GBDT_FORMAT_VERSION;
    /// Trees, learning rate, leaves, regularisation, subsampling, class
    /// weight, early stopping and the training seed.
    type Params = GbdtParams;

    fn check(&self, inputs: usize, scaler: &Scaler, _format_version: u32) -> Result<(), String> {
        let identity = scaler.mean.iter().all(|m| *m == 0.0) && scaler.std.iter().all(|s| *s == 1.0);
        if scaler.transforms() || !identity {
            return Err("gradient-boosted trees read raw inputs: the scaler must be the identity".into());
        }
        if self.model.n_features() != inputs {
            return Err(format!("{inputs} inputs but trees over {} features", self.model.n_features()));
        }
        Ok(())
    }

    fn score(&self, _scaler: &Scaler, inputs: &[f64]) -> f64 {
        self.model.score_one(inputs)
    }

    /// Path attributions, gathered per input (an input split on in many
    /// trees is one part), in log-odds against [`Learner::baseline`].
    fn contributions(&self, scaler: &Scaler, inputs: &[f64], visit: &mut dyn FnMut(usize, f64)) {
        self.explain(scaler, inputs, visit);
    }

    /// The attributions and the score in one walk of the trees.
    fn explain(&self, _scaler: &Scaler, inputs: &[f64], visit: &mut dyn FnMut(usize, f64)) -> f64 {
        let n = self.model.n_features();
        let mut stack = [0.0f64; STACK_INPUTS];
        let mut heap = Vec::new();
        let parts: &mut [f64] = if n <= STACK_INPUTS {
            &mut stack[..n]
        } else {
            heap.resize(n, 0.0);
            &mut heap
        };
        let score = self.model.explain(inputs, parts);
        for (i, c) in parts.iter().enumerate() {
            if *c != 0.0 {
                visit(i, *c);
            }
        }
        score
    }

    fn baseline(&self, _scaler: &Scaler) -> Option<f64> {
        Some(1.0 / (1.0 + (-self.model.baseline_margin()).exp()))
    }

    fn fit(params: &GbdtParams, data: &Rows<'_>) -> Result<Fitted<Gbdt>, FitError> {
        let (rows, n) = (data.rows, data.inputs);
        let x = Array2::from_shape_fn((rows.len(), n), |(r, c)| rows[r].get(c).copied().unwrap_or(f64::NAN));
        let dataset = Dataset::new(x, Array1::from(data.labels.to_vec()));
        let checked = params.check_ref().map_err(|e| FitError::Data(e.to_string()))?;
        let started = std::time::Instant::now();
        (data.solving)();
        let model = checked.fit(&dataset).map_err(|e| match e {
            vigil_gbdt::GbdtError::OneClass => FitError::Data("no fraud in the training period".into()),
            e => FitError::Solver(e.to_string()),
        })?;
        let p = model.params();
        let hyperparameters = serde_json::json!({
            "n_trees": p.n_trees(),
            "trees_kept": model.n_trees(),
            "rounds": model.rounds(),
            "learning_rate": p.learning_rate(),
            "max_leaves": p.max_leaves(),
            "max_depth": p.max_depth(),
            "min_child_weight": p.min_child_weight(),
            "min_data_in_leaf": p.min_data_in_leaf(),
            "lambda": p.lambda(),
            "row_subsample": p.row_subsample(),
            "col_subsample": p.col_subsample(),
            "max_bins": p.max_bins(),
            "scale_pos_weight": p.scale_pos_weight(),
            "validation_share": p.validation_share(),
            "early_stopping_rounds": p.early_stopping_rounds(),
            "seed": p.seed(),
        });
        Ok(Fitted {
            algorithm: Gbdt { model },
            scaler: Scaler::standard(vec![0.0; n], vec![1.0; n]),
            format_version: GBDT_FORMAT_VERSION,
            library: "vigil-gbdt (linfa 0.8 traits)",
            hyperparameters,
            fit_seconds: started.elapsed().as_secs_f64(),
        })
    }
}
