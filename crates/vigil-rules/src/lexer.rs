//! Turns rule text into tokens, each with its line and column.

use rust_decimal::Decimal;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Tok {
    Ident(String),
    Number(Decimal),
    /// A duration literal (`90s`, `10m`, `24h`, `30d`, `2w`), in seconds.
    Duration(u64),
    Str(String),
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
    Dot,
    At,
    Plus,
    Minus,
    Star,
    Slash,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Eof,
}

impl Tok {
    pub fn describe(&self) -> String {
        match self {
            Tok::Ident(s) => format!("`{s}`"),
            Tok::Number(n) => format!("number `{n}`"),
            Tok::Duration(s) => format!("duration of {s}s"),
            Tok::Str(s) => format!("string \"{s}\""),
            Tok::Eof => "end of file".into(),
            other => format!("`{}`", other.symbol()),
        }
    }

    fn symbol(&self) -> &'static str {
        match self {
            Tok::LParen => "(",
            Tok::RParen => ")",
            Tok::LBracket => "[",
            Tok::RBracket => "]",
            Tok::Comma => ",",
            Tok::Dot => ".",
            Tok::At => "@",
            Tok::Plus => "+",
            Tok::Minus => "-",
            Tok::Star => "*",
            Tok::Slash => "/",
            Tok::Eq => "==",
            Tok::Ne => "!=",
            Tok::Lt => "<",
            Tok::Le => "<=",
            Tok::Gt => ">",
            Tok::Ge => ">=",
            _ => "",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Token {
    pub tok: Tok,
    pub pos: Pos,
}

/// A lexing error: where, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct LexError {
    pub pos: Pos,
    pub message: String,
}

/// Tokenises the whole text. Lexing errors are collected and the offending
/// characters skipped, so one typo does not hide the problems after it.
///
/// Longer than most functions here, on purpose: one loop with one arm per
/// kind of token, sharing the position it advances, reads as the grammar's
/// token table; split up, each piece would need the cursor passed around.
pub fn lex(text: &str) -> (Vec<Token>, Vec<LexError>) {
    let mut tokens = Vec::new();
    let mut errors = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    let (mut i, mut line, mut col) = (0usize, 1usize, 1usize);
    macro_rules! advance {
        () => {{
            if chars[i] == '\n' {
                line += 1;
                col = 1;
            } else {
                col += 1;
            }
            i += 1;
        }};
    }
    while i < chars.len() {
        let c = chars[i];
        let pos = Pos { line, column: col };
        if c.is_whitespace() {
            advance!();
            continue;
        }
        if c == '#' {
            while i < chars.len() && chars[i] != '\n' {
                advance!();
            }
            continue;
        }
        if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                advance!();
            }
            tokens.push(Token { tok: Tok::Ident(chars[start..i].iter().collect()), pos });
            continue;
        }
        if c.is_ascii_digit() {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '_' || chars[i] == '.') {
                // A dot must be followed by a digit to belong to the number.
                if chars[i] == '.' && !chars.get(i + 1).is_some_and(|d| d.is_ascii_digit()) {
                    break;
                }
                advance!();
            }
            let text: String = chars[start..i].iter().filter(|c| **c != '_').collect();
            if i < chars.len() && (chars[i].is_ascii_alphabetic()) {
                let mut word = text.clone();
                while i < chars.len() && chars[i].is_ascii_alphanumeric() {
                    word.push(chars[i]);
                    advance!();
                }
                match vigil_core::feature::parse_duration_s(&word) {
                    Ok(seconds) => tokens.push(Token { tok: Tok::Duration(seconds), pos }),
                    Err(_) => {
                        errors.push(LexError {
                            pos,
                            message: format!(
                                "`{word}` is neither a number, a duration (90s, 10m, 24h, 30d, 2w) nor a name"
                            ),
                        });
                        // A stand-in keeps the parser from reporting the same mistake again.
                        tokens.push(Token { tok: Tok::Number(Decimal::ZERO), pos });
                    }
                }
                continue;
            }
            match Decimal::from_str_exact(&text) {
                Ok(n) => tokens.push(Token { tok: Tok::Number(n), pos }),
                Err(_) => errors.push(LexError { pos, message: format!("`{text}` is not a valid number") }),
            }
            continue;
        }
        if c == '"' {
            advance!();
            let mut s = String::new();
            let mut closed = false;
            while i < chars.len() && chars[i] != '\n' {
                let ch = chars[i];
                advance!();
                match ch {
                    '"' => {
                        closed = true;
                        break;
                    }
                    '\\' if i < chars.len() => {
                        let esc = chars[i];
                        advance!();
                        match esc {
                            '"' => s.push('"'),
                            '\\' => s.push('\\'),
                            'n' => s.push('\n'),
                            other => {
                                errors.push(LexError { pos, message: format!("unknown escape `\\{other}` in string") });
                            }
                        }
                    }
                    other => s.push(other),
                }
            }
            if closed {
                tokens.push(Token { tok: Tok::Str(s), pos });
            } else {
                errors.push(LexError { pos, message: "string is not closed before the end of the line".into() });
            }
            continue;
        }
        let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
        let (tok, len) = match two.as_str() {
            "==" => (Some(Tok::Eq), 2),
            "!=" => (Some(Tok::Ne), 2),
            "<=" => (Some(Tok::Le), 2),
            ">=" => (Some(Tok::Ge), 2),
            _ => (
                match c {
                    '(' => Some(Tok::LParen),
                    ')' => Some(Tok::RParen),
                    '[' => Some(Tok::LBracket),
                    ']' => Some(Tok::RBracket),
                    ',' => Some(Tok::Comma),
                    '.' => Some(Tok::Dot),
                    '@' => Some(Tok::At),
                    '+' => Some(Tok::Plus),
                    '-' => Some(Tok::Minus),
                    '*' => Some(Tok::Star),
                    '/' => Some(Tok::Slash),
                    '<' => Some(Tok::Lt),
                    '>' => Some(Tok::Gt),
                    _ => None,
                },
                1,
            ),
        };
        match tok {
            Some(tok) => tokens.push(Token { tok, pos }),
            None => {
                let hint = if c == '=' { "; compare with `==`" } else { "" };
                errors.push(LexError { pos, message: format!("unexpected character `{c}`{hint}") });
            }
        }
        for _ in 0..len {
            advance!();
        }
    }
    tokens.push(Token { tok: Tok::Eof, pos: Pos { line, column: col } });
    (tokens, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_carry_positions() {
        let (t, e) = lex("rule x\n  when amount >= 1_000.50 # big\n");
        assert!(e.is_empty());
        assert_eq!(t[3].tok, Tok::Ident("amount".into()));
        assert_eq!(t[3].pos, Pos { line: 2, column: 8 });
        assert_eq!(t[4].tok, Tok::Ge);
        assert_eq!(t[5].tok, Tok::Number(Decimal::new(100050, 2)));
    }

    #[test]
    fn errors_are_collected() {
        let (_, e) = lex("a = 1 and \"open\nb $ 2");
        let msgs: Vec<_> = e.iter().map(|e| (e.pos.line, e.pos.column, e.message.as_str())).collect();
        assert_eq!(msgs.len(), 3, "{msgs:?}");
        assert!(msgs[0].2.contains("compare with `==`"));
        assert_eq!((msgs[1].0, msgs[1].1), (1, 11));
        assert_eq!((msgs[2].0, msgs[2].1), (2, 3));
    }
}
