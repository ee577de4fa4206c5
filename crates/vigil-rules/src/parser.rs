//! Parses tokens into rules. On an error the parser skips to the next `rule`
//! keyword, so every broken rule in a file is reported in one pass.

use rust_decimal::Decimal;
use vigil_core::Action;

use crate::lexer::{Pos, Tok, Token};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    And,
    Or,
}

impl BinOp {
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Eq => "==",
            BinOp::Ne => "!=",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
            BinOp::And => "and",
            BinOp::Or => "or",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Ast {
    Num(Decimal),
    /// A duration literal, in seconds.
    Duration(u64),
    Str(String),
    Bool(bool),
    /// A name, possibly dotted (`attributes.email_domain`).
    Name(Vec<String>),
    Neg(Box<Node>),
    Not(Box<Node>),
    Bin(BinOp, Box<Node>, Box<Node>),
    In {
        expr: Box<Node>,
        list: Vec<Node>,
        negated: bool,
    },
    /// `expr in @name`: membership in an analyst-maintained list file.
    InList {
        expr: Box<Node>,
        list: String,
        negated: bool,
    },
    /// A function call such as `lower(attributes.email)`.
    Call {
        name: String,
        args: Vec<Node>,
    },
    Is {
        expr: Box<Node>,
        missing: bool,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub ast: Ast,
    pub pos: Pos,
}

/// A rule as written, before names and types are checked.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleAst {
    pub name: String,
    pub pos: Pos,
    pub shadow: bool,
    pub when: Node,
    pub action: Action,
    pub code: String,
    pub score: Decimal,
    pub description: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ParseError {
    pub pos: Pos,
    pub message: String,
}

const KEYWORDS: [&str; 15] = [
    "rule",
    "when",
    "then",
    "score",
    "description",
    "shadow",
    "and",
    "or",
    "not",
    "in",
    "is",
    "missing",
    "present",
    "true",
    "false",
];

/// Deepest nesting of an expression; deeper input is refused, never a stack overflow.
pub const MAX_DEPTH: usize = 64;

struct Parser<'a> {
    tokens: &'a [Token],
    i: usize,
    depth: usize,
}

type PResult<T> = Result<T, ParseError>;

impl<'a> Parser<'a> {
    fn peek(&self) -> &'a Token {
        &self.tokens[self.i.min(self.tokens.len() - 1)]
    }

    fn next(&mut self) -> &'a Token {
        let t = self.peek();
        if self.i < self.tokens.len() - 1 {
            self.i += 1;
        }
        t
    }

    fn is_kw(&self, kw: &str) -> bool {
        matches!(&self.peek().tok, Tok::Ident(s) if s == kw)
    }

    fn eat_kw(&mut self, kw: &str) -> bool {
        if self.is_kw(kw) {
            self.next();
            true
        } else {
            false
        }
    }

    fn err<T>(&self, message: impl Into<String>) -> PResult<T> {
        Err(ParseError { pos: self.peek().pos, message: message.into() })
    }

    fn expect_kw(&mut self, kw: &str, context: &str) -> PResult<()> {
        if self.eat_kw(kw) {
            Ok(())
        } else {
            self.err(format!("expected `{kw}` {context}, found {}", self.peek().tok.describe()))
        }
    }

    fn name(&mut self, what: &str) -> PResult<(String, Pos)> {
        let t = self.peek();
        match &t.tok {
            Tok::Ident(s) if !KEYWORDS.contains(&s.as_str()) => {
                self.next();
                Ok((s.clone(), t.pos))
            }
            other => self.err(format!("expected {what}, found {}", other.describe())),
        }
    }

    fn rule(&mut self) -> PResult<RuleAst> {
        let pos = self.peek().pos;
        self.expect_kw("rule", "to start a rule")?;
        let (name, _) = self.name("the rule's name")?;
        let shadow = self.eat_kw("shadow");
        self.expect_kw("when", &format!("after `rule {name}`"))?;
        let when = self.expr()?;
        self.expect_kw("then", "after the condition")?;
        let action_tok = self.peek();
        let action = match &action_tok.tok {
            Tok::Ident(s) => Action::parse(s),
            _ => None,
        };
        let Some(action) = action else {
            return self.err(format!(
                "expected an action (approve, review or decline) after `then`, found {}",
                action_tok.tok.describe()
            ));
        };
        self.next();
        let (code, code_pos) = self.name("a reason code after the action")?;
        if !code.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_') {
            return Err(ParseError {
                pos: code_pos,
                message: format!(
                    "reason code `{code}` must be upper-case letters, digits and _ (such as {})",
                    code.to_ascii_uppercase()
                ),
            });
        }
        let mut rule = RuleAst { name, pos, shadow, when, action, code, score: Decimal::ZERO, description: None };
        let (mut has_score, mut has_description) = (false, false);
        loop {
            if self.is_kw("score") {
                if has_score {
                    return self.err("`score` is given twice");
                }
                self.next();
                let negative = if self.peek().tok == Tok::Minus {
                    self.next();
                    true
                } else {
                    self.peek().tok == Tok::Plus && {
                        self.next();
                        false
                    }
                };
                match &self.peek().tok {
                    Tok::Number(n) => {
                        rule.score = if negative { -*n } else { *n };
                        self.next();
                    }
                    other => return self.err(format!("expected a number after `score`, found {}", other.describe())),
                }
                has_score = true;
            } else if self.is_kw("description") {
                if has_description {
                    return self.err("`description` is given twice");
                }
                self.next();
                match &self.peek().tok {
                    Tok::Str(s) => {
                        rule.description = Some(s.clone());
                        self.next();
                    }
                    other => {
                        return self
                            .err(format!("expected a quoted text after `description`, found {}", other.describe()))
                    }
                }
                has_description = true;
            } else {
                break;
            }
        }
        if !self.is_kw("rule") && self.peek().tok != Tok::Eof {
            return self.err(format!(
                "expected `score`, `description` or the next `rule`, found {}",
                self.peek().tok.describe()
            ));
        }
        Ok(rule)
    }

    /// Runs `f` one nesting level deeper, refusing input nested past [`MAX_DEPTH`]
    /// so that no file can exhaust the stack.
    fn nested<T>(&mut self, f: impl FnOnce(&mut Self) -> PResult<T>) -> PResult<T> {
        self.depth += 1;
        let out = if self.depth > MAX_DEPTH {
            self.err(format!("expression nested more than {MAX_DEPTH} levels deep"))
        } else {
            f(self)
        };
        self.depth -= 1;
        out
    }

    fn expr(&mut self) -> PResult<Node> {
        self.nested(Self::or)
    }

    fn or(&mut self) -> PResult<Node> {
        let mut left = self.and()?;
        while self.is_kw("or") {
            let pos = self.next().pos;
            let right = self.and()?;
            left = Node { ast: Ast::Bin(BinOp::Or, Box::new(left), Box::new(right)), pos };
        }
        Ok(left)
    }

    fn and(&mut self) -> PResult<Node> {
        let mut left = self.not()?;
        while self.is_kw("and") {
            let pos = self.next().pos;
            let right = self.not()?;
            left = Node { ast: Ast::Bin(BinOp::And, Box::new(left), Box::new(right)), pos };
        }
        Ok(left)
    }

    fn not(&mut self) -> PResult<Node> {
        if self.is_kw("not") {
            let pos = self.next().pos;
            let inner = self.nested(Self::not);
            return Ok(Node { ast: Ast::Not(Box::new(inner?)), pos });
        }
        self.comparison()
    }

    fn comparison(&mut self) -> PResult<Node> {
        let left = self.additive()?;
        let op = match self.peek().tok {
            Tok::Eq => Some(BinOp::Eq),
            Tok::Ne => Some(BinOp::Ne),
            Tok::Lt => Some(BinOp::Lt),
            Tok::Le => Some(BinOp::Le),
            Tok::Gt => Some(BinOp::Gt),
            Tok::Ge => Some(BinOp::Ge),
            _ => None,
        };
        if let Some(op) = op {
            let pos = self.next().pos;
            let right = self.additive()?;
            if matches!(self.peek().tok, Tok::Eq | Tok::Ne | Tok::Lt | Tok::Le | Tok::Gt | Tok::Ge) {
                return self.err("comparisons do not chain; join them with `and`");
            }
            return Ok(Node { ast: Ast::Bin(op, Box::new(left), Box::new(right)), pos });
        }
        if self.is_kw("is") {
            let pos = self.next().pos;
            let missing = if self.eat_kw("missing") {
                true
            } else if self.eat_kw("present") {
                false
            } else {
                return self
                    .err(format!("expected `missing` or `present` after `is`, found {}", self.peek().tok.describe()));
            };
            return Ok(Node { ast: Ast::Is { expr: Box::new(left), missing }, pos });
        }
        let negated = self.is_kw("not")
            && matches!(self.tokens.get(self.i + 1).map(|t| &t.tok), Some(Tok::Ident(s)) if s == "in");
        if negated || self.is_kw("in") {
            let pos = self.peek().pos;
            if negated {
                self.next();
            }
            self.next();
            if self.peek().tok == Tok::At {
                self.next();
                let (list, _) = self.name("a list name after `@`")?;
                return Ok(Node { ast: Ast::InList { expr: Box::new(left), list, negated }, pos });
            }
            if self.peek().tok != Tok::LBracket {
                return self.err(format!(
                    "expected `[` to open a list or `@name` after `in`, found {}",
                    self.peek().tok.describe()
                ));
            }
            self.next();
            let mut list = Vec::new();
            while self.peek().tok != Tok::RBracket {
                list.push(self.unary()?);
                match self.peek().tok {
                    Tok::Comma => {
                        self.next();
                    }
                    Tok::RBracket => {}
                    _ => {
                        return self
                            .err(format!("expected `,` or `]` in the list, found {}", self.peek().tok.describe()))
                    }
                }
            }
            self.next();
            return Ok(Node { ast: Ast::In { expr: Box::new(left), list, negated }, pos });
        }
        Ok(left)
    }

    fn additive(&mut self) -> PResult<Node> {
        let mut left = self.multiplicative()?;
        loop {
            let op = match self.peek().tok {
                Tok::Plus => BinOp::Add,
                Tok::Minus => BinOp::Sub,
                _ => return Ok(left),
            };
            let pos = self.next().pos;
            let right = self.multiplicative()?;
            left = Node { ast: Ast::Bin(op, Box::new(left), Box::new(right)), pos };
        }
    }

    fn multiplicative(&mut self) -> PResult<Node> {
        let mut left = self.unary()?;
        loop {
            let op = match self.peek().tok {
                Tok::Star => BinOp::Mul,
                Tok::Slash => BinOp::Div,
                _ => return Ok(left),
            };
            let pos = self.next().pos;
            let right = self.unary()?;
            left = Node { ast: Ast::Bin(op, Box::new(left), Box::new(right)), pos };
        }
    }

    fn unary(&mut self) -> PResult<Node> {
        if self.peek().tok == Tok::Minus {
            let pos = self.next().pos;
            let inner = self.nested(Self::unary);
            return Ok(Node { ast: Ast::Neg(Box::new(inner?)), pos });
        }
        self.primary()
    }

    fn primary(&mut self) -> PResult<Node> {
        let t = self.peek();
        let pos = t.pos;
        let ast = match &t.tok {
            Tok::Number(n) => Ast::Num(*n),
            Tok::Duration(s) => Ast::Duration(*s),
            Tok::Str(s) => Ast::Str(s.clone()),
            Tok::Ident(s) if s == "true" => Ast::Bool(true),
            Tok::Ident(s) if s == "false" => Ast::Bool(false),
            Tok::LParen => {
                self.next();
                let inner = self.expr()?;
                if self.peek().tok != Tok::RParen {
                    return self.err(format!("expected `)`, found {}", self.peek().tok.describe()));
                }
                self.next();
                return Ok(inner);
            }
            Tok::Ident(s) if !KEYWORDS.contains(&s.as_str()) => {
                self.next();
                if self.peek().tok == Tok::LParen {
                    self.next();
                    let mut args = Vec::new();
                    while self.peek().tok != Tok::RParen {
                        args.push(self.expr()?);
                        match self.peek().tok {
                            Tok::Comma => {
                                self.next();
                            }
                            Tok::RParen => {}
                            _ => {
                                return self.err(format!(
                                    "expected `,` or `)` in the call of `{s}`, found {}",
                                    self.peek().tok.describe()
                                ))
                            }
                        }
                    }
                    self.next();
                    return Ok(Node { ast: Ast::Call { name: s.clone(), args }, pos });
                }
                let mut path = vec![s.clone()];
                while self.peek().tok == Tok::Dot {
                    self.next();
                    let (part, _) = self.name("a name after `.`")?;
                    path.push(part);
                }
                return Ok(Node { ast: Ast::Name(path), pos });
            }
            other => return self.err(format!("expected a value, a name or `(`, found {}", other.describe())),
        };
        self.next();
        Ok(Node { ast, pos })
    }
}

/// Parses every rule in a token stream, collecting an error per broken rule.
pub fn parse(tokens: &[Token]) -> (Vec<RuleAst>, Vec<ParseError>) {
    let mut p = Parser { tokens, i: 0, depth: 0 };
    let (mut rules, mut errors) = (Vec::new(), Vec::new());
    while p.peek().tok != Tok::Eof {
        match p.rule() {
            Ok(rule) => rules.push(rule),
            Err(e) => {
                errors.push(e);
                // Resynchronise at the next rule.
                p.next();
                while p.peek().tok != Tok::Eof && !p.is_kw("rule") {
                    p.next();
                }
            }
        }
    }
    (rules, errors)
}

/// Parses a token stream that holds one condition and nothing else (a
/// review queue's `when`, outside any rule).
pub fn parse_condition(tokens: &[Token]) -> Result<Node, ParseError> {
    let mut p = Parser { tokens, i: 0, depth: 0 };
    let node = p.expr()?;
    if p.peek().tok != Tok::Eof {
        return p.err(format!("expected the end of the condition, found {}", p.peek().tok.describe()));
    }
    Ok(node)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lexer::lex;

    fn parse_text(text: &str) -> (Vec<RuleAst>, Vec<ParseError>) {
        let (tokens, lex_errors) = lex(text);
        assert!(lex_errors.is_empty(), "{lex_errors:?}");
        parse(&tokens)
    }

    #[test]
    fn parses_a_full_rule() {
        let (rules, errors) = parse_text(
            "rule big shadow\n when amount > 10 * 2 and not (country in [\"FR\", \"DE\"]) or mcc is missing\n then review BIG_AMOUNT score -5 description \"x\"",
        );
        assert!(errors.is_empty(), "{errors:?}");
        let r = &rules[0];
        assert!(r.shadow);
        assert_eq!(r.action, Action::Review);
        assert_eq!(r.score, Decimal::new(-5, 0));
        // `or` binds loosest.
        assert!(matches!(r.when.ast, Ast::Bin(BinOp::Or, _, _)));
    }

    #[test]
    fn reports_each_broken_rule() {
        let (rules, errors) = parse_text(
            "rule a when amount > then decline X\nrule b when amount > 1 then decline Y\nrule c when amount > 1 then block Z\n",
        );
        assert_eq!(rules.len(), 1);
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert_eq!((errors[0].pos.line, errors[0].pos.column), (1, 22));
        assert!(errors[1].message.contains("expected an action"));
    }

    #[test]
    fn deep_nesting_is_refused_not_a_stack_overflow() {
        let deep = format!("rule a when {}amount > 1{} then review A", "(".repeat(5000), ")".repeat(5000));
        let (_, errors) = parse_text(&deep);
        assert!(errors[0].message.contains("nested more than"), "{errors:?}");
        let nots = format!("rule a when {} amount > 1 then review A", "not ".repeat(5000));
        let (_, errors) = parse_text(&nots);
        assert!(errors[0].message.contains("nested more than"), "{errors:?}");
        let negs = format!("rule a when {}amount > 1 then review A", "-".repeat(5000));
        let (_, errors) = parse_text(&negs);
        assert!(errors[0].message.contains("nested more than"), "{errors:?}");
    }

    #[test]
    fn calls_and_list_references() {
        let (rules, errors) =
            parse_text("rule a when lower(attributes.email) == \"x\" and country not in @risky then review A");
        assert!(errors.is_empty(), "{errors:?}");
        let Ast::Bin(BinOp::And, l, r) = &rules[0].when.ast else { panic!() };
        assert!(
            matches!(&l.ast, Ast::Bin(BinOp::Eq, c, _) if matches!(&c.ast, Ast::Call { name, args } if name == "lower" && args.len() == 1))
        );
        assert!(matches!(&r.ast, Ast::InList { list, negated: true, .. } if list == "risky"));
    }

    #[test]
    fn reason_codes_are_upper_case() {
        let (_, errors) = parse_text("rule a when amount > 1 then decline big");
        assert!(errors[0].message.contains("BIG"), "{errors:?}");
    }
}
