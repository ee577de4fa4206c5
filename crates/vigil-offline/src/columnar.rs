//! History as Parquet, through Arrow.
//!
//! Reading maps each column to the event contract by name, as for CSV: event
//! fields by their names, the label column, and every other column into
//! `attributes` (a Utf8 column named `attributes` holding a JSON object is
//! merged into them). Money is exact when `amount` is a `Decimal128` or text
//! column; a floating-point `amount` is read through its shortest decimal text,
//! which is exact for the values such files usually hold but not guaranteed.
//! Timestamps are instants: a zone-less timestamp column is read as UTC.
//!
//! Writing (`vigil gen --format parquet`) produces that same layout, with
//! `amount` as `Decimal128(38, s)` where `s` is the largest scale in the data.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Decimal128Type, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Int8Type, TimestampMicrosecondType,
    TimestampMillisecondType, TimestampNanosecondType, TimestampSecondType, UInt16Type, UInt32Type, UInt64Type,
    UInt8Type,
};
use arrow_array::{
    Array, ArrayRef, BooleanArray, Decimal128Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use chrono::{DateTime, SecondsFormat, Utc};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use rust_decimal::Decimal;
use serde_json::{Map, Value};
use vigil_core::EventField;
use vigil_gen::Labelled;

use crate::history::{History, HistoryError, REPORTED_COLUMN, SCENARIO_COLUMN};

/// Rows per Arrow batch, read or written.
const BATCH_ROWS: usize = 8192;

/// How one column's cells become JSON values.
#[derive(Clone, Copy)]
enum Reader {
    Text,
    Bool,
    Int,
    Float,
    Decimal(i8),
    Timestamp(TimeUnit),
    /// A Utf8 `attributes` column of JSON objects.
    AttributesJson,
}

fn reader_for(name: &str, ty: &DataType) -> Option<Reader> {
    Some(match ty {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View if name == "attributes" => Reader::AttributesJson,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Reader::Text,
        DataType::Boolean => Reader::Bool,
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32
        | DataType::UInt64 => Reader::Int,
        DataType::Float32 | DataType::Float64 => Reader::Float,
        DataType::Decimal128(_, scale) => Reader::Decimal(*scale),
        DataType::Timestamp(unit, _) => Reader::Timestamp(*unit),
        _ => return None,
    })
}

/// The value of row `i` of a column, or `None` when null. Errors name the
/// problem; the caller adds the place.
fn cell(col: &ArrayRef, reader: Reader, i: usize) -> Result<Option<Value>, String> {
    if col.is_null(i) {
        return Ok(None);
    }
    let text = |s: &str| Some(Value::String(s.to_owned()));
    Ok(match reader {
        Reader::Text | Reader::AttributesJson => match col.data_type() {
            DataType::Utf8 => text(col.as_string::<i32>().value(i)),
            DataType::LargeUtf8 => text(col.as_string::<i64>().value(i)),
            _ => text(col.as_string_view().value(i)),
        },
        Reader::Bool => Some(Value::Bool(col.as_boolean().value(i))),
        Reader::Int => Some(match col.data_type() {
            DataType::Int8 => col.as_primitive::<Int8Type>().value(i).into(),
            DataType::Int16 => col.as_primitive::<Int16Type>().value(i).into(),
            DataType::Int32 => col.as_primitive::<Int32Type>().value(i).into(),
            DataType::Int64 => col.as_primitive::<Int64Type>().value(i).into(),
            DataType::UInt8 => col.as_primitive::<UInt8Type>().value(i).into(),
            DataType::UInt16 => col.as_primitive::<UInt16Type>().value(i).into(),
            DataType::UInt32 => col.as_primitive::<UInt32Type>().value(i).into(),
            _ => col.as_primitive::<UInt64Type>().value(i).into(),
        }),
        Reader::Float => {
            let f = match col.data_type() {
                DataType::Float32 => col.as_primitive::<Float32Type>().value(i) as f64,
                _ => col.as_primitive::<Float64Type>().value(i),
            };
            Some(serde_json::Number::from_f64(f).map(Value::Number).ok_or_else(|| format!("{f} is not a number"))?)
        }
        Reader::Decimal(scale) => {
            let raw = col.as_primitive::<Decimal128Type>().value(i);
            let scale = u32::try_from(scale).map_err(|_| format!("negative decimal scale {scale}"))?;
            let d = Decimal::try_from_i128_with_scale(raw, scale)
                .map_err(|e| format!("decimal {raw}e-{scale} does not fit: {e}"))?;
            text(&d.to_string())
        }
        Reader::Timestamp(unit) => {
            let t = match unit {
                TimeUnit::Second => DateTime::from_timestamp(col.as_primitive::<TimestampSecondType>().value(i), 0),
                TimeUnit::Millisecond => {
                    DateTime::from_timestamp_millis(col.as_primitive::<TimestampMillisecondType>().value(i))
                }
                TimeUnit::Microsecond => {
                    DateTime::from_timestamp_micros(col.as_primitive::<TimestampMicrosecondType>().value(i))
                }
                TimeUnit::Nanosecond => {
                    Some(DateTime::from_timestamp_nanos(col.as_primitive::<TimestampNanosecondType>().value(i)))
                }
            };
            let t: DateTime<Utc> = t.ok_or("timestamp out of range")?;
            text(&t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
        }
    })
}

/// Reads a Parquet history into `history`, row by row.
pub(crate) fn read(path: &Path, file: File, label_column: &str, history: &mut History) -> Result<(), HistoryError> {
    let bad = |message: String| HistoryError::Parquet { path: path.to_path_buf(), message };
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| bad(e.to_string()))?;
    let schema = builder.schema().clone();
    let mut readers = Vec::with_capacity(schema.fields().len());
    for f in schema.fields() {
        match reader_for(f.name(), f.data_type()) {
            Some(r) => readers.push(r),
            None => {
                return Err(bad(format!(
                    "column `{}` has type {}, which history does not read",
                    f.name(),
                    f.data_type()
                )))
            }
        }
    }
    let batches = builder.with_batch_size(BATCH_ROWS).build().map_err(|e| bad(e.to_string()))?;
    let mut row = 0u64;
    for batch in batches {
        let batch = batch.map_err(|e| bad(e.to_string()))?;
        for i in 0..batch.num_rows() {
            row += 1;
            let mut record = Map::new();
            let mut attributes = Map::new();
            let mut problem = None;
            for ((f, col), reader) in schema.fields().iter().zip(batch.columns()).zip(&readers) {
                let name = f.name().as_str();
                let value = match cell(col, *reader, i) {
                    Ok(Some(v)) => v,
                    Ok(None) => continue,
                    Err(e) => {
                        problem = Some(format!("column `{name}`: {e}"));
                        break;
                    }
                };
                match (reader, EventField::parse(name)) {
                    (Reader::AttributesJson, _) => match serde_json::from_str::<Value>(value.as_str().unwrap_or("")) {
                        Ok(Value::Object(m)) => attributes.extend(m),
                        _ => {
                            problem = Some("column `attributes` does not hold a JSON object".into());
                            break;
                        }
                    },
                    // Text fields given as numbers (an integer `mcc`) are read as their text.
                    (Reader::Int, Some(field)) if !matches!(field, EventField::Amount) => {
                        record.insert(name.to_owned(), Value::String(value.to_string()));
                    }
                    (_, Some(_)) => {
                        record.insert(name.to_owned(), value);
                    }
                    _ if name == label_column || name == SCENARIO_COLUMN || name == REPORTED_COLUMN => {
                        record.insert(name.to_owned(), value);
                    }
                    _ => {
                        attributes.insert(name.to_owned(), value);
                    }
                }
            }
            if let Some(p) = problem {
                history.reject_row(path, row, &p);
                continue;
            }
            if !attributes.is_empty() {
                record.insert("attributes".into(), Value::Object(attributes));
            }
            history.push_row(path, row, record, label_column);
        }
    }
    Ok(())
}

/// Writes generated events as a Parquet history; with `inline_labels`, with
/// `is_fraud` and `fraud_scenario` columns.
pub fn write(path: &Path, items: &[Labelled], inline_labels: bool) -> Result<(), HistoryError> {
    let io = |source| HistoryError::Io { path: path.to_path_buf(), source };
    let bad = |e: &dyn std::fmt::Display| HistoryError::Parquet { path: path.to_path_buf(), message: e.to_string() };
    let scale = items.iter().map(|l| l.event.amount.scale()).max().unwrap_or(2);
    let text_fields: Vec<EventField> =
        EventField::ALL.into_iter().filter(|f| !matches!(f, EventField::Timestamp | EventField::Amount)).collect();
    let mut fields = vec![
        Field::new("timestamp", DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), false),
        Field::new("amount", DataType::Decimal128(38, scale as i8), false),
    ];
    for f in &text_fields {
        let required = matches!(f, EventField::TransactionId | EventField::Currency);
        fields.push(Field::new(f.name(), DataType::Utf8, !required));
    }
    let with_attributes = items.iter().any(|l| !l.event.attributes.is_empty());
    if with_attributes {
        fields.push(Field::new("attributes", DataType::Utf8, true));
    }
    if inline_labels {
        fields.push(Field::new("is_fraud", DataType::Boolean, false));
        fields.push(Field::new(SCENARIO_COLUMN, DataType::Utf8, true));
        fields.push(Field::new(REPORTED_COLUMN, DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), true));
    }
    let schema = Arc::new(Schema::new(fields));
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_max_row_group_row_count(Some(128 * 1024))
        .build();
    let file = File::create(path).map_err(io)?;
    let mut writer = ArrowWriter::try_new(file, schema.clone(), Some(props)).map_err(|e| bad(&e))?;
    for chunk in items.chunks(BATCH_ROWS) {
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
        let micros = chunk.iter().map(|l| l.event.timestamp.timestamp_micros());
        columns.push(Arc::new(TimestampMicrosecondArray::from_iter_values(micros).with_timezone("UTC")));
        let mut amounts = Vec::with_capacity(chunk.len());
        for l in chunk {
            let mut a = l.event.amount;
            a.rescale(scale);
            amounts.push(a.mantissa());
        }
        let amounts = Decimal128Array::from(amounts).with_precision_and_scale(38, scale as i8).map_err(|e| bad(&e))?;
        columns.push(Arc::new(amounts));
        for f in &text_fields {
            columns.push(Arc::new(chunk.iter().map(|l| l.event.text(*f)).collect::<StringArray>()));
        }
        if with_attributes {
            let json = chunk.iter().map(|l| {
                (!l.event.attributes.is_empty()).then(|| Value::Object(l.event.attributes.clone()).to_string())
            });
            columns.push(Arc::new(json.collect::<StringArray>()));
        }
        if inline_labels {
            columns.push(Arc::new(chunk.iter().map(|l| Some(l.fraud.is_some())).collect::<BooleanArray>()));
            columns.push(Arc::new(chunk.iter().map(|l| l.fraud.map(|s| s.name())).collect::<StringArray>()));
            let reported = chunk.iter().map(|l| l.reported_at.map(|t| t.timestamp_micros()));
            columns.push(Arc::new(TimestampMicrosecondArray::from_iter(reported).with_timezone("UTC")));
        }
        let batch = RecordBatch::try_new(schema.clone(), columns).map_err(|e| bad(&e))?;
        writer.write(&batch).map_err(|e| bad(&e))?;
    }
    writer.close().map_err(|e| bad(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use arrow_array::{Date32Array, Float64Array, Int32Array};
    use vigil_gen::GenConfig;

    use super::*;
    use crate::history;

    fn temp(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("vigil-{}-{name}", std::process::id()))
    }

    #[test]
    fn generated_history_round_trips_exactly() {
        let mut items = vigil_gen::generate(&GenConfig { events: 3_000, ..GenConfig::default() });
        // Attributes and a three-decimal currency survive too.
        items[0].event.attributes.insert("email_domain".into(), "mail.example".into());
        items[1].event.amount = Decimal::new(12_345, 3);
        let path = temp("round-trip.parquet");
        write(&path, &items, true).unwrap();
        let h = history::read(&path, "is_fraud").unwrap();
        std::fs::remove_file(&path).ok();
        assert_eq!((h.events.len(), h.invalid), (items.len(), 0), "{:?}", h.first_errors);
        for (l, (e, label)) in items.iter().zip(h.events.iter().zip(&h.labels)) {
            assert_eq!(e, &l.event);
            assert_eq!(*label, Some(l.fraud.is_some()));
        }
        assert!(h.labels.contains(&Some(true)));
        assert_eq!(h.reported_at, items.iter().map(|l| l.reported_at).collect::<Vec<_>>(), "report times");
    }

    /// A file written by another tool: integer `mcc`, float amount, a millisecond
    /// zone-less timestamp, an extra column that becomes an attribute, and one
    /// row that breaks the contract, reported with its row number.
    #[test]
    fn foreign_columns_map_to_the_contract_and_bad_rows_are_reported() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("transaction_id", DataType::Utf8, false),
            Field::new("timestamp", DataType::Timestamp(TimeUnit::Millisecond, None), false),
            Field::new("amount", DataType::Float64, false),
            Field::new("currency", DataType::Utf8, false),
            Field::new("mcc", DataType::Int32, true),
            Field::new("risk_band", DataType::Utf8, true),
            Field::new("fraud", DataType::Boolean, true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(vec!["t1", "t2"])),
                Arc::new(arrow_array::TimestampMillisecondArray::from(vec![1_767_225_600_000, 1_767_225_601_500])),
                Arc::new(Float64Array::from(vec![12.5, 3.0])),
                Arc::new(StringArray::from(vec!["EUR", "EURO"])),
                Arc::new(Int32Array::from(vec![Some(5411), None])),
                Arc::new(StringArray::from(vec![Some("high"), None])),
                Arc::new(BooleanArray::from(vec![Some(true), Some(false)])),
            ],
        )
        .unwrap();
        let path = temp("foreign.parquet");
        let mut w = ArrowWriter::try_new(File::create(&path).unwrap(), schema, None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        let h = history::read(&path, "fraud").unwrap();
        std::fs::remove_file(&path).ok();
        assert_eq!((h.events.len(), h.invalid), (1, 1));
        let e = &h.events[0];
        assert_eq!((e.amount, e.mcc.as_deref()), (Decimal::new(125, 1), Some("5411")));
        assert_eq!(e.timestamp.to_rfc3339(), "2026-01-01T00:00:00+00:00");
        assert_eq!(e.attributes.get("risk_band"), Some(&Value::String("high".into())));
        assert_eq!(h.labels, vec![Some(true)]);
        assert!(h.first_errors[0].ends_with("foreign.parquet:2: field `currency`: `EURO` is not an ISO 4217 code (three upper-case letters, such as EUR)"), "{:?}", h.first_errors);
    }

    #[test]
    fn unreadable_column_types_are_refused_by_name() {
        let schema = Arc::new(Schema::new(vec![Field::new("day", DataType::Date32, false)]));
        let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(Date32Array::from(vec![1]))]).unwrap();
        let path = temp("date.parquet");
        let mut w = ArrowWriter::try_new(File::create(&path).unwrap(), schema, None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        let err = history::read(&path, "is_fraud").unwrap_err().to_string();
        std::fs::remove_file(&path).ok();
        assert!(err.contains("column `day` has type Date32, which history does not read"), "{err}");
        let junk = temp("junk.parquet");
        std::fs::write(&junk, b"not parquet").unwrap();
        let err = history::read(&junk, "is_fraud").unwrap_err().to_string();
        std::fs::remove_file(&junk).ok();
        assert!(err.starts_with(&format!("{}: ", junk.display())), "{err}");
    }
}
