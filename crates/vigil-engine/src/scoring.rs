//! The models' part of a decision: the champion and the challenger, swapped
//! atomically on reload, and the one place that turns an event and its
//! features into model inputs ([`InputMap`]), for serving and training alike.

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rust_decimal::prelude::ToPrimitive;
use vigil_core::feature::ValueKind;
use vigil_core::{Event, FeatureDef, FeatureVector, ModelFactor};
use vigil_model::{Model, ModelError, TrainedModel};

use crate::policy::Scores;

/// How many of the model's strongest inputs a decision names.
pub const MODEL_FACTORS: usize = 3;

/// Names a model may take as inputs, in the order training lays them out:
/// `amount`, then the declared features that are numbers ([`is_model_input`]).
pub fn model_inputs(features: &[FeatureDef]) -> Vec<&str> {
    std::iter::once("amount").chain(features.iter().filter(|f| is_model_input(f)).map(|f| f.name.as_str())).collect()
}

/// Whether a feature can be a model input: every one but text (`previous`).
pub fn is_model_input(feature: &FeatureDef) -> bool {
    feature.aggregate.kind() != ValueKind::Text
}

/// Where a model input comes from.
#[derive(Debug, Clone, Copy)]
enum Source {
    Amount,
    /// A position in the feature vector.
    Feature(usize),
}

/// Where each of a model's inputs comes from, in the model's order: the
/// event's amount, or a declared feature. Floats appear only here, as model
/// inputs; money stays a `Decimal` everywhere else.
#[derive(Debug, Clone)]
pub struct InputMap {
    sources: Vec<Source>,
}

impl InputMap {
    /// The inputs `names` (`amount` or declared features' names) over a
    /// feature vector of `features`. A name that is no declared feature reads
    /// the amount: model files are checked against [`model_inputs`] first.
    pub fn new<S: AsRef<str>>(features: &[FeatureDef], names: &[S]) -> InputMap {
        let sources = names
            .iter()
            .map(|name| match features.iter().position(|f| f.name == name.as_ref()) {
                Some(i) => Source::Feature(i),
                None => Source::Amount,
            })
            .collect();
        InputMap { sources }
    }

    /// Every input a model over `features` may take ([`model_inputs`]): the
    /// rows training fits.
    pub fn all(features: &[FeatureDef]) -> InputMap {
        InputMap::new(features, &model_inputs(features))
    }

    /// The inputs for one event, into `out` (cleared first); a missing value is `NaN`.
    pub fn fill(&self, event: &Event, fv: &FeatureVector, out: &mut Vec<f64>) {
        out.clear();
        out.extend(self.sources.iter().map(|s| match s {
            Source::Amount => event.amount.to_f64().unwrap_or(f64::NAN),
            Source::Feature(j) => fv.values.get(*j).and_then(|v| v.as_f64()).unwrap_or(f64::NAN),
        }));
    }

    /// The inputs for one event, as a new row.
    pub fn row(&self, event: &Event, fv: &FeatureVector) -> Vec<f64> {
        let mut out = Vec::with_capacity(self.sources.len());
        self.fill(event, fv, &mut out);
        out
    }
}

/// A loaded model with where its inputs come from.
pub(crate) struct ScoringModel {
    model: TrainedModel,
    inputs: InputMap,
}

impl ScoringModel {
    /// Loads a model file that fits a pipeline of `features`.
    pub(crate) fn load(features: &[FeatureDef], path: &Path) -> Result<ScoringModel, ModelError> {
        let model = vigil_model::load(path, &model_inputs(features))?;
        let inputs = InputMap::new(features, model.inputs());
        Ok(ScoringModel { model, inputs })
    }

    pub(crate) fn version(&self) -> &str {
        self.model.version()
    }

    /// The score alone (the challenger needs no explanation).
    fn score(&self, event: &Event, fv: &FeatureVector) -> f64 {
        self.model.score(&self.inputs.row(event, fv))
    }

    /// The score, the inputs that moved it most from the baseline, and the baseline.
    fn explained(&self, event: &Event, fv: &FeatureVector) -> Explained {
        let inputs = self.inputs.row(event, fv);
        let mut total = 0.0;
        let mut score = f64::NAN;
        let (top, n) = strongest(|visit| {
            score = self.model.explain(&inputs, &mut |i, c| {
                total += c;
                visit(i, c)
            })
        });
        let names = self.model.inputs();
        let round = |c: f64| (c * 1e4).round() / 1e4;
        let factors =
            top[..n].iter().map(|(i, c)| ModelFactor { input: names[*i].clone(), contribution: round(*c) }).collect();
        let baseline = self.model.baseline();
        // Only a model that states a baseline says how its score is made up.
        let rest = baseline.map(|_| round(total - top[..n].iter().map(|(_, c)| c).sum::<f64>()));
        Explained { score, baseline, factors, rest }
    }
}

/// The champion, which decides, and the challenger, which is only reported.
#[derive(Default)]
pub(crate) struct Models {
    pub(crate) champion: ArcSwap<Option<ScoringModel>>,
    pub(crate) challenger: ArcSwap<Option<ScoringModel>>,
}

/// Which of the two a file feeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelRole {
    Champion,
    Challenger,
}

impl Models {
    pub(crate) fn slot(&self, role: ModelRole) -> &ArcSwap<Option<ScoringModel>> {
        match role {
            ModelRole::Champion => &self.champion,
            ModelRole::Challenger => &self.challenger,
        }
    }

    pub(crate) fn version(&self, role: ModelRole) -> Option<String> {
        self.slot(role).load().as_ref().as_ref().map(|m| m.version().to_owned())
    }

    /// The models now loaded, held for a batch.
    pub(crate) fn current(&self) -> Loaded {
        Loaded { champion: self.champion.load_full(), challenger: self.challenger.load_full() }
    }
}

/// The models of one batch.
pub(crate) struct Loaded {
    champion: Arc<Option<ScoringModel>>,
    challenger: Arc<Option<ScoringModel>>,
}

impl Loaded {
    /// The champion's score and factors and the challenger's score, for one event.
    pub(crate) fn scores(&self, event: &Event, fv: &FeatureVector) -> Scores<'_> {
        let (champion, challenger) = (self.champion.as_ref().as_ref(), self.challenger.as_ref().as_ref());
        Scores {
            model_version: champion.map(ScoringModel::version),
            scored: champion.map(|m| m.explained(event, fv)),
            challenger: challenger.map(|c| (c.version(), c.score(event, fv))),
        }
    }
}

/// A model's account of one score.
#[derive(Debug, Clone, PartialEq)]
pub struct Explained {
    pub score: f64,
    /// The score with every input at its training average.
    pub baseline: Option<f64>,
    /// The inputs that moved the score most from the baseline, signed,
    /// largest in size first.
    pub factors: Vec<ModelFactor>,
    /// What the other inputs moved it by, together.
    pub rest: Option<f64>,
}

/// The [`MODEL_FACTORS`] contributions `parts` visits that are largest in
/// size, signed, largest first, and how many there are; kept in place, since
/// this runs per event.
pub(crate) fn strongest(parts: impl FnOnce(&mut dyn FnMut(usize, f64))) -> ([(usize, f64); MODEL_FACTORS], usize) {
    let mut top = [(0usize, 0.0f64); MODEL_FACTORS];
    let mut n = 0;
    parts(&mut |i, c| {
        let size = c.abs();
        if size > 0.0 && (n < MODEL_FACTORS || size > top[MODEL_FACTORS - 1].1.abs()) {
            let at = top[..n].partition_point(|(_, t)| t.abs() >= size);
            n = (n + 1).min(MODEL_FACTORS);
            top.copy_within(at..n - 1, at + 1);
            top[at] = (i, c);
        }
    });
    (top, n)
}
