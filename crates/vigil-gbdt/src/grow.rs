//! Growing one tree, leaf by leaf, on gradient and hessian histograms.

use rayon::prelude::*;

use crate::bins::Binned;
use crate::tree::{Node, LEAF};

/// What bounds a tree.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) max_leaves: usize,
    /// 0: no limit.
    pub(crate) max_depth: usize,
    pub(crate) min_child_weight: f64,
    pub(crate) min_data_in_leaf: usize,
    pub(crate) lambda: f64,
    pub(crate) learning_rate: f64,
    pub(crate) threads: usize,
}

/// Rows times inputs below which a histogram is built on one thread: below
/// it, handing work to the pool costs more than it saves.
const PARALLEL_WORK: usize = 1 << 15;

/// Rows below which a pass over rows runs on one thread.
pub(crate) const PARALLEL_ROWS: usize = 1 << 14;

/// Inputs one task looks for a split on, at least.
const SPLIT_INPUTS_PER_TASK: usize = 4;

/// Gradient, hessian and row count of a set of rows.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Sums {
    g: f64,
    h: f64,
    n: u32,
}

impl Sums {
    fn add(&mut self, o: Sums) {
        self.g += o.g;
        self.h += o.h;
        self.n += o.n;
    }

    fn minus(self, o: Sums) -> Sums {
        Sums { g: self.g - o.g, h: self.h - o.h, n: self.n - o.n }
    }

    /// The node's score `G² / (H + λ)`.
    fn score(self, lambda: f64) -> f64 {
        self.g * self.g / (self.h + lambda)
    }

    /// The value of a leaf holding these rows.
    fn value(self, l: &Limits) -> f64 {
        -self.g / (self.h + l.lambda) * l.learning_rate
    }
}

/// Per input, the sums of each bin (the missing bin last).
struct Hist {
    bins: Vec<Sums>,
}

/// Where each input's bins start in a histogram, and how many present-value
/// bins it has.
struct Layout {
    offset: Vec<usize>,
    value_bins: Vec<usize>,
    total: usize,
}

impl Layout {
    fn of(binned: &Binned) -> Layout {
        let mut offset = Vec::with_capacity(binned.inputs.len());
        let mut total = 0;
        for b in &binned.inputs {
            offset.push(total);
            total += b.len() + 1;
        }
        Layout { offset, value_bins: binned.inputs.iter().map(|b| b.len()).collect(), total }
    }
}

/// A candidate split of a leaf.
#[derive(Debug, Clone, Copy)]
struct Split {
    gain: f64,
    feature: usize,
    /// Rows with a present value in bins `..=bin` go left.
    bin: usize,
    missing_left: bool,
    left: Sums,
    right: Sums,
}

/// A leaf while the tree grows: its rows (a range of the row index),
/// histogram, best split and its node.
struct Leaf {
    start: usize,
    end: usize,
    depth: usize,
    hist: Hist,
    best: Option<Split>,
    node: usize,
}

/// A node while the tree grows.
struct Grown {
    value: f64,
    /// (input, bin, missing left, left child, right child).
    split: Option<(usize, usize, bool, usize, usize)>,
}

/// The data one tree is grown from.
pub(crate) struct Data<'a> {
    pub(crate) binned: &'a Binned,
    pub(crate) g: &'a [f64],
    pub(crate) h: &'a [f64],
}

/// A grown tree: its nodes, flat, and the rows it was grown on, grouped by
/// leaf: `rows[start..end]` fell in a leaf of that value, for each of `leaves`.
pub(crate) struct Tree {
    pub(crate) nodes: Vec<Node>,
    pub(crate) rows: Vec<u32>,
    pub(crate) leaves: Vec<(usize, usize, f64)>,
}

/// Histograms of grown trees, kept for the next ones: one is larger than
/// the allocator's threshold for fresh pages (29 inputs of 256 bins is
/// 178 KB), so allocating each anew had the kernel zero pages for every leaf.
#[derive(Default)]
pub(crate) struct Pool {
    free: Vec<Hist>,
}

impl Pool {
    fn take(&mut self, total: usize) -> Hist {
        match self.free.pop() {
            Some(mut h) => {
                h.bins.clear();
                h.bins.resize(total, Sums::default());
                h
            }
            None => Hist { bins: vec![Sums::default(); total] },
        }
    }
}

/// Grows a tree on `rows` (row indices into the data), splitting on `inputs`.
pub(crate) fn grow(data: &Data<'_>, mut rows: Vec<u32>, inputs: &[usize], l: &Limits, pool: &mut Pool) -> Tree {
    let layout = Layout::of(data.binned);
    let hist = build(data, &layout, &rows, inputs, l.threads, pool);
    let sums = total(&hist, &layout, inputs);
    let mut nodes = vec![Grown { value: sums.value(l), split: None }];
    let best = best_split(&hist, &layout, inputs, sums, l);
    let mut leaves = vec![Leaf { start: 0, end: rows.len(), depth: 0, hist, best, node: 0 }];
    while leaves.len() < l.max_leaves {
        let candidate = leaves
            .iter()
            .enumerate()
            .filter(|(_, leaf)| l.max_depth == 0 || leaf.depth < l.max_depth)
            .filter_map(|(i, leaf)| leaf.best.map(|s| (i, s.gain)))
            .max_by(|a, b| a.1.total_cmp(&b.1));
        let Some((at, _)) = candidate else { break };
        let leaf = leaves.swap_remove(at);
        let split = leaf.best.expect("a candidate has a split");
        let column = data.binned.column(split.feature);
        let missing = layout.value_bins[split.feature];
        let goes_left = |r: u32| {
            let b = column[r as usize] as usize;
            if b == missing {
                split.missing_left
            } else {
                b <= split.bin
            }
        };
        let mid = leaf.start + partition(&mut rows[leaf.start..leaf.end], goes_left);
        let (left_rows, right_rows) = ((leaf.start, mid), (mid, leaf.end));
        // The smaller child's histogram from its rows, the larger's by subtraction.
        let left_smaller = mid - leaf.start <= leaf.end - mid;
        let small = if left_smaller { left_rows } else { right_rows };
        let small_hist = build(data, &layout, &rows[small.0..small.1], inputs, l.threads, pool);
        let mut large_hist = leaf.hist;
        for (a, b) in large_hist.bins.iter_mut().zip(&small_hist.bins) {
            *a = a.minus(*b);
        }
        let (left_hist, right_hist) = if left_smaller { (small_hist, large_hist) } else { (large_hist, small_hist) };
        let (li, ri) = (nodes.len(), nodes.len() + 1);
        nodes.push(Grown { value: split.left.value(l), split: None });
        nodes.push(Grown { value: split.right.value(l), split: None });
        nodes[leaf.node].split = Some((split.feature, split.bin, split.missing_left, li, ri));
        for ((start, end), hist, sums, node) in
            [(left_rows, left_hist, split.left, li), (right_rows, right_hist, split.right, ri)]
        {
            let best = best_split(&hist, &layout, inputs, sums, l);
            leaves.push(Leaf { start, end, depth: leaf.depth + 1, hist, best, node });
        }
    }
    let mut grouped = Vec::with_capacity(leaves.len());
    for leaf in leaves {
        grouped.push((leaf.start, leaf.end, nodes[leaf.node].value));
        pool.free.push(leaf.hist);
    }
    let mut flat = Vec::with_capacity(nodes.len());
    lay_out(&nodes, 0, data.binned, &mut flat);
    Tree { nodes: flat, rows, leaves: grouped }
}

/// Puts the subtree of `nodes[i]` into `out` depth-first, thresholds as raw values.
fn lay_out(nodes: &[Grown], i: usize, binned: &Binned, out: &mut Vec<Node>) {
    let at = out.len();
    let n = &nodes[i];
    out.push(Node { threshold: 0.0, value: n.value, feature: LEAF, right: 0, missing_left: false });
    if let Some((feature, bin, missing_left, left, right)) = n.split {
        lay_out(nodes, left, binned, out);
        let right_at = out.len();
        lay_out(nodes, right, binned, out);
        out[at] = Node {
            threshold: binned.inputs[feature].upper[bin],
            value: n.value,
            feature: feature as u32,
            right: right_at as u32,
            missing_left,
        };
    }
}

/// Moves the rows for which `left` holds to the front; how many.
fn partition(v: &mut [u32], left: impl Fn(u32) -> bool) -> usize {
    let mut k = 0;
    for i in 0..v.len() {
        if left(v[i]) {
            v.swap(i, k);
            k += 1;
        }
    }
    k
}

/// The histogram of `rows` over `inputs`, on up to `threads` threads.
fn build(data: &Data<'_>, layout: &Layout, rows: &[u32], inputs: &[usize], threads: usize, pool: &mut Pool) -> Hist {
    let mut hist = pool.take(layout.total);
    let bins = &mut hist.bins;
    // The rows' gradients and hessians gathered once, in the rows' order: each
    // input then reads them in sequence, and only its own bins at random.
    let gather = |&r: &u32| (data.g[r as usize], data.h[r as usize]);
    let ordered: Vec<(f64, f64)> = if threads > 1 && rows.len() >= PARALLEL_ROWS {
        rows.par_iter().with_min_len(PARALLEL_ROWS / 2).map(gather).collect()
    } else {
        rows.iter().map(gather).collect()
    };
    let fill = |f: usize, out: &mut [Sums]| {
        let column = data.binned.column(f);
        for (&r, &(g, h)) in rows.iter().zip(&ordered) {
            let s = &mut out[column[r as usize] as usize];
            s.g += g;
            s.h += h;
            s.n += 1;
        }
    };
    // Each input's bins are its own slice of the histogram.
    let mut slices: Vec<(usize, &mut [Sums])> = Vec::with_capacity(inputs.len());
    let mut rest: &mut [Sums] = bins;
    let mut at = 0;
    let mut wanted: Vec<usize> = inputs.to_vec();
    wanted.sort_unstable();
    for f in wanted {
        let (start, len) = (layout.offset[f], layout.value_bins[f] + 1);
        let tail = std::mem::take(&mut rest);
        let (_, tail) = tail.split_at_mut(start - at);
        let (mine, tail) = tail.split_at_mut(len);
        slices.push((f, mine));
        rest = tail;
        at = start + len;
    }
    if threads == 1 || rows.len() * slices.len() < PARALLEL_WORK {
        for (f, out) in slices {
            fill(f, out);
        }
    } else {
        // One task per input (its sums are its own, so the result does not
        // depend on the threads), on the fit's pool.
        slices.into_par_iter().for_each(|(f, out)| fill(f, out));
    }
    hist
}

/// The sums of a node, from any one input's bins (every row has one bin per input).
fn total(hist: &Hist, layout: &Layout, inputs: &[usize]) -> Sums {
    let Some(&f) = inputs.first() else { return Sums::default() };
    let mut s = Sums::default();
    for b in &hist.bins[layout.offset[f]..layout.offset[f] + layout.value_bins[f] + 1] {
        s.add(*b);
    }
    s
}

/// The best split of a node over `inputs`, if one gains anything within
/// the limits; ties go to the input listed first.
fn best_split(hist: &Hist, layout: &Layout, inputs: &[usize], sums: Sums, l: &Limits) -> Option<Split> {
    let better = |a: Option<Split>, b: Option<Split>| match (a, b) {
        (Some(a), Some(b)) => Some(if b.gain > a.gain { b } else { a }),
        (a, b) => a.or(b),
    };
    if l.threads > 1 && inputs.len() >= 2 * SPLIT_INPUTS_PER_TASK {
        inputs
            .par_iter()
            .with_min_len(SPLIT_INPUTS_PER_TASK)
            .map(|&f| best_split_on(hist, layout, f, sums, l))
            .reduce(|| None, better)
    } else {
        inputs.iter().map(|&f| best_split_on(hist, layout, f, sums, l)).fold(None, better)
    }
}

/// The best split of a node on input `f`.
fn best_split_on(hist: &Hist, layout: &Layout, f: usize, sums: Sums, l: &Limits) -> Option<Split> {
    let parent = sums.score(l.lambda);
    let allowed = |s: Sums| s.n as usize >= l.min_data_in_leaf && s.h >= l.min_child_weight;
    let mut best: Option<Split> = None;
    let (start, value_bins) = (layout.offset[f], layout.value_bins[f]);
    let bins = &hist.bins[start..start + value_bins + 1];
    let missing = bins[value_bins];
    let mut acc = Sums::default();
    for (b, s) in bins[..value_bins].iter().enumerate() {
        acc.add(*s);
        // With missing values to place, both sides are tried; the last
        // bin only separates present values from missing ones.
        let options: &[bool] = match (missing.n > 0, b + 1 == value_bins) {
            (true, false) => &[false, true],
            (true, true) => &[false],
            (false, false) => &[false],
            (false, true) => &[],
        };
        for &missing_left in options {
            let left = if missing_left {
                let mut with = acc;
                with.add(missing);
                with
            } else {
                acc
            };
            let right = sums.minus(left);
            if !allowed(left) || !allowed(right) {
                continue;
            }
            let gain = left.score(l.lambda) + right.score(l.lambda) - parent;
            if gain > 1e-12 && best.is_none_or(|s| gain > s.gain) {
                // Without missing values here, unseen ones follow the larger side.
                let missing_left = if missing.n > 0 { missing_left } else { left.h >= right.h };
                best = Some(Split { gain, feature: f, bin: b, missing_left, left, right });
            }
        }
    }
    best
}
