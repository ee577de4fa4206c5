//! An isolation forest (Liu, Ting and Zhou, 2008) for Vigil's unsupervised
//! anomaly model: the algorithm's core, below `vigil-model` (whose `forest`
//! module serves and trains it). linfa has none, so this one follows linfa's
//! conventions: hyperparameters are checked through [`ParamGuard`], training is
//! [`Fit`] on a linfa dataset, scoring is [`PredictInplace`] (so `predict`
//! works on any 2-d array), and the fitted forest is serde-serialisable.
//!
//! Each tree isolates a random subsample by splitting on a random feature at a
//! random threshold between that feature's smallest and largest value in the
//! node. Anomalies are isolated in fewer splits, so their mean path length is
//! short; the score `2^(-E[h(x)] / c(ψ))` is near 1 for anomalies and below 0.5
//! for ordinary points.
//!
//! Missing values (`NaN`) are treated as smaller than any value: they go left
//! at every split, in training and scoring alike, and a node whose values of a
//! feature are all missing never splits on it.

use linfa::dataset::DatasetBase;
use linfa::param_guard::ParamGuard;
use linfa::traits::{Fit, PredictInplace};
use ndarray::{Array1, ArrayBase, Data, Ix2};
use rand::seq::index::sample;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Why a forest could not be built.
#[derive(Debug, thiserror::Error)]
pub enum IForestError {
    #[error("n_trees must be at least 1")]
    NoTrees,
    #[error("sample_size must be at least 2, got {0}")]
    SampleSize(usize),
    #[error("cannot fit on {0} rows: at least 2 are needed")]
    TooFewRows(usize),
    #[error("cannot fit on records with no columns")]
    NoColumns,
    /// A grown tree failed its own layout check (a bug, not bad data).
    #[error("grown tree is malformed: {0}")]
    Grown(String),
    #[error(transparent)]
    Linfa(#[from] linfa::Error),
}

/// Checked hyperparameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IsolationForestValidParams {
    n_trees: usize,
    sample_size: usize,
    seed: u64,
}

impl IsolationForestValidParams {
    pub fn n_trees(&self) -> usize {
        self.n_trees
    }

    pub fn sample_size(&self) -> usize {
        self.sample_size
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }
}

/// Hyperparameters, checked when fitting: 100 trees of 256-row subsamples by
/// default, the values the original paper found to work across data sets.
#[derive(Debug, Clone, PartialEq)]
pub struct IsolationForestParams(IsolationForestValidParams);

impl Default for IsolationForestParams {
    fn default() -> Self {
        IsolationForestParams(IsolationForestValidParams { n_trees: 100, sample_size: 256, seed: 42 })
    }
}

impl IsolationForestParams {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn n_trees(mut self, n: usize) -> Self {
        self.0.n_trees = n;
        self
    }

    /// Rows drawn (without replacement) to grow each tree.
    pub fn sample_size(mut self, n: usize) -> Self {
        self.0.sample_size = n;
        self
    }

    /// Seeds the subsampling and splits: the same seed and data give the same forest.
    pub fn seed(mut self, seed: u64) -> Self {
        self.0.seed = seed;
        self
    }
}

impl ParamGuard for IsolationForestParams {
    type Checked = IsolationForestValidParams;
    type Error = IForestError;

    fn check_ref(&self) -> Result<&Self::Checked, Self::Error> {
        if self.0.n_trees == 0 {
            Err(IForestError::NoTrees)
        } else if self.0.sample_size < 2 {
            Err(IForestError::SampleSize(self.0.sample_size))
        } else {
            Ok(&self.0)
        }
    }

    fn check(self) -> Result<Self::Checked, Self::Error> {
        self.check_ref()?;
        Ok(self.0)
    }
}

/// A tree node, stored flat in depth-first order, 16 bytes: a split's left
/// child is the next node, its right child is at `right`. A leaf has
/// `feature == LEAF` and keeps in `threshold` the path-length correction for
/// the rows it held.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Node {
    threshold: f64,
    feature: u32,
    right: u32,
}

const LEAF: u32 = u32::MAX;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Tree {
    nodes: Vec<Node>,
}

/// A fitted isolation forest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "StoredForest")]
pub struct IsolationForest {
    params: IsolationForestValidParams,
    n_features: usize,
    /// `c(ψ)`: the mean path length of an unsuccessful search in a tree of ψ rows.
    normaliser: f64,
    trees: Vec<Tree>,
    /// The trees laid out for scoring; derived from `trees`, never stored.
    #[serde(skip_serializing)]
    flat: Option<Flat>,
}

/// A forest as its file holds it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredForest {
    params: IsolationForestValidParams,
    n_features: usize,
    normaliser: f64,
    trees: Vec<Tree>,
}

impl TryFrom<StoredForest> for IsolationForest {
    type Error = String;

    /// Refuses trees that do not link up (a damaged or hand-edited file), which
    /// would otherwise fail or loop when scoring.
    fn try_from(s: StoredForest) -> Result<IsolationForest, String> {
        if s.trees.is_empty() || s.n_features == 0 {
            return Err("a forest needs at least one tree and one feature".into());
        }
        let mut depth = 0;
        for (k, tree) in s.trees.iter().enumerate() {
            depth = depth.max(tree.checked_depth(s.n_features).map_err(|e| format!("tree {k}: {e}"))?);
        }
        let flat = Flat::build(&s.trees, depth);
        Ok(IsolationForest {
            params: s.params,
            n_features: s.n_features,
            normaliser: s.normaliser,
            trees: s.trees,
            flat,
        })
    }
}

/// Deepest tree laid out flat: 2^14 leaves per tree at most. Deeper forests
/// (subsamples above 16,384 rows) are scored by walking their nodes.
const FLAT_MAX_DEPTH: usize = 14;
/// Deepest tree a file may hold; `fit` grows trees of at most
/// `ceil(log2(sample_size))` levels.
const MAX_DEPTH: usize = 64;
/// Trees walked side by side, so that their independent loads overlap.
const LANES: usize = 8;

/// Every tree padded to a complete binary tree of the forest's depth, in
/// breadth-first (heap) order: the children of split `i` are `2i + 1` and
/// `2i + 2`, and every walk takes exactly `depth` steps without a branch on
/// the data. A leaf above the bottom becomes splits that send everything left
/// (threshold `NaN`) down to copies of its path length, so scores are the
/// same, to the bit, as walking the nodes.
#[derive(Clone)]
struct Flat {
    depth: usize,
    /// Per tree, `2^depth - 1` splits.
    thresholds: Vec<f64>,
    features: Vec<u32>,
    /// Per tree, `2^depth` path lengths (depth of the leaf plus its correction).
    leaves: Vec<f64>,
}

impl PartialEq for Flat {
    /// Bit for bit: pass-through splits hold `NaN`, which `==` never matches.
    fn eq(&self, other: &Flat) -> bool {
        let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        self.depth == other.depth
            && self.features == other.features
            && bits(&self.thresholds) == bits(&other.thresholds)
            && bits(&self.leaves) == bits(&other.leaves)
    }
}

impl std::fmt::Debug for Flat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Flat {{ depth: {}, splits: {} }}", self.depth, self.thresholds.len())
    }
}

impl Flat {
    /// `depth`: the deepest tree's levels of splits, from `Tree::checked_depth`.
    fn build(trees: &[Tree], depth: usize) -> Option<Flat> {
        if depth > FLAT_MAX_DEPTH {
            return None;
        }
        let (splits, width) = ((1usize << depth) - 1, 1usize << depth);
        let mut flat = Flat {
            depth,
            thresholds: vec![f64::NAN; splits * trees.len()],
            features: vec![0; splits * trees.len()],
            leaves: vec![0.0; width * trees.len()],
        };
        for (k, tree) in trees.iter().enumerate() {
            flat.fill(tree, k, 0, 0, 0, None);
        }
        Some(flat)
    }

    /// Lays out node `node` of `tree` (tree number `k`) at heap position `pos`
    /// of `level`; `leaf` is the path length of a leaf above, once reached.
    fn fill(&mut self, tree: &Tree, k: usize, node: usize, pos: usize, level: usize, leaf: Option<f64>) {
        let (splits, width) = ((1usize << self.depth) - 1, 1usize << self.depth);
        let n = &tree.nodes[node];
        let leaf = leaf.or_else(|| (n.feature == LEAF).then_some(level as f64 + n.threshold));
        if level == self.depth {
            self.leaves[k * width + pos - splits] = leaf.unwrap_or(f64::NAN);
            return;
        }
        match leaf {
            // A leaf above the bottom: pass through to the left (NaN compares false).
            Some(_) => {
                self.fill(tree, k, node, 2 * pos + 1, level + 1, leaf);
                self.fill(tree, k, node, 2 * pos + 2, level + 1, leaf);
            }
            None => {
                self.thresholds[k * splits + pos] = n.threshold;
                self.features[k * splits + pos] = n.feature;
                self.fill(tree, k, node + 1, 2 * pos + 1, level + 1, None);
                self.fill(tree, k, n.right as usize, 2 * pos + 2, level + 1, None);
            }
        }
    }

    /// Sum of the path lengths of `x` over all trees, in tree order.
    fn path_sum(&self, x: &[f64], n_trees: usize) -> f64 {
        let (splits, width) = ((1usize << self.depth) - 1, 1usize << self.depth);
        let mut total = 0.0;
        let mut first = 0;
        while first < n_trees {
            let lanes = LANES.min(n_trees - first);
            let mut pos = [0usize; LANES];
            for _ in 0..self.depth {
                for (l, p) in pos.iter_mut().enumerate().take(lanes) {
                    let at = (first + l) * splits + *p;
                    // Right when at or above the threshold; missing (NaN) values
                    // and pass-through splits (NaN threshold) go left.
                    let right = x[self.features[at] as usize] >= self.thresholds[at];
                    *p = 2 * *p + 1 + usize::from(right);
                }
            }
            for (l, p) in pos.iter().enumerate().take(lanes) {
                total += self.leaves[(first + l) * width + *p - splits];
            }
            first += lanes;
        }
        total
    }
}

/// Average path length of an unsuccessful binary-search-tree search over `n` items.
fn c(n: usize) -> f64 {
    match n {
        0 | 1 => 0.0,
        2 => 1.0,
        _ => {
            let n = n as f64;
            2.0 * ((n - 1.0).ln() + 0.577_215_664_901_532_9) - 2.0 * (n - 1.0) / n
        }
    }
}

/// Goes left when below the threshold or missing.
fn goes_left(v: f64, threshold: f64) -> bool {
    v.is_nan() || v < threshold
}

impl Tree {
    fn grow<D: Data<Elem = f64>>(x: &ArrayBase<D, Ix2>, rows: Vec<usize>, limit: usize, rng: &mut ChaCha8Rng) -> Tree {
        let mut tree = Tree { nodes: Vec::new() };
        tree.split(x, rows, 0, limit, rng);
        tree
    }

    /// Grows the node for `rows` at `depth`, returning its index.
    fn split<D: Data<Elem = f64>>(
        &mut self,
        x: &ArrayBase<D, Ix2>,
        mut rows: Vec<usize>,
        depth: usize,
        limit: usize,
        rng: &mut ChaCha8Rng,
    ) -> u32 {
        let at = self.nodes.len() as u32;
        let leaf = |n: usize| Node { feature: LEAF, threshold: c(n), right: 0 };
        self.nodes.push(leaf(rows.len()));
        if depth >= limit || rows.len() <= 1 {
            return at;
        }
        // A feature drawn uniformly among those that still vary here: features
        // are tried in a random order (a partial Fisher-Yates shuffle) until one
        // varies, or has missing values beside a present one.
        let n_features = x.ncols();
        let mut order: Vec<usize> = (0..n_features).collect();
        let mut chosen = None;
        for k in 0..n_features {
            let pick = rng.random_range(k..n_features);
            order.swap(k, pick);
            let f = order[k];
            let (lo, hi) = rows
                .iter()
                .map(|&r| x[[r, f]])
                .filter(|v| !v.is_nan())
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
            let missing = rows.iter().any(|&r| x[[r, f]].is_nan());
            if lo < hi || (missing && lo <= hi) {
                chosen = Some((f, lo, hi));
                break;
            }
        }
        let Some((f, lo, hi)) = chosen else {
            return at;
        };
        // Uniform between the smallest and largest value (values below go
        // left); with one distinct value and missing rows, at that value, so
        // the missing rows split off.
        let threshold = if lo == hi {
            hi
        } else {
            let t = lo + rng.random::<f64>() * (hi - lo);
            // Rounding can land on `lo`, which would send nothing left.
            if t > lo {
                t
            } else {
                lo + (hi - lo) / 2.0
            }
        };
        let split = partition(&mut rows, |&r| goes_left(x[[r, f]], threshold));
        if split == 0 || split == rows.len() {
            return at;
        }
        let right_rows = rows.split_off(split);
        self.split(x, rows, depth + 1, limit, rng);
        let right = self.split(x, right_rows, depth + 1, limit, rng);
        self.nodes[at as usize] = Node { feature: f as u32, threshold, right };
        at
    }

    /// Levels of splits down to the deepest leaf, after checking the nodes
    /// link up as `grow` lays them out: every split's left child follows it,
    /// its right child comes later, and it splits on one of `n_features`.
    fn checked_depth(&self, n_features: usize) -> Result<usize, String> {
        let len = self.nodes.len();
        if len == 0 {
            return Err("a tree without nodes".into());
        }
        let mut deepest = 0;
        let mut stack = vec![(0usize, 0usize)];
        while let Some((i, level)) = stack.pop() {
            let n = &self.nodes[i];
            if n.feature == LEAF {
                deepest = deepest.max(level);
                continue;
            }
            let right = n.right as usize;
            if n.feature as usize >= n_features {
                return Err(format!("node {i} splits on feature {} of {n_features}", n.feature));
            }
            if i + 1 >= len || right <= i + 1 || right >= len {
                return Err(format!("node {i} links to nodes {} and {right} of {len}", i + 1));
            }
            if level >= MAX_DEPTH {
                return Err(format!("a tree deeper than {MAX_DEPTH} levels"));
            }
            stack.push((i + 1, level + 1));
            stack.push((right, level + 1));
        }
        Ok(deepest)
    }

    /// Path length of `x` (one value per feature, checked by the caller).
    fn path_length(&self, x: &[f64]) -> f64 {
        let mut i = 0usize;
        let mut depth = 0.0;
        loop {
            let n = &self.nodes[i];
            if n.feature == LEAF {
                return depth + n.threshold;
            }
            depth += 1.0;
            let v = x.get(n.feature as usize).copied().unwrap_or(f64::NAN);
            i = if goes_left(v, n.threshold) { i + 1 } else { n.right as usize };
        }
    }
}

/// Moves the elements for which `left` holds to the front; returns how many.
fn partition<T>(v: &mut [T], mut left: impl FnMut(&T) -> bool) -> usize {
    let mut k = 0;
    for i in 0..v.len() {
        if left(&v[i]) {
            v.swap(i, k);
            k += 1;
        }
    }
    k
}

impl<D: Data<Elem = f64>, T> Fit<ArrayBase<D, Ix2>, T, IForestError> for IsolationForestValidParams {
    type Object = IsolationForest;

    fn fit(&self, dataset: &DatasetBase<ArrayBase<D, Ix2>, T>) -> Result<IsolationForest, IForestError> {
        let x = dataset.records();
        let (n, n_features) = x.dim();
        if n < 2 {
            return Err(IForestError::TooFewRows(n));
        }
        if n_features == 0 {
            return Err(IForestError::NoColumns);
        }
        let psi = self.sample_size.min(n);
        let limit = (psi as f64).log2().ceil() as usize;
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        let trees: Vec<Tree> = (0..self.n_trees)
            .map(|_| {
                let rows = sample(&mut rng, n, psi).into_vec();
                Tree::grow(x, rows, limit, &mut rng)
            })
            .collect();
        let stored = StoredForest { params: self.clone(), n_features, normaliser: c(psi), trees };
        IsolationForest::try_from(stored).map_err(IForestError::Grown)
    }
}

impl IsolationForest {
    /// Anomaly score of one row, in (0, 1]: near 1 for points isolated at
    /// once, about 0.5 or less for ordinary ones. No allocation.
    pub fn score_one(&self, x: &[f64]) -> f64 {
        let total: f64 = match &self.flat {
            Some(flat) if x.len() >= self.n_features => flat.path_sum(x, self.trees.len()),
            _ => self.walk_sum(x),
        };
        self.score_of(total)
    }

    /// As [`IsolationForest::score_one`], by walking each tree's nodes one at
    /// a time instead of the flat layout: the same score to the bit, slower.
    /// The reference the fast path is tested and benchmarked against.
    pub fn score_one_walking(&self, x: &[f64]) -> f64 {
        self.score_of(self.walk_sum(x))
    }

    /// The score of a summed path length.
    fn score_of(&self, total: f64) -> f64 {
        let mean = total / self.trees.len() as f64;
        if self.normaliser > 0.0 {
            2f64.powf(-mean / self.normaliser)
        } else {
            0.5
        }
    }

    /// Sum of path lengths by walking each tree's nodes (the reference the flat
    /// layout must match, and the path for very deep forests).
    fn walk_sum(&self, x: &[f64]) -> f64 {
        self.trees.iter().map(|t| t.path_length(x)).sum()
    }

    pub fn n_features(&self) -> usize {
        self.n_features
    }

    pub fn params(&self) -> &IsolationForestValidParams {
        &self.params
    }
}

impl<D: Data<Elem = f64>> PredictInplace<ArrayBase<D, Ix2>, Array1<f64>> for IsolationForest {
    fn predict_inplace(&self, x: &ArrayBase<D, Ix2>, y: &mut Array1<f64>) {
        assert_eq!(x.ncols(), self.n_features, "records have a different number of features than the forest");
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
