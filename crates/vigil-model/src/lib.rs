//! Vigil's model stage, beside the rules: turns an event's numeric inputs (its
//! amount and declared features) into a score in [0, 1].
//!
//! A model file is self-describing JSON ([`mod@file`]): format version, algorithm,
//! the input names in order, the preprocessing applied in training
//! ([`Scaler`]), the algorithm's own parameters, a summary of training, and a
//! SHA-256 checksum over all of it. [`load`] refuses a file that is corrupt,
//! of an unknown format or algorithm, or whose inputs the pipeline cannot
//! provide.
//!
//! Each algorithm is a module of its own behind the [`Learner`] trait (its
//! parameters, scoring, explanation and fitting), listed once in the
//! registry, which makes [`Algorithm`] and [`TrainParams`]:
//! - [`logistic`]: a supervised fraud probability (linfa-logistic);
//! - [`forest`]: an unsupervised anomaly score (`vigil-iforest`);
//! - [`gbdt`]: gradient-boosted trees, a supervised fraud probability (`vigil-gbdt`).
//!
//! To add one: a module implementing [`Learner`], one line in
//! `registry.rs`, and its choice in `vigil train`.

pub mod file;
pub mod forest;
pub mod gbdt;
pub mod learner;
pub mod logistic;
mod registry;
mod scaler;

use std::path::PathBuf;

pub use file::{load, load_any, ModelBody, TrainedModel};
pub use forest::{FOREST_FORMAT_VERSION, NAME as ISOLATION_FOREST};
pub use gbdt::{GBDT_FORMAT_VERSION, NAME as GRADIENT_BOOSTED_TREES};
pub use learner::{FitError, Fitted, Learner, Rows};
pub use logistic::{NAME as LOGISTIC, PREPROCESSED_FORMAT_VERSION};
pub use registry::{Algorithm, TrainParams, ALGORITHMS, LATEST_FORMAT_VERSION};
pub use scaler::{signed_log, Scaler};
pub use vigil_gbdt::{GbdtParams, GradientBoostedTrees};
pub use vigil_iforest::{IsolationForest, IsolationForestParams};

/// The format this build reads and writes.
pub const FORMAT: &str = "vigil-model";
/// The first format version (a logistic regression over standardised inputs).
pub const FORMAT_VERSION: u32 = logistic::PLAIN_FORMAT_VERSION;

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
    /// [`Model::contributions`], then [`Model::score`] (the same score): in
    /// one pass where the model can.
    fn explain(&self, inputs: &[f64], visit: &mut dyn FnMut(usize, f64)) -> f64 {
        self.contributions(inputs, visit);
        self.score(inputs)
    }
    /// The score with every input at its training average, which the
    /// contributions are measured against, for the models that can say.
    fn baseline(&self) -> Option<f64> {
        None
    }
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

#[cfg(test)]
mod tests;
