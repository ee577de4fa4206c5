//! Fitted trees, flat: nodes in depth-first order, a split's left child is the
//! next node and its right child is at `right`. Every node keeps its value as
//! fitted (for a leaf, what it adds to the margin; for a split, what it would
//! have added as a leaf), which path attributions read.

use serde::{Deserialize, Serialize};

/// `feature` of a leaf.
pub(crate) const LEAF: u32 = u32::MAX;

/// One node, as scoring reads it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Node {
    pub(crate) threshold: f64,
    pub(crate) value: f64,
    pub(crate) feature: u32,
    pub(crate) right: u32,
    pub(crate) missing_left: bool,
}

/// A tree as its file holds it: one array per field, node by node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tree {
    /// The input a split reads; `null` for a leaf.
    feature: Vec<Option<u32>>,
    /// A split sends a row left when its input is at most this.
    threshold: Vec<f64>,
    /// A split's right child (its left child is the next node); 0 for a leaf.
    right: Vec<u32>,
    /// Where a split sends a missing input.
    missing_left: Vec<bool>,
    /// A leaf's part of the margin; a split's value as a leaf.
    value: Vec<f64>,
}

impl Tree {
    pub(crate) fn from_nodes(nodes: &[Node]) -> Tree {
        Tree {
            feature: nodes.iter().map(|n| (n.feature != LEAF).then_some(n.feature)).collect(),
            threshold: nodes.iter().map(|n| n.threshold).collect(),
            right: nodes.iter().map(|n| n.right).collect(),
            missing_left: nodes.iter().map(|n| n.missing_left).collect(),
            value: nodes.iter().map(|n| n.value).collect(),
        }
    }

    /// The nodes, checked: every split's children exist and come after it,
    /// every input is below `features`, every number is finite. A damaged or
    /// hand-edited file is refused here rather than looping or reading out
    /// of bounds when scoring.
    pub(crate) fn nodes(&self, features: usize) -> Result<Vec<Node>, String> {
        let n = self.feature.len();
        let same = [self.threshold.len(), self.right.len(), self.missing_left.len(), self.value.len()];
        if n == 0 || same.iter().any(|l| *l != n) {
            return Err(format!("a tree needs nodes, each with every field ({n} features, lengths {same:?})"));
        }
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let (f, t, r, v) = (self.feature[i], self.threshold[i], self.right[i] as usize, self.value[i]);
            if !v.is_finite() {
                return Err(format!("node {i}: its value is not a finite number"));
            }
            let feature = match f {
                None => LEAF,
                Some(f) if (f as usize) < features && !t.is_nan() && r > i + 1 && r < n => f,
                Some(f) => {
                    return Err(format!(
                        "node {i}: a split on input {f} of {features}, threshold {t}, right child {r} of {n} nodes"
                    ))
                }
            };
            out.push(Node { threshold: t, value: v, feature, right: r as u32, missing_left: self.missing_left[i] });
        }
        // Depth-first: a split's left subtree fills exactly the nodes up to its right child.
        fn span(nodes: &[Node], i: usize) -> Result<usize, String> {
            let node = nodes.get(i).ok_or_else(|| format!("node {i} is missing"))?;
            if node.feature == LEAF {
                return Ok(i + 1);
            }
            let after_left = span(nodes, i + 1)?;
            if after_left != node.right as usize {
                return Err(format!("node {i}: its left subtree ends at {after_left}, not at its right child"));
            }
            span(nodes, node.right as usize)
        }
        if span(&out, 0)? != n {
            return Err("nodes left over after the tree".into());
        }
        Ok(out)
    }
}

/// The leaf `x` reaches in the tree starting at `nodes[0]`.
#[inline]
pub(crate) fn leaf<'a>(nodes: &'a [Node], x: &[f64]) -> &'a Node {
    let mut i = 0;
    loop {
        let n = &nodes[i];
        if n.feature == LEAF {
            return n;
        }
        let v = x[n.feature as usize];
        let left = if v.is_nan() { n.missing_left } else { v <= n.threshold };
        i = if left { i + 1 } else { n.right as usize };
    }
}

/// Calls `visit(input, part)` for every split on `x`'s path: the change of
/// value from the split to the child taken (path attributions). They add up
/// to the leaf's value minus the root's. One tree at a time, branching: the
/// reference [`Layout::attribute`] is tested against.
#[cfg(test)]
pub(crate) fn attribute(nodes: &[Node], x: &[f64], visit: &mut dyn FnMut(usize, f64)) {
    let mut i = 0;
    loop {
        let n = &nodes[i];
        if n.feature == LEAF {
            return;
        }
        let v = x[n.feature as usize];
        let left = if v.is_nan() { n.missing_left } else { v <= n.threshold };
        let next = if left { i + 1 } else { n.right as usize };
        visit(n.feature as usize, nodes[next].value - n.value);
        i = next;
    }
}

/// One node of the scoring layout: every tree of a model in one array,
/// walked [`LANES`] trees at a time in lockstep, without a branch on the
/// data: each step of each lane loads its node, compares and picks a child,
/// and the lanes' steps overlap in the processor. A leaf is its own two
/// children (further steps stay on it) and keeps its value in `threshold`.
/// `feature` holds the input in its low 30 bits, "missing goes left" in its
/// top bit and "leaf" in the next: a split's left child is the next step, a
/// leaf's is itself, and 16 bytes a step keep more of the trees in cache.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Step {
    threshold: f64,
    right: u32,
    feature: u32,
}

/// Trees walked together.
pub(crate) const LANES: usize = 8;

const MISSING_LEFT: u32 = 1 << 31;
const IS_LEAF: u32 = 1 << 30;

/// The most inputs the layout can name.
pub(crate) const MAX_FEATURES: usize = (IS_LEAF - 1) as usize;

/// [`LANES`] trees: their roots (a lane past the last tree starts on the
/// zero-valued leaf at index 0) and the deepest leaf's depth among them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Group {
    roots: [u32; LANES],
    depth: u32,
}

/// Every tree of a model in the scoring layout.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct Layout {
    steps: Vec<Step>,
    /// Each step's node value as fitted (a split's value as a leaf), apart
    /// from `steps` so that scoring's steps stay 16 bytes: what attributions read.
    values: Vec<f64>,
    groups: Vec<Group>,
}

impl Layout {
    /// The layout of checked trees, whose inputs are below [`MAX_FEATURES`].
    pub(crate) fn of(trees: &[Vec<Node>]) -> Result<Layout, String> {
        let mut steps = vec![Step { threshold: 0.0, right: 0, feature: IS_LEAF }];
        let mut values = vec![0.0];
        let mut roots = Vec::with_capacity(trees.len());
        let mut depths = Vec::with_capacity(trees.len());
        for nodes in trees {
            let base = steps.len();
            if base + nodes.len() > u32::MAX as usize {
                return Err(format!("more than {} nodes cannot be scored", u32::MAX));
            }
            let at = |i: usize| (base + i) as u32;
            steps.extend(nodes.iter().enumerate().map(|(i, n)| match n.feature {
                LEAF => Step { threshold: n.value, right: at(i), feature: IS_LEAF },
                f => Step {
                    threshold: n.threshold,
                    right: at(n.right as usize),
                    feature: f | if n.missing_left { MISSING_LEFT } else { 0 },
                },
            }));
            values.extend(nodes.iter().map(|n| n.value));
            roots.push(base as u32);
            depths.push(depth(nodes));
        }
        let groups = roots
            .chunks(LANES)
            .zip(depths.chunks(LANES))
            .map(|(r, d)| {
                let mut g = Group { roots: [0; LANES], depth: d.iter().copied().max().unwrap_or(0) };
                g.roots[..r.len()].copy_from_slice(r);
                g
            })
            .collect();
        Ok(Layout { steps, values, groups })
    }

    /// One step of a lane from step `i`: the input it reads (0 for a leaf)
    /// and the step it goes to (a leaf's is itself), without a branch on the data.
    #[inline(always)]
    fn step(&self, i: u32, x: &[f64]) -> (usize, u32) {
        let n = self.steps[i as usize];
        let f = (n.feature & !(MISSING_LEFT | IS_LEAF)) as usize;
        let v = x[f];
        // A missing value compares false; then its direction decides.
        let left = (v <= n.threshold) | (v.is_nan() & (n.feature & MISSING_LEFT != 0));
        let next = i + 1 - ((n.feature & IS_LEAF) >> 30);
        (f, if left { next } else { n.right })
    }

    /// Adds to `parts[input]` the path attributions of `x` in every tree
    /// (each split's move from its value to the child's), walked as
    /// [`Layout::margin`] walks: a lane on a leaf stays there and adds 0 to
    /// `parts[0]`. `x` and `parts` hold at least one value per input.
    /// Returns what [`Layout::margin`] returns for `base`, to the bit: the
    /// leaves are added in the same order.
    #[inline]
    pub(crate) fn attribute(&self, base: f64, x: &[f64], parts: &mut [f64]) -> f64 {
        let mut z = base;
        for g in &self.groups {
            let mut at = g.roots;
            for _ in 0..g.depth {
                for i in &mut at {
                    let (f, next) = self.step(*i, x);
                    parts[f] += self.values[next as usize] - self.values[*i as usize];
                    *i = next;
                }
            }
            for i in at {
                z += self.steps[i as usize].threshold;
            }
        }
        z
    }

    /// `base` plus the value of the leaf `x` reaches in every tree, added
    /// tree by tree in the trees' order.
    #[inline]
    pub(crate) fn margin(&self, base: f64, x: &[f64]) -> f64 {
        let mut z = base;
        for g in &self.groups {
            let mut at = g.roots;
            for _ in 0..g.depth {
                for i in &mut at {
                    *i = self.step(*i, x).1;
                }
            }
            for i in at {
                z += self.steps[i as usize].threshold;
            }
        }
        z
    }
}

/// The depth of a checked tree's deepest leaf (a lone leaf: 0).
fn depth(nodes: &[Node]) -> u32 {
    // Depth-first order: a node's depth is known when it is reached.
    let mut d = vec![0u32; nodes.len()];
    let mut deepest = 0;
    for (i, n) in nodes.iter().enumerate() {
        if n.feature != LEAF {
            d[i + 1] = d[i] + 1;
            d[n.right as usize] = d[i] + 1;
        } else {
            deepest = deepest.max(d[i]);
        }
    }
    deepest
}
