//! A located problem in a file a person edits (a pipeline config, a rule or
//! list file): where it is and why, as every command prints it:
//! `file:line:column: key: message` (the key, a dotted path such as
//! `features[2].window`, where there is one; `file: message` for the whole file).

use std::fmt;
use std::path::{Path, PathBuf};

/// One problem in a file, with where it is. Line and column are 1-based; 0
/// for a problem with the whole file (it cannot be read, it is too large),
/// which is shown without them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    /// Dotted key path, such as `features[2].window`; empty where the file
    /// has no keys (rules).
    pub key: String,
    pub message: String,
}

impl Diagnostic {
    /// A problem at `line`:`column` of `file`, under no key.
    pub fn at(file: &Path, line: usize, column: usize, message: impl Into<String>) -> Diagnostic {
        Diagnostic { file: file.to_path_buf(), line, column, key: String::new(), message: message.into() }
    }

    /// A problem with the whole of `file`.
    pub fn whole(file: &Path, message: impl Into<String>) -> Diagnostic {
        Diagnostic::at(file, 0, 0, message)
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            // The whole file: no place inside it to name.
            0 => write!(f, "{}: ", self.file.display())?,
            _ => write!(f, "{}:{}:{}: ", self.file.display(), self.line, self.column)?,
        }
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// Collects the diagnostics of one text, placed by byte offsets.
pub struct Diagnostics<'a> {
    pub file: &'a Path,
    pub text: &'a str,
    pub list: Vec<Diagnostic>,
}

impl<'a> Diagnostics<'a> {
    pub fn new(file: &'a Path, text: &'a str) -> Diagnostics<'a> {
        Diagnostics { file, text, list: Vec::new() }
    }

    /// A problem at byte `offset`, under `key`.
    pub fn at(&mut self, offset: usize, key: impl Into<String>, message: impl Into<String>) {
        let (line, column) = line_col(self.text, offset);
        self.list.push(Diagnostic {
            file: self.file.to_path_buf(),
            line,
            column,
            key: key.into(),
            message: message.into(),
        });
    }

    /// A problem at a parsed value's place.
    pub fn on<T>(&mut self, spanned: &toml::Spanned<T>, key: impl Into<String>, message: impl Into<String>) {
        self.at(spanned.span().start, key, message)
    }
}
