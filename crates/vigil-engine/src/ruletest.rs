//! Rule tests: table-driven cases kept beside the rules (`tests/*.toml` in the
//! rules folder), each an event, its features (as of before it), an optional
//! model score, and the expected decision and reason codes. Cases run through the
//! engine's decision policy with the given features, so they need no store.
//!
//! ```toml
//! [[case]]
//! name = "a fourth payment in ten minutes is reviewed"
//! expect = "review"
//! reasons = ["CARD_VELOCITY_10M"]      # every non-shadow reason code, in any order
//! shadow = []                          # optional: every shadow rule's code that fires
//! [case.event]
//! transaction_id = "t1"
//! timestamp = "2026-01-05T12:00:00Z"
//! amount = "40.00"
//! currency = "EUR"
//! card_id = "c1"
//! [case.features]
//! card_count_10m = 3
//! card_sum_30d = "1200.00"
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use rust_decimal::Decimal;
use serde::Deserialize;
use toml::Spanned;
use vigil_core::feature::{Aggregate, ValueKind};
use vigil_core::{Action, Event, FeatureValue, FeatureVector};

use crate::{Engine, Options};

/// Folder of test files inside the rules folder.
pub const TESTS_DIR: &str = "tests";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TestFile {
    #[serde(default)]
    case: Vec<Spanned<RawCase>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCase {
    name: String,
    expect: String,
    #[serde(default)]
    reasons: Vec<String>,
    /// Shadow rules expected to fire; unchecked when absent.
    shadow: Option<Vec<String>>,
    event: toml::Table,
    #[serde(default)]
    features: toml::Table,
    model_score: Option<f64>,
}

/// One case's outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct CaseResult {
    pub file: PathBuf,
    pub line: usize,
    pub name: String,
    /// `None` when the case passed.
    pub failure: Option<String>,
}

impl fmt::Display for CaseResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = if self.failure.is_some() { "FAIL" } else { "ok" };
        write!(f, "{status:>4}  {}:{}: {}", self.file.display(), self.line, self.name)?;
        if let Some(why) = &self.failure {
            for l in why.lines() {
                write!(f, "\n        {l}")?;
            }
        }
        Ok(())
    }
}

/// The test files of a rules folder (or the one file given).
pub fn test_files(rules_path: &Path) -> Vec<PathBuf> {
    let dir = if rules_path.is_dir() { rules_path.join(TESTS_DIR) } else { rules_path.with_file_name(TESTS_DIR) };
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "toml")).collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

fn feature_value(aggregate: Aggregate, v: &toml::Value) -> Result<FeatureValue, String> {
    let decimal = |v: &toml::Value, what: &str| match v {
        toml::Value::String(s) => Decimal::from_str_exact(s).map_err(|_| format!("`{s}` is not a decimal {what}")),
        toml::Value::Integer(i) => Ok(Decimal::from(*i)),
        other => Err(format!("{what} must be a decimal string such as \"12.50\", not {other}")),
    };
    match aggregate.kind() {
        ValueKind::Count => match v {
            toml::Value::Integer(i) => Ok(FeatureValue::Count(*i)),
            other => Err(format!("a count must be a whole number, not {other}")),
        },
        ValueKind::Money => decimal(v, "amount").map(FeatureValue::Money),
        ValueKind::Number => decimal(v, "number").map(FeatureValue::Number),
        ValueKind::Seconds => match v {
            toml::Value::Integer(i) => Ok(FeatureValue::Seconds(*i)),
            toml::Value::String(s) => vigil_core::feature::parse_duration_s(s)
                .map(|s| FeatureValue::Seconds(s as i64))
                .map_err(|e| format!("a time must be seconds or a duration such as \"10m\": {e}")),
            other => Err(format!("a time must be seconds or a duration such as \"10m\", not {other}")),
        },
        ValueKind::Text => match v {
            toml::Value::String(s) => Ok(FeatureValue::Text(s.clone())),
            other => Err(format!("a field's value must be a string, not {other}")),
        },
    }
}

/// Runs every case of one file. A file that does not parse is one failed case.
pub async fn run_file(engine: &Engine, file: &Path) -> Vec<CaseResult> {
    let fail = |line: usize, name: &str, why: String| CaseResult {
        file: file.to_path_buf(),
        line,
        name: name.to_owned(),
        failure: Some(why),
    };
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => return vec![fail(0, "(file)", format!("cannot read: {e}"))],
    };
    let parsed: TestFile = match toml::from_str(&text) {
        Ok(p) => p,
        Err(e) => {
            let line = e.span().map_or(0, |s| vigil_core::diagnostic::line_col(&text, s.start).0);
            return vec![fail(line, "(file)", e.message().trim().to_owned())];
        }
    };
    let line_of = |spanned: &Spanned<RawCase>| vigil_core::diagnostic::line_col(&text, spanned.span().start).0;
    // Every case that reads as a case is decided in one call; the others fail as they are.
    let prepared: Vec<Result<Prepared, String>> =
        parsed.case.iter().map(|c| Prepared::of(c.get_ref(), engine.features())).collect();
    let ready: Vec<&Prepared> = prepared.iter().filter_map(|p| p.as_ref().ok()).collect();
    let events: Vec<&Event> = ready.iter().map(|p| &p.event).collect();
    let features: Vec<FeatureVector> = ready.iter().map(|p| p.features.clone()).collect();
    let scores: Vec<Option<f64>> = ready.iter().map(|p| p.model_score).collect();
    let mut decided = match engine.decide(&events, Options::given(&features, &scores)).await {
        Ok(d) => d.into_iter(),
        Err(e) => return vec![fail(0, "(file)", format!("cannot decide: {e}"))],
    };
    parsed
        .case
        .iter()
        .zip(&prepared)
        .map(|(spanned, p)| {
            let case = spanned.get_ref();
            let result = match p {
                Err(why) => Err(why.clone()),
                Ok(p) => match decided.next() {
                    Some(d) => compare(case, p.expect, &d),
                    None => Err("no decision for this case (a bug)".to_owned()),
                },
            };
            CaseResult {
                file: file.to_path_buf(),
                line: line_of(spanned),
                name: case.name.clone(),
                failure: result.err(),
            }
        })
        .collect()
}

/// A case read into what the engine decides on.
struct Prepared {
    expect: Action,
    event: Event,
    features: FeatureVector,
    model_score: Option<f64>,
}

impl Prepared {
    /// Reads a case against the pipeline's feature definitions.
    fn of(case: &RawCase, defs: &[vigil_core::FeatureDef]) -> Result<Prepared, String> {
        let expect = Action::parse(&case.expect)
            .ok_or_else(|| format!("`expect = \"{}\"` is not approve, review or decline", case.expect))?;
        let json = serde_json::to_vec(&case.event).map_err(|e| e.to_string())?;
        let event = Event::from_json(&json).map_err(|e| format!("the case's event is invalid: {e}"))?;
        let mut values = vec![FeatureValue::Missing; defs.len()];
        for (name, v) in &case.features {
            let Some(i) = defs.iter().position(|d| &d.name == name) else {
                let hint = vigil_core::suggest::hint(name, defs.iter().map(|d| d.name.as_str()));
                return Err(format!("unknown feature `{name}`{hint}"));
            };
            values[i] = feature_value(defs[i].aggregate, v).map_err(|m| format!("feature `{name}`: {m}"))?;
        }
        let features = FeatureVector { values, ..FeatureVector::default() };
        Ok(Prepared { expect, event, features, model_score: case.model_score })
    }
}

/// Whether a case's decision is the one it expects; if not, a readable diff.
fn compare(case: &RawCase, expect: Action, d: &vigil_core::Decision) -> Result<(), String> {
    let got: BTreeSet<&str> = d.reasons.iter().filter(|r| !r.shadow).map(|r| r.code.as_str()).collect();
    let want: BTreeSet<&str> = case.reasons.iter().map(String::as_str).collect();
    let shadow_got: BTreeSet<&str> = d.reasons.iter().filter(|r| r.shadow).map(|r| r.code.as_str()).collect();
    let shadow_want: Option<BTreeSet<&str>> = case.shadow.as_ref().map(|s| s.iter().map(String::as_str).collect());
    let shadow_ok = shadow_want.as_ref().is_none_or(|w| *w == shadow_got);
    if d.decision == expect && got == want && shadow_ok {
        return Ok(());
    }
    let list = |s: &BTreeSet<&str>| s.iter().copied().collect::<Vec<_>>().join(", ");
    let shadow: Vec<&str> = shadow_got.iter().copied().collect();
    let mut why = format!(
        "expected: {} [{}]\ngot:      {} [{}] (score {})",
        expect,
        list(&want),
        d.decision,
        list(&got),
        d.score
    );
    let missing: Vec<&str> = want.difference(&got).copied().collect();
    let extra: Vec<&str> = got.difference(&want).copied().collect();
    if !missing.is_empty() {
        why.push_str(&format!("\nmissing reasons: {}", missing.join(", ")));
    }
    if !extra.is_empty() {
        why.push_str(&format!("\nunexpected reasons: {}", extra.join(", ")));
    }
    match &shadow_want {
        Some(w) if !shadow_ok => why.push_str(&format!(
            "\nexpected shadow rules: [{}]\ngot shadow rules:      [{}]",
            list(w),
            shadow.join(", ")
        )),
        _ if !shadow.is_empty() => why.push_str(&format!("\nshadow rules fired: {}", shadow.join(", "))),
        _ => {}
    }
    Err(why)
}

/// Runs every test file of the rules folder.
pub async fn run_all(engine: &Engine, rules_path: &Path) -> BTreeMap<PathBuf, Vec<CaseResult>> {
    let mut out = BTreeMap::new();
    for f in test_files(rules_path) {
        let results = run_file(engine, &f).await;
        out.insert(f, results);
    }
    out
}
