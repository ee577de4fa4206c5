//! Vigil's rule language: the analyst-owned stage between features and the engine.
//!
//! Rule files are plain text (see `docs/rules.md`). They are lexed, parsed, and
//! checked against a [`Schema`] (the pipeline's declared features) into an
//! immutable [`RuleSet`] whose evaluation does no parsing and no name lookups.
//! A rule set that does not check is never built: [`RuleSet::load`] returns every
//! error in every file, each as `file:line:column: message`.

mod eval;
mod lexer;
mod parser;
mod program;
mod typecheck;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rust_decimal::prelude::ToPrimitive;
use sha2::{Digest, Sha256};
use vigil_core::{Action, Diagnostic};

pub use eval::Context;
pub use typecheck::{Lists, Schema};

use program::Program;
use typecheck::{Checker, Expr};

/// File extension of rule files.
pub const RULE_EXTENSION: &str = "rules";
/// Folder, beside the rule files, of list files (`lists/NAME.txt`).
pub const LISTS_DIR: &str = "lists";
/// Largest rule file accepted; a bigger one is refused, not parsed.
pub const MAX_RULE_FILE_BYTES: u64 = 4 << 20;
/// Largest list file accepted.
pub const MAX_LIST_FILE_BYTES: u64 = 64 << 20;

/// One checked rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub action: Action,
    pub code: String,
    pub score: f64,
    pub shadow: bool,
    pub description: Option<String>,
    /// Where the rule starts, as `file:line`.
    pub location: String,
    /// The checked condition; evaluation runs the rule set's [`Program`].
    when: Expr,
}

/// Every problem found while loading a rule set, each with its place.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
pub struct RuleErrors(pub Vec<Diagnostic>);

/// An immutable, checked set of rules with a content-hash version.
#[derive(Debug, Clone)]
pub struct RuleSet {
    rules: Vec<Rule>,
    program: Arc<Program>,
    version: String,
}

impl RuleSet {
    /// Loads a rule file, or every `*.rules` file in a folder (in name order).
    pub fn load(path: &Path, schema: &Schema) -> Result<RuleSet, RuleErrors> {
        let io_error =
            |p: &Path, e: std::io::Error| RuleErrors(vec![Diagnostic::whole(p, format!("cannot read: {e}"))]);
        let mut files = Vec::new();
        if path.is_dir() {
            let entries = std::fs::read_dir(path).map_err(|e| io_error(path, e))?;
            for entry in entries {
                let p = entry.map_err(|e| io_error(path, e))?.path();
                if p.extension().is_some_and(|x| x == RULE_EXTENSION) {
                    files.push(p);
                }
            }
            files.sort();
            if files.is_empty() {
                let message = format!("no *.{RULE_EXTENSION} files in this folder");
                return Err(RuleErrors(vec![Diagnostic::whole(path, message)]));
            }
        } else {
            files.push(path.to_path_buf());
        }
        let mut sources = Vec::with_capacity(files.len());
        for f in files {
            let text = read_limited(&f, MAX_RULE_FILE_BYTES)?;
            sources.push((f, text));
        }
        let lists = read_list_files(path)?;
        Self::build(&sources, &lists, schema)
    }

    /// Builds a rule set from `(file name, text)` pairs, without lists.
    pub fn from_sources(sources: &[(PathBuf, String)], schema: &Schema) -> Result<RuleSet, RuleErrors> {
        Self::build(sources, &[], schema)
    }

    /// Builds a rule set from rule sources and list files (`NAME.txt`: one value a
    /// line; blank lines and lines starting with `#` are skipped).
    pub fn build(
        sources: &[(PathBuf, String)],
        list_sources: &[(PathBuf, String)],
        schema: &Schema,
    ) -> Result<RuleSet, RuleErrors> {
        let mut errors = Vec::new();
        let mut rules: Vec<Rule> = Vec::new();
        let mut hasher = Sha256::new();
        let lists = parse_lists(list_sources, &mut errors, Some(&mut hasher));
        for (file, text) in sources {
            hasher.update(file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
            hasher.update([0]);
            hasher.update(text.as_bytes());
            hasher.update([0]);
            let err = |pos: lexer::Pos, message: String| Diagnostic::at(file, pos.line, pos.column, message);
            let (tokens, lex_errors) = lexer::lex(text);
            errors.extend(lex_errors.into_iter().map(|e| err(e.pos, e.message)));
            let (parsed, parse_errors) = parser::parse(&tokens);
            errors.extend(parse_errors.into_iter().map(|e| err(e.pos, e.message)));
            for r in parsed {
                if let Some(prev) = rules.iter().find(|x| x.name == r.name) {
                    errors.push(err(r.pos, format!("rule `{}` is already defined at {}", r.name, prev.location)));
                    continue;
                }
                let mut checker = Checker { schema, lists: &lists, errors: Vec::new() };
                let (when, ty) = checker.expr(&r.when);
                checker.want_bool(ty, r.when.pos, "`when`");
                let ok = checker.errors.is_empty();
                errors.extend(checker.errors.into_iter().map(|e| err(e.pos, e.message)));
                if ok {
                    rules.push(Rule {
                        name: r.name,
                        action: r.action,
                        code: r.code,
                        score: r.score.to_f64().unwrap_or(0.0),
                        shadow: r.shadow,
                        description: r.description,
                        location: format!("{}:{}", file.display(), r.pos.line),
                        when,
                    });
                }
            }
        }
        if !errors.is_empty() {
            errors.sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
            return Err(RuleErrors(errors));
        }
        let digest = hasher.finalize();
        let version = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
        let program = Arc::new(Program::build(rules.iter().map(|r| &r.when)));
        Ok(RuleSet { rules, program, version })
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Content hash of the rule files: the same text gives the same version.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Calls `fired`, in rule order, with the index of every rule whose
    /// condition is known to be true.
    pub fn evaluate(&self, ctx: &Context<'_>, mut fired: impl FnMut(usize, &Rule)) {
        let mut scratch = self.program.scratch();
        for (i, rule) in self.rules.iter().enumerate() {
            if self.program.fires(i, ctx, &mut scratch) {
                fired(i, rule);
            }
        }
    }
}

/// Reads a file, refusing one over `limit` bytes.
fn read_limited(f: &Path, limit: u64) -> Result<String, RuleErrors> {
    let io_error = |e: std::io::Error| RuleErrors(vec![Diagnostic::whole(f, format!("cannot read: {e}"))]);
    let len = std::fs::metadata(f).map_err(io_error)?.len();
    if len > limit {
        let message = format!("{len} bytes is over the {limit}-byte limit for this kind of file");
        return Err(RuleErrors(vec![Diagnostic::whole(f, message)]));
    }
    std::fs::read_to_string(f).map_err(io_error)
}

/// The list files (`lists/*.txt`) beside a rule file or inside a rule
/// folder, in name order, with their text.
fn read_list_files(rules_path: &Path) -> Result<Vec<(PathBuf, String)>, RuleErrors> {
    let lists_dir = if rules_path.is_dir() { rules_path.join(LISTS_DIR) } else { rules_path.with_file_name(LISTS_DIR) };
    let io_error = |e: std::io::Error| RuleErrors(vec![Diagnostic::whole(&lists_dir, format!("cannot read: {e}"))]);
    let mut lists = Vec::new();
    if lists_dir.is_dir() {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&lists_dir).map_err(io_error)? {
            let p = entry.map_err(io_error)?.path();
            if p.extension().is_some_and(|x| x == "txt") {
                names.push(p);
            }
        }
        names.sort();
        for p in names {
            let text = read_limited(&p, MAX_LIST_FILE_BYTES)?;
            lists.push((p, text));
        }
    }
    Ok(lists)
}

/// Lists from `(file, text)` pairs: one value a line; blank lines and lines
/// starting with `#` skipped. A bad list name is an error; `hasher`, when
/// given, takes each list into the rule set's version.
fn parse_lists(
    list_sources: &[(PathBuf, String)],
    errors: &mut Vec<Diagnostic>,
    mut hasher: Option<&mut Sha256>,
) -> Lists {
    let mut lists = Lists::new();
    for (file, text) in list_sources {
        let name = file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let valid = name.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
            && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !valid {
            errors
                .push(Diagnostic::whole(file, format!("list name `{name}` must be lower-case letters, digits and _")));
            continue;
        }
        if let Some(h) = hasher.as_deref_mut() {
            h.update(b"list:");
            h.update(name.as_bytes());
            h.update([0]);
            h.update(text.as_bytes());
            h.update([0]);
        }
        let values = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#'));
        lists.insert(name, Arc::new(values.map(str::to_owned).collect()));
    }
    lists
}

/// The lists a rule set at `rules_path` would see: what a condition outside
/// the rule files (a review queue's `when`) may name as `@list`.
pub fn load_lists(rules_path: &Path) -> Result<Lists, RuleErrors> {
    let sources = read_list_files(rules_path)?;
    let mut errors = Vec::new();
    let lists = parse_lists(&sources, &mut errors, None);
    if errors.is_empty() {
        Ok(lists)
    } else {
        Err(RuleErrors(errors))
    }
}

/// One checked condition outside any rule file: a review queue's `when`
/// in a pipeline file. It sees what a rule sees (the event, the features,
/// `model_score`) and is true only when known to be true.
#[derive(Debug, Clone)]
pub struct Condition {
    program: Arc<Program>,
}

impl Condition {
    /// Checks `text`, found at `line`:`column` of `file` (where its first
    /// character is), so that each error names its place in that file.
    pub fn compile(
        file: &Path,
        line: usize,
        column: usize,
        text: &str,
        schema: &Schema,
        lists: &Lists,
    ) -> Result<Condition, RuleErrors> {
        // Lines after the first start at column 1 of their own line.
        let place = |pos: lexer::Pos| {
            let col = if pos.line == 1 { column + pos.column - 1 } else { pos.column };
            (line + pos.line - 1, col)
        };
        let err = |pos: lexer::Pos, message: String| {
            let (l, c) = place(pos);
            Diagnostic::at(file, l, c, message)
        };
        let (tokens, lex_errors) = lexer::lex(text);
        let mut errors: Vec<Diagnostic> = lex_errors.into_iter().map(|e| err(e.pos, e.message)).collect();
        if !errors.is_empty() {
            return Err(RuleErrors(errors));
        }
        let node = parser::parse_condition(&tokens).map_err(|e| RuleErrors(vec![err(e.pos, e.message)]))?;
        let mut checker = Checker { schema, lists, errors: Vec::new() };
        let (when, ty) = checker.expr(&node);
        checker.want_bool(ty, node.pos, "a queue's `when`");
        errors.extend(checker.errors.into_iter().map(|e| err(e.pos, e.message)));
        if !errors.is_empty() {
            return Err(RuleErrors(errors));
        }
        Ok(Condition { program: Arc::new(Program::build([&when])) })
    }

    /// Whether the condition is known to be true of `ctx`.
    pub fn holds(&self, ctx: &Context<'_>) -> bool {
        let mut scratch = self.program.scratch();
        self.program.fires(0, ctx, &mut scratch)
    }
}

#[cfg(test)]
mod tests;
