//! Resolves names and checks types, turning a parsed rule into an [`Expr`] that
//! evaluates without lookups. Type errors (money compared with a count, text
//! with a number) are caught here, at load, never at evaluation.

use rust_decimal::Decimal;
use vigil_core::event::EventField;
use vigil_core::feature::{Aggregate, FeatureDef};

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
            Type::Error => "an error",
        }
    }

    fn is_numeric(self) -> bool {
        matches!(self, Type::Money | Type::Count | Type::Number | Type::Literal | Type::Any)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arith {
    Add,
    Sub,
    Mul,
    Div,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// A literal inside an `in [...]` list.
#[derive(Debug, Clone, PartialEq)]
pub enum Lit {
    Num(Decimal),
    Text(String),
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
    In { expr: Box<Expr>, list: Vec<Lit>, negated: bool },
    Is { expr: Box<Expr>, missing: bool },
}

pub struct CheckError {
    pub pos: Pos,
    pub message: String,
}

pub struct Checker<'a> {
    pub schema: &'a Schema,
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
                EventField::Timestamp => {
                    self.error(pos, "`timestamp` cannot be used in rules yet; compare features or other fields")
                }
                f => (Expr::Field(f), Type::Text),
            };
        }
        if first == "model_score" {
            return (Expr::ModelScore, Type::Number);
        }
        if let Some(i) = self.schema.features.iter().position(|f| f.name == first) {
            let ty = match self.schema.features[i].aggregate {
                Aggregate::Count => Type::Count,
                Aggregate::SumAmount => Type::Money,
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

    /// The common kind of two numeric operands, or an error naming both.
    fn unify(&mut self, a: Type, b: Type, pos: Pos, verb: &str) -> Type {
        match (a, b) {
            (Type::Error, _) | (_, Type::Error) => Type::Error,
            (x, y) if x == y => x,
            (Type::Literal | Type::Any, y) => y,
            (x, Type::Literal | Type::Any) => x,
            (x, y) => {
                self.errors
                    .push(CheckError { pos, message: format!("cannot {verb} {} with {}", x.describe(), y.describe()) });
                Type::Error
            }
        }
    }

    pub fn expr(&mut self, node: &Node) -> (Expr, Type) {
        let pos = node.pos;
        match &node.ast {
            Ast::Num(n) => (Expr::Num(*n), Type::Literal),
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
                            BinOp::Add => (Arith::Add, self.unify(lt, rt, pos, "add")),
                            BinOp::Sub => (Arith::Sub, self.unify(lt, rt, pos, "subtract")),
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
                                self.unify(a, b, pos, "compare");
                            }
                            (Type::Text, Type::Text) if !ordering => {}
                            (Type::Bool, Type::Bool) if !ordering => {}
                            (Type::Text, Type::Text) => {
                                return self.error(pos, "text has no order; use `==`, `!=` or `in`");
                            }
                            (a, b) => {
                                return self
                                    .error(pos, format!("cannot compare {} with {}", a.describe(), b.describe()));
                            }
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
            Ast::Is { expr, missing } => {
                let (e, _) = self.expr(expr);
                (Expr::Is { expr: Box::new(e), missing: *missing }, Type::Bool)
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
            (Type::Money, _) | (_, Type::Money) => Type::Money,
            (Type::Count, Type::Count) => Type::Count,
            _ => Type::Number,
        }
    }
}

fn div_type(a: Type, b: Type) -> Type {
    match (a, b) {
        (Type::Error, _) | (_, Type::Error) => Type::Error,
        (x, Type::Literal | Type::Any) => x,
        (Type::Money, Type::Count) => Type::Money,
        _ => Type::Number,
    }
}
