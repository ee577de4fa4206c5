//! `--where`: choosing the events that `vigil train`, `evaluate`, `backtest` and
//! `features` report on, with a SQL predicate that DataFusion runs over the
//! history as a table.
//!
//! The predicate chooses rows to report on, not the history: features are still
//! computed over every event, as the live stream would have seen them, so that a
//! card's velocity counts its payments of every channel even when only
//! e-commerce payments train the model.
//!
//! The table has one row per valid event. Its columns:
//! - the event's fields, under their contract names (`transaction_id`,
//!   `currency`, `card_id`, `country`, `channel`...), as text, null when absent;
//! - `timestamp` as a UTC timestamp, so `timestamp >= '2026-03-01'` works;
//! - `amount` as an exact decimal (money is never a float, here either);
//! - every attribute key the history uses, as text (non-text values as JSON);
//! - the label column under its own name (`is_fraud` by default), as a boolean;
//! - `fraud_reported_at` (timestamp) and `fraud_scenario` (text), when present.

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow_array::builder::{
    BooleanBuilder, Decimal128Builder, StringBuilder, TimestampMicrosecondBuilder, UInt32Builder,
};
use arrow_array::{Array, ArrayRef, RecordBatch, UInt32Array};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use datafusion::prelude::SessionContext;
use vigil_core::EventField;

use crate::history::{History, Selection, REPORTED_COLUMN, SCENARIO_COLUMN};
use crate::OfflineError;

/// The row number column: internal, named so that no event field or likely
/// attribute collides with it.
const ROW: &str = "vigil_row";

/// Runs `predicate` over `history` and records which events it chose. Returns
/// how many. An empty choice is an error: nothing would be trained or reported.
pub async fn apply(history: &mut History, predicate: &str, label_column: &str) -> Result<usize, OfflineError> {
    let bad = |e: &dyn std::fmt::Display| OfflineError::Where {
        predicate: predicate.to_owned(),
        reason: plain(&e.to_string(), predicate),
    };
    let batch = table(history, label_column).map_err(|e| bad(&e))?;
    let ctx = SessionContext::new();
    let df = ctx.read_batch(batch).map_err(|e| bad(&e))?;
    let expr = ctx.parse_sql_expr(predicate, df.schema()).map_err(|e| bad(&e))?;
    let chosen = df.filter(expr).and_then(|d| d.select_columns(&[ROW])).map_err(|e| bad(&e))?;
    let batches = chosen.collect().await.map_err(|e| bad(&e))?;
    let mut rows = vec![false; history.events.len()];
    for b in &batches {
        let col = b.column(0).as_any().downcast_ref::<UInt32Array>().ok_or_else(|| bad(&"row numbers lost"))?;
        for r in col.iter().flatten() {
            rows[r as usize] = true;
        }
    }
    let n = rows.iter().filter(|r| **r).count();
    if n == 0 {
        return Err(bad(&format!("no event of the {} matches", history.events.len())));
    }
    history.selection = Some(Selection { predicate: predicate.to_owned(), rows });
    Ok(n)
}

/// DataFusion's reason in the history's own words: one line, columns by their
/// names (not `"?table?".name`), without the internal row column, and the
/// usual slip named: SQL text takes single quotes (`channel = 'ecom'`), while
/// double quotes name a column.
fn plain(reason: &str, predicate: &str) -> String {
    let mut text = reason.replace("\"?table?\".", "").replace(&format!(", {ROW}"), "").replace(ROW, "");
    text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    for prefix in ["Schema error: ", "Error during planning: ", "Arrow error: "] {
        text = text.replace(prefix, "");
    }
    let unknown = text.strip_prefix("No field named ").and_then(|t| t.split(['.', ' ']).next()).map(str::to_owned);
    if let Some(name) = unknown {
        if predicate.contains(&format!("\"{name}\"")) {
            text.push_str(&format!(" (in SQL, text takes single quotes: '{name}'; double quotes name a column)"));
        }
    }
    text
}

/// The history as one Arrow record batch (module docs for its columns).
fn table(h: &History, label_column: &str) -> Result<RecordBatch, String> {
    let n = h.events.len();
    let mut fields: Vec<Field> = Vec::new();
    let mut columns: Vec<ArrayRef> = Vec::new();
    let mut text = |name: &str, values: &mut dyn Iterator<Item = Option<String>>| {
        let mut b = StringBuilder::new();
        for v in values {
            b.append_option(v);
        }
        fields.push(Field::new(name, DataType::Utf8, true));
        columns.push(Arc::new(b.finish()));
    };
    let mut taken: BTreeSet<String> = BTreeSet::new();
    for f in EventField::ALL {
        if matches!(f, EventField::Timestamp | EventField::Amount) {
            continue;
        }
        taken.insert(f.name().to_owned());
        text(f.name(), &mut h.events.iter().map(|e| e.text(f).map(str::to_owned)));
    }
    let keys: BTreeSet<&String> = h.events.iter().flat_map(|e| e.attributes.keys()).collect();
    for key in keys {
        let reserved = [label_column, REPORTED_COLUMN, SCENARIO_COLUMN, ROW, "timestamp", "amount"];
        if taken.contains(key.as_str()) || reserved.contains(&key.as_str()) {
            continue;
        }
        let value = |e: &vigil_core::Event| {
            e.attributes.get(key).map(|v| match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            })
        };
        text(key, &mut h.events.iter().map(value));
    }
    if h.scenarios.iter().any(Option::is_some) {
        text(SCENARIO_COLUMN, &mut (0..n).map(|i| h.scenarios.get(i).cloned().flatten()));
    }

    let utc = |b: TimestampMicrosecondBuilder| b.with_timezone("UTC");
    let mut ts = utc(TimestampMicrosecondBuilder::with_capacity(n));
    for e in &h.events {
        ts.append_value(e.timestamp.timestamp_micros());
    }
    fields.push(Field::new("timestamp", DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), false));
    columns.push(Arc::new(ts.finish()));

    // Every amount at the history's largest scale, exactly.
    let scale = h.events.iter().map(|e| e.amount.scale()).max().unwrap_or(0);
    let mut amounts = Decimal128Builder::with_capacity(n);
    for e in &h.events {
        let widen = 10i128.checked_pow(scale - e.amount.scale());
        let m = widen.and_then(|w| e.amount.mantissa().checked_mul(w));
        match m {
            Some(m) if m.unsigned_abs() < 10u128.pow(38) => amounts.append_value(m),
            _ => return Err(format!("amount {} of {} does not fit 38 digits", e.amount, e.transaction_id)),
        }
    }
    let amounts = amounts.with_precision_and_scale(38, scale as i8).map_err(|e| e.to_string())?.finish();
    fields.push(Field::new("amount", amounts.data_type().clone(), false));
    columns.push(Arc::new(amounts));

    if h.labelled() {
        let mut b = BooleanBuilder::with_capacity(n);
        for l in &h.labels {
            b.append_option(*l);
        }
        fields.push(Field::new(label_column, DataType::Boolean, true));
        columns.push(Arc::new(b.finish()));
    }
    if h.reported_at.iter().any(Option::is_some) {
        let mut b = utc(TimestampMicrosecondBuilder::with_capacity(n));
        for t in &h.reported_at {
            b.append_option(t.map(|t| t.timestamp_micros()));
        }
        fields.push(Field::new(REPORTED_COLUMN, DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), true));
        columns.push(Arc::new(b.finish()));
    }
    let mut rows = UInt32Builder::with_capacity(n);
    for i in 0..n {
        rows.append_value(u32::try_from(i).map_err(|_| "more than 4 billion events".to_owned())?);
    }
    fields.push(Field::new(ROW, DataType::UInt32, false));
    columns.push(Arc::new(rows.finish()));
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use rust_decimal::Decimal;
    use vigil_gen::GenConfig;

    use super::*;

    fn history(name: &str) -> History {
        let items = vigil_gen::generate(&GenConfig { events: 3_000, seed: 3, ..GenConfig::default() });
        let path = std::env::temp_dir().join(format!("vigil-select-{name}-{}.jsonl", std::process::id()));
        vigil_gen::write(std::fs::File::create(&path).unwrap(), &items, vigil_gen::Format::JsonLines, true).unwrap();
        let h = crate::history::read(&path, "is_fraud").unwrap();
        std::fs::remove_file(&path).ok();
        assert_eq!(h.events.len(), 3_000);
        h
    }

    async fn chosen(h: &mut History, predicate: &str) -> Vec<bool> {
        apply(h, predicate, "is_fraud").await.unwrap();
        h.selection.as_ref().unwrap().rows.clone()
    }

    #[tokio::test]
    async fn predicates_choose_exactly_the_events_they_describe() {
        let mut h = history("exact");
        let hundred = Decimal::from(100);
        let by_rust = |f: &dyn Fn(usize) -> bool| (0..h.events.len()).map(f).collect::<Vec<bool>>();
        let ecom = by_rust(&|i| h.events[i].channel.as_deref() == Some("ecom"));
        let big = by_rust(&|i| h.events[i].amount > hundred);
        let fraud = by_rust(&|i| h.labels[i] == Some(true));
        let big_fraud = by_rust(&|i| big[i] && fraud[i]);
        let cut = h.events[1_500].timestamp;
        let late = by_rust(&|i| h.events[i].timestamp >= cut);
        // The generator names each fraud's scenario.
        let scenario = h.scenarios.iter().flatten().next().unwrap().clone();
        let named = by_rust(&|i| h.scenarios[i].as_deref() == Some(scenario.as_str()));
        assert!(ecom.iter().any(|x| *x) && big_fraud.iter().any(|x| *x) && late.iter().any(|x| !*x));

        assert_eq!(chosen(&mut h, "channel = 'ecom'").await, ecom);
        // Amounts compare exactly, as decimals.
        assert_eq!(chosen(&mut h, "amount > 100").await, big);
        assert_eq!(chosen(&mut h, "amount > 100.00 AND is_fraud").await, big_fraud);
        let at = cut.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        assert_eq!(chosen(&mut h, &format!("timestamp >= '{at}'")).await, late);
        assert_eq!(chosen(&mut h, &format!("fraud_scenario = '{scenario}'")).await, named);
        assert_eq!(h.selected_count(), named.iter().filter(|x| **x).count());
    }

    #[tokio::test]
    async fn a_bad_predicate_says_why_and_chooses_nothing() {
        let mut h = history("bad");
        for (predicate, why) in [
            ("chanel = 'ecom'", "chanel"),
            ("amount +", "--where `amount +`"),
            ("amount + 1", "amount + 1"),
            ("amount < 0", "no event of the 3000 matches"),
        ] {
            let e = apply(&mut h, predicate, "is_fraud").await.unwrap_err().to_string();
            assert!(e.contains(why), "{predicate}: {e}");
            assert!(h.selection.is_none());
        }
    }

    #[tokio::test]
    async fn chosen_events_keep_the_features_of_the_whole_history() {
        let config = vigil_core::PipelineConfig::load(
            &std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../pipelines/demo.toml"),
        )
        .unwrap();
        let mut h = history("features");
        let mut all = Vec::new();
        crate::tabular::write_features(&mut all, &config.features, &h, &crate::Progress::default()).unwrap();
        let rows = chosen(&mut h, "channel <> 'ecom'").await;
        let mut some = Vec::new();
        let n = crate::tabular::write_features(&mut some, &config.features, &h, &crate::Progress::default()).unwrap();
        let all = String::from_utf8(all).unwrap();
        let lines: Vec<&str> = all.lines().collect();
        // The header, then exactly the chosen events' rows of the full table.
        let expected: Vec<&str> = std::iter::once(lines[0])
            .chain(lines[1..].iter().zip(&rows).filter(|(_, r)| **r).map(|(l, _)| *l))
            .collect();
        assert_eq!(n, rows.iter().filter(|r| **r).count());
        assert!(n > 0 && n < h.events.len());
        assert_eq!(String::from_utf8(some).unwrap().lines().collect::<Vec<_>>(), expected);
    }
}
