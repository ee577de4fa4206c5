//! Reading labelled history: JSON lines (`.jsonl`, `.json`), CSV (`.csv`) or
//! Parquet (`.parquet`, through Arrow; see `columnar.rs`), one event per record,
//! in time order, optionally with a label column. Amounts are
//! read from their text, so money stays exact. A record that breaks the event
//! contract is skipped and reported with its line.

use std::io::BufRead;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use vigil_core::{Event, EventField, Label, Verdict};

/// Columns that are history metadata, not event fields.
pub const SCENARIO_COLUMN: &str = "fraud_scenario";
/// When a fraud was confirmed (RFC 3339): where label features learn of it.
pub const REPORTED_COLUMN: &str = "fraud_reported_at";

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("cannot read {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: unknown history format; use .jsonl, .json, .csv or .parquet", path.display())]
    Format { path: PathBuf },
    #[error("{}: {message}", path.display())]
    Parquet { path: PathBuf, message: String },
    #[error("{}:{line}: {message}", path.display())]
    Csv { path: PathBuf, line: u64, message: String },
}

/// Events of a history, with their labels when the file has the label column.
#[derive(Debug, Default)]
pub struct History {
    pub events: Vec<Event>,
    /// `Some(is_fraud)` per event when labelled.
    pub labels: Vec<Option<bool>>,
    /// Per event, when its fraud was confirmed, if the history says.
    pub reported_at: Vec<Option<DateTime<Utc>>>,
    /// Per event, the fraud scenario a generated history names (`fraud_scenario`).
    pub scenarios: Vec<Option<String>>,
    /// Records refused by the event contract: how many, and the first few reasons.
    pub invalid: usize,
    pub first_errors: Vec<String>,
    /// The events a command reports on (`--where`, see `crate::select`); every
    /// event still counts in the features of later ones. `None`: all of them.
    pub selection: Option<Selection>,
    /// The file it was read from and the label column looked for, for messages.
    pub source: PathBuf,
    pub label_column: String,
}

/// Which events a `--where` predicate chose.
#[derive(Debug, Clone)]
pub struct Selection {
    pub predicate: String,
    /// Per event, whether the predicate holds.
    pub rows: Vec<bool>,
}

impl History {
    pub fn labelled(&self) -> bool {
        self.labels.iter().any(Option::is_some)
    }

    /// Why an unlabelled history cannot give what a command needs: which file,
    /// which column, and the flag that names another.
    pub fn no_labels(&self, needed: &str) -> String {
        format!(
            "{}: no labels (no `{}` column), so {needed}; give --label COLUMN if the labels are in another column",
            self.source.display(),
            self.label_column
        )
    }

    /// Whether event `i` is one the command reports on.
    pub fn selected(&self, i: usize) -> bool {
        self.selection.as_ref().is_none_or(|s| s.rows.get(i).copied().unwrap_or(false))
    }

    /// How many events the command reports on.
    pub fn selected_count(&self) -> usize {
        self.selection.as_ref().map_or(self.events.len(), |s| s.rows.iter().filter(|r| **r).count())
    }

    /// The fraud labels the history records (frauds with a report time), in
    /// report-time order: what label features learn, and when.
    pub fn fraud_labels(&self) -> Vec<Label> {
        let mut out: Vec<Label> = self
            .events
            .iter()
            .zip(&self.labels)
            .zip(&self.reported_at)
            .filter_map(|((e, l), at)| match (l, at) {
                (Some(true), Some(at)) => Some(Label::for_event(e, Verdict::Fraud, *at, None)),
                _ => None,
            })
            .collect();
        out.sort_by_key(|l| l.reported_at);
        out
    }

    pub(crate) fn push_row(&mut self, path: &Path, line: u64, mut record: Map<String, Value>, label_column: &str) {
        let label = record.remove(label_column).and_then(|v| match v {
            Value::Bool(b) => Some(b),
            Value::Number(n) => n.as_i64().map(|i| i != 0),
            Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" => Some(true),
                "false" | "0" | "no" => Some(false),
                _ => None,
            },
            _ => None,
        });
        let scenario = match record.remove(SCENARIO_COLUMN) {
            Some(Value::String(s)) if !s.trim().is_empty() => Some(s),
            _ => None,
        };
        let reported = match record.remove(REPORTED_COLUMN) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.trim().is_empty() => None,
            Some(v) => match v.as_str().map(DateTime::parse_from_rfc3339) {
                Some(Ok(t)) => Some(t.with_timezone(&Utc)),
                _ => {
                    self.reject_row(path, line, &format!("column `{REPORTED_COLUMN}`: `{v}` is not RFC 3339"));
                    return;
                }
            },
        };
        let bytes = serde_json::to_vec(&record).unwrap_or_default();
        match Event::from_json(&bytes) {
            Ok(e) => {
                self.events.push(e);
                self.labels.push(label);
                self.reported_at.push(reported);
                self.scenarios.push(scenario);
            }
            Err(e) => {
                self.invalid += 1;
                if self.first_errors.len() < 5 {
                    self.first_errors.push(format!("{}:{line}: {e}", path.display()));
                }
            }
        }
    }
}

/// How a history file is written: JSON lines, CSV or Parquet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    JsonLines,
    Csv,
    Parquet,
}

impl Format {
    /// Every format, by the name `--format` takes.
    pub const NAMES: [&'static str; 3] = ["jsonl", "csv", "parquet"];

    /// The name `--format` takes.
    pub fn name(self) -> &'static str {
        match self {
            Format::JsonLines => "jsonl",
            Format::Csv => "csv",
            Format::Parquet => "parquet",
        }
    }

    pub fn parse(name: &str) -> Option<Format> {
        match name {
            "jsonl" => Some(Format::JsonLines),
            "csv" => Some(Format::Csv),
            "parquet" => Some(Format::Parquet),
            _ => None,
        }
    }

    /// The format a file's extension names (`.jsonl`, `.json`, `.ndjson`,
    /// `.csv`, `.parquet`, `.parq`, `.pq`; in any case), if any.
    pub fn of_path(path: &Path) -> Option<Format> {
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or_default().to_ascii_lowercase();
        match ext.as_str() {
            "jsonl" | "json" | "ndjson" => Some(Format::JsonLines),
            "csv" => Some(Format::Csv),
            "parquet" | "parq" | "pq" => Some(Format::Parquet),
            _ => None,
        }
    }
}

/// Reads a history file. `label_column` names the fraud label (`is_fraud` by default).
pub fn read(path: &Path, label_column: &str) -> Result<History, HistoryError> {
    let io = |source| HistoryError::Io { path: path.to_path_buf(), source };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut history =
        History { source: path.to_path_buf(), label_column: label_column.to_owned(), ..History::default() };
    match Format::of_path(path).ok_or_else(|| HistoryError::Format { path: path.to_path_buf() })? {
        Format::JsonLines => {
            let reader = std::io::BufReader::with_capacity(1 << 20, file);
            for (i, line) in reader.lines().enumerate() {
                let line = line.map_err(io)?;
                if line.trim().is_empty() {
                    continue;
                }
                let n = i as u64 + 1;
                match serde_json::from_str::<Value>(&line) {
                    Ok(Value::Object(record)) => history.push_row(path, n, record, label_column),
                    Ok(_) => history.reject_row(path, n, "not a JSON object"),
                    Err(e) => history.reject_row(path, n, &format!("malformed JSON: {e}")),
                }
            }
        }
        Format::Csv => {
            let mut reader = csv::ReaderBuilder::new().from_reader(std::io::BufReader::with_capacity(1 << 20, file));
            let headers = reader
                .headers()
                .map_err(|e| HistoryError::Csv { path: path.to_path_buf(), line: 1, message: e.to_string() })?
                .clone();
            for row in reader.records() {
                let row = row.map_err(|e| HistoryError::Csv {
                    path: path.to_path_buf(),
                    line: e.position().map_or(0, |p| p.line()),
                    message: e.to_string(),
                })?;
                let line = row.position().map_or(0, |p| p.line());
                let mut record = Map::new();
                let mut attributes = Map::new();
                for (h, v) in headers.iter().zip(row.iter()) {
                    if v.is_empty() {
                        continue;
                    }
                    if EventField::parse(h).is_some()
                        || h == label_column
                        || h == SCENARIO_COLUMN
                        || h == REPORTED_COLUMN
                    {
                        record.insert(h.to_owned(), Value::String(v.to_owned()));
                    } else {
                        attributes.insert(h.to_owned(), Value::String(v.to_owned()));
                    }
                }
                if !attributes.is_empty() {
                    record.insert("attributes".into(), Value::Object(attributes));
                }
                history.push_row(path, line, record, label_column);
            }
        }
        Format::Parquet => crate::columnar::read(path, file, label_column, &mut history)?,
    }
    Ok(history)
}

impl History {
    pub(crate) fn reject_row(&mut self, path: &Path, line: u64, why: &str) {
        self.invalid += 1;
        if self.first_errors.len() < 5 {
            self.first_errors.push(format!("{}:{line}: {why}", path.display()));
        }
    }
}
