//! Gradient-boosted decision trees for Vigil's fraud model, in linfa's shape:
//! hyperparameters checked through [`ParamGuard`], training is [`Fit`] on a
//! linfa dataset (boolean targets, optional sample weights), scoring is
//! [`PredictInplace`] and, one row at a time, [`GradientBoostedTrees::score_one`];
//! the fitted model is serde-serialisable and checked when it is read.
//!
//! The algorithm is LightGBM's histogram boosting on the logistic loss
//! (`docs/design/gbdt.md`): quantile bins per input, leaf-wise growth under
//! `max_leaves`, the larger child's histogram by subtraction, a learned
//! direction for missing values (`NaN`), L2-regularised leaf values, row and
//! input subsampling, class imbalance by weights, and early stopping on a
//! validation tail of the (time-ordered) rows. Trees score flat, and explain
//! a score by path attributions that add up to its margin.

mod bins;
mod grow;
mod tree;

use linfa::dataset::{AsSingleTargets, DatasetBase};
use linfa::param_guard::ParamGuard;
use linfa::traits::{Fit, PredictInplace};
use ndarray::{Array1, ArrayBase, Data, Ix2};
use rand::seq::index::sample;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

pub use tree::Tree;

/// Why a model could not be fitted.
#[derive(Debug, thiserror::Error)]
pub enum GbdtError {
    #[error("{0}")]
    Params(String),
    #[error("cannot fit on {0} rows: at least 2 are needed")]
    TooFewRows(usize),
    #[error("cannot fit on records with no columns")]
    NoColumns,
    #[error("{0} targets for {1} rows")]
    Targets(usize, usize),
    #[error("cannot start {0} threads for the fit: {1}")]
    Threads(usize, String),
    #[error("the training rows hold a single class: nothing to separate")]
    OneClass,
    #[error(transparent)]
    Linfa(#[from] linfa::Error),
}

/// The hyperparameters, listed once: each with its type and default. This
/// makes the checked struct's fields and getters, the builder's setters and
/// the defaults.
macro_rules! hyperparameters {
    ($($(#[$doc:meta])* $name:ident: $ty:ty = $default:expr),* $(,)?) => {
        /// Checked hyperparameters.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct GbdtValidParams {
            $($(#[$doc])* $name: $ty,)*
        }

        impl GbdtValidParams {
            $($(#[$doc])* pub fn $name(&self) -> $ty { self.$name })*
        }

        impl GbdtParams {
            $($(#[$doc])* pub fn $name(mut self, v: $ty) -> Self { self.0.$name = v; self })*
        }

        impl Default for GbdtParams {
            fn default() -> Self {
                GbdtParams(GbdtValidParams { $($name: $default,)* })
            }
        }
    };
}

hyperparameters!(
    /// Boosting rounds at most.
    n_trees: usize = 300,
    learning_rate: f64 = 0.05,
    max_leaves: usize = 31,
    /// 0: no limit.
    max_depth: usize = 0,
    /// Hessian a child needs at least.
    min_child_weight: f64 = 1e-3,
    /// Rows a child needs at least.
    min_data_in_leaf: usize = 20,
    /// L2 regularisation of leaf values. 10, not XGBoost's 1: better on
    /// every validation split tried (raw payments, the PCA table, the hard
    /// generated history; benches/RESULTS.md, "Bins for the tails").
    lambda: f64 = 10.0,
    /// Share of rows each tree is grown on.
    row_subsample: f64 = 1.0,
    /// Share of inputs each tree may split on.
    col_subsample: f64 = 1.0,
    /// Bins per input for present values (one more holds missing ones).
    max_bins: usize = 255,
    /// Weight of a fraud row relative to a genuine one.
    scale_pos_weight: f64 = 1.0,
    /// Share of the newest rows kept apart to stop early.
    validation_share: f64 = 0.1,
    /// Rounds without a better validation loss before stopping; 0: never stop early.
    early_stopping_rounds: usize = 50,
    seed: u64 = 42,
    /// Threads of the fit; 0: every core.
    threads: usize = 0,
);

/// Hyperparameters, checked when fitting. The defaults are LightGBM's usual
/// ones for tabular fraud data: 300 trees at a learning rate of 0.05, 31
/// leaves, 255 bins, early stopping after 50 rounds on the last tenth of the
/// rows.
#[derive(Debug, Clone, PartialEq)]
pub struct GbdtParams(GbdtValidParams);

impl GbdtParams {
    pub fn new() -> Self {
        Self::default()
    }
}

impl ParamGuard for GbdtParams {
    type Checked = GbdtValidParams;
    type Error = GbdtError;

    fn check_ref(&self) -> Result<&Self::Checked, Self::Error> {
        let p = &self.0;
        let bad = |m: &str| Err(GbdtError::Params(m.to_owned()));
        let share = |x: f64| x > 0.0 && x <= 1.0;
        if p.n_trees == 0 {
            bad("n_trees must be at least 1")
        } else if !(p.learning_rate > 0.0 && p.learning_rate <= 1.0) {
            bad("learning_rate must be above 0 and at most 1")
        } else if p.max_leaves < 2 {
            bad("max_leaves must be at least 2")
        } else if !(p.min_child_weight >= 0.0 && p.min_child_weight.is_finite()) {
            bad("min_child_weight must be a finite number, 0 or more")
        } else if p.min_data_in_leaf == 0 {
            bad("min_data_in_leaf must be at least 1")
        } else if !(p.lambda >= 0.0 && p.lambda.is_finite()) {
            bad("lambda must be a finite number, 0 or more")
        } else if !share(p.row_subsample) || !share(p.col_subsample) {
            bad("row_subsample and col_subsample must be above 0 and at most 1")
        } else if !(4..=255).contains(&p.max_bins) {
            bad("max_bins must be between 4 and 255")
        } else if !(p.scale_pos_weight > 0.0 && p.scale_pos_weight.is_finite()) {
            bad("scale_pos_weight must be a positive number")
        } else if !(0.0..0.5).contains(&p.validation_share) {
            bad("validation_share must be at least 0 and below 0.5")
        } else {
            Ok(p)
        }
    }

    fn check(self) -> Result<Self::Checked, Self::Error> {
        self.check_ref()?;
        Ok(self.0)
    }
}

/// A fitted model: the initial margin and the trees.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Stored")]
pub struct GradientBoostedTrees {
    params: GbdtValidParams,
    n_features: usize,
    /// The margin (log-odds) before any tree.
    base_margin: f64,
    /// Rounds the booster ran before early stopping kept `trees.len()` of them.
    rounds: usize,
    trees: Vec<Tree>,
    /// Every tree's nodes, one after another, and where each tree starts:
    /// the node-by-node path the tests hold the layout to; derived from
    /// `trees`, never stored.
    #[cfg(test)]
    #[serde(skip_serializing)]
    nodes: Vec<tree::Node>,
    #[cfg(test)]
    #[serde(skip_serializing)]
    starts: Vec<usize>,
    /// The same trees in scoring's layout.
    #[serde(skip_serializing)]
    layout: tree::Layout,
    /// [`GradientBoostedTrees::baseline_margin`], summed once: every
    /// explained score asks for it, and each root is a cache miss.
    #[serde(skip_serializing)]
    baseline_margin: f64,
}

/// A model as its file holds it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Stored {
    params: GbdtValidParams,
    n_features: usize,
    base_margin: f64,
    rounds: usize,
    trees: Vec<Tree>,
}

impl TryFrom<Stored> for GradientBoostedTrees {
    type Error = String;

    fn try_from(s: Stored) -> Result<GradientBoostedTrees, String> {
        if s.trees.is_empty() || s.n_features == 0 || !s.base_margin.is_finite() {
            return Err("a model needs a finite base margin, at least one tree and one feature".into());
        }
        if s.n_features > tree::MAX_FEATURES {
            return Err(format!("{} features: at most {} can be scored", s.n_features, tree::MAX_FEATURES));
        }
        let checked = s
            .trees
            .iter()
            .enumerate()
            .map(|(k, t)| t.nodes(s.n_features).map_err(|e| format!("tree {k}: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        let layout = tree::Layout::of(&checked)?;
        // Each tree's root is its first node.
        let baseline_margin = s.base_margin + checked.iter().map(|t| t[0].value).sum::<f64>();
        #[cfg(test)]
        let (mut nodes, mut starts) = (Vec::new(), Vec::with_capacity(checked.len()));
        #[cfg(test)]
        for t in checked {
            starts.push(nodes.len());
            nodes.extend(t);
        }
        Ok(GradientBoostedTrees {
            params: s.params,
            n_features: s.n_features,
            base_margin: s.base_margin,
            rounds: s.rounds,
            trees: s.trees,
            #[cfg(test)]
            nodes,
            #[cfg(test)]
            starts,
            layout,
            baseline_margin,
        })
    }
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

impl GradientBoostedTrees {
    /// The log-odds of fraud for one row (`NaN`: missing). No allocation.
    pub fn margin(&self, x: &[f64]) -> f64 {
        if x.len() < self.n_features {
            return f64::NAN;
        }
        self.layout.margin(self.base_margin, x)
    }

    /// The probability of fraud for one row, in (0, 1).
    pub fn score_one(&self, x: &[f64]) -> f64 {
        sigmoid(self.margin(x))
    }

    /// The margin before the row is looked at: the base margin plus every
    /// tree's root value. The row's attributions move the margin from it.
    pub fn baseline_margin(&self) -> f64 {
        self.baseline_margin
    }

    /// Adds to `parts[input]` the row's path attributions in log-odds, over
    /// every split on its path in every tree: together they add up to
    /// `margin(x) - baseline_margin()`, to rounding. `parts` holds one value
    /// per input; a row or `parts` shorter than that adds nothing. No
    /// allocation, walked as scoring walks.
    pub fn contributions(&self, x: &[f64], parts: &mut [f64]) {
        self.explain(x, parts);
    }

    /// [`GradientBoostedTrees::contributions`] and
    /// [`GradientBoostedTrees::score_one`] in one walk of the trees: adds
    /// the attributions to `parts` and returns the score, the same to the
    /// bit as `score_one` (`NaN` for a row or `parts` too short).
    pub fn explain(&self, x: &[f64], parts: &mut [f64]) -> f64 {
        if x.len() < self.n_features || parts.len() < self.n_features {
            return f64::NAN;
        }
        sigmoid(self.layout.attribute(self.base_margin, x, parts))
    }

    pub fn n_features(&self) -> usize {
        self.n_features
    }

    pub fn n_trees(&self) -> usize {
        self.trees.len()
    }

    /// Boosting rounds run (more than the trees kept, when early stopping cut them).
    pub fn rounds(&self) -> usize {
        self.rounds
    }

    pub fn params(&self) -> &GbdtValidParams {
        &self.params
    }
}

impl<D: Data<Elem = f64>, T: AsSingleTargets<Elem = bool>> Fit<ArrayBase<D, Ix2>, T, GbdtError> for GbdtValidParams {
    type Object = GradientBoostedTrees;

    fn fit(&self, dataset: &DatasetBase<ArrayBase<D, Ix2>, T>) -> Result<GradientBoostedTrees, GbdtError> {
        let x = dataset.records();
        let (n, features) = x.dim();
        if n < 2 {
            return Err(GbdtError::TooFewRows(n));
        }
        if features == 0 {
            return Err(GbdtError::NoColumns);
        }
        let targets = dataset.as_single_targets();
        if targets.len() != n {
            return Err(GbdtError::Targets(targets.len(), n));
        }
        let y: Vec<bool> = targets.iter().copied().collect();
        // Logical order is row-major, whatever the array's layout.
        let rows: Vec<f64> = x.iter().copied().collect();
        let weights: Vec<f64> =
            (0..n).map(|i| f64::from(dataset.weight_for(i)) * if y[i] { self.scale_pos_weight } else { 1.0 }).collect();
        let threads = match self.threads {
            0 => std::thread::available_parallelism().map_or(1, |t| t.get()),
            t => t,
        };
        // A pool of the fit's own, so that `threads` holds whatever else runs.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("vigil-gbdt-{i}"))
            .build()
            .map_err(|e| GbdtError::Threads(threads, e.to_string()))?;
        pool.install(|| boost(self, &rows, &y, &weights, features, threads))
    }
}

/// The boosting rounds (module docs): rows are row-major, `features` wide.
fn boost(
    p: &GbdtValidParams,
    rows: &[f64],
    y: &[bool],
    w: &[f64],
    features: usize,
    threads: usize,
) -> Result<GradientBoostedTrees, GbdtError> {
    let n = y.len();
    // The last rows validate early stopping: the newest, when rows are in time order.
    let n_val = if p.early_stopping_rounds > 0 { (n as f64 * p.validation_share) as usize } else { 0 };
    let n_train = n - n_val;
    let (train_y, train_w) = (&y[..n_train], &w[..n_train]);
    let positive: f64 = train_y.iter().zip(train_w).filter(|(y, _)| **y).map(|(_, w)| w).sum();
    let negative: f64 = train_y.iter().zip(train_w).filter(|(y, _)| !**y).map(|(_, w)| w).sum();
    if positive <= 0.0 || negative <= 0.0 {
        return Err(GbdtError::OneClass);
    }
    let base_margin = (positive / negative).ln();
    let binned = bins::Binned::new(&rows[..n_train * features], n_train, features, p.max_bins, p.seed);
    let limits = grow::Limits {
        max_leaves: p.max_leaves,
        max_depth: p.max_depth,
        min_child_weight: p.min_child_weight,
        min_data_in_leaf: p.min_data_in_leaf,
        lambda: p.lambda,
        learning_rate: p.learning_rate,
        threads,
    };
    let mut rng = ChaCha8Rng::seed_from_u64(p.seed);
    let mut margin = vec![base_margin; n_train];
    let mut val_margin = vec![base_margin; n_val];
    let (mut g, mut h) = (vec![0.0; n_train], vec![0.0; n_train]);
    let mut trees: Vec<Vec<tree::Node>> = Vec::new();
    let mut pool = grow::Pool::default();
    let (mut best_loss, mut best_round) = (f64::INFINITY, 0);
    let mut rounds = 0;
    for round in 0..p.n_trees {
        rounds = round + 1;
        // The logistic loss's gradient and hessian of row i.
        let gradient = |(i, (g, h)): (usize, (&mut f64, &mut f64))| {
            let prob = sigmoid(margin[i]);
            let target = if train_y[i] { 1.0 } else { 0.0 };
            *g = train_w[i] * (prob - target);
            *h = (train_w[i] * prob * (1.0 - prob)).max(1e-16);
        };
        if threads > 1 {
            g.par_iter_mut().zip(h.par_iter_mut()).enumerate().with_min_len(grow::PARALLEL_ROWS).for_each(gradient);
        } else {
            g.iter_mut().zip(h.iter_mut()).enumerate().for_each(gradient);
        }
        let sampled: Vec<u32> = if p.row_subsample < 1.0 {
            let k = ((n_train as f64 * p.row_subsample) as usize).max(2);
            let mut s: Vec<u32> = sample(&mut rng, n_train, k).into_iter().map(|i| i as u32).collect();
            s.sort_unstable();
            s
        } else {
            (0..n_train as u32).collect()
        };
        let inputs: Vec<usize> = if p.col_subsample < 1.0 {
            let k = ((features as f64 * p.col_subsample).ceil() as usize).clamp(1, features);
            let mut s = sample(&mut rng, features, k).into_vec();
            s.sort_unstable();
            s
        } else {
            (0..features).collect()
        };
        let data = grow::Data { binned: &binned, g: &g, h: &h };
        let grown = grow::grow(&data, sampled, &inputs, &limits, &mut pool);
        let add_tree = |(m, row): (&mut f64, &[f64])| *m += tree::leaf(&grown.nodes, row).value;
        if p.row_subsample < 1.0 {
            margin.par_iter_mut().zip(rows.par_chunks(features)).with_min_len(grow::PARALLEL_ROWS).for_each(add_tree);
        } else {
            for &(start, end, value) in &grown.leaves {
                for &r in &grown.rows[start..end] {
                    margin[r as usize] += value;
                }
            }
        }
        val_margin
            .par_iter_mut()
            .zip(rows[n_train * features..].par_chunks(features))
            .with_min_len(grow::PARALLEL_ROWS)
            .for_each(add_tree);
        trees.push(grown.nodes);
        if n_val > 0 {
            let loss = log_loss(&val_margin, &y[n_train..], &w[n_train..]);
            if loss < best_loss - 1e-12 {
                (best_loss, best_round) = (loss, round);
            } else if round - best_round >= p.early_stopping_rounds {
                break;
            }
        }
    }
    if n_val > 0 {
        trees.truncate(best_round + 1);
    }
    let stored = Stored {
        params: p.clone(),
        n_features: features,
        base_margin,
        rounds,
        trees: trees.iter().map(|t| Tree::from_nodes(t)).collect(),
    };
    GradientBoostedTrees::try_from(stored).map_err(|e| GbdtError::Params(format!("grown tree is malformed: {e}")))
}

/// Weighted mean log loss of margins against labels.
fn log_loss(margin: &[f64], y: &[bool], w: &[f64]) -> f64 {
    let (mut sum, mut total) = (0.0, 0.0);
    for ((m, y), w) in margin.iter().zip(y).zip(w) {
        // log(1 + e^-m) for a fraud, log(1 + e^m) for a genuine one, stably.
        let z = if *y { -m } else { *m };
        sum += w * (z.max(0.0) + (-z.abs()).exp().ln_1p());
        total += w;
    }
    sum / total.max(f64::MIN_POSITIVE)
}

impl<D: Data<Elem = f64>> PredictInplace<ArrayBase<D, Ix2>, Array1<f64>> for GradientBoostedTrees {
    fn predict_inplace(&self, x: &ArrayBase<D, Ix2>, y: &mut Array1<f64>) {
        assert_eq!(x.ncols(), self.n_features, "records have a different number of features than the model");
        assert_eq!(x.nrows(), y.len(), "one target per row");
        let mut buf = Vec::with_capacity(self.n_features);
        for (row, out) in x.rows().into_iter().zip(y.iter_mut()) {
            *out = match row.as_slice() {
                Some(r) => self.score_one(r),
                None => {
                    buf.clear();
                    buf.extend(row.iter().copied());
                    self.score_one(&buf)
                }
            };
        }
    }

    fn default_target(&self, x: &ArrayBase<D, Ix2>) -> Array1<f64> {
        Array1::zeros(x.nrows())
    }
}

#[cfg(test)]
mod tests;
