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
    let mut table = Table { columns: features.to_vec(), rows: Vec::new(), labels: Vec::new() };
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
        table.rows.push(row);
        table.labels.push(flag);
    }
    Ok(table)
}

impl Table {
    /// The row where evaluation starts: the first `share` of the rows train.
    pub fn split(&self, share: f64) -> usize {
        ((self.rows.len() as f64) * share).round() as usize
    }
}

/// Trains on a table: the first `config.train_share` of its rows, in file order.
pub fn train(table: &Table, path: &Path, config: &crate::TrainConfig) -> Result<crate::TrainReport, OfflineError> {
    if table.rows.is_empty() {
        return Err(OfflineError::Data(format!("{}: no rows", path.display())));
    }
    let split = table.split(config.train_share);
    let data = serde_json::json!({
        "from_table": path.display().to_string(),
        "rows": table.rows.len(),
        "split": "by row order",
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
) -> Result<usize, OfflineError> {
    let events: Vec<&vigil_core::Event> = history.events.iter().collect();
    let labels = history.fraud_labels();
    let label_refs: Vec<&vigil_core::Label> = labels.iter().collect();
    let features = crate::features_over_history(defs, &events, &label_refs)?;
    let io = |e: csv::Error| OfflineError::Data(format!("cannot write the feature table: {e}"));
    let mut w = csv::Writer::from_writer(out);
    let names = vigil_engine::model_inputs(defs);
    w.write_record(["transaction_id", "timestamp"].iter().chain(names.iter()).chain(["label"].iter())).map_err(io)?;
    for ((e, fv), label) in events.iter().zip(&features).zip(&history.labels) {
        let mut record = vec![e.transaction_id.clone(), e.timestamp.to_rfc3339()];
        record.extend(crate::inputs_row(e, fv).iter().map(|v| if v.is_nan() { String::new() } else { v.to_string() }));
        record.push(label.map_or(String::new(), |l| u8::from(l).to_string()));
        w.write_record(&record).map_err(io)?;
    }
    w.flush().map_err(|e| OfflineError::Data(format!("cannot write the feature table: {e}")))?;
    Ok(events.len())
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
}
