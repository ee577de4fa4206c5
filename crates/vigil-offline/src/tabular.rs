//! Any table of numeric columns with a 0/1 label: `vigil train --features a,b,c
//! --label y` and `vigil evaluate` on data sets that are not Vigil events.
//!
//! The table is a CSV file with a header (fields may be quoted, as the `csv`
//! crate reads them). Rows are taken to be in time order: training uses the
//! first `train_share` of them and evaluation the rest, never a random split.
//! An empty cell is a missing value; anything else that is not a number is an
//! error naming its line and column.

use std::path::{Path, PathBuf};

use crate::OfflineError;

/// The chosen columns of a table, as model inputs, with their labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<f64>>,
    pub labels: Vec<bool>,
    /// Each row's time, when a time column was read (`read_csv_timed`).
    pub times: Option<Vec<chrono::DateTime<chrono::Utc>>>,
}

#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("cannot read {}: {message}", path.display())]
    Read { path: PathBuf, message: String },
    #[error("{}: no column `{column}` (columns: {known})", path.display())]
    MissingColumn { path: PathBuf, column: String, known: String },
    #[error("{}:{line}: column `{column}`: {message}", path.display())]
    Cell { path: PathBuf, line: u64, column: String, message: String },
}

/// Reads `features` and the 0/1 `label` column of a CSV file.
pub fn read_csv(path: &Path, features: &[String], label: &str) -> Result<Table, TableError> {
    read_csv_timed(path, features, label, None)
}

/// As [`read_csv`], also reading each row's time from the column `time`
/// (RFC 3339, or seconds since 1970), for a split by date.
pub fn read_csv_timed(path: &Path, features: &[String], label: &str, time: Option<&str>) -> Result<Table, TableError> {
    let read = |e: csv::Error| TableError::Read { path: path.to_path_buf(), message: e.to_string() };
    let mut reader = csv::ReaderBuilder::new().trim(csv::Trim::All).from_path(path).map_err(read)?;
    let headers = reader.headers().map_err(read)?.clone();
    let position = |name: &str| {
        headers.iter().position(|h| h == name).ok_or_else(|| TableError::MissingColumn {
            path: path.to_path_buf(),
            column: name.to_owned(),
            known: headers.iter().collect::<Vec<_>>().join(", "),
        })
    };
    let at: Vec<usize> = features.iter().map(|f| position(f)).collect::<Result<_, _>>()?;
    let label_at = position(label)?;
    let time_at = time.map(|t| position(t).map(|i| (t, i))).transpose()?;
    let mut table =
        Table { columns: features.to_vec(), rows: Vec::new(), labels: Vec::new(), times: time_at.map(|_| Vec::new()) };
    for record in reader.records() {
        let record = record.map_err(read)?;
        let line = record.position().map_or(0, |p| p.line());
        let cell = |column: &str, message: String| TableError::Cell {
            path: path.to_path_buf(),
            line,
            column: column.to_owned(),
            message,
        };
        let mut row = Vec::with_capacity(at.len());
        for (name, &i) in features.iter().zip(&at) {
            let text = record.get(i).unwrap_or("");
            row.push(if text.is_empty() {
                f64::NAN
            } else {
                text.parse::<f64>().map_err(|_| cell(name, format!("`{text}` is not a number")))?
            });
        }
        let flag = match record.get(label_at).unwrap_or("").to_ascii_lowercase().as_str() {
            "1" | "1.0" | "true" | "yes" => true,
            "0" | "0.0" | "false" | "no" => false,
            other => return Err(cell(label, format!("`{other}` is not a 0/1 label"))),
        };
        if let (Some((name, i)), Some(times)) = (time_at, table.times.as_mut()) {
            let text = record.get(i).unwrap_or("");
            times.push(parse_time(text).ok_or_else(|| {
                cell(name, format!("`{text}` is not a time (RFC 3339, a date, or seconds since 1970)"))
            })?);
        }
        table.rows.push(row);
        table.labels.push(flag);
    }
    Ok(table)
}

/// A time as tables and the command line give it: RFC 3339, a calendar day
/// (`2026-03-01`, midnight UTC), or seconds since 1970.
pub fn parse_time(text: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Some(t.with_timezone(&chrono::Utc));
    }
    if let Ok(day) = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return day.and_hms_opt(0, 0, 0).map(|t| t.and_utc());
    }
    let secs: f64 = text.parse().ok()?;
    secs.is_finite().then(|| chrono::DateTime::from_timestamp_millis((secs * 1000.0).round() as i64)).flatten()
}

impl Table {
    /// The row where evaluation starts: the first `share` of the rows train.
    pub fn split(&self, share: f64) -> usize {
        ((self.rows.len() as f64) * share).round() as usize
    }

    /// The first row at or after `at`; the rows must be in time order.
    pub fn split_before(&self, path: &Path, at: chrono::DateTime<chrono::Utc>) -> Result<usize, OfflineError> {
        let times = self.times.as_ref().ok_or_else(|| {
            OfflineError::Data(format!("{}: a split by date needs a time column (--time-column)", path.display()))
        })?;
        if let Some(i) = times.windows(2).position(|w| w[1] < w[0]) {
            return Err(OfflineError::Data(format!(
                "{}: rows are not in time order (data row {} is earlier than the one before it); sort the table first",
                path.display(),
                i + 2
            )));
        }
        Ok(times.partition_point(|t| *t < at))
    }
}

/// Trains on a table: the first `config.train_share` of its rows in file order,
/// or the rows before `config.split_before`.
pub fn train(table: &Table, path: &Path, config: &crate::TrainConfig) -> Result<crate::TrainReport, OfflineError> {
    if table.rows.is_empty() {
        return Err(OfflineError::Data(format!("{}: no rows", path.display())));
    }
    let (split, how) = match config.split_before {
        Some(at) => (table.split_before(path, at)?, format!("before {}", at.to_rfc3339())),
        None => (table.split(config.train_share), "by row order".to_owned()),
    };
    let data = serde_json::json!({
        "from_table": path.display().to_string(),
        "rows": table.rows.len(),
        "split": how,
    });
    crate::fit_rows(&table.rows, &table.labels, split, table.columns.clone(), data, config)
}

/// Writes a history's feature table as CSV: `transaction_id`, `timestamp`,
/// then the model inputs (`amount` and every declared feature, as of before
/// each event, label features included), then `label` (0/1, empty when
/// unknown). The very rows `vigil train` fits, for other tools to use; read it
/// back with `vigil train --features ...`.
pub fn write_features(
    out: impl std::io::Write,
    defs: &[vigil_core::FeatureDef],
    history: &crate::history::History,
    progress: &crate::Progress,
) -> Result<usize, OfflineError> {
    let events: Vec<&vigil_core::Event> = history.events.iter().collect();
    let labels = history.fraud_labels();
    let label_refs: Vec<&vigil_core::Label> = labels.iter().collect();
    let features = crate::features_over_history_with(defs, &events, &label_refs, progress)?;
    let io = |e: csv::Error| OfflineError::Data(format!("cannot write the feature table: {e}"));
    let mut w = csv::Writer::from_writer(out);
    let names = vigil_engine::model_inputs(defs);
    let inputs = vigil_engine::InputMap::all(defs);
    w.write_record(["transaction_id", "timestamp"].iter().chain(names.iter()).chain(["label"].iter())).map_err(io)?;
    let mut written = 0;
    for (i, ((e, fv), label)) in events.iter().zip(&features).zip(&history.labels).enumerate() {
        if !history.selected(i) {
            continue;
        }
        written += 1;
        let mut record = vec![e.transaction_id.clone(), e.timestamp.to_rfc3339()];
        record.extend(inputs.row(e, fv).iter().map(|v| if v.is_nan() { String::new() } else { v.to_string() }));
        record.push(label.map_or(String::new(), |l| u8::from(l).to_string()));
        w.write_record(&record).map_err(io)?;
    }
    w.flush().map_err(|e| OfflineError::Data(format!("cannot write the feature table: {e}")))?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_headers_and_values_missing_cells_and_bad_cells() {
        let dir = std::env::temp_dir();
        let p = dir.join(format!("vigil-table-{}.csv", std::process::id()));
        std::fs::write(&p, "\"a\",\"b c\",\"y\"\n\"1.5\",2,\"1\"\n3,,0\n").unwrap();
        let t = read_csv(&p, &["a".into(), "b c".into()], "y").unwrap();
        assert_eq!(t.labels, [true, false]);
        assert_eq!(t.rows[0], [1.5, 2.0]);
        assert!(t.rows[1][1].is_nan());
        std::fs::write(&p, "a,y\n1,0\nx,1\n").unwrap();
        let e = read_csv(&p, &["a".into()], "y").unwrap_err().to_string();
        assert!(e.contains(":3: column `a`: `x` is not a number"), "{e}");
        let e = read_csv(&p, &["z".into()], "y").unwrap_err().to_string();
        assert!(e.contains("no column `z`") && e.contains("columns: a, y"), "{e}");
        std::fs::write(&p, "a,y\n1,2\n").unwrap();
        let e = read_csv(&p, &["a".into()], "y").unwrap_err().to_string();
        assert!(e.contains("`2` is not a 0/1 label"), "{e}");
        std::fs::remove_file(&p).ok();
    }

    #[test]
    fn a_split_by_date_reads_the_time_column_and_wants_time_order() {
        let p = std::env::temp_dir().join(format!("vigil-table-time-{}.csv", std::process::id()));
        let at = |s: &str| chrono::DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&chrono::Utc);
        std::fs::write(&p, "t,a,y\n2026-01-01T00:00:00Z,1,0\n1767312000,2,1\n2026-01-03,3,0\n").unwrap();
        let t = read_csv_timed(&p, &["a".into()], "y", Some("t")).unwrap();
        assert_eq!(t.split_before(&p, at("2026-01-02T00:00:00Z")).unwrap(), 1);
        assert_eq!(t.split_before(&p, at("2026-01-02T00:00:01Z")).unwrap(), 2);
        let untimed = read_csv(&p, &["a".into()], "y").unwrap();
        let e = untimed.split_before(&p, at("2026-01-02T00:00:00Z")).unwrap_err().to_string();
        assert!(e.contains("needs a time column"), "{e}");
        std::fs::write(&p, "t,a,y\n2026-01-02T00:00:00Z,1,0\n2026-01-01T00:00:00Z,2,1\n").unwrap();
        let t = read_csv_timed(&p, &["a".into()], "y", Some("t")).unwrap();
        let e = t.split_before(&p, at("2026-01-02T00:00:00Z")).unwrap_err().to_string();
        assert!(e.contains("not in time order (data row 2"), "{e}");
        std::fs::write(&p, "t,a,y\nyesterday,1,0\n").unwrap();
        let e = read_csv_timed(&p, &["a".into()], "y", Some("t")).unwrap_err().to_string();
        assert!(e.contains(":2: column `t`: `yesterday` is not a time"), "{e}");
        std::fs::remove_file(&p).ok();
    }
}
