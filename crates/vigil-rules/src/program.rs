//! The form a rule set is evaluated in: every checked rule condition lowered into
//! one shared table of nodes, so that evaluation does no parsing, no name lookups
//! and no repeated work.
//!
//! - **Shared sub-expressions.** Identical sub-expressions of different rules
//!   (`channel == "ecom"`, `card_count_10m`, `amount`) become one node, computed
//!   at most once per event and only when some rule asks for it.
//! - **Threshold groups.** Every comparison of the same value with a number
//!   (`amount > 100`, `amount >= 500`, `5000 < amount`) joins that value's group.
//!   Per event the value is placed once among the group's sorted thresholds (a
//!   binary search), and each comparison is then answered by comparing two
//!   integers. Fifty amount thresholds cost one search, not fifty `Decimal`
//!   comparisons, which is why evaluation grows less than linearly in the number
//!   of rules that test the same fields.
//!
//! Semantics are those of the tree evaluator in `eval.rs` (three-valued logic: a
//! missing value makes a comparison unknown), which the tests use as the
//! reference.

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use rust_decimal::Decimal;

use crate::eval::{self, Context, Value};
use crate::typecheck::{Arith, Cmp, Expr, Lit, TextTest};

type Id = u32;

const UNSHARED: u32 = u32::MAX;

/// A list file's values, compared and hashed by identity: two rules naming the
/// same list share the node.
#[derive(Debug, Clone)]
struct SetRef(Arc<HashSet<String>>);

impl PartialEq for SetRef {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}
impl Eq for SetRef {}
impl Hash for SetRef {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (Arc::as_ptr(&self.0) as usize).hash(state);
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Node {
    Leaf(Leaf),
    Neg(Id),
    Arith(Arith, Id, Id),
    Lower(Id),
    Upper(Id),
    Cmp(Cmp, Id, Id),
    /// `value OP thresholds[index]` of a threshold group.
    Threshold {
        group: u32,
        index: u32,
        op: Cmp,
    },
    And(Id, Id),
    Or(Id, Id),
    Not(Id),
    In {
        expr: Id,
        list: Vec<Lit>,
        negated: bool,
    },
    InSet {
        expr: Id,
        set: SetRef,
        negated: bool,
    },
    Test(TextTest, Id, Id),
    Is {
        expr: Id,
        missing: bool,
    },
}

/// Nodes without children: literals and what is read from the context. Kept as
/// the checked [`Expr`] so that they are read by the same code as the reference.
#[derive(Debug, Clone, PartialEq)]
struct Leaf(Expr);

impl Eq for Leaf {}

impl Hash for Leaf {
    fn hash<H: Hasher>(&self, state: &mut H) {
        std::mem::discriminant(&self.0).hash(state);
        match &self.0 {
            Expr::Num(n) => n.hash(state),
            Expr::Text(t) | Expr::Attribute(t) => t.hash(state),
            Expr::Bool(b) => b.hash(state),
            Expr::Field(f) => f.hash(state),
            Expr::Feature(i) => i.hash(state),
            _ => {}
        }
    }
}

/// All comparisons of one value with numeric literals.
#[derive(Debug, Clone)]
struct Group {
    value: Id,
    /// Distinct thresholds, ascending.
    thresholds: Vec<Decimal>,
}

/// Where the value of a group falls among its thresholds, for one event.
#[derive(Clone, Copy)]
enum Rank {
    Unset,
    /// The value is missing or not a number: every comparison is unknown.
    Unknown,
    /// `below` thresholds are less than the value, `upto` are less or equal.
    At {
        below: u32,
        upto: u32,
    },
}

#[derive(Debug, Default, Clone)]
pub(crate) struct Program {
    nodes: Vec<Node>,
    /// Per node, its place in [`Scratch::values`] if more than one parent uses
    /// it, or [`UNSHARED`]: a value used once is not worth remembering.
    slots: Vec<u32>,
    shared: usize,
    groups: Vec<Group>,
    /// The condition of each rule, in rule order.
    roots: Vec<Id>,
}

/// Per-event memory of the program: computed node values and group ranks.
pub(crate) struct Scratch<'a> {
    /// Values of shared value nodes, by slot.
    values: Vec<Option<Value<'a>>>,
    /// Truths of shared condition nodes, by slot (`TRUTH_*`).
    truths: Vec<u8>,
    ranks: Vec<Rank>,
}

const TRUTH_UNSET: u8 = 0;
const TRUTH_FALSE: u8 = 1;
const TRUTH_TRUE: u8 = 2;
const TRUTH_UNKNOWN: u8 = 3;

impl Program {
    /// Lowers rule conditions, in rule order, into one program.
    pub(crate) fn build<'e>(conditions: impl IntoIterator<Item = &'e Expr>) -> Program {
        let mut b = Builder::default();
        let roots: Vec<Id> = conditions.into_iter().map(|e| b.lower(e)).collect();
        // Threshold indices were assigned in arrival order; sort each group and
        // renumber its comparisons.
        let mut groups = Vec::with_capacity(b.groups.len());
        let mut remap: Vec<Vec<u32>> = Vec::with_capacity(b.groups.len());
        for (value, thresholds) in b.groups {
            let mut sorted = thresholds.clone();
            sorted.sort();
            sorted.dedup();
            remap.push(
                thresholds.iter().map(|t| sorted.binary_search(t).expect("threshold was inserted") as u32).collect(),
            );
            groups.push(Group { value, thresholds: sorted });
        }
        let nodes: Vec<Node> = b
            .nodes
            .into_iter()
            .map(|n| match n {
                Node::Threshold { group, index, op } => {
                    Node::Threshold { group, index: remap[group as usize][index as usize], op }
                }
                other => other,
            })
            .collect();
        // A node is remembered per event when several parents (or rules) use it.
        let mut uses = vec![0u32; nodes.len()];
        for node in &nodes {
            for child in children(node) {
                uses[child as usize] += 1;
            }
        }
        for root in &roots {
            uses[*root as usize] += 1;
        }
        // A group reads its value once per event, whatever its number of comparisons.
        for g in &groups {
            uses[g.value as usize] += 1;
        }
        let mut shared = 0;
        let slots = uses
            .iter()
            .map(|u| {
                if *u > 1 {
                    shared += 1;
                    shared as u32 - 1
                } else {
                    UNSHARED
                }
            })
            .collect();
        Program { nodes, slots, shared, groups, roots }
    }

    pub(crate) fn scratch<'a>(&self) -> Scratch<'a> {
        Scratch {
            values: vec![None; self.shared],
            truths: vec![TRUTH_UNSET; self.shared],
            ranks: vec![Rank::Unset; self.groups.len()],
        }
    }

    /// Whether rule `rule`'s condition is known to be true.
    pub(crate) fn fires<'a>(&'a self, rule: usize, ctx: &Context<'a>, scratch: &mut Scratch<'a>) -> bool {
        self.truth(self.roots[rule], ctx, scratch) == Some(true)
    }

    /// Number of distinct nodes, for tests and diagnostics.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Kleene truth of a node: `None` is unknown.
    fn truth<'a>(&'a self, id: Id, ctx: &Context<'a>, s: &mut Scratch<'a>) -> Option<bool> {
        let slot = self.slots[id as usize];
        if slot == UNSHARED {
            return self.compute_truth(id, ctx, s);
        }
        match s.truths[slot as usize] {
            TRUTH_UNSET => {
                let t = self.compute_truth(id, ctx, s);
                s.truths[slot as usize] = match t {
                    Some(false) => TRUTH_FALSE,
                    Some(true) => TRUTH_TRUE,
                    None => TRUTH_UNKNOWN,
                };
                t
            }
            TRUTH_FALSE => Some(false),
            TRUTH_TRUE => Some(true),
            _ => None,
        }
    }

    fn compute_truth<'a>(&'a self, id: Id, ctx: &Context<'a>, s: &mut Scratch<'a>) -> Option<bool> {
        match &self.nodes[id as usize] {
            Node::Cmp(op, l, r) => eval::compare(*op, &self.value(*l, ctx, s), &self.value(*r, ctx, s)),
            Node::Threshold { group, index, op } => {
                let g = *group as usize;
                if let Rank::Unset = s.ranks[g] {
                    let group = &self.groups[g];
                    s.ranks[g] = match self.value(group.value, ctx, s) {
                        Value::Num(v) => Rank::At {
                            below: group.thresholds.partition_point(|t| *t < v) as u32,
                            upto: group.thresholds.partition_point(|t| *t <= v) as u32,
                        },
                        _ => Rank::Unknown,
                    };
                }
                match s.ranks[g] {
                    Rank::At { below, upto } => {
                        // thresholds[index] is below the value iff index < below,
                        // equal to it iff below <= index < upto.
                        let ord = if *index < below {
                            Ordering::Greater
                        } else if *index < upto {
                            Ordering::Equal
                        } else {
                            Ordering::Less
                        };
                        Some(eval::holds(*op, ord))
                    }
                    _ => None,
                }
            }
            Node::And(l, r) => {
                let left = self.truth(*l, ctx, s);
                eval::and(left, || self.truth(*r, ctx, s))
            }
            Node::Or(l, r) => {
                let left = self.truth(*l, ctx, s);
                eval::or(left, || self.truth(*r, ctx, s))
            }
            Node::Not(x) => self.truth(*x, ctx, s).map(|b| !b),
            Node::In { expr, list, negated } => eval::in_list(&self.value(*expr, ctx, s), list, *negated),
            Node::InSet { expr, set, negated } => eval::in_set(&self.value(*expr, ctx, s), &set.0, *negated),
            Node::Test(test, l, r) => eval::text_test(*test, &self.value(*l, ctx, s), &self.value(*r, ctx, s)),
            Node::Is { expr, missing } => Some((self.value(*expr, ctx, s) == Value::Missing) == *missing),
            // A value used as a condition: a `true` literal or an attribute.
            _ => eval::as_truth(&self.value(id, ctx, s)),
        }
    }

    fn value<'a>(&'a self, id: Id, ctx: &Context<'a>, s: &mut Scratch<'a>) -> Value<'a> {
        let slot = self.slots[id as usize];
        if slot == UNSHARED {
            return self.compute_value(id, ctx, s);
        }
        if let Some(v) = &s.values[slot as usize] {
            return v.clone();
        }
        let v = self.compute_value(id, ctx, s);
        s.values[slot as usize] = Some(v.clone());
        v
    }

    fn compute_value<'a>(&'a self, id: Id, ctx: &Context<'a>, s: &mut Scratch<'a>) -> Value<'a> {
        match &self.nodes[id as usize] {
            Node::Leaf(Leaf(e)) => eval::leaf(e, ctx),
            Node::Neg(x) => eval::neg(self.value(*x, ctx, s)),
            Node::Arith(op, l, r) => eval::arith(*op, self.value(*l, ctx, s), self.value(*r, ctx, s)),
            Node::Lower(x) => eval::change_case(self.value(*x, ctx, s), false),
            Node::Upper(x) => eval::change_case(self.value(*x, ctx, s), true),
            // A condition used as a value (`(a > 1) == (b > 1)`).
            _ => self.truth(id, ctx, s).map_or(Value::Missing, Value::Bool),
        }
    }
}

#[derive(Default)]
struct Builder {
    nodes: Vec<Node>,
    index: HashMap<Node, Id>,
    /// Per group: its value node and thresholds in arrival order.
    groups: Vec<(Id, Vec<Decimal>)>,
    group_of: HashMap<Id, u32>,
}

impl Builder {
    fn intern(&mut self, node: Node) -> Id {
        if let Some(id) = self.index.get(&node) {
            return *id;
        }
        let id = self.nodes.len() as Id;
        self.nodes.push(node.clone());
        self.index.insert(node, id);
        id
    }

    fn lower(&mut self, e: &Expr) -> Id {
        let node = match e {
            Expr::Neg(x) => Node::Neg(self.lower(x)),
            Expr::Arith(op, l, r) => Node::Arith(*op, self.lower(l), self.lower(r)),
            Expr::Lower(x) => Node::Lower(self.lower(x)),
            Expr::Upper(x) => Node::Upper(self.lower(x)),
            Expr::Cmp(op, l, r) => match (literal_number(l), literal_number(r)) {
                (None, Some(t)) => self.threshold(l, t, *op),
                (Some(t), None) => self.threshold(r, t, flip(*op)),
                _ => Node::Cmp(*op, self.lower(l), self.lower(r)),
            },
            Expr::And(l, r) => Node::And(self.lower(l), self.lower(r)),
            Expr::Or(l, r) => Node::Or(self.lower(l), self.lower(r)),
            Expr::Not(x) => Node::Not(self.lower(x)),
            Expr::In { expr, list, negated } => {
                Node::In { expr: self.lower(expr), list: list.clone(), negated: *negated }
            }
            Expr::InSet { expr, set, negated } => {
                Node::InSet { expr: self.lower(expr), set: SetRef(set.clone()), negated: *negated }
            }
            Expr::Test(t, l, r) => Node::Test(*t, self.lower(l), self.lower(r)),
            Expr::Is { expr, missing } => Node::Is { expr: self.lower(expr), missing: *missing },
            leaf => Node::Leaf(Leaf(leaf.clone())),
        };
        self.intern(node)
    }

    /// `value OP threshold`, as a member of `value`'s threshold group.
    fn threshold(&mut self, value: &Expr, threshold: Decimal, op: Cmp) -> Node {
        let value = self.lower(value);
        let group = match self.group_of.get(&value) {
            Some(g) => *g,
            None => {
                let g = self.groups.len() as u32;
                self.groups.push((value, Vec::new()));
                self.group_of.insert(value, g);
                g
            }
        };
        let list = &mut self.groups[group as usize].1;
        // Equal thresholds share an index so that equal comparisons share a node.
        let index = match list.iter().position(|t| *t == threshold) {
            Some(i) => i,
            None => {
                list.push(threshold);
                list.len() - 1
            }
        } as u32;
        Node::Threshold { group, index, op }
    }
}

/// The nodes a node reads directly. Threshold comparisons read their group's
/// value through the group's rank.
fn children(node: &Node) -> Vec<Id> {
    match node {
        Node::Leaf(_) | Node::Threshold { .. } => vec![],
        Node::Neg(x) | Node::Lower(x) | Node::Upper(x) | Node::Not(x) => vec![*x],
        Node::In { expr, .. } | Node::InSet { expr, .. } | Node::Is { expr, .. } => vec![*expr],
        Node::Arith(_, l, r) | Node::Cmp(_, l, r) | Node::And(l, r) | Node::Or(l, r) | Node::Test(_, l, r) => {
            vec![*l, *r]
        }
    }
}

/// The value of a numeric literal, negated or not.
fn literal_number(e: &Expr) -> Option<Decimal> {
    match e {
        Expr::Num(n) => Some(*n),
        Expr::Neg(x) => literal_number(x).map(|n| -n),
        _ => None,
    }
}

/// The comparison with its operands swapped: `t < x` is `x > t`.
fn flip(op: Cmp) -> Cmp {
    match op {
        Cmp::Lt => Cmp::Gt,
        Cmp::Le => Cmp::Ge,
        Cmp::Gt => Cmp::Lt,
        Cmp::Ge => Cmp::Le,
        same => same,
    }
}
