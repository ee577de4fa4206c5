//! Evaluates checked expressions with three-valued logic: a missing field or
//! feature makes a comparison unknown, and a rule fires only when its condition
//! is known to be true.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::HashSet;

use chrono::{Datelike, Timelike};

use rust_decimal::prelude::FromPrimitive;
use rust_decimal::Decimal;
use serde_json::Value as Json;
use vigil_core::{Event, FeatureValue};

use crate::typecheck::{Arith, Cmp, Expr, Lit, TextTest};

/// What a rule sees of one event.
pub struct Context<'a> {
    pub event: &'a Event,
    /// Feature values in the order of the schema's feature definitions.
    pub features: &'a [FeatureValue],
    pub model_score: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value<'a> {
    Num(Decimal),
    /// Borrowed from the event or the rule, owned only after `lower` / `upper`.
    Text(Cow<'a, str>),
    Bool(bool),
    Missing,
}

const WEEKDAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

fn json_value(v: &Json) -> Value<'_> {
    match v {
        Json::String(s) => Value::Text(Cow::Borrowed(s)),
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => {
            let d =
                if let Some(i) = n.as_i64() { Some(Decimal::from(i)) } else { n.as_f64().and_then(Decimal::from_f64) };
            d.map_or(Value::Missing, Value::Num)
        }
        _ => Value::Missing,
    }
}

/// Reads a node without children: a literal, or a value of the event, its
/// features or the model score.
pub(crate) fn leaf<'a>(e: &'a Expr, ctx: &Context<'a>) -> Value<'a> {
    match e {
        Expr::Num(n) => Value::Num(*n),
        Expr::Text(s) => Value::Text(Cow::Borrowed(s)),
        Expr::Bool(b) => Value::Bool(*b),
        Expr::Amount => Value::Num(ctx.event.amount),
        Expr::Field(f) => ctx.event.text(*f).map_or(Value::Missing, |t| Value::Text(Cow::Borrowed(t))),
        Expr::Hour => Value::Num(Decimal::from(ctx.event.timestamp.hour())),
        Expr::Weekday => {
            Value::Text(Cow::Borrowed(WEEKDAYS[ctx.event.timestamp.weekday().num_days_from_monday() as usize]))
        }
        Expr::Attribute(k) => ctx.event.attributes.get(k).map_or(Value::Missing, json_value),
        Expr::Feature(i) => match ctx.features.get(*i) {
            Some(FeatureValue::Count(c) | FeatureValue::Seconds(c)) => Value::Num(Decimal::from(*c)),
            Some(FeatureValue::Money(m) | FeatureValue::Number(m)) => Value::Num(*m),
            Some(FeatureValue::Text(t)) => Value::Text(Cow::Borrowed(t)),
            _ => Value::Missing,
        },
        Expr::ModelScore => ctx.model_score.and_then(Decimal::from_f64).map_or(Value::Missing, Value::Num),
        // The raw event time only reaches evaluation through `hour` and `weekday`;
        // compound expressions are never leaves.
        _ => Value::Missing,
    }
}

pub(crate) fn arith<'a>(op: Arith, l: Value<'_>, r: Value<'_>) -> Value<'a> {
    match (l, r) {
        (Value::Num(a), Value::Num(b)) => {
            let out = match op {
                Arith::Add => a.checked_add(b),
                Arith::Sub => a.checked_sub(b),
                Arith::Mul => a.checked_mul(b),
                Arith::Div => a.checked_div(b),
            };
            out.map_or(Value::Missing, Value::Num)
        }
        _ => Value::Missing,
    }
}

/// Whether `op` holds for operands ordered `ord` (left against right).
pub(crate) fn holds(op: Cmp, ord: Ordering) -> bool {
    match op {
        Cmp::Eq => ord == Ordering::Equal,
        Cmp::Ne => ord != Ordering::Equal,
        Cmp::Lt => ord == Ordering::Less,
        Cmp::Le => ord != Ordering::Greater,
        Cmp::Gt => ord == Ordering::Greater,
        Cmp::Ge => ord != Ordering::Less,
    }
}

pub(crate) fn compare(op: Cmp, l: &Value<'_>, r: &Value<'_>) -> Option<bool> {
    let ord = match (l, r) {
        (Value::Num(a), Value::Num(b)) => a.cmp(b),
        (Value::Text(a), Value::Text(b)) => a.as_ref().cmp(b.as_ref()),
        (Value::Bool(a), Value::Bool(b)) => a.cmp(b),
        _ => return None,
    };
    Some(holds(op, ord))
}

pub(crate) fn in_list(v: &Value<'_>, list: &[Lit], negated: bool) -> Option<bool> {
    let found = match v {
        Value::Text(t) => list.iter().any(|l| matches!(l, Lit::Text(s) if s.as_str() == t.as_ref())),
        Value::Num(n) => list.iter().any(|l| matches!(l, Lit::Num(m) if m == n)),
        _ => return None,
    };
    Some(found != negated)
}

pub(crate) fn text_test(test: TextTest, l: &Value<'_>, r: &Value<'_>) -> Option<bool> {
    match (l, r) {
        (Value::Text(a), Value::Text(b)) => Some(match test {
            TextTest::StartsWith => a.starts_with(b.as_ref()),
            TextTest::EndsWith => a.ends_with(b.as_ref()),
            TextTest::Contains => a.contains(b.as_ref()),
        }),
        _ => None,
    }
}

/// Kleene `and`: false wins over unknown; the right side is evaluated only
/// when the left is not false.
pub(crate) fn and(left: Option<bool>, right: impl FnOnce() -> Option<bool>) -> Option<bool> {
    match left {
        Some(false) => Some(false),
        lv => match (lv, right()) {
            (_, Some(false)) => Some(false),
            (Some(true), Some(true)) => Some(true),
            _ => None,
        },
    }
}

/// Kleene `or`: true wins over unknown; the right side is evaluated only when
/// the left is not true.
pub(crate) fn or(left: Option<bool>, right: impl FnOnce() -> Option<bool>) -> Option<bool> {
    match left {
        Some(true) => Some(true),
        lv => match (lv, right()) {
            (_, Some(true)) => Some(true),
            (Some(false), Some(false)) => Some(false),
            _ => None,
        },
    }
}

pub(crate) fn neg(v: Value<'_>) -> Value<'_> {
    match v {
        Value::Num(n) => Value::Num(-n),
        _ => Value::Missing,
    }
}

/// `lower(...)` or `upper(...)` of a text value.
pub(crate) fn change_case(v: Value<'_>, upper: bool) -> Value<'_> {
    match v {
        Value::Text(t) if upper => Value::Text(Cow::Owned(t.to_uppercase())),
        Value::Text(t) => Value::Text(Cow::Owned(t.to_lowercase())),
        _ => Value::Missing,
    }
}

pub(crate) fn in_set(v: &Value<'_>, set: &HashSet<String>, negated: bool) -> Option<bool> {
    match v {
        Value::Text(t) => Some(set.contains(t.as_ref()) != negated),
        _ => None,
    }
}

/// A value used as a condition (a `true` literal, an attribute).
pub(crate) fn as_truth(v: &Value<'_>) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        _ => None,
    }
}

/// The straightforward tree-walking evaluator: the reference that the compiled
/// [`crate::program::Program`] is tested against.
#[cfg(test)]
pub(crate) mod reference {
    use super::*;

    fn value<'a>(e: &'a Expr, ctx: &Context<'a>) -> Value<'a> {
        match e {
            Expr::Lower(inner) => change_case(value(inner, ctx), false),
            Expr::Upper(inner) => change_case(value(inner, ctx), true),
            Expr::Neg(inner) => neg(value(inner, ctx)),
            Expr::Arith(op, l, r) => arith(*op, value(l, ctx), value(r, ctx)),
            Expr::And(..)
            | Expr::Or(..)
            | Expr::Not(_)
            | Expr::Cmp(..)
            | Expr::In { .. }
            | Expr::InSet { .. }
            | Expr::Test(..)
            | Expr::Is { .. } => truth(e, ctx).map_or(Value::Missing, Value::Bool),
            leaf_expr => leaf(leaf_expr, ctx),
        }
    }

    /// Kleene truth of a condition: `None` is unknown.
    pub(crate) fn truth(e: &Expr, ctx: &Context<'_>) -> Option<bool> {
        match e {
            Expr::And(l, r) => and(truth(l, ctx), || truth(r, ctx)),
            Expr::Or(l, r) => or(truth(l, ctx), || truth(r, ctx)),
            Expr::Not(inner) => truth(inner, ctx).map(|b| !b),
            Expr::Cmp(op, l, r) => compare(*op, &value(l, ctx), &value(r, ctx)),
            Expr::In { expr, list, negated } => in_list(&value(expr, ctx), list, *negated),
            Expr::InSet { expr, set, negated } => in_set(&value(expr, ctx), set, *negated),
            Expr::Test(test, l, r) => text_test(*test, &value(l, ctx), &value(r, ctx)),
            Expr::Is { expr, missing } => Some((value(expr, ctx) == Value::Missing) == *missing),
            other => as_truth(&value(other, ctx)),
        }
    }
}
