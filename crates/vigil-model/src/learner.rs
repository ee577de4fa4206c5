//! What a model algorithm is: a [`Learner`], its fitted parameters serialised
//! into the model file beside the shared header, scored per event, fitted on
//! training rows. Each algorithm is a module of its own; the registry
//! (`registry.rs`) lists them.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::Scaler;

/// Training rows: model inputs in the order of the model's `inputs` (`NaN`
/// is missing), with their fraud labels.
pub struct Rows<'a> {
    pub rows: &'a [Vec<f64>],
    pub labels: &'a [bool],
    /// Inputs per row.
    pub inputs: usize,
    /// Called once the solver starts, after any preparation (a progress
    /// spinner starts then).
    pub solving: &'a dyn Fn(),
}

/// What fitting gave: the fitted algorithm, the preprocessing it was fitted
/// over, and what the model file records of it.
#[derive(Debug)]
pub struct Fitted<A> {
    pub algorithm: A,
    pub scaler: Scaler,
    /// The model file's format version for this algorithm and preprocessing.
    pub format_version: u32,
    /// The library that did the fitting, as the file's training summary names it.
    pub library: &'static str,
    pub hyperparameters: serde_json::Value,
    /// Wall time of the solver alone (not preparing the rows).
    pub fit_seconds: f64,
}

impl<A> Fitted<A> {
    /// The same fit, its algorithm wrapped (into the registry's enum).
    pub fn map<B>(self, f: impl FnOnce(A) -> B) -> Fitted<B> {
        Fitted {
            algorithm: f(self.algorithm),
            scaler: self.scaler,
            format_version: self.format_version,
            library: self.library,
            hyperparameters: self.hyperparameters,
            fit_seconds: self.fit_seconds,
        }
    }
}

/// Why fitting failed.
#[derive(Debug, thiserror::Error)]
pub enum FitError {
    /// The rows cannot train this algorithm (no fraud to learn from, too few rows).
    #[error("{0}")]
    Data(String),
    /// The solver failed.
    #[error("{0}")]
    Solver(String),
}

/// A model algorithm. Its serde form is the algorithm's own fields of the
/// model file (beside `format`, `name`, `inputs`, `scaler`, `training`), and
/// must refuse unknown fields.
pub trait Learner: Serialize + DeserializeOwned + Clone + std::fmt::Debug + PartialEq + Send + Sync {
    /// The name model files give the algorithm (`"algorithm"`).
    const NAME: &'static str;
    /// The newest model file format version this algorithm writes.
    const FORMAT_VERSION: u32;
    /// Training parameters.
    type Params: Clone + std::fmt::Debug + Send + Sync;

    /// Checks fitted parameters against the number of inputs, the scaler and
    /// the file's format version.
    fn check(&self, inputs: usize, scaler: &Scaler, format_version: u32) -> Result<(), String>;

    /// Probability-like risk in [0, 1] from the raw inputs (`NaN`: missing),
    /// preprocessed with `scaler`.
    fn score(&self, scaler: &Scaler, inputs: &[f64]) -> f64;

    /// Calls `visit(input index, contribution)` for each input's part in the
    /// score, where the algorithm can say (no allocation: this runs per event).
    fn contributions(&self, _scaler: &Scaler, _inputs: &[f64], _visit: &mut dyn FnMut(usize, f64)) {}

    /// [`Learner::contributions`], then the score: an algorithm whose walk
    /// gives both at once does it in one.
    fn explain(&self, scaler: &Scaler, inputs: &[f64], visit: &mut dyn FnMut(usize, f64)) -> f64 {
        self.contributions(scaler, inputs, visit);
        self.score(scaler, inputs)
    }

    /// The score with every input at its training average, which the
    /// contributions are measured against, where the algorithm can say.
    fn baseline(&self, _scaler: &Scaler) -> Option<f64> {
        None
    }

    /// Fits on the training rows.
    fn fit(params: &Self::Params, data: &Rows<'_>) -> Result<Fitted<Self>, FitError>;
}
