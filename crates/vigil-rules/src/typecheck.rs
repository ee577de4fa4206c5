//! Type checking: resolves names and checks types, turning a parsed rule into an [`Expr`] that
//! evaluates without lookups. Type errors (money compared with a count, text
//! with a number) are caught here, at load, never at evaluation.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use rust_decimal::Decimal;
use vigil_core::event::EventField;
use vigil_core::feature::{FeatureDef, ValueKind};

use crate::lexer::Pos;
use crate::parser::{Ast, BinOp, Node};

/// What a rule may refer to besides event fields.
#[derive(Debug, Clone, Default)]
pub struct Schema {
    pub features: Vec<FeatureDef>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    Money,
    Count,
    /// A plain number such as the model score or a ratio.
    Number,
    /// A numeric literal: takes the kind of whatever it meets.
    Literal,
    Text,
    Bool,
    /// An `attributes` value, whose type is known only at evaluation.
    Any,
    /// The event time: only an argument of `hour` and `weekday`.
    Time,
    /// A length of time in seconds: duration literals (`10m`) and time-since features.
    Duration,
    /// Already reported; suppresses follow-on errors.
    Error,
}

impl Type {
    fn describe(self) -> &'static str {
        match self {
            Type::Money => "money",
            Type::Count => "a count",
            Type::Number => "a number",
            Type::Literal => "a number",
            Type::Text => "text",
            Type::Bool => "a condition",
            Type::Any => "an attribute",
            Type::Time => "a time (use hour(timestamp) or weekday(timestamp))",
            Type::Duration => "a duration",
            Type::Error => "an error",
        }
    }

    /// What a value of this kind goes with, for the fix in a mismatch message.
    fn partners(self) -> &'static str {
        match self {
            Type::Money => "money with money (`amount`, an amount feature, or a number such as 250.00)",
            Type::Count => "a count with a count or a whole number such as 3",
            Type::Number | Type::Literal => "a number with a number such as 1.5",
            Type::Duration => "a duration with a duration such as 10m",
            Type::Text => "text with text in quotes, such as \"FR\"",
            Type::Bool => "a condition with `and`, `or` or `not`",
            _ => "values of one kind",
        }
    }

    fn is_numeric(self) -> bool {
        matches!(self, Type::Money | Type::Count | Type::Number | Type::Literal | Type::Any | Type::Duration)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Arith {
    Add,
    Sub,
    Mul,
    Div,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// A literal inside an `in [...]` list.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Lit {
    Num(Decimal),
    Text(String),
}

/// Analyst-maintained lists, by name (`@high_risk_countries`).
pub type Lists = BTreeMap<String, Arc<HashSet<String>>>;

/// Text functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TextTest {
    StartsWith,
    EndsWith,
    Contains,
}

/// A checked expression, ready to evaluate.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Num(Decimal),
    Text(String),
    Bool(bool),
    Amount,
    Field(EventField),
    Attribute(String),
    Feature(usize),
    ModelScore,
    Neg(Box<Expr>),
    Arith(Arith, Box<Expr>, Box<Expr>),
    Cmp(Cmp, Box<Expr>, Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    In {
        expr: Box<Expr>,
        list: Vec<Lit>,
        negated: bool,
    },
    InSet {
        expr: Box<Expr>,
        set: Arc<HashSet<String>>,
        negated: bool,
    },
    Lower(Box<Expr>),
    Upper(Box<Expr>),
    Test(TextTest, Box<Expr>, Box<Expr>),
    /// Hour of the event time, 0 to 23, UTC.
    Hour,
    /// Day of the week of the event time, `mon` to `sun`, UTC.
    Weekday,
    /// The raw event time; only reaches evaluation through `Hour` and `Weekday`.
    Timestamp,
    Is {
        expr: Box<Expr>,
        missing: bool,
    },
}

pub struct CheckError {
    pub pos: Pos,
    pub message: String,
}

pub struct Checker<'a> {
    pub schema: &'a Schema,
    pub lists: &'a Lists,
    pub errors: Vec<CheckError>,
}

impl Checker<'_> {
    fn error(&mut self, pos: Pos, message: impl Into<String>) -> (Expr, Type) {
        self.errors.push(CheckError { pos, message: message.into() });
        (Expr::Bool(false), Type::Error)
    }

    fn known_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = EventField::ALL.iter().map(|f| f.name()).collect();
        names.push("model_score");
        names.push("attributes");
        names.extend(self.schema.features.iter().map(|f| f.name.as_str()));
        names
    }

    fn name(&mut self, path: &[String], pos: Pos) -> (Expr, Type) {
        let first = path[0].as_str();
        if first == "attributes" {
            return match path {
                [_, attr] => (Expr::Attribute(attr.clone()), Type::Any),
                [_] => self.error(pos, "`attributes` needs a key, such as `attributes.email_domain`"),
                _ => self.error(pos, "attributes are one level deep: `attributes.KEY`"),
            };
        }
        if path.len() > 1 {
            return self.error(pos, format!("`{}` has no fields; only `attributes.KEY` is dotted", first));
        }
        if let Some(field) = EventField::parse(first) {
            return match field {
                EventField::Amount => (Expr::Amount, Type::Money),
                EventField::Timestamp => (Expr::Timestamp, Type::Time),
                f => (Expr::Field(f), Type::Text),
            };
        }
        if first == "model_score" {
            return (Expr::ModelScore, Type::Number);
        }
        if let Some(i) = self.schema.features.iter().position(|f| f.name == first) {
            let ty = match self.schema.features[i].aggregate.kind() {
                ValueKind::Count => Type::Count,
                ValueKind::Money => Type::Money,
                ValueKind::Number => Type::Number,
                ValueKind::Seconds => Type::Duration,
                ValueKind::Text => Type::Text,
            };
            return (Expr::Feature(i), ty);
        }
        let hint = vigil_core::suggest::hint(first, self.known_names());
        let hint = if hint.is_empty() && self.schema.features.is_empty() {
            "; no features are declared (check against a pipeline with --pipeline)".to_owned()
        } else {
            hint
        };
        self.error(pos, format!("unknown name `{first}`{hint}"))
    }

    /// The common kind of two numeric operands, or an error naming both
    /// (`sides`: the operands as written, to name them).
    fn unify(&mut self, a: Type, b: Type, pos: Pos, verb: &str, sides: (Option<&Node>, Option<&Node>)) -> Type {
        match (a, b) {
            (Type::Error, _) | (_, Type::Error) => Type::Error,
            (Type::Duration, Type::Literal) | (Type::Literal, Type::Duration) => {
                self.errors.push(CheckError {
                    pos,
                    message: format!(
                        "cannot {verb} a duration with a plain number; give it a unit, such as 90s, 10m or 24h"
                    ),
                });
                Type::Error
            }
            (x, y) if x == y => x,
            (Type::Literal | Type::Any, y) => y,
            (x, Type::Literal | Type::Any) => x,
            (x, y) => {
                let message = mismatch(verb, (x, sides.0), (y, sides.1));
                self.errors.push(CheckError { pos, message });
                Type::Error
            }
        }
    }

    /// Resolves and types one expression. One arm per node kind, on purpose:
    /// the language's typing rules stand together in one match (longer than
    /// most functions here) rather than scattered over helpers.
    pub fn expr(&mut self, node: &Node) -> (Expr, Type) {
        let pos = node.pos;
        match &node.ast {
            Ast::Num(n) => (Expr::Num(*n), Type::Literal),
            Ast::Duration(seconds) => (Expr::Num(Decimal::from(*seconds)), Type::Duration),
            Ast::Str(s) => (Expr::Text(s.clone()), Type::Text),
            Ast::Bool(b) => (Expr::Bool(*b), Type::Bool),
            Ast::Name(path) => self.name(path, pos),
            Ast::Neg(inner) => {
                let (e, t) = self.expr(inner);
                if !t.is_numeric() && t != Type::Error {
                    return self.error(pos, format!("cannot negate {}", t.describe()));
                }
                (Expr::Neg(Box::new(e)), t)
            }
            Ast::Not(inner) => {
                let (e, t) = self.expr(inner);
                self.want_bool(t, inner.pos, "`not`");
                (Expr::Not(Box::new(e)), Type::Bool)
            }
            Ast::Bin(op, l, r) => {
                let (le, lt) = self.expr(l);
                let (re, rt) = self.expr(r);
                let (le, re) = (Box::new(le), Box::new(re));
                match op {
                    BinOp::And | BinOp::Or => {
                        self.want_bool(lt, l.pos, &format!("`{}`", op.symbol()));
                        self.want_bool(rt, r.pos, &format!("`{}`", op.symbol()));
                        let e = if *op == BinOp::And { Expr::And(le, re) } else { Expr::Or(le, re) };
                        (e, Type::Bool)
                    }
                    BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Div => {
                        for t in [lt, rt] {
                            if !t.is_numeric() && t != Type::Error {
                                return self.error(pos, format!("cannot do arithmetic on {}", t.describe()));
                            }
                        }
                        let (arith, ty) = match op {
                            BinOp::Add => (Arith::Add, self.unify(lt, rt, pos, "add", (Some(l), Some(r)))),
                            BinOp::Sub => (Arith::Sub, self.unify(lt, rt, pos, "subtract", (Some(l), Some(r)))),
                            BinOp::Mul => (Arith::Mul, self.mul_type(lt, rt, pos)),
                            _ => (Arith::Div, div_type(lt, rt)),
                        };
                        (Expr::Arith(arith, le, re), ty)
                    }
                    _ => {
                        let cmp = match op {
                            BinOp::Eq => Cmp::Eq,
                            BinOp::Ne => Cmp::Ne,
                            BinOp::Lt => Cmp::Lt,
                            BinOp::Le => Cmp::Le,
                            BinOp::Gt => Cmp::Gt,
                            _ => Cmp::Ge,
                        };
                        let ordering = !matches!(cmp, Cmp::Eq | Cmp::Ne);
                        match (lt, rt) {
                            (Type::Error, _) | (_, Type::Error) => {}
                            (Type::Any, _) | (_, Type::Any) => {}
                            (a, b) if a.is_numeric() && b.is_numeric() => {
                                self.unify(a, b, pos, "compare", (Some(l), Some(r)));
                            }
                            (Type::Text, Type::Text) if !ordering => {}
                            (Type::Bool, Type::Bool) if !ordering => {}
                            (Type::Text, Type::Text) => {
                                return self.error(pos, "text has no order; use `==`, `!=` or `in`");
                            }
                            (a, b) => return self.error(pos, mismatch("compare", (a, Some(l)), (b, Some(r)))),
                        }
                        (Expr::Cmp(cmp, le, re), Type::Bool)
                    }
                }
            }
            Ast::In { expr, list, negated } => {
                let (e, t) = self.expr(expr);
                let mut lits = Vec::with_capacity(list.len());
                for item in list {
                    let lit = match (&item.ast, t) {
                        (Ast::Str(s), Type::Text | Type::Any | Type::Error) => Lit::Text(s.clone()),
                        (Ast::Num(n), ty) if ty.is_numeric() || ty == Type::Error => Lit::Num(*n),
                        (Ast::Neg(inner), ty) if ty.is_numeric() && matches!(inner.ast, Ast::Num(_)) => {
                            let Ast::Num(n) = inner.ast else { unreachable!() };
                            Lit::Num(-n)
                        }
                        (Ast::Str(_) | Ast::Num(_), ty) => {
                            self.errors.push(CheckError {
                                pos: item.pos,
                                message: format!("list item does not match {}", ty.describe()),
                            });
                            continue;
                        }
                        _ => {
                            self.errors.push(CheckError {
                                pos: item.pos,
                                message: "list items must be literal text or numbers".into(),
                            });
                            continue;
                        }
                    };
                    lits.push(lit);
                }
                (Expr::In { expr: Box::new(e), list: lits, negated: *negated }, Type::Bool)
            }
            Ast::InList { expr, list, negated } => {
                let (e, t) = self.expr(expr);
                if !matches!(t, Type::Text | Type::Any | Type::Error) {
                    return self.error(pos, format!("lists hold text; this is {}", t.describe()));
                }
                match self.lists.get(list) {
                    Some(set) => (Expr::InSet { expr: Box::new(e), set: set.clone(), negated: *negated }, Type::Bool),
                    None => {
                        let known = self.lists.keys().map(String::as_str);
                        let hint = vigil_core::suggest::hint(list, known);
                        let hint = if hint.is_empty() && self.lists.is_empty() {
                            "; list files live in the rules folder's lists/ as NAME.txt".to_owned()
                        } else {
                            hint
                        };
                        self.error(pos, format!("unknown list `@{list}`{hint}"))
                    }
                }
            }
            Ast::Call { name, args } => self.call(name, args, pos),
            Ast::Is { expr, missing } => {
                let (e, _) = self.expr(expr);
                (Expr::Is { expr: Box::new(e), missing: *missing }, Type::Bool)
            }
        }
    }

    fn call(&mut self, name: &str, args: &[Node], pos: Pos) -> (Expr, Type) {
        const FUNCTIONS: [&str; 7] = ["lower", "upper", "starts_with", "ends_with", "contains", "hour", "weekday"];
        let arity = match name {
            "lower" | "upper" | "hour" | "weekday" => 1,
            "starts_with" | "ends_with" | "contains" => 2,
            _ => {
                let hint = vigil_core::suggest::hint(name, FUNCTIONS);
                return self.error(pos, format!("unknown function `{name}`{hint}"));
            }
        };
        if args.len() != arity {
            let plural = if arity == 1 { "" } else { "s" };
            return self.error(pos, format!("`{name}` takes {arity} argument{plural}, not {}", args.len()));
        }
        let mut checked = Vec::with_capacity(arity);
        for a in args {
            let (e, t) = self.expr(a);
            let ok = match name {
                "hour" | "weekday" => matches!(t, Type::Time | Type::Error),
                _ => matches!(t, Type::Text | Type::Any | Type::Error),
            };
            if !ok {
                let want = if matches!(name, "hour" | "weekday") { "`timestamp`" } else { "text" };
                return self.error(a.pos, format!("`{name}` takes {want}, not {}", t.describe()));
            }
            checked.push(e);
        }
        let mut it = checked.into_iter();
        let mut next = || Box::new(it.next().unwrap_or(Expr::Bool(false)));
        match name {
            "lower" => (Expr::Lower(next()), Type::Text),
            "upper" => (Expr::Upper(next()), Type::Text),
            "hour" => (Expr::Hour, Type::Number),
            "weekday" => (Expr::Weekday, Type::Text),
            _ => {
                let test = match name {
                    "starts_with" => TextTest::StartsWith,
                    "ends_with" => TextTest::EndsWith,
                    _ => TextTest::Contains,
                };
                let (a, b) = (next(), next());
                (Expr::Test(test, a, b), Type::Bool)
            }
        }
    }

    pub fn want_bool(&mut self, t: Type, pos: Pos, context: &str) {
        if !matches!(t, Type::Bool | Type::Any | Type::Error) {
            self.errors.push(CheckError {
                pos,
                message: format!("{context} needs a condition, but this is {}", t.describe()),
            });
        }
    }

    fn mul_type(&mut self, a: Type, b: Type, pos: Pos) -> Type {
        match (a, b) {
            (Type::Error, _) | (_, Type::Error) => Type::Error,
            (Type::Literal | Type::Any, y) => y,
            (x, Type::Literal | Type::Any) => x,
            (Type::Money, Type::Money) => {
                self.errors.push(CheckError { pos, message: "cannot multiply money by money".into() });
                Type::Error
            }
            (Type::Duration, _) | (_, Type::Duration) => {
                self.errors
                    .push(CheckError { pos, message: format!("cannot multiply {} by {}", a.describe(), b.describe()) });
                Type::Error
            }
            (Type::Money, _) | (_, Type::Money) => Type::Money,
            (Type::Count, Type::Count) => Type::Count,
            _ => Type::Number,
        }
    }
}

fn div_type(a: Type, b: Type) -> Type {
    match (a, b) {
        (Type::Error, _) | (_, Type::Error) => Type::Error,
        (Type::Duration, Type::Duration) => Type::Number,
        (x, Type::Literal | Type::Any) => x,
        (Type::Money, Type::Count) => Type::Money,
        _ => Type::Number,
    }
}

/// Why two kinds do not go together, naming each side as written where it is
/// a name or a number, and what each goes with.
fn mismatch(verb: &str, (a, left): (Type, Option<&Node>), (b, right): (Type, Option<&Node>)) -> String {
    let mut message = format!("cannot {verb} {} with {}", a.describe(), b.describe());
    if let (Some(l), Some(r)) = (left.and_then(written), right.and_then(written)) {
        message.push_str(&format!(": {l} on the left is {}, {r} on the right is {}", a.describe(), b.describe()));
    }
    message.push_str(&format!("; {verb} {}, and {}", a.partners(), b.partners()));
    message
}

/// An operand as written, when it is short: a name or a number.
fn written(node: &Node) -> Option<String> {
    match &node.ast {
        Ast::Name(path) => Some(format!("`{}`", path.join("."))),
        Ast::Num(n) => Some(n.to_string()),
        Ast::Str(t) => Some(format!("\"{t}\"")),
        _ => None,
    }
}
