//! Logistic regression: a supervised fraud probability, fitted with
//! linfa-logistic over standardised inputs (never-negative ones compressed
//! with a logarithm and missing ones flagged, unless trained on plain inputs;
//! see [`Scaler`]).
//!
//! Its fields in a model file: `weights`, one per scaler column, and
//! `intercept`. Files whose scaler only standardises are format version
//! [`PLAIN_FORMAT_VERSION`]; with compression or indicators,
//! [`PREPROCESSED_FORMAT_VERSION`], which older builds refuse rather than score
//! without the transforms.

use linfa::prelude::*;
use linfa::Dataset;
use linfa_logistic::LogisticRegression;
use ndarray::{Array1, Array2};
use serde::{Deserialize, Serialize};

use crate::learner::{FitError, Fitted, Learner, Rows};
use crate::Scaler;

/// The algorithm's name in model files.
pub const NAME: &str = "logistic_regression";
/// The format version of logistic regressions whose inputs are only standardised.
pub const PLAIN_FORMAT_VERSION: u32 = 1;
/// The format version of logistic regressions whose scaler compresses inputs
/// (`log`) or adds missing-value indicators.
pub const PREPROCESSED_FORMAT_VERSION: u32 = 3;

/// A fitted logistic regression over the scaler's columns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Logistic {
    /// One weight per column (see [`Scaler`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub weights: Vec<f64>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub intercept: f64,
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

/// Training parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct LogisticParams {
    /// L2 regularisation.
    pub alpha: f64,
    /// The solver (L-BFGS) stops after this many iterations, or once the
    /// gradient's norm is below `gradient_tolerance`.
    pub max_iterations: u64,
    pub gradient_tolerance: f64,
    /// Frauds are replicated in the training set up to about this share (0
    /// or less than the data's own share: not at all). Replicating a row k
    /// times is weighting it by k in the likelihood: linfa-logistic 0.8's
    /// fit reads no sample weights, so weights are given this way.
    pub fraud_share_target: f64,
    /// Only standardise the inputs, without compressing heavy-tailed ones or
    /// adding missing-value indicators.
    pub plain_inputs: bool,
}

impl Default for LogisticParams {
    fn default() -> Self {
        LogisticParams {
            alpha: 1.0,
            max_iterations: 200,
            gradient_tolerance: 1e-4,
            fraud_share_target: 0.2,
            plain_inputs: false,
        }
    }
}

impl Learner for Logistic {
    const NAME: &'static str = NAME;
    const FORMAT_VERSION: u32 = PREPROCESSED_FORMAT_VERSION;
    type Params = LogisticParams;

    fn check(&self, inputs: usize, scaler: &Scaler, format_version: u32) -> Result<(), String> {
        if scaler.transforms() && format_version < PREPROCESSED_FORMAT_VERSION {
            return Err(transforms_need_a_newer_format());
        }
        let columns = scaler.columns(inputs);
        if self.weights.len() != columns {
            return Err(format!("{columns} columns but {} weights", self.weights.len()));
        }
        if !(self.weights.iter().all(|w| w.is_finite()) && self.intercept.is_finite()) {
            return Err("parameters must be finite numbers".into());
        }
        Ok(())
    }

    fn score(&self, scaler: &Scaler, inputs: &[f64]) -> f64 {
        let (w, n) = (&self.weights, scaler.inputs());
        let mut z = self.intercept;
        // A missing input's own column takes the training mean: it adds nothing.
        scaler.each(inputs, n, |i, own, flag| {
            z += w[i] * own + flag.map_or(0.0, |(c, v)| w[c] * v);
        });
        1.0 / (1.0 + (-z).exp())
    }

    /// Weight times standardised value: the log-odds each input adds against
    /// the training average, its missing-value indicator included (so a
    /// missing input may add some).
    fn contributions(&self, scaler: &Scaler, inputs: &[f64], visit: &mut dyn FnMut(usize, f64)) {
        let (w, n) = (&self.weights, scaler.inputs());
        scaler.each(inputs, n, |i, own, flag| {
            let c = w[i] * own + flag.map_or(0.0, |(c, v)| w[c] * v);
            if c != 0.0 {
                visit(i, c);
            }
        });
    }

    /// Every column at its training mean standardises to 0, indicators
    /// included: the score is the intercept's.
    fn baseline(&self, _scaler: &Scaler) -> Option<f64> {
        Some(1.0 / (1.0 + (-self.intercept).exp()))
    }

    fn fit(params: &LogisticParams, data: &Rows<'_>) -> Result<Fitted<Logistic>, FitError> {
        let (rows, labels, n_inputs) = (data.rows, data.labels, data.inputs);
        let n_train = rows.len();
        // Class imbalance: replicate frauds up to about the target share.
        let train_frauds = labels.iter().filter(|l| **l).count();
        if train_frauds == 0 {
            return Err(FitError::Data("no fraud in the training period".into()));
        }
        let genuine = n_train - train_frauds;
        let target = params.fraud_share_target.clamp(0.0, 0.5);
        let copies = ((target / (1.0 - target)) * genuine as f64 / train_frauds as f64).round().max(1.0) as usize;
        // Standardised with training statistics (missing values take the
        // mean), heavy-tailed inputs compressed and missing ones flagged
        // unless `plain_inputs` (Scaler).
        let scaler = Scaler::fit(rows, n_inputs, !params.plain_inputs);
        let columns = scaler.columns(n_inputs);
        // Column-major, filled in place: linfa's solver multiplies by the
        // matrix and its transpose at every step, and without BLAS that
        // runs about 2.5 times faster over contiguous columns (measured).
        let n_rows = n_train + train_frauds * (copies - 1);
        let mut x = Array2::<f64>::zeros(ndarray::ShapeBuilder::f((n_rows, columns)));
        let (mut y, mut row, mut r) = (Vec::with_capacity(n_rows), Vec::new(), 0);
        for (values, &label) in rows.iter().zip(labels) {
            scaler.columns_of(values, n_inputs, &mut row);
            for _ in 0..if label { copies } else { 1 } {
                x.row_mut(r).assign(&ndarray::ArrayView1::from(&row));
                y.push(label);
                r += 1;
            }
        }
        let dataset = Dataset::new(x, Array1::from(y));
        let started = std::time::Instant::now();
        (data.solving)();
        let fitted = LogisticRegression::default()
            .alpha(params.alpha)
            .max_iterations(params.max_iterations)
            .gradient_tolerance(params.gradient_tolerance)
            .fit(&dataset)
            .map_err(|e| FitError::Solver(e.to_string()))?;
        // linfa models the probability of its "positive" class (the larger
        // one); Vigil's score is the probability of fraud.
        let sign = if fitted.labels().pos.class { 1.0 } else { -1.0 };
        let preprocessing = if scaler.transforms() {
            "signed log of non-negative inputs, missing-value indicators, standardised"
        } else {
            "standardised"
        };
        let algorithm = Logistic {
            weights: fitted.params().iter().map(|w| w * sign).collect(),
            intercept: fitted.intercept() * sign,
        };
        let hyperparameters = serde_json::json!({
            "alpha": params.alpha,
            "max_iterations": params.max_iterations,
            "gradient_tolerance": params.gradient_tolerance,
            "fraud_copies": copies,
            "preprocessing": preprocessing,
        });
        let format_version = if scaler.transforms() { PREPROCESSED_FORMAT_VERSION } else { PLAIN_FORMAT_VERSION };
        Ok(Fitted {
            algorithm,
            scaler,
            format_version,
            library: "linfa-logistic 0.8",
            hyperparameters,
            fit_seconds: started.elapsed().as_secs_f64(),
        })
    }
}

/// Why a scaler with transforms is refused outside a logistic regression of
/// the format that knows them.
pub(crate) fn transforms_need_a_newer_format() -> String {
    format!(
        "input compression and missing-value indicators need a {NAME} of format version {PREPROCESSED_FORMAT_VERSION}"
    )
}
