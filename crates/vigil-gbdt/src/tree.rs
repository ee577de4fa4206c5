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
/// to the leaf's value minus the root's.
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
